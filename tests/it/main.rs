//! kiln's end-to-end tests: one binary, each test with its own temp dir and KILN_ROOT, running
//! the real `kiln` (real namespaces, overlayfs, tar) on a busybox image built from
//! /bin/busybox. Privileged tests skip with a reason, or fail when REQUIRE_PRIVILEGED_TESTS=1.

mod add_url;
mod archives;
mod attest;
mod attest_files;
mod build;
mod build_flags;
mod build_run_mounts;
mod build_run_network;
mod cache;
mod cache_backends;
mod call_v024;
mod cgroup_v2;
mod check;
mod cli_docker;
mod containers;
mod contexts;
mod differential;
mod dockerfile_buildkit;
mod dockerfile_semantics;
mod errors;
mod escape;
mod firewall;
mod harness;
mod interop;
mod network;
mod orphans;
mod outputs;
mod platform_cache;
mod platforms;
mod registry;
mod remote_cache;
mod rootless;
mod rootless_docker;
mod rootless_fallbacks;
mod rootless_kube;
mod run_flags;
mod run_flags_docker;
mod run_options;
mod sandbox_security;
mod save;
mod sources;
mod timestamps;
mod validation;
mod vm;

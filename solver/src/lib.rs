//! kiln's solver: runs a build graph.
//!
//! - The build graph IR it runs is the `graph` crate (`kiln-graph`), which the frontend produces.
//! - [`key`]: versioned, hand-encoded cache keys of nodes.
//! - [`sched`]: runs the nodes the target needs, concurrently, each once, behind the
//!   [`sched::OpRunner`] trait.
//! - [`progress`]: the events the solver emits while it runs (the cli renders them).
//! - [`ops`]: the real runner ([`Solver`]): cache lookups, sandboxed RUN/COPY, layer commits
//!   and the final image.
//! - [`cachesource`]: where results are found by key (the local store; imported caches).
//! - [`remote`]: remote cache hooks: the steps a build exports, lazy fetching of imported
//!   layers and cache mounts.
//! - [`fetch`] and [`git`]: ADD of http(s) URLs and of git repositories.
//! - [`mounts`]: RUN --mount on the host side (cache dirs, secrets, ssh agent proxies, the
//!   layers of bind-mounted trees, the context filtered by `.dockerignore`); the sandbox
//!   mounts the trees and resolves their untrusted source paths with `executor::fsroot`.
//! - [`spawn`]: starts sandboxes from one long-lived thread, so that they die with the build.
//!
//! The solver depends on `cache` (store, layers, images) and `executor` (sandboxes). It never
//! parses Dockerfiles and never prints: progress leaves as events.
#![deny(missing_docs)]

// The IR lives in the `graph` crate; this crate-private alias keeps `crate::graph::...` paths
// of the solver's modules valid without touching every import.
use ::graph;

pub mod cachesource;
pub mod explain;
pub mod fetch;
pub mod gcroots;
pub mod git;
pub mod key;
pub mod mounts;
pub mod ops;
pub mod progress;
pub mod remote;
pub mod sched;
pub mod spawn;

pub use ops::{SolveError, SolveOptions, Solver};

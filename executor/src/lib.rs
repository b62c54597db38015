//! kiln's executor: runs processes and filesystem edits in Linux namespace sandboxes.
//!
//! This crate is a leaf: it knows nothing of images or Dockerfiles. Callers hand it explicit
//! specs ([`spec::InitSpec`]: lower directories, upper directory, argv, env, user, or COPY
//! tasks) and start `kiln __init <json>` with [`sandbox::command`]; the re-executed process
//! calls [`init::main`], which sets the sandbox up and exits with the command's status.
//!
//! - [`spec`]: the serde types crossing the process boundary;
//! - [`sandbox`]: builds the `__init` command line (host side);
//! - [`init`]: the single-threaded `__init` process (namespaces, fork, pivot_root, exec);
//! - [`mounts`]: the pure mount plan of a RUN sandbox;
//! - [`names`]: container and network names checked before they become paths;
//! - [`user`]: /etc/passwd and /etc/group resolution (pure);
//! - [`copy`]: COPY/ADD/WORKDIR semantics, run inside `__init`;
//! - [`cgroup`]: `--memory`/`--cpus`/`--pids-limit` through cgroup v1 or v2;
//! - [`devices`]: runc's default device list, through the v1 devices cgroup or a v2 eBPF program;
//! - [`seccomp`]: docker's seccomp profile format, compiled to the BPF filter of every sandbox;
//! - [`net`]: bridge networks, leases, NAT and published ports, the netns pool for RUN;
//! - [`rootless`]: the per-user session (user, mount and network namespace) of rootless kiln;
//! - [`fsroot`]: the one resolver of untrusted paths inside a root (openat2 `RESOLVE_IN_ROOT`,
//!   or a checked walk), used for every mount source and target and every COPY destination,
//!   and given to the `context` crate's walk of COPY sources as [`fsroot::InRoot`];
//! - [`sys`]: the only module with `unsafe` (fork, execve, ioctl, prctl, mount_setattr).
//!
//! What callers can rely on after `__init` exits:
//! - nothing is mounted anywhere (all mounts lived in a mount namespace that died with it);
//! - the upper dir holds exactly the changes, in overlay format (whiteouts are 0:0 char devices,
//!   opaque dirs carry `trusted.overlay.opaque=y`; no redirects or metacopy, which are off);
//!   mount points the sandbox had to create (/proc, /dev, /etc/hosts...) are gone from it;
//! - the overlay was `volatile` (no sync of the upper filesystem at unmount, the difference
//!   between ~3 ms and ~190 ms per step here), so the work dir keeps `work/incompat/volatile`
//!   and must not be reused: every run needs a fresh upper/work pair;
//! - a `.kiln-init-<pid>` state dir next to the work dir existed only while it ran.
//!
//! It must never start threads or async runtimes in `__init`, and never mount anything in the
//! caller's mount namespace.
#![deny(missing_docs)]

pub mod binfmt;
pub mod cgparent;
pub mod cgroup;
pub mod container;
pub mod copy;
pub mod devices;
pub mod fsroot;
pub mod init;
pub mod mounts;
pub mod names;
pub mod net;
pub mod rootless;
pub mod sandbox;
pub mod seccomp;
pub mod spec;
pub mod sys;
pub(crate) mod tty;
pub mod user;
pub mod volume;

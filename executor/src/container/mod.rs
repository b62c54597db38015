//! Containers as library code (`kiln run`, `ps`, `start`, `stop`, `rm`, ...): their state and
//! its legal transitions ([`state`]), their names and the atomic reservation of them
//! ([`name`]), their run spec from an image ([`spec`]), their processes
//! ([`process`]), the host-wide records of who owns their network and cgroups and the
//! reclaiming of what dead owners left ([`owner`]), cgroups, and docker's times ([`time`]).
//! The cli keeps only arguments and output.

pub mod control;
pub mod create;
pub mod name;
pub mod network;
pub mod owner;
pub mod process;
pub mod relay;
pub mod rootfs;
pub mod runtime;
pub mod spec;
pub mod state;
pub mod supervisor;
pub mod time;

pub use create::{CreateError, Created, Request, create};
pub use owner::{LeaseRef, Owner, Owners};
pub use state::{State, StateError, Status};

use std::path::PathBuf;

/// The environment variable that tells `kiln __init` which cgroups to join before it forks
/// (a `:`-separated list of directories; see [`set_cgroup_env`]).
pub const CGROUP_ENV: &str = "KILN_CGROUP";

/// Sets [`CGROUP_ENV`] on the sandbox command when the container has cgroups.
pub fn set_cgroup_env(cmd: &mut std::process::Command, dirs: &[PathBuf]) {
    if !dirs.is_empty() {
        let joined: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        cmd.env(CGROUP_ENV, joined.join(":"));
    }
}

/// The cgroup of container `id` with `limits`, or None when nothing is limited. Fails when
/// no hierarchy has a needed controller or the cgroup cannot be written.
pub fn create_cgroup(
    id: &str,
    limits: &crate::cgroup::Limits,
) -> Result<Option<crate::cgroup::Cgroup>, crate::cgroup::CgroupError> {
    if limits.is_empty() {
        return Ok(None);
    }
    let h = crate::cgroup::Hierarchy::host().ok_or(crate::cgroup::CgroupError::NoHierarchy)?;
    let plan = crate::cgroup::plan(&h, id, limits)?;
    Ok(Some(crate::cgroup::Cgroup::create(&plan)?))
}

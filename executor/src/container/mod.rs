//! Containers as library code (`kiln run`, `ps`, `start`, `stop`, `rm`, ...): `kiln run`'s
//! whole creation sequence, undone step by step when one fails, and the foreground run with
//! its signal relay ([`create`], [`relay`]), the commands on existing containers
//! ([`control`]), the detached container's supervisor ([`supervisor`]), their state and its
//! legal transitions ([`state`]), their names and the atomic reservation of them ([`name`]),
//! their run spec from an image ([`spec`]), their networks and hosts files ([`network`]),
//! their processes ([`process`]), the host-wide records of who owns their network and
//! cgroups and the reclaiming of what dead owners left ([`owner`]), cgroups
//! ([`create_cgroup`], [`SandboxCgroups`]), and docker's times ([`time`]). The cli keeps only
//! arguments and output.

pub mod control;
pub mod create;
pub mod name;
pub mod network;
pub mod options;
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

/// The cgroups a sandbox joins before it forks, handed from the process that spawns
/// `kiln __init` (a foreground `kiln run`, a container's supervisor) to `__init` through its
/// environment: [`SandboxCgroups::pass_to`] writes it, [`SandboxCgroups::from_env`] reads it
/// back, and nothing else knows the variable or its encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxCgroups(pub Vec<PathBuf>);

impl SandboxCgroups {
    /// The variable: the directories joined as `PATH` is (`:`-separated).
    const VAR: &'static str = "KILN_CGROUP";

    /// Sets the variable on the sandbox command `cmd` when there are cgroups. Fails on a
    /// directory whose name holds a `:` (never one kiln creates).
    pub fn pass_to(&self, cmd: &mut std::process::Command) -> std::io::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let joined = std::env::join_paths(&self.0).map_err(std::io::Error::other)?;
        cmd.env(Self::VAR, joined);
        Ok(())
    }

    /// The cgroups [`Self::pass_to`] handed to this process (`__init`), if any.
    pub fn from_env() -> Option<SandboxCgroups> {
        Self::decode(&std::env::var_os(Self::VAR)?)
    }

    fn decode(value: &std::ffi::OsStr) -> Option<SandboxCgroups> {
        let dirs: Vec<PathBuf> = std::env::split_paths(value)
            .filter(|d| !d.as_os_str().is_empty())
            .collect();
        (!dirs.is_empty()).then_some(SandboxCgroups(dirs))
    }

    /// Moves process `pid` into every one of them. Fails on the first that refuses it.
    pub fn join(&self, pid: u32) -> Result<(), crate::cgroup::CgroupError> {
        crate::cgroup::join(&self.0, pid)
    }
}

/// The cgroup of container `id` with `limits`: as root its own in every hierarchy, limited or
/// not, as docker gives each container one ([`crate::cgroup::everywhere`], below kiln's own
/// cgroup where no limit puts it elsewhere); rootless only
/// with limits, below the delegated cgroup v2 subtree (None without one or without limits).
/// Fails when no hierarchy has a needed controller or the cgroup cannot be written; without
/// limits such a failure only means no cgroup of its own (None).
pub fn create_cgroup(
    id: &str,
    limits: &crate::cgroup::Limits,
) -> Result<Option<crate::cgroup::Cgroup>, crate::cgroup::CgroupError> {
    // Rootless (kiln is root in the session's user namespace): the delegated v2 subtree, or
    // no limits (the binary warned before asking).
    if crate::rootless::in_user_namespace() {
        if limits.is_empty() {
            return Ok(None);
        }
        let Some(dir) = crate::cgroup::delegate::find() else {
            return Ok(None);
        };
        crate::cgroup::delegate::prepare(&dir, limits)?;
        let plan = crate::cgroup::plan(&crate::cgroup::Hierarchy::V2(dir), id, limits)?;
        return Ok(Some(crate::cgroup::Cgroup::create(&plan)?));
    }
    let own_cgroup = || -> Result<crate::cgroup::Cgroup, crate::cgroup::CgroupError> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|source| crate::cgroup::CgroupError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        let mountinfo = read(std::path::Path::new("/proc/self/mountinfo"))?;
        let own = read(std::path::Path::new("/proc/self/cgroup"))?;
        let h = crate::cgroup::Hierarchy::parse(&mountinfo)
            .ok_or(crate::cgroup::CgroupError::NoHierarchy)?;
        // kiln's own cpuset cgroup's cpus and mems, for the container's below it.
        let cpuset = crate::cgroup::cgroup_mounts(&mountinfo)
            .find(|(_, fstype, opts)| *fstype == "cgroup" && opts.split(',').any(|o| o == "cpuset"))
            .and_then(|(mount, _, _)| {
                crate::cgroup::own_dirs(&mountinfo, &own)
                    .into_iter()
                    .find_map(|(m, dir)| (m == mount).then_some(dir))
            })
            .map(|dir| -> Result<_, crate::cgroup::CgroupError> {
                Ok((
                    read(&dir.join("cpuset.cpus"))?,
                    read(&dir.join("cpuset.mems"))?,
                ))
            })
            .transpose()?;
        let plan = crate::cgroup::plan(&h, id, limits)?;
        let plan = crate::cgroup::everywhere(
            plan,
            &h,
            &mountinfo,
            &own,
            id,
            cpuset.as_ref().map(|(c, m)| (c.as_str(), m.as_str())),
        );
        crate::cgroup::Cgroup::create(&plan)
    };
    match own_cgroup() {
        Ok(cg) => Ok(Some(cg)),
        // Without limits the container's own cgroup is docker's habit, not something asked
        // for: where it cannot be made (kiln inside a container on cgroup v2, whose cgroup
        // holds processes and so enables no controllers; a cpu controller refused because
        // of real-time processes) the container runs in kiln's cgroups, as before.
        Err(_) if limits.is_empty() => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_cgroups_read_back_what_was_passed() {
        let cg = SandboxCgroups(vec![
            PathBuf::from("/sys/fs/cgroup/memory/kiln/abc"),
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/kiln/abc"),
        ]);
        let mut cmd = std::process::Command::new("true");
        cg.pass_to(&mut cmd).expect("pass");
        let (_, value) = cmd
            .get_envs()
            .find(|(k, _)| *k == SandboxCgroups::VAR)
            .expect("set");
        assert_eq!(SandboxCgroups::decode(value.expect("a value")), Some(cg));
        // None: the variable is not set at all.
        let mut cmd = std::process::Command::new("true");
        SandboxCgroups::default().pass_to(&mut cmd).expect("pass");
        assert_eq!(cmd.get_envs().count(), 0);
        let colon = SandboxCgroups(vec![PathBuf::from("/a:b")]);
        assert!(colon.pass_to(&mut cmd).is_err());
    }
}

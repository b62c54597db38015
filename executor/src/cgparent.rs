//! `kiln build --cgroup-parent PARENT` (cgroup v1, and v2 through [`enter_v2`]): the build process, and so every RUN
//! sandbox it starts, moves into `PARENT/kiln-<pid>` of every v1 hierarchy, as runc's
//! cgroupfs driver reads a cgroup parent (an absolute `PARENT` from the hierarchy's root, a
//! relative one under the process's current cgroup there). The `devices` one is configured
//! with kiln's device policy ([`crate::devices::setup_v1`]) before anyone joins, so the policy
//! holds there as in `kiln/sandbox`; `__init` sees that its devices cgroup carries the policy
//! and stays ([`crate::devices::DeviceCgroup::enter`]). [`Parented::leave`] moves back and
//! removes the `kiln-<pid>` directories.

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::devices::DeviceError;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DeviceError + '_ {
    move |source| DeviceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `rel` (a cgroup path from the kernel or the user, `..` already refused) below `root`,
/// component by component.
pub fn under(root: &Path, rel: &str) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in Path::new(rel).components() {
        if let Component::Normal(n) = c {
            p.push(n);
        }
    }
    p
}

/// Where the build moved to, per hierarchy: the new cgroup and the one it left.
#[derive(Debug)]
pub struct Parented {
    moved: Vec<(PathBuf, PathBuf)>,
}

/// The process's cgroup in the hierarchy whose mount options are `opts`, from
/// `/proc/self/cgroup` text.
fn own_path<'a>(self_cgroup: &'a str, opts: &str) -> Option<&'a str> {
    self_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        (!controllers.is_empty()
            && controllers
                .split(',')
                .any(|c| opts.split(',').any(|o| o == c)))
        .then_some(path)
    })
}

/// Creates `dir` and its missing parents below `mount` one level at a time; in a cpuset
/// hierarchy each new level gets its parent's `cpuset.cpus` and `cpuset.mems` (an empty one
/// cannot take processes).
fn create_levels(mount: &Path, dir: &Path, cpuset: bool) -> Result<(), DeviceError> {
    let rel = dir.strip_prefix(mount).unwrap_or(dir);
    let mut cur = mount.to_path_buf();
    for c in rel.components() {
        let parent = cur.clone();
        cur.push(c);
        match std::fs::create_dir(&cur) {
            Ok(()) if cpuset => {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let from = parent.join(f);
                    let v = std::fs::read_to_string(&from).map_err(io_err(&from))?;
                    let to = cur.join(f);
                    std::fs::write(&to, v.trim()).map_err(io_err(&to))?;
                }
            }
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&cur)(e)),
        }
    }
    Ok(())
}

/// Moves the calling process into `parent/kiln-<pid>` of every cgroup v1 hierarchy, the
/// devices one configured with kiln's device policy first. Call it where
/// [`crate::devices::confine_self`] would be called: before any thread or sandbox exists.
///
/// On a cgroup v2 host (no v1 `devices` controller) the same happens in the unified
/// hierarchy, with kiln's eBPF device program attached to `parent/kiln-<pid>` ([`enter_v2`]).
/// Fails on a `parent` with `..`, or when a cgroup cannot be created or joined.
pub fn enter(parent: &str) -> Result<Parented, DeviceError> {
    let refuse = |why: &str| DeviceError::CgroupParent {
        parent: parent.to_owned(),
        why: why.to_owned(),
    };
    let p = Path::new(parent);
    if parent.is_empty()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::RootDir))
    {
        return Err(refuse("a cgroup path without `.` or `..`"));
    }
    let read = |f: &str| {
        let path = Path::new(f);
        std::fs::read_to_string(path).map_err(io_err(path))
    };
    let mountinfo = read("/proc/self/mountinfo")?;
    let own = read("/proc/self/cgroup")?;
    let v1: Vec<(PathBuf, &str)> = crate::cgroup::cgroup_mounts(&mountinfo)
        .filter(|(_, fstype, _)| *fstype == "cgroup")
        .map(|(m, _, opts)| (m, opts))
        .collect();
    let leaf = format!("kiln-{}", std::process::id());
    if !v1.iter().any(|(_, o)| o.split(',').any(|x| x == "devices")) {
        let Some((mount, _, _)) =
            crate::cgroup::cgroup_mounts(&mountinfo).find(|(_, fstype, _)| *fstype == "cgroup2")
        else {
            return Err(refuse(
                "no cgroup filesystem with the devices controller or cgroup2",
            ));
        };
        return enter_v2(&mount, &own, p, &leaf);
    }
    let mut out = Parented { moved: Vec::new() };
    let mut devices_first: Vec<&(PathBuf, &str)> = v1.iter().collect();
    // The device policy first: no moment in a cgroup without it.
    devices_first.sort_by_key(|(_, o)| !o.split(',').any(|x| x == "devices"));
    for (mount, opts) in devices_first {
        let Some(current) = own_path(&own, opts) else {
            continue;
        };
        let base = match p.is_absolute() {
            true => mount.clone(),
            false => under(mount, current),
        };
        let dir = under(&base, parent).join(&leaf);
        if opts.split(',').any(|x| x == "devices") {
            if let Some(up) = dir.parent() {
                create_levels(mount, up, false)?;
            }
            crate::devices::setup_v1(&dir)?;
        } else {
            let cpuset = opts.split(',').any(|x| x == "cpuset");
            create_levels(mount, &dir, cpuset)?;
        }
        out.join(dir, under(mount, current))?;
    }
    Ok(out)
}

/// [`enter`] on a cgroup v2 host: `parent/<leaf>` below the unified mount (an absolute
/// `parent`) or below the process's own cgroup (a relative one), the device program attached
/// to it before the process joins.
fn enter_v2(mount: &Path, own: &str, parent: &Path, leaf: &str) -> Result<Parented, DeviceError> {
    let current = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/");
    let base = match parent.is_absolute() {
        true => mount.to_path_buf(),
        false => under(mount, current),
    };
    let dir = under(&base, &parent.to_string_lossy()).join(leaf);
    if let Some(up) = dir.parent() {
        create_levels(mount, up, false)?;
    }
    crate::devices::ensure_v2_program(&dir)?;
    let mut out = Parented { moved: Vec::new() };
    out.join(dir, under(mount, current))?;
    Ok(out)
}

impl Parented {
    /// Moves this process into `dir`, to go back to `previous` on [`Parented::leave`]; on
    /// failure leaves every cgroup joined so far.
    fn join(&mut self, dir: PathBuf, previous: PathBuf) -> Result<(), DeviceError> {
        let procs = dir.join("cgroup.procs");
        let joined = std::fs::write(&procs, "0").map_err(io_err(&procs));
        self.moved.push((dir, previous));
        if let Err(e) = joined {
            self.leave();
            return Err(e);
        }
        Ok(())
    }

    /// Moves the process back to the cgroups it left and removes the `kiln-<pid>` ones
    /// (best effort: a cgroup still holding a process stays).
    pub fn leave(&mut self) {
        for (dir, previous) in self.moved.drain(..).rev() {
            let _ = std::fs::write(previous.join("cgroup.procs"), "0");
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_path_matches_the_hierarchy_by_controller() {
        let own = "5:devices:/\n4:memory:/session/x\n1:cpu,cpuacct:/a\n9:name=systemd:/\n";
        assert_eq!(own_path(own, "rw,memory"), Some("/session/x"));
        assert_eq!(own_path(own, "rw,cpuacct,cpu"), Some("/a"));
        assert_eq!(own_path(own, "rw,name=systemd"), Some("/"));
        assert_eq!(own_path(own, "rw,pids"), None);
    }
}

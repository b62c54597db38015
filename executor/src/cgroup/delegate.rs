//! Rootless limits: a cgroup v2 subtree delegated to the user (systemd's `Delegate=yes`, as
//! `user@UID.service` or `systemd-run --user --scope -p Delegate=yes` give it: the directory
//! and its `cgroup.procs`, `cgroup.subtree_control`, `cgroup.threads` owned by the user, the
//! controllers enabled in the parent's `subtree_control`).
//!
//! The delegated directory `D` is the caller's own cgroup (or the parent of [`LEAF`], where an
//! earlier kiln moved it). Containers get `D/kiln/<id>` as in root mode ([`super::plan`] with
//! `D` as the hierarchy's root). cgroup v2's no-internal-processes rule forbids enabling
//! controllers in `D`'s `subtree_control` while processes live in `D` itself, so [`prepare`]
//! first moves every process of `D` (the user's shell, kiln, the session's pause process)
//! into the leaf `D/kiln-init`, as rootlesskit's `--evacuate-cgroup2` does.

use std::io;
use std::path::{Path, PathBuf};

use super::{CgroupError, Hierarchy, Limits, Result, io_err};

/// The leaf that [`prepare`] moves the delegated cgroup's own processes into.
pub const LEAF: &str = "kiln-init";

/// The cgroup v2 path of `/proc/self/cgroup` text (its `0::` line), below `mount`.
pub fn own_cgroup(proc_self_cgroup: &str, mount: &Path) -> Option<PathBuf> {
    let rel = proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim_start_matches('/');
    // The kernel's own path, not untrusted input; still, no `..` may climb out of the mount.
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    })
}

/// The delegated directory for a process in cgroup `own`: `own`, or its parent when `own` is
/// the [`LEAF`] an earlier kiln made.
pub fn delegated_dir(own: &Path) -> PathBuf {
    match (own.file_name(), own.parent()) {
        (Some(n), Some(p)) if n == LEAF => p.to_path_buf(),
        _ => own.to_path_buf(),
    }
}

/// The subtree delegated to this process: on a pure cgroup v2 host, the directory
/// [`delegated_dir`] names when this process may write its `cgroup.procs` and
/// `cgroup.subtree_control`. None otherwise (cgroup v1 or hybrid hosts, no delegation).
pub fn find() -> Option<PathBuf> {
    let Some(Hierarchy::V2(mount)) = Hierarchy::host() else {
        return None;
    };
    let own = own_cgroup(&std::fs::read_to_string("/proc/self/cgroup").ok()?, &mount)?;
    let dir = delegated_dir(&own);
    // The unified root is never delegated (and nsdelegate forbids writing it from a namespace).
    if dir == mount {
        return None;
    }
    let writable = |f: &str| rustix::fs::access(dir.join(f), rustix::fs::Access::WRITE_OK).is_ok();
    (writable("cgroup.procs") && writable("cgroup.subtree_control")).then_some(dir)
}

/// The controllers `limits` need that `dir` does not offer (its `cgroup.controllers`).
pub fn missing_controllers(dir: &Path, limits: &Limits) -> Vec<&'static str> {
    let have = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    limits
        .controllers()
        .into_iter()
        .filter(|c| !have.split_whitespace().any(|h| h == *c))
        .collect()
}

/// Makes `dir` ready to hold containers with `limits`: every controller they need is
/// offered, and `dir`'s own processes are moved into `dir/kiln-init` so that its
/// `subtree_control` can enable them. Fails naming a controller that is not delegated.
pub fn prepare(dir: &Path, limits: &Limits) -> Result<()> {
    if let Some(controller) = missing_controllers(dir, limits).first() {
        return Err(CgroupError::NotDelegated {
            controller,
            dir: dir.to_path_buf(),
        });
    }
    let control = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&control).map_err(io_err(&control))?;
    let needed: Vec<&str> = limits
        .controllers()
        .into_iter()
        .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
        .collect();
    if needed.is_empty() {
        return Ok(());
    }
    let leaf = dir.join(LEAF);
    match std::fs::create_dir(&leaf) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(&leaf)(e)),
        _ => {}
    }
    let enable = needed
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    // A process forked between reading cgroup.procs and enabling lands in `dir` again:
    // the kernel then says EBUSY and the move is repeated.
    let mut tries = 0;
    loop {
        evacuate(dir, &leaf)?;
        match std::fs::write(&control, &enable) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 20 => tries += 1,
            Err(e) => return Err(io_err(&control)(e)),
        }
    }
}

/// Moves every process of `dir` into `leaf`. A process that exits meanwhile is fine.
fn evacuate(dir: &Path, leaf: &Path) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    let dest = leaf.join("cgroup.procs");
    let list = std::fs::read_to_string(&procs).map_err(io_err(&procs))?;
    for pid in list.split_whitespace() {
        match std::fs::write(&dest, pid) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(io_err(&dest)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroup_comes_from_the_unified_line() {
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(
            own_cgroup(
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice\n",
                m
            ),
            Some(PathBuf::from(
                "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice"
            ))
        );
        assert_eq!(own_cgroup("0::/\n", m), Some(m.to_path_buf()));
        assert_eq!(own_cgroup("4:memory:/x\n", m), None);
        assert_eq!(own_cgroup("0::/a/../../etc\n", m), None);
    }

    #[test]
    fn the_leaf_kiln_made_points_back_at_the_delegated_dir() {
        assert_eq!(
            delegated_dir(Path::new("/sys/fs/cgroup/u/kiln-init")),
            Path::new("/sys/fs/cgroup/u")
        );
        assert_eq!(
            delegated_dir(Path::new("/sys/fs/cgroup/u")),
            Path::new("/sys/fs/cgroup/u")
        );
    }

    #[test]
    fn undelegated_controllers_are_named() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::write(t.path().join("cgroup.controllers"), "cpu memory\n").expect("write");
        let limits = Limits {
            memory: Some(1),
            millicpus: Some(1),
            pids: Some(1),
        };
        assert_eq!(missing_controllers(t.path(), &limits), ["pids"]);
        let e = prepare(t.path(), &limits).expect_err("pids is missing");
        assert_eq!(
            e.to_string(),
            format!(
                "the pids controller is not delegated to {} (see its cgroup.controllers)",
                t.path().display()
            )
        );
    }
}

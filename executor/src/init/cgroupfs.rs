//! What a sandbox sees of its cgroups, as a docker (runc) container does: its own cgroup
//! directory in each hierarchy, bound at /sys/fs/cgroup by the plan
//! ([`crate::mounts::plan`]), and on a cgroup v2 host a cgroup namespace of its own (docker's
//! default `cgroupns` mode is `private` on v2 and `host` on v1), so that /proc/self/cgroup
//! reads `0::/` there and the host's path on v1, as in docker.

use std::path::{Path, PathBuf};

use super::{Result, file_err};

/// This process's own cgroup directory in each hierarchy (see [`crate::cgroup::own_dirs`]:
/// the v1 ones on a v1 or hybrid host, as runc's v1 layout leaves out the cgroup2 one), with
/// the name it gets under /sys/fs/cgroup: the mount point's name, or empty for a cgroup2
/// mounted at /sys/fs/cgroup itself. Read after the process joined its cgroups (the
/// container's, the device policy's), since the sandbox inherits them.
///
/// Unless `all` (an insecure step's writable view, as before), only the hierarchies where that
/// cgroup is a leaf: a sandbox sees its own cgroup (a container's `kiln/<id>`, the device
/// policy's `kiln/sandbox`, a build's `P/kiln-<pid>`, the cgroup kiln runs in when that has
/// no children), never a tree of other cgroups such as a hierarchy's root, which is where
/// kiln's own cgroup can be.
///
/// Fails when /proc cannot be read.
pub(super) fn own(all: bool) -> Result<Vec<(PathBuf, String)>> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(file_err(Path::new(p)));
    let (mountinfo, own) = (read("/proc/self/mountinfo")?, read("/proc/self/cgroup")?);
    let mut dirs = named(crate::cgroup::own_dirs(&mountinfo, &own));
    if !all {
        dirs.retain(|(dir, _)| is_leaf(dir));
    }
    Ok(dirs)
}

/// Moves this process into the cgroups of process `pid` (a container's) where they differ
/// from its own. Fails when /proc cannot be read or a cgroup refuses the process.
pub(super) fn join_those_of(pid: i32) -> Result<()> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(file_err(p));
    let mountinfo = read(Path::new("/proc/self/mountinfo"))?;
    let theirs = read(&PathBuf::from(format!("/proc/{pid}/cgroup")))?;
    let ours = crate::cgroup::own_dirs(&mountinfo, &read(Path::new("/proc/self/cgroup"))?);
    let dirs: Vec<PathBuf> = crate::cgroup::own_dirs(&mountinfo, &theirs)
        .into_iter()
        .filter(|d| !ours.contains(d))
        .map(|(_, dir)| dir)
        .collect();
    crate::cgroup::join(&dirs, std::process::id()).map_err(super::InitError::Cgroup)
}

/// Whether cgroup directory `dir` has no child cgroups (and can be read).
fn is_leaf(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| {
        !entries.any(|e| e.is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_dir())))
    })
}

fn named(dirs: Vec<(PathBuf, PathBuf)>) -> Vec<(PathBuf, String)> {
    dirs.into_iter()
        .filter_map(|(mount, dir)| {
            let name = match mount == Path::new("/sys/fs/cgroup") {
                true => String::new(),
                false => mount.file_name()?.to_str()?.to_owned(),
            };
            Some((dir, name))
        })
        .collect()
}

/// Whether the sandbox gets a cgroup namespace of its own: on a cgroup v2 host (the unified
/// hierarchy at /sys/fs/cgroup), as docker's and podman's containers do and BuildKit's steps,
/// insecure ones too (`executor/oci/spec.go`: only where /sys/fs/cgroup has
/// `cgroup.subtree_control`, since v1 hierarchies can refuse it).
pub(super) fn private_namespace(cgroups: &[(PathBuf, String)]) -> bool {
    cgroups.iter().any(|(_, name)| name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_with_subdirectories_is_no_leaf() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("memory.max"), "max").expect("write");
        assert!(is_leaf(d.path()));
        std::fs::create_dir(d.path().join("child")).expect("mkdir");
        assert!(!is_leaf(d.path()));
        assert!(!is_leaf(&d.path().join("missing")));
    }

    #[test]
    fn v1_hierarchies_are_named_after_their_mount_point_and_v2_is_unnamed() {
        let got = named(vec![
            (
                "/sys/fs/cgroup/memory".into(),
                "/sys/fs/cgroup/memory/kiln/c1".into(),
            ),
            (
                "/sys/fs/cgroup/systemd".into(),
                "/sys/fs/cgroup/systemd/user".into(),
            ),
        ]);
        assert_eq!(
            got[0],
            ("/sys/fs/cgroup/memory/kiln/c1".into(), "memory".into())
        );
        assert_eq!(got[1].1, "systemd");
        assert!(!private_namespace(&got));
        let v2 = named(vec![(
            "/sys/fs/cgroup".into(),
            "/sys/fs/cgroup/kiln/c1".into(),
        )]);
        assert_eq!(v2, vec![("/sys/fs/cgroup/kiln/c1".into(), String::new())]);
        assert!(private_namespace(&v2));
        assert!(!private_namespace(&[]));
    }
}

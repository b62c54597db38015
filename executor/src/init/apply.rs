//! The thin shell executing the [`crate::mounts`] plan in the sandbox child, and the overlay
//! mount shared with COPY. Every mount target is resolved inside the new root
//! (`RESOLVE_IN_ROOT`), and every mount uses the new mount API (`fsopen`/`open_tree` +
//! `move_mount` onto an fd), so nothing is ever mounted through a path an image controls.

use std::io;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, Mode, OFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags};

use super::{InitError, Result};
use crate::fsroot::{self, Method};
use crate::mounts::{Attrs, Create, Step};
use crate::sys;

/// Reports the mount points the child creates on the overlay to the parent, one path (in the
/// root) per line.
pub(super) struct Reporter {
    pub(super) fd: OwnedFd,
    pub(super) root_path: PathBuf,
    pub(super) overlay_dev: u64,
    /// An empty directory (the bottom layer of read-only tree mounts).
    pub(super) empty: PathBuf,
}

impl Reporter {
    fn created(&mut self, parent: &OwnedFd, name: &str) {
        let Ok(st) = rustix::fs::fstat(parent) else {
            return;
        };
        if st.st_dev != self.overlay_dev {
            return;
        }
        // The physical location: a symlink in the image may have redirected the path.
        let Ok(link) = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(parent)
        )) else {
            return;
        };
        let Ok(rel) = link.strip_prefix(&self.root_path) else {
            return;
        };
        let line = format!("/{}/{name}\n", rel.display());
        let line = line.replacen("//", "/", 1);
        let _ = rustix::io::write(&self.fd, line.as_bytes());
    }
}

/// Mounts an overlay of `lowers` (newest first) on `target`, with `upper` and `work` when
/// given, read-only otherwise. One read-only lower is a read-only bind mount instead (overlay
/// wants two lowers when it has no upper).
pub(crate) fn mount_overlay(
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    target: &Path,
) -> Result<()> {
    let tree = overlay_tree(lowers, upper)?;
    rustix::mount::move_mount(
        &tree,
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| overlay_error(lowers, upper, e.into()))
}

fn overlay_error(
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    source: io::Error,
) -> InitError {
    let upper = upper
        .map(|(u, _)| u.to_path_buf())
        .or_else(|| lowers.first().cloned())
        .unwrap_or_default();
    if crate::rootless::in_user_namespace() {
        return InitError::OverlayRootless {
            upper,
            fuse: "not tried (KILN_ROOTLESS_OVERLAY=native)".to_owned(),
            source,
        };
    }
    InitError::Overlay {
        upper,
        lowers: lowers.len(),
        source,
    }
}

/// The detached mount [`mount_overlay`] attaches.
pub(crate) fn overlay_tree(lowers: &[PathBuf], upper: Option<(&Path, &Path)>) -> Result<OwnedFd> {
    // The same layer twice in a chain (`COPY sub sub` run twice gives one diff id) would make
    // overlayfs refuse the mount with ELOOP. Keeping only its topmost occurrence shows the
    // same tree: whatever the layers between the two copies changed, the top copy restates.
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<PathBuf> = lowers
        .iter()
        .filter(|l| seen.insert(l.as_path()))
        .cloned()
        .collect();
    let lowers = unique.as_slice();
    // Rootless: fuse-overlayfs when asked for, or when the kernel's overlayfs refuses.
    if crate::rootless::in_user_namespace() {
        use crate::rootless::fuse;
        let fuse_err =
            |upper_dir: PathBuf, fuse: io::Error, source: io::Error| InitError::OverlayRootless {
                upper: upper_dir,
                fuse: fuse.to_string(),
                source,
            };
        let upper_dir = || {
            upper
                .map(|(u, _)| u.to_path_buf())
                .or_else(|| lowers.first().cloned())
                .unwrap_or_default()
        };
        match fuse::mode() {
            fuse::Mode::Fuse => {
                return fuse::mount_tree(lowers, upper).map_err(|e| {
                    fuse_err(
                        upper_dir(),
                        e,
                        io::Error::other("not tried (KILN_ROOTLESS_OVERLAY=fuse)"),
                    )
                });
            }
            fuse::Mode::Auto => {
                return native_tree(lowers, upper).or_else(|native| {
                    let source = match native {
                        InitError::OverlayRootless { source, .. } => source,
                        other => return Err(other),
                    };
                    fuse::mount_tree(lowers, upper).map_err(|e| fuse_err(upper_dir(), e, source))
                });
            }
            fuse::Mode::Native => {}
        }
    }
    native_tree(lowers, upper)
}

/// [`overlay_tree`] with the kernel's overlayfs (`lowers` without repeats).
fn native_tree(lowers: &[PathBuf], upper: Option<(&Path, &Path)>) -> Result<OwnedFd> {
    let overlay_err = |source: io::Error| overlay_error(lowers, upper, source);
    let errno = |e: rustix::io::Errno| overlay_err(e.into());
    if upper.is_none() && lowers.len() == 1 {
        let tree = rustix::mount::open_tree(
            CWD,
            &lowers[0],
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_RECURSIVE,
        )
        .map_err(errno)?;
        sys::mount_setattr(&tree, sys::attr::RDONLY).map_err(overlay_err)?;
        return Ok(tree);
    }
    match overlay_fs(lowers, upper, false) {
        // Before Linux 6.8 overlayfs has no `lowerdir+` (nor its own fs_context parser: the
        // kernel collects the options as one string and only refuses it at create time, as
        // EINVAL). Debian 12's kernel (6.1) is one: fall back to a single `lowerdir` list,
        // which the kernel caps at one page of options.
        Err((rustix::io::Errno::INVAL, None)) => {
            overlay_fs(lowers, upper, true).map_err(|(e, _)| errno(e))
        }
        Err((e, Some(lower))) => Err(InitError::Lower {
            path: lower.to_path_buf(),
            source: e.into(),
        }),
        Err((e, None)) => Err(errno(e)),
        Ok(fd) => Ok(fd),
    }
}

/// `lowers` joined into one `lowerdir` value (topmost first, as `lowerdir+` adds them), with
/// overlayfs's escapes for `:` and `\`.
fn lowerdir_list(lowers: &[PathBuf]) -> String {
    let mut s = String::new();
    for (i, l) in lowers.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        for c in l.to_string_lossy().chars() {
            if matches!(c, ':' | '\\') {
                s.push('\\');
            }
            s.push(c);
        }
    }
    s
}

/// The overlay mount of [`native_tree`]; `legacy` passes the lower dirs as one `lowerdir`
/// list instead of one `lowerdir+` each. An error names the lower dir the kernel refused,
/// when it refused one.
fn overlay_fs<'a>(
    lowers: &'a [PathBuf],
    upper: Option<(&Path, &Path)>,
    legacy: bool,
) -> std::result::Result<OwnedFd, (rustix::io::Errno, Option<&'a Path>)> {
    let errno = |e| (e, None);
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(errno)?;
    if legacy {
        rustix::mount::fsconfig_set_string(&fs, "lowerdir", lowerdir_list(lowers))
            .map_err(errno)?;
    } else {
        for lower in lowers {
            rustix::mount::fsconfig_set_string(&fs, "lowerdir+", lower)
                .map_err(|e| (e, Some(lower.as_path())))?;
        }
    }
    if let Some((upper, work)) = upper {
        rustix::mount::fsconfig_set_string(&fs, "upperdir", upper).map_err(errno)?;
        rustix::mount::fsconfig_set_string(&fs, "workdir", work).map_err(errno)?;
    }
    // Layers are committed from the upper dir as plain files and whiteouts: a renamed
    // directory must be copied, not recorded as an overlay redirect, and metadata-only
    // copy-ups would leave files without data in the upper dir.
    // Rootless (`userxattr`, below) overlay refuses to follow redirects, so there the same is
    // `nofollow`.
    let userxattr = crate::rootless::in_user_namespace();
    let redirect = if userxattr { "nofollow" } else { "off" };
    for (k, v) in [("redirect_dir", redirect), ("metacopy", "off")] {
        rustix::mount::fsconfig_set_string(&fs, k, v).map_err(errno)?;
    }
    // Without `volatile`, unmounting (here: the mount namespace dying with pid 1) syncs the
    // whole upper filesystem, a journal commit that costs tens of ms per RUN. The upper dir
    // is throw-away until the store commits it as a layer blob with its own fsync, so a crash
    // can only lose a dir under tmp/ that nothing trusts. Overlay leaves
    // `work/work/incompat/volatile` behind, which only forbids remounting this upper/work
    // pair; every run gets fresh ones.
    if upper.is_some() {
        rustix::mount::fsconfig_set_flag(&fs, "volatile").map_err(errno)?;
    }
    // Rootless: overlay keeps its opaque and whiteout markers in `user.overlay.*` (trusted.*
    // needs CAP_SYS_ADMIN in the initial user namespace); the store's snapshots carry the
    // same (cache::layer::apply falls back to `user.overlay.opaque`).
    if userxattr {
        rustix::mount::fsconfig_set_flag(&fs, "userxattr").map_err(errno)?;
    }
    rustix::mount::fsconfig_create(&fs).map_err(errno)?;
    let attrs = if upper.is_none() {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    } else {
        MountAttrFlags::empty()
    };
    rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(errno)
}

fn mount_attrs(a: Attrs) -> MountAttrFlags {
    let mut f = MountAttrFlags::empty();
    if a.readonly {
        f |= MountAttrFlags::MOUNT_ATTR_RDONLY;
    }
    if a.nosuid {
        f |= MountAttrFlags::MOUNT_ATTR_NOSUID;
    }
    if a.nodev {
        f |= MountAttrFlags::MOUNT_ATTR_NODEV;
    }
    if a.noexec {
        f |= MountAttrFlags::MOUNT_ATTR_NOEXEC;
    }
    f
}

pub(super) fn execute(step: &Step, root: &OwnedFd, report: &mut Reporter) -> Result<()> {
    match (step, execute_one(step, root, report)) {
        // Rootless on the host network (`KILN_ROOTLESS_NET=host`): a new sysfs needs the
        // network namespace to belong to our user namespace, which the host's does not; the
        // host's /sys is bound read-only instead (as rootless podman does with --net=host).
        (
            Step::Fs {
                fstype: "sysfs",
                target,
                ..
            },
            Err(InitError::Mount { source, .. }),
        ) if source.raw_os_error() == Some(libc::EPERM) && crate::rootless::in_user_namespace() => {
            let bind = Step::Bind {
                source: "/sys".into(),
                target: target.clone(),
                readonly: true,
                create: Create::Dir,
            };
            execute_one(&bind, root, report)
        }
        (_, r) => r,
    }
}

fn execute_one(step: &Step, root: &OwnedFd, report: &mut Reporter) -> Result<()> {
    let target = step.target();
    let mount_err = |what: &str| {
        let what = what.to_string();
        move |e: rustix::io::Errno| InitError::Mount {
            what,
            target: target.to_string(),
            source: e.into(),
        }
    };
    match step {
        Step::Fs {
            fstype,
            options,
            attrs,
            create,
            ..
        } => {
            let before = match create {
                Create::DirKeepMode => open_path_in_root(root, target, true)
                    .and_then(|fd| rustix::fs::fstat(&fd))
                    .ok(),
                _ => None,
            };
            let Some(dest) = open_in_root(root, target, *create, report)? else {
                return Ok(());
            };
            let fs = rustix::mount::fsopen(*fstype, FsOpenFlags::FSOPEN_CLOEXEC)
                .map_err(mount_err(fstype))?;
            for (k, v) in options {
                match rustix::mount::fsconfig_set_string(&fs, *k, v.as_str()) {
                    // Rootless with a single id: the tty group (devpts `gid=5`) is not
                    // mapped, so ptys keep the creator's group (as rootless podman does).
                    Err(rustix::io::Errno::INVAL)
                        if *k == "gid" && crate::rootless::in_user_namespace() => {}
                    r => r.map_err(mount_err(fstype))?,
                }
            }
            rustix::mount::fsconfig_create(&fs).map_err(mount_err(fstype))?;
            let mnt =
                rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, mount_attrs(*attrs))
                    .map_err(mount_err(fstype))?;
            attach(&mnt, &dest).map_err(mount_err(fstype))?;
            if let Some(st) = before {
                // The mount's root, opened through the new mount.
                let top = fsroot::open_in(
                    root.as_fd(),
                    target,
                    OFlags::RDONLY | OFlags::DIRECTORY,
                    Mode::empty(),
                    Method::Openat2,
                )
                .map_err(|e| InitError::Mount {
                    what: fstype.to_string(),
                    target: target.to_string(),
                    source: e,
                })?;
                rustix::fs::fchmod(&top, Mode::from_raw_mode(st.st_mode & 0o7777))
                    .map_err(mount_err(fstype))?;
            }
            Ok(())
        }
        Step::Bind {
            source,
            readonly,
            create,
            ..
        } => {
            let what = source.display().to_string();
            let create = match create {
                Create::LikeSource => match std::fs::metadata(source) {
                    Ok(m) if m.is_dir() => Create::Dir,
                    Ok(_) => Create::File,
                    Err(e) => {
                        return Err(InitError::Mount {
                            what,
                            target: target.to_string(),
                            source: e,
                        });
                    }
                },
                c => *c,
            };
            let Some(dest) = open_in_root(root, target, create, report)? else {
                return Ok(());
            };
            let tree = rustix::mount::open_tree(
                CWD,
                source,
                OpenTreeFlags::OPEN_TREE_CLONE
                    | OpenTreeFlags::OPEN_TREE_CLOEXEC
                    | OpenTreeFlags::AT_RECURSIVE,
            )
            .map_err(mount_err(&what))?;
            if *readonly {
                sys::mount_setattr(&tree, sys::attr::RDONLY).map_err(|source| {
                    InitError::Mount {
                        what: what.clone(),
                        target: target.to_string(),
                        source,
                    }
                })?;
            }
            attach(&tree, &dest).map_err(mount_err(&what))
        }
        Step::Tree {
            lowers,
            scratch,
            path,
            readonly,
            ..
        } => {
            // Overlay wants two lowers without an upper dir: pad with an empty one (one
            // lower alone, read-only, is bound as it is).
            let mut lowers = lowers.clone();
            if lowers.len() > 1 || scratch.is_some() {
                lowers.push(report.empty.clone());
            }
            let tree = overlay_tree(
                &lowers,
                scratch.as_ref().map(|(u, w)| (u.as_path(), w.as_path())),
            )?;
            let what = format!("{path:?} of {}", lowers[0].display());
            let source_err = |source: io::Error| InitError::Mount {
                what: what.clone(),
                target: target.to_string(),
                source,
            };
            let source = fsroot::resolve_in(tree.as_fd(), path).map_err(source_err)?;
            let create = if source.is_dir().map_err(source_err)? {
                Create::Dir
            } else {
                Create::File
            };
            let Some(dest) = open_in_root(root, target, create, report)? else {
                return Ok(());
            };
            // Cloned from the descriptor: what was resolved is what gets mounted.
            let clone = rustix::mount::open_tree(
                source.fd(),
                "",
                OpenTreeFlags::OPEN_TREE_CLONE
                    | OpenTreeFlags::OPEN_TREE_CLOEXEC
                    | OpenTreeFlags::AT_RECURSIVE
                    | OpenTreeFlags::AT_EMPTY_PATH,
            )
            .map_err(mount_err(&what))?;
            if *readonly {
                sys::mount_setattr(&clone, sys::attr::RDONLY).map_err(source_err)?;
            }
            attach(&clone, &dest).map_err(mount_err(&what))
        }
        Step::ReadonlySelf { .. } => {
            let Some(dest) = open_in_root(root, target, Create::Skip, report)? else {
                return Ok(());
            };
            let tree = rustix::mount::open_tree(
                &dest,
                "",
                OpenTreeFlags::OPEN_TREE_CLONE
                    | OpenTreeFlags::OPEN_TREE_CLOEXEC
                    | OpenTreeFlags::AT_RECURSIVE
                    | OpenTreeFlags::AT_EMPTY_PATH,
            )
            .map_err(mount_err("read-only bind"))?;
            sys::mount_setattr(&tree, sys::attr::RDONLY).map_err(|source| InitError::Mount {
                what: "read-only bind".into(),
                target: target.to_string(),
                source,
            })?;
            attach(&tree, &dest).map_err(mount_err("read-only bind"))
        }
        Step::ReadonlyMount { .. } => {
            let Some(dest) = open_in_root(root, target, Create::Skip, report)? else {
                return Ok(());
            };
            let set = sys::attr::RDONLY | sys::attr::NOSUID | sys::attr::NODEV | sys::attr::NOEXEC;
            sys::mount_setattr(&dest, set).map_err(|source| InitError::Mount {
                what: "read-only remount".into(),
                target: target.to_string(),
                source,
            })
        }
        Step::Populate { source, .. } => super::populate::populate(root, target, source),
        Step::Symlink { path, to } => {
            let (parent, name) = split_parent(path);
            let Some(dir) = open_in_root(root, parent, Create::Dir, report)? else {
                return Ok(());
            };
            rustix::fs::symlinkat(to.as_str(), &dir, name).map_err(|e| InitError::MountPoint {
                path: path.clone(),
                source: e.into(),
            })
        }
    }
}

fn attach(mnt: &OwnedFd, dest: &OwnedFd) -> rustix::io::Result<()> {
    rustix::mount::move_mount(
        mnt,
        "",
        dest,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
}

pub(super) fn split_parent(path: &str) -> (&str, &str) {
    let path = path.trim_end_matches('/');
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("/", path),
    }
}

fn open_path_in_root(root: &OwnedFd, path: &str, dir: bool) -> rustix::io::Result<OwnedFd> {
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if dir {
        flags |= OFlags::DIRECTORY;
    }
    fsroot::open_in(root.as_fd(), path, flags, Mode::empty(), Method::Openat2)
        .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))
}

/// Opens `path` (resolved inside `root`) as an `O_PATH` fd, creating it and its missing parents
/// as `create` says. `None` when it is missing and `create` is [`Create::Skip`].
fn open_in_root(
    root: &OwnedFd,
    path: &str,
    create: Create,
    report: &mut Reporter,
) -> Result<Option<OwnedFd>> {
    open_in_root_depth(root, path, create, report, 0)
}

/// Symlinks followed when a mount point is a dangling symlink (ELOOP past this).
const MAX_DANGLING_LINKS: u32 = 8;

fn open_in_root_depth(
    root: &OwnedFd,
    path: &str,
    create: Create,
    report: &mut Reporter,
    depth: u32,
) -> Result<Option<OwnedFd>> {
    let point_err = |e: rustix::io::Errno| InitError::MountPoint {
        path: path.to_string(),
        source: e.into(),
    };
    match open_path_in_root(root, path, false) {
        Ok(fd) => return Ok(Some(fd)),
        Err(rustix::io::Errno::NOENT) if create != Create::Skip => {}
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(point_err(e)),
    }
    let mut dir = rustix::fs::openat(root, ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
        .map_err(point_err)?;
    let mut prefix = String::new();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        prefix.push('/');
        prefix.push_str(part);
        let last = i + 1 == parts.len();
        match open_path_in_root(root, &prefix, !last) {
            Ok(fd) => {
                dir = fd;
                continue;
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(point_err(e)),
        }
        let made = if last && create == Create::File {
            rustix::fs::openat(
                &dir,
                *part,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::from_raw_mode(0o644),
            )
            .map(drop)
        } else {
            rustix::fs::mkdirat(&dir, *part, Mode::from_raw_mode(0o755))
        };
        match made {
            Ok(()) => {}
            // A dangling symlink: create what it points to, resolved inside the root like
            // the kernel would resolve it after pivot_root.
            Err(rustix::io::Errno::EXIST) => {
                let link = rustix::fs::readlinkat(&dir, *part, Vec::new()).map_err(point_err)?;
                if depth >= MAX_DANGLING_LINKS {
                    return Err(point_err(rustix::io::Errno::LOOP));
                }
                let link = link.to_string_lossy();
                let rest = parts[i + 1..].join("/");
                let base = if link.starts_with('/') {
                    link.to_string()
                } else {
                    format!("{}/{link}", &prefix[..prefix.len() - part.len()])
                };
                let next = if rest.is_empty() {
                    base
                } else {
                    format!("{base}/{rest}")
                };
                return open_in_root_depth(root, &next, create, report, depth + 1);
            }
            Err(e) => return Err(point_err(e)),
        }
        report.created(&dir, part);
        dir = open_path_in_root(root, &prefix, !last).map_err(point_err)?;
    }
    Ok(Some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_parent_handles_top_level_paths() {
        assert_eq!(split_parent("/dev/ptmx"), ("/dev", "ptmx"));
        assert_eq!(split_parent("/x"), ("/", "x"));
    }

    #[test]
    fn the_legacy_lowerdir_list_keeps_the_order_and_escapes_separators() {
        let lowers = [
            PathBuf::from("/s/top"),
            PathBuf::from("/s/a:b"),
            PathBuf::from("/s/c\\d"),
        ];
        assert_eq!(lowerdir_list(&lowers), "/s/top:/s/a\\:b:/s/c\\\\d");
    }
}

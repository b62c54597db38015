//! The rootless overlay fallback: `fuse-overlayfs` (Debian package fuse-overlayfs), for kernels
//! whose overlayfs refuses a user namespace (before Linux 5.11, or a store on a filesystem
//! without user xattrs or `RENAME_WHITEOUT`, such as a FUSE one: measured with bindfs). `KILN_ROOTLESS_OVERLAY=fuse` forces it, `native` forbids it; by
//! default it is tried only when the kernel's overlayfs refused the mount.
//!
//! [`mount_tree`] returns the same thing as the kernel path: a detached mount. fuse-overlayfs
//! mounts on a path (a fresh directory under the temp dir), which is cloned detached and then
//! lazily unmounted: the clone keeps the FUSE superblock and so the daemon, which exits once
//! the last reference goes (for a RUN step, when the sandbox's pid namespace ends, which kills
//! it). Its upper dir has the kernel's format where it can (0:0 character-device whiteouts)
//! and `.wh.` files / `.wh..wh..opq` markers where it cannot: both are what the layer writer
//! stores (`cache::layer::writer`), and its private `user.fuseoverlayfs.*` xattrs are dropped
//! there like overlay's own.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

const OVERLAYFS_MAGIC: u64 = 0x794c_7630;

/// Which overlay implementation a rootless mount uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The kernel's overlayfs, then fuse-overlayfs if it refuses (default).
    Auto,
    /// The kernel's only (`KILN_ROOTLESS_OVERLAY=native`).
    Native,
    /// fuse-overlayfs only (`KILN_ROOTLESS_OVERLAY=fuse`).
    Fuse,
}

/// The mode `KILN_ROOTLESS_OVERLAY` asks for (unknown values are `Auto`).
pub fn mode() -> Mode {
    match std::env::var("KILN_ROOTLESS_OVERLAY").as_deref() {
        Ok("fuse") | Ok("fuse-overlayfs") => Mode::Fuse,
        Ok("native") | Ok("kernel") => Mode::Native,
        _ => Mode::Auto,
    }
}

/// Mounts an overlay of `lowers` (top first) with `upper` and `work` (read-only without them)
/// through fuse-overlayfs, detached. The error says what failed, for the caller to report.
pub fn mount_tree(lowers: &[PathBuf], upper: Option<(&Path, &Path)>) -> io::Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| io::Error::new(e.kind(), format!("fuse-overlayfs needs /dev/fuse: {e}")))?;
    // Measured here: fuse-overlayfs with its upper dir on overlayfs (a store inside a
    // container without a volume) hangs the first RUN step in a FUSE request; refuse instead.
    if let Some((u, _)) = upper
        && rustix::fs::statfs(u)
            .is_ok_and(|s| u64::try_from(s.f_type).ok() == Some(OVERLAYFS_MAGIC))
    {
        return Err(io::Error::other(format!(
            "{} is on overlayfs, which fuse-overlayfs cannot use as its upper dir either",
            u.display()
        )));
    }
    static N: AtomicU32 = AtomicU32::new(0);
    let point = std::env::temp_dir().join(format!(
        "kiln-fuse-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&point)?;
    let result = mount_at(lowers, upper, &point);
    let _ = std::fs::remove_dir(&point);
    result
}

fn mount_at(
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    point: &Path,
) -> io::Result<OwnedFd> {
    let mut lowers: Vec<String> = lowers.iter().map(|p| escape(p)).collect();
    if lowers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "fuse-overlayfs: no lower dir",
        ));
    }
    // Read-only with a single lower dir: fuse-overlayfs wants an upper or two lowers.
    if upper.is_none() && lowers.len() == 1 {
        lowers.push(lowers[0].clone());
    }
    // allow_other: the sandbox's users other than 0 must reach the files (the daemon runs as
    // uid 0 of the user namespace, which may mount with it); squash nothing, keep the ids.
    let mut opts = format!("allow_other,lowerdir={}", lowers.join(":"));
    if let Some((u, w)) = upper {
        opts.push_str(&format!(",upperdir={},workdir={}", escape(u), escape(w)));
    }
    let out = Command::new("fuse-overlayfs")
        .arg("-o")
        .arg(&opts)
        .arg(point)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("running fuse-overlayfs (Debian package fuse-overlayfs): {e}"),
            )
        })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "fuse-overlayfs -o {opts} {}: {} {}",
            point.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    use rustix::mount::OpenTreeFlags;
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        point,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    );
    let _ = rustix::mount::unmount(point, rustix::mount::UnmountFlags::DETACH);
    let tree = tree?;
    if upper.is_none() {
        crate::sys::mount_setattr(&tree, crate::sys::attr::RDONLY)?;
    }
    Ok(tree)
}

/// fuse-overlayfs splits its options at `,` and lower dirs at `:`; both are escaped with `\`.
fn escape(p: &Path) -> String {
    let s = p.display().to_string();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn option_separators_are_escaped() {
        assert_eq!(super::escape(std::path::Path::new("/a,b:c")), "/a\\,b\\:c");
    }
}

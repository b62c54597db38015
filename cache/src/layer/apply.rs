//! Layer tar -> directory in overlayfs format, safe against hostile archives.
//!
//! Every path is checked before anything is written: absolute names and `..` components are
//! rejected. Each parent directory is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
//! | RESOLVE_NO_MAGICLINKS)` relative to the root, and the last component is created with `*at`
//! calls on that directory fd, so a symlink placed by an earlier entry can never redirect a
//! later write (it makes the later entry fail instead). Hardlink targets are resolved the same
//! way, so they stay inside the root.
//!
//! An entry replaces whatever an earlier entry left at its path (a symlink itself, never its
//! target; a directory with its contents), except that a directory entry over a directory
//! merges: docker's rule. Sparse files (old GNU and PAX 0.0, 0.1, 1.0) get their real name and
//! size, holes as holes; empty numeric fields (a FIFO's device numbers) read as 0.
//!
//! `.wh.<name>` entries become 0:0 character devices and `.wh..wh..opq` sets
//! `trusted.overlay.opaque=y` on its directory: the layout overlayfs reads as a lower dir.

use super::{OPAQUE_MARKER, WHITEOUT_PREFIX, is_overlay_xattr};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tar::EntryType;

/// Why a layer tar could not be applied. `path` is the entry's name inside the tar.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The tar stream itself is unreadable or malformed.
    #[error("reading layer tar")]
    Read {
        /// The read or decode error.
        #[source]
        source: io::Error,
    },
    /// An entry name is absolute or contains `..`.
    #[error("tar entry `{path}` escapes the layer root ({reason})")]
    UnsafePath {
        /// The entry name.
        path: String,
        /// `absolute path` or `contains ..`.
        reason: &'static str,
    },
    /// Reading an entry's header fields or data failed.
    #[error("reading tar entry `{path}`")]
    Entry {
        /// The entry name.
        path: String,
        /// The read or decode error.
        #[source]
        source: io::Error,
    },
    /// A sparse entry's map is malformed or its data could not be written.
    #[error("sparse tar entry `{path}` in {}", root.display())]
    Sparse {
        /// The entry name.
        path: String,
        /// The destination root.
        root: PathBuf,
        /// What went wrong.
        #[source]
        source: tarx::sparse::SparseError,
    },
    /// An entry's parent directory is a symlink or not a directory.
    #[error("tar entry `{path}` would be written through a symlink or non-directory")]
    ThroughSymlink {
        /// The entry name.
        path: String,
    },
    /// A hardlink's target is missing, escapes the root or cannot be linked.
    #[error("tar entry `{path}` is a hardlink to `{target}`, which is not a file inside the layer")]
    BadHardlink {
        /// The entry name.
        path: String,
        /// The link target.
        target: String,
    },
    /// An entry type kiln does not unpack (GNU volume headers, multi-volume continuations).
    #[error("tar entry `{path}` has unsupported type {kind:?}")]
    Unsupported {
        /// The entry name.
        path: String,
        /// The tar type flag.
        kind: u8,
    },
    /// A filesystem operation on the destination failed.
    #[error("{op} `{path}` in {}", root.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The entry name.
        path: String,
        /// The destination root.
        root: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, ApplyError>;

/// What an applied tar contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Number of tar entries applied (not counting PAX/GNU meta entries).
    pub entries: u64,
}

/// Unpacks the tar stream `r` into the existing directory `root` (normally empty).
/// Reads entries up to the end-of-archive marker; the caller drains what follows if it hashes.
///
/// Fails on a malformed tar, on a hostile entry (absolute, `..`, through a symlink, hardlink
/// outside) and on I/O errors. On failure `root` holds a partial tree the caller must discard.
pub fn apply_layer<R: Read>(r: R, root: &Path) -> Result<Applied> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ApplyError::Io {
        op: "open",
        path: String::new(),
        root: root.to_path_buf(),
        source: e.into(),
    })?;
    let mut a = Applier {
        root: root.to_path_buf(),
        root_fd,
        dirs: Vec::new(),
        buf: vec![0u8; 256 * 1024],
        entries: 0,
    };
    let mut archive = tar::Archive::new(r);
    let entries = archive
        .entries()
        .map_err(|source| ApplyError::Read { source })?;
    for entry in entries {
        let entry = entry.map_err(|source| ApplyError::Read { source })?;
        a.apply(entry)?;
    }
    a.finish_dirs()?;
    Ok(Applied { entries: a.entries })
}

struct Applier {
    root: PathBuf,
    root_fd: OwnedFd,
    /// Directories whose times are set last (creating children changes a dir's mtime).
    dirs: Vec<(Vec<u8>, Timespec)>,
    buf: Vec<u8>,
    entries: u64,
}

/// A checked entry name: its components, none empty, `.` or `..`.
fn components(raw: &[u8]) -> std::result::Result<Vec<&[u8]>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("contains .."),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Applier {
    fn io(&self, op: &'static str, path: &[u8]) -> impl FnOnce(Errno) -> ApplyError + use<> {
        let path = lossy(path);
        let root = self.root.clone();
        move |e| ApplyError::Io {
            op,
            path,
            root,
            source: e.into(),
        }
    }

    fn apply<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        let sparse = tarx::sparse::detect(&mut entry).map_err(|source| ApplyError::Sparse {
            path: lossy(&entry.path_bytes()),
            root: self.root.clone(),
            source,
        })?;
        // PAX sparse 0.1 and 1.0 name the file `GNUSparseFile.<pid>/<name>` in the header.
        let raw = match sparse.as_ref().and_then(|s| s.name.clone()) {
            Some(name) => name,
            None => entry.path_bytes().into_owned(),
        };
        let comps = components(&raw).map_err(|reason| ApplyError::UnsafePath {
            path: lossy(&raw),
            reason,
        })?;
        let meta = self.meta(&mut entry, &raw)?;
        let Some((name, parents)) = comps.split_last() else {
            // The root itself (`./`): take its metadata, nothing else.
            if kind.is_dir() {
                self.set_dir_meta(None, &raw, &meta)?;
            }
            return Ok(());
        };
        self.entries += 1;
        let parent = self.open_parent(parents, &raw)?;
        if *name == OPAQUE_MARKER.as_bytes() {
            return self.set_opaque(&parent, &raw);
        }
        if name.starts_with(b".wh..wh.") {
            // Other aufs metadata (`.wh..wh.plnk`, `.wh..wh.aufs`): not content; docker skips it.
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(ApplyError::UnsafePath {
                    path: lossy(&raw),
                    reason: "contains ..",
                });
            }
            self.clear(&parent, hidden, &raw, false)?;
            rustix::fs::mknodat(
                &parent,
                OsStr::from_bytes(hidden),
                rustix::fs::FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(self.io("create whiteout", &raw))?;
            return self.times_at(&parent, OsStr::from_bytes(hidden), &raw, &meta);
        }
        let cname = OsStr::from_bytes(name);
        match kind {
            EntryType::Directory => {
                if !self.clear(&parent, name, &raw, true)? {
                    rustix::fs::mkdirat(&parent, cname, Mode::from_raw_mode(0o700))
                        .map_err(self.io("create directory", &raw))?;
                }
                let fd = rustix::fs::openat(
                    &parent,
                    cname,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(self.io("open directory", &raw))?;
                self.set_dir_meta(Some(fd), &raw, &meta)?;
                let mut rel = Vec::new();
                for c in &comps {
                    if !rel.is_empty() {
                        rel.push(b'/');
                    }
                    rel.extend_from_slice(c);
                }
                self.dirs.push((rel, meta.mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.clear(&parent, name, &raw, false)?;
                let fd = rustix::fs::openat(
                    &parent,
                    cname,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(self.io("create file", &raw))?;
                let mut file = std::fs::File::from(fd);
                if let Some(sparse) = &sparse {
                    sparse
                        .write(&mut entry, &mut file)
                        .map_err(|source| ApplyError::Sparse {
                            path: lossy(&raw),
                            root: self.root.clone(),
                            source,
                        })?;
                } else {
                    loop {
                        let n = entry
                            .read(&mut self.buf)
                            .map_err(|source| ApplyError::Entry {
                                path: lossy(&raw),
                                source,
                            })?;
                        if n == 0 {
                            break;
                        }
                        file.write_all(&self.buf[..n]).map_err(|e| ApplyError::Io {
                            op: "write",
                            path: lossy(&raw),
                            root: self.root.clone(),
                            source: e,
                        })?;
                    }
                }
                let fd = OwnedFd::from(file);
                self.set_fd_meta(&fd, &raw, &meta)?;
                let times = Timestamps {
                    last_access: meta.mtime,
                    last_modification: meta.mtime,
                };
                rustix::fs::futimens(&fd, &times).map_err(self.io("set times of", &raw))?;
            }
            EntryType::Symlink => {
                self.clear(&parent, name, &raw, false)?;
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, cname)
                    .map_err(self.io("create symlink", &raw))?;
                self.chown_at(&parent, cname, &raw, &meta)?;
                self.times_at(&parent, cname, &raw, &meta)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let bad = || ApplyError::BadHardlink {
                    path: lossy(&raw),
                    target: lossy(&target),
                };
                let tcomps = components(&target).map_err(|_| bad())?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(bad());
                };
                let tparent = self.open_parent_existing(tparents).map_err(|_| bad())?;
                self.clear(&parent, name, &raw, false)?;
                rustix::fs::linkat(
                    &tparent,
                    OsStr::from_bytes(tname),
                    &parent,
                    cname,
                    AtFlags::empty(),
                )
                .map_err(|_| bad())?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.clear(&parent, name, &raw, false)?;
                let (ft, dev) = match kind {
                    EntryType::Char | EntryType::Block => {
                        let (major, minor) =
                            tarx::fields::device(entry.header()).map_err(|source| {
                                ApplyError::Entry {
                                    path: lossy(&raw),
                                    source,
                                }
                            })?;
                        let ft = if kind == EntryType::Char {
                            rustix::fs::FileType::CharacterDevice
                        } else {
                            rustix::fs::FileType::BlockDevice
                        };
                        (ft, rustix::fs::makedev(major, minor))
                    }
                    _ => (rustix::fs::FileType::Fifo, 0),
                };
                rustix::fs::mknodat(&parent, cname, ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(self.io("create device", &raw))?;
                self.chown_at(&parent, cname, &raw, &meta)?;
                rustix::fs::chmodat(
                    &parent,
                    cname,
                    Mode::from_raw_mode(meta.mode),
                    AtFlags::empty(),
                )
                .map_err(self.io("chmod", &raw))?;
                self.times_at(&parent, cname, &raw, &meta)?;
            }
            other => {
                return Err(ApplyError::Unsupported {
                    path: lossy(&raw),
                    kind: other.as_byte(),
                });
            }
        }
        Ok(())
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<Meta> {
        let h = entry.header();
        let bad = |source| ApplyError::Entry {
            path: lossy(raw),
            source,
        };
        let mode = tarx::fields::mode(h).map_err(bad)?;
        // Some writers leave uid/gid/mtime empty (all NULs); read those as 0 like GNU tar.
        let uid = h.uid().unwrap_or(0);
        let gid = h.gid().unwrap_or(0);
        let mut mtime = Timespec {
            tv_sec: h.mtime().unwrap_or(0) as i64,
            tv_nsec: 0,
        };
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(bad)? {
            for ext in exts {
                let ext = ext.map_err(bad)?;
                let key = ext.key_bytes();
                if key == b"mtime" {
                    if let Some(t) = parse_pax_time(ext.value_bytes()) {
                        mtime = t;
                    }
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.")
                    && !is_overlay_xattr(name)
                {
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        let id = |v: u64| {
            u32::try_from(v).map_err(|_| ApplyError::Entry {
                path: lossy(raw),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("uid/gid {v} out of range"),
                ),
            })
        };
        Ok(Meta {
            mode,
            uid: id(uid)?,
            gid: id(gid)?,
            mtime,
            xattrs,
        })
    }

    /// Opens (creating as needed) the directory `parents` under the root, never following a
    /// symlink.
    fn open_parent(&self, parents: &[&[u8]], raw: &[u8]) -> Result<OwnedFd> {
        if parents.is_empty() {
            return rustix::io::dup(&self.root_fd).map_err(self.io("open root", raw));
        }
        match self.open_parent_existing(parents) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(Errno::LOOP | Errno::NOTDIR | Errno::XDEV) => {
                return Err(ApplyError::ThroughSymlink { path: lossy(raw) });
            }
            Err(e) => return Err(self.io("open parent of", raw)(e)),
        }
        // Create missing parents one component at a time.
        let mut cur = rustix::io::dup(&self.root_fd).map_err(self.io("open root", raw))?;
        for c in parents {
            let name = OsStr::from_bytes(c);
            let created = match rustix::fs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)) {
                Ok(()) => true,
                Err(Errno::EXIST) => false,
                Err(e) => return Err(self.io("create parent of", raw)(e)),
            };
            cur = rustix::fs::openat(
                &cur,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                Errno::LOOP | Errno::NOTDIR => ApplyError::ThroughSymlink { path: lossy(raw) },
                e => self.io("open parent of", raw)(e),
            })?;
            if created {
                // An implied parent: 0755 whatever the process umask, as docker does.
                rustix::fs::fchmod(&cur, Mode::from_raw_mode(0o755))
                    .map_err(self.io("chmod parent of", raw))?;
            }
        }
        Ok(cur)
    }

    fn open_parent_existing(&self, parents: &[&[u8]]) -> std::result::Result<OwnedFd, Errno> {
        if parents.is_empty() {
            return rustix::io::dup(&self.root_fd);
        }
        let path = parents.join(&b'/');
        rustix::fs::openat2(
            &self.root_fd,
            OsStr::from_bytes(&path),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// Removes whatever is at `parent/name`, except a directory when `keep_dir`.
    /// Returns true when a directory was kept.
    fn clear(&self, parent: &OwnedFd, name: &[u8], raw: &[u8], keep_dir: bool) -> Result<bool> {
        let cname = OsStr::from_bytes(name);
        let st = match rustix::fs::statat(parent, cname, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(self.io("stat", raw)(e)),
        };
        let is_dir =
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory;
        if is_dir && keep_dir {
            return Ok(true);
        }
        if is_dir {
            // Through the parent's fd, never following a symlink inside the tree.
            tarx::remove_tree_at(parent, cname).map_err(|e| ApplyError::Io {
                op: "replace directory",
                path: lossy(raw),
                root: self.root.clone(),
                source: e,
            })?;
        } else {
            rustix::fs::unlinkat(parent, cname, AtFlags::empty())
                .map_err(self.io("replace", raw))?;
        }
        Ok(false)
    }

    fn set_opaque(&self, dir: &OwnedFd, raw: &[u8]) -> Result<()> {
        let flags = rustix::fs::XattrFlags::empty();
        match rustix::fs::fsetxattr(dir, "trusted.overlay.opaque", b"y", flags) {
            // Without CAP_SYS_ADMIN, fall back to the userxattr form overlayfs also reads.
            Err(Errno::PERM) => rustix::fs::fsetxattr(dir, "user.overlay.opaque", b"y", flags),
            r => r,
        }
        .map_err(self.io("mark opaque", raw))
    }

    fn set_dir_meta(&self, fd: Option<OwnedFd>, raw: &[u8], meta: &Meta) -> Result<()> {
        match fd {
            Some(fd) => self.set_fd_meta(&fd, raw, meta),
            None => {
                let fd = rustix::io::dup(&self.root_fd).map_err(self.io("open root", raw))?;
                self.set_fd_meta(&fd, raw, meta)
            }
        }
    }

    fn set_fd_meta(&self, fd: &OwnedFd, raw: &[u8], meta: &Meta) -> Result<()> {
        match rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw_unchecked(meta.uid)),
            Some(rustix::fs::Gid::from_raw_unchecked(meta.gid)),
        ) {
            // Unprivileged: ownership cannot be kept; the tree is still usable.
            Ok(()) | Err(Errno::PERM) | Err(Errno::INVAL) => {}
            Err(e) => return Err(self.io("chown", raw)(e)),
        }
        // After chown, which clears setuid/setgid bits.
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(self.io("chmod", raw))?;
        for (k, v) in &meta.xattrs {
            match rustix::fs::fsetxattr(
                fd,
                OsStr::from_bytes(k),
                v,
                rustix::fs::XattrFlags::empty(),
            ) {
                Ok(()) | Err(Errno::NOTSUP) => {}
                Err(e) => return Err(self.io("set xattr on", raw)(e)),
            }
        }
        Ok(())
    }

    fn chown_at(&self, parent: &OwnedFd, name: &OsStr, raw: &[u8], meta: &Meta) -> Result<()> {
        match rustix::fs::chownat(
            parent,
            name,
            Some(rustix::fs::Uid::from_raw_unchecked(meta.uid)),
            Some(rustix::fs::Gid::from_raw_unchecked(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(()) | Err(Errno::PERM) | Err(Errno::INVAL) => Ok(()),
            Err(e) => Err(self.io("chown", raw)(e)),
        }
    }

    fn times_at(&self, parent: &OwnedFd, name: &OsStr, raw: &[u8], meta: &Meta) -> Result<()> {
        let times = Timestamps {
            last_access: meta.mtime,
            last_modification: meta.mtime,
        };
        rustix::fs::utimensat(parent, name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(self.io("set times of", raw))
    }

    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (rel, mtime) in dirs.iter().rev() {
            let fd = rustix::fs::openat2(
                &self.root_fd,
                OsStr::from_bytes(rel),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            );
            // A directory replaced by a later entry no longer exists as such: skip it.
            let Ok(fd) = fd else { continue };
            let times = Timestamps {
                last_access: *mtime,
                last_modification: *mtime,
            };
            rustix::fs::futimens(fd.as_fd(), &times).map_err(self.io("set times of", rel))?;
        }
        Ok(())
    }
}

/// Parses a PAX time (`1234567890.123456789`, possibly negative) into a timespec.
fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        let d = c.to_digit(10)? as i64;
        nanos += d * 10i64.pow(8 - i as u32);
    }
    if s.starts_with('-') && nanos > 0 {
        return Some(Timespec {
            tv_sec: secs - 1,
            tv_nsec: 1_000_000_000 - nanos,
        });
    }
    Some(Timespec {
        tv_sec: secs,
        tv_nsec: nanos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_checked() {
        assert_eq!(components(b"./a//b/").unwrap(), vec![&b"a"[..], b"b"]);
        assert_eq!(components(b"/etc/x").unwrap_err(), "absolute path");
        assert_eq!(components(b"a/../../etc").unwrap_err(), "contains ..");
        assert!(components(b"./").unwrap().is_empty());
    }

    /// A 3 MiB file with 30 small data runs (more than the 4 an old GNU header holds, so
    /// GNU tar writes extension headers), written with real holes.
    fn sparse_source(dir: &Path) -> Vec<u8> {
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        let f = std::fs::File::create(dir.join("sub/sp")).expect("create");
        let mut want = vec![0u8; 3 << 20];
        for i in 0..30usize {
            let at = i * 100_000 + 7 * i;
            let data = format!("run {i}");
            std::os::unix::fs::FileExt::write_all_at(&f, data.as_bytes(), at as u64)
                .expect("write");
            want[at..at + data.len()].copy_from_slice(data.as_bytes());
        }
        f.set_len(3 << 20).expect("size");
        want
    }

    /// `tar` (GNU tar, essential on Debian) writing `sub/sp` of `dir` with `args`.
    fn gnu_tar(dir: &Path, args: &[&str]) -> Vec<u8> {
        let out = std::process::Command::new("tar")
            .arg("-C")
            .arg(dir)
            .args(args)
            .args(["-cf", "-", "sub/sp"])
            .output()
            .expect("GNU tar must be installed (Debian: tar)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn gnu_and_pax_sparse_files_keep_name_size_and_holes() {
        use std::os::unix::fs::MetadataExt;
        let src = tempfile::tempdir().expect("tempdir");
        let want = sparse_source(src.path());
        for args in [
            &["--sparse", "--format=gnu"][..],
            &["--format=posix", "--sparse-version=0.0"],
            &["--format=posix", "--sparse-version=0.1"],
            &["--format=posix", "--sparse-version=1.0"],
        ] {
            let tar = gnu_tar(src.path(), args);
            let root = tempfile::tempdir().expect("tempdir");
            apply_layer(&tar[..], root.path()).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let names: Vec<_> = std::fs::read_dir(root.path().join("sub"))
                .expect("sub")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert_eq!(names, ["sp"], "{args:?}: only the real name");
            let got = std::fs::read(root.path().join("sub/sp")).expect("read");
            assert!(got == want, "{args:?}: contents differ");
            let m = std::fs::metadata(root.path().join("sub/sp")).expect("stat");
            assert!(m.blocks() * 512 <= 30 * 8192, "{args:?}: holes were filled");
        }
    }

    fn entry(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: EntryType, link: &str, data: &[u8]) {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        h.set_path(name).expect("path");
        if !link.is_empty() {
            h.set_link_name(link).expect("link");
        }
        h.set_cksum();
        b.append(&h, data).expect("append");
    }

    #[test]
    fn later_entries_replace_links_and_directories_without_following_them() {
        let outside = tempfile::tempdir().expect("tempdir");
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"host").expect("write");
        let mut b = tar::Builder::new(Vec::new());
        entry(
            &mut b,
            "abs",
            EntryType::Symlink,
            victim.to_str().expect("utf-8"),
            b"",
        );
        entry(&mut b, "abs", EntryType::Regular, "", b"replaced");
        entry(&mut b, "d/", EntryType::Directory, "", b"");
        entry(&mut b, "d/x", EntryType::Regular, "", b"x");
        entry(&mut b, "d", EntryType::Regular, "", b"was a dir");
        entry(&mut b, "f", EntryType::Regular, "", b"f");
        entry(&mut b, "f/", EntryType::Directory, "", b"");
        // A FIFO whose device fields are empty (as Python's tarfile writes them).
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(EntryType::Fifo);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_path("fifo").expect("path");
        h.as_mut_bytes()[329..345].fill(0);
        h.set_cksum();
        b.append(&h, &b""[..]).expect("append");
        let tar = b.into_inner().expect("tar");
        let root = tempfile::tempdir().expect("tempdir");
        apply_layer(&tar[..], root.path()).expect("apply");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"host");
        let r = root.path();
        assert_eq!(std::fs::read(r.join("abs")).expect("abs"), b"replaced");
        assert!(
            std::fs::symlink_metadata(r.join("abs"))
                .expect("abs")
                .is_file()
        );
        assert_eq!(std::fs::read(r.join("d")).expect("d"), b"was a dir");
        assert!(std::fs::symlink_metadata(r.join("f")).expect("f").is_dir());
        use std::os::unix::fs::FileTypeExt;
        let fifo = std::fs::symlink_metadata(r.join("fifo")).expect("fifo");
        assert!(fifo.file_type().is_fifo());
    }

    #[test]
    fn errors_name_the_entry() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_path("etc/bad-mode").expect("path");
        h.as_mut_bytes()[100..108].copy_from_slice(b"zzzzzzz\0");
        h.set_cksum();
        b.append(&h, &b""[..]).expect("append");
        let tar = b.into_inner().expect("tar");
        let root = tempfile::tempdir().expect("tempdir");
        let e = apply_layer(&tar[..], root.path()).expect_err("bad mode");
        assert!(
            matches!(&e, ApplyError::Entry { path, .. } if path == "etc/bad-mode"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "reading tar entry `etc/bad-mode`");
    }

    #[test]
    fn pax_times_keep_nanoseconds() {
        let t = parse_pax_time(b"1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1700000000, 500_000_000));
        let t = parse_pax_time(b"-1.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750_000_000));
    }
}

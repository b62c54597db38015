//! Writing into a destination root without ever leaving it.
//!
//! Every path is resolved by [`crate::fsroot`] against the root's fd, so a symlink in the image
//! (`/app -> /`, `/etc/x -> ../../../../host`) is followed the way it would be inside the
//! container, and can never name a host path.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use crate::fsroot::{MAX_LINKS, Root};
use rustix::process::{Gid, Uid};

/// Ownership, permissions and time to give a written entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits (with setuid/setgid/sticky).
    pub mode: u32,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i128,
}

/// An open destination root.
#[derive(Debug)]
pub struct DestRoot {
    root: Root,
    /// Directories known to exist (as directories, possibly through symlinks). Only
    /// [`DestRoot::remove_entry`] removes a directory, and it empties this set when it does;
    /// it saves re-resolving every parent of every file of a large COPY.
    known_dirs: RefCell<HashSet<String>>,
}

fn split(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel),
    }
}

fn timestamps(mtime_ns: i128) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000) as i64,
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl DestRoot {
    /// Opens the root directory at `path`.
    pub fn open(path: &Path) -> io::Result<DestRoot> {
        Ok(DestRoot {
            root: Root::open(path)?,
            known_dirs: RefCell::new(HashSet::new()),
        })
    }

    fn open_at(&self, rel: &str, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
        self.root.open_at(rel, flags, Mode::from_raw_mode(mode))
    }

    /// Stat of `rel` following symlinks inside the root; `None` when missing.
    pub fn stat(&self, rel: &str) -> io::Result<Option<rustix::fs::Stat>> {
        match self.open_at(rel, OFlags::PATH, 0) {
            Ok(fd) => Ok(Some(rustix::fs::fstat(&fd)?)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `rel` is (or leads through symlinks to) a directory.
    pub fn is_dir(&self, rel: &str) -> io::Result<bool> {
        Ok(self
            .stat(rel)?
            .is_some_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory))
    }

    /// Reads a file of the root (for /etc/passwd); `None` when missing.
    pub fn read(&self, rel: &str) -> Option<String> {
        let fd = self.open_at(rel, OFlags::RDONLY, 0).ok()?;
        io::read_to_string(File::from(fd)).ok()
    }

    /// Creates `rel` and its missing parents as directories owned by `owner`, mode 0755.
    /// A dangling symlink on the way is followed (inside the root) and its target created.
    /// Returns the paths it created, top first.
    pub fn mkdir_all(&self, rel: &str, owner: (u32, u32)) -> io::Result<Vec<String>> {
        let mut created = Vec::new();
        self.mkdir_all_depth(rel, owner, &mut created, 0)?;
        Ok(created)
    }

    fn mkdir_all_depth(
        &self,
        rel: &str,
        owner: (u32, u32),
        created: &mut Vec<String>,
        depth: u32,
    ) -> io::Result<()> {
        if rel.is_empty() || self.known_dirs.borrow().contains(rel) {
            return Ok(());
        }
        let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
        let mut prefix = String::new();
        for (i, part) in parts.iter().enumerate() {
            let parent = prefix.clone();
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            match self.open_at(&prefix, OFlags::PATH | OFlags::DIRECTORY, 0) {
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            let dir = self.open_at(&parent, OFlags::PATH | OFlags::DIRECTORY, 0)?;
            match rustix::fs::mkdirat(&dir, *part, Mode::from_raw_mode(0o755)) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => {
                    // A dangling symlink: create its target, as the kernel would resolve it.
                    let link = rustix::fs::readlinkat(&dir, *part, Vec::new())?;
                    if depth >= MAX_LINKS {
                        return Err(rustix::io::Errno::LOOP.into());
                    }
                    let link = link.to_string_lossy();
                    let base = if link.starts_with('/') {
                        link.to_string()
                    } else {
                        format!("{parent}/{link}")
                    };
                    let rest = parts[i + 1..].join("/");
                    return self.mkdir_all_depth(
                        &format!("{base}/{rest}"),
                        owner,
                        created,
                        depth + 1,
                    );
                }
                Err(e) => return Err(e.into()),
            }
            let fd = self.open_at(&prefix, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
            rustix::fs::fchown(
                &fd,
                Some(Uid::from_raw(owner.0)),
                Some(Gid::from_raw(owner.1)),
            )?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))?;
            created.push(prefix.clone());
        }
        self.known_dirs.borrow_mut().insert(rel.to_string());
        Ok(())
    }

    /// The parent directory of `rel` (resolved in the root, created when missing with
    /// `owner`) and the final name.
    fn parent<'a>(&self, rel: &'a str, owner: (u32, u32)) -> io::Result<(OwnedFd, &'a str)> {
        let (parent, name) = split(rel);
        self.mkdir_all(parent, owner)?;
        let dir = self.open_at(parent, OFlags::PATH | OFlags::DIRECTORY, 0)?;
        Ok((dir, name))
    }

    /// Removes a non-directory at `name` in `dir` (no error when absent).
    fn remove_non_dir(dir: &OwnedFd, name: &str) -> io::Result<()> {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
                rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Creates (or truncates) the regular file `rel`, writing through a symlink at `rel`
    /// resolved inside the root, fills it from `data` and applies `meta`.
    pub fn write_file(
        &self,
        rel: &str,
        data: &mut dyn io::Read,
        meta: Meta,
        parents_owner: (u32, u32),
    ) -> io::Result<()> {
        self.parent(rel, parents_owner)?;
        let fd = self.open_at(rel, OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC, 0o600)?;
        let mut file = File::from(fd);
        io::copy(data, &mut file)?;
        Self::apply_fd(file.into(), meta)
    }

    fn apply_fd(fd: OwnedFd, meta: Meta) -> io::Result<()> {
        rustix::fs::fchown(
            &fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )?;
        // After chown, which clears setuid/setgid.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode & 0o7777))?;
        rustix::fs::futimens(&fd, &timestamps(meta.mtime_ns))?;
        Ok(())
    }

    /// Makes `rel` a directory (replacing a non-directory). When it did not exist, applies
    /// `meta` except the time (set later with [`DestRoot::set_mtime`], after its contents);
    /// returns whether it was created.
    pub fn make_dir(&self, rel: &str, meta: Meta, parents_owner: (u32, u32)) -> io::Result<bool> {
        if rel.is_empty() || self.is_dir(rel)? {
            return Ok(false);
        }
        let (dir, name) = self.parent(rel, parents_owner)?;
        Self::remove_non_dir(&dir, name)?;
        rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))?;
        let fd = self.open_at(rel, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
        rustix::fs::fchown(
            &fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode & 0o7777))?;
        Ok(true)
    }

    /// Clears the way for an archive entry at `rel` as docker's extraction does: whatever is
    /// there is removed (a symlink itself, never its target; a directory with its contents)
    /// unless it is a directory and `keep_dir` (a directory entry merges into a directory).
    /// Parents are resolved inside the root. Returns whether a directory was kept.
    pub fn remove_entry(&self, rel: &str, keep_dir: bool) -> io::Result<bool> {
        let (parent, name) = split(rel);
        if name.is_empty() {
            return Ok(true);
        }
        let dir = match self.open_at(parent, OFlags::PATH | OFlags::DIRECTORY, 0) {
            Ok(dir) => dir,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_dir && keep_dir {
            return Ok(true);
        }
        if is_dir {
            self.known_dirs.borrow_mut().clear();
        }
        tarx::remove_tree_at(&dir, std::ffi::OsStr::new(name))?;
        Ok(false)
    }

    /// Creates the regular file `rel`, which must not exist (see [`DestRoot::remove_entry`]):
    /// `O_EXCL | O_NOFOLLOW` in its parent, so a symlink there is never written through. The
    /// caller fills it and hands it to [`DestRoot::finish_file`].
    pub fn create_file(&self, rel: &str, parents_owner: (u32, u32)) -> io::Result<File> {
        let (dir, name) = self.parent(rel, parents_owner)?;
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(File::from(fd))
    }

    /// Applies owner, mode and time to a file made by [`DestRoot::create_file`].
    pub fn finish_file(file: File, meta: Meta) -> io::Result<()> {
        Self::apply_fd(file.into(), meta)
    }

    /// Sets the modification time of the directory `rel`.
    pub fn set_mtime(&self, rel: &str, mtime_ns: i128) -> io::Result<()> {
        let fd = self.open_at(rel, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
        rustix::fs::futimens(&fd, &timestamps(mtime_ns))?;
        Ok(())
    }

    /// Sets mode and owner of the existing path `rel` (following symlinks in the root).
    pub fn set_owner_mode(&self, rel: &str, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
        let fd = self.open_at(rel, OFlags::RDONLY, 0)?;
        rustix::fs::fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777))?;
        Ok(())
    }

    /// Creates the symlink `rel -> target` (replacing a non-directory), owned and dated by
    /// `meta`.
    pub fn symlink(
        &self,
        rel: &str,
        target: &str,
        meta: Meta,
        parents_owner: (u32, u32),
    ) -> io::Result<()> {
        let (dir, name) = self.parent(rel, parents_owner)?;
        Self::remove_non_dir(&dir, name)?;
        rustix::fs::symlinkat(target, &dir, name)?;
        self.finish_nofollow(&dir, name, meta)
    }

    fn finish_nofollow(&self, dir: &OwnedFd, name: &str, meta: Meta) -> io::Result<()> {
        rustix::fs::chownat(
            dir,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        rustix::fs::utimensat(
            dir,
            name,
            &timestamps(meta.mtime_ns),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// Creates a FIFO or device node (replacing a non-directory).
    pub fn mknod(
        &self,
        rel: &str,
        file_type: FileType,
        rdev: u64,
        meta: Meta,
        parents_owner: (u32, u32),
    ) -> io::Result<()> {
        let (dir, name) = self.parent(rel, parents_owner)?;
        Self::remove_non_dir(&dir, name)?;
        rustix::fs::mknodat(
            &dir,
            name,
            file_type,
            Mode::from_raw_mode(meta.mode & 0o7777),
            rdev,
        )?;
        self.finish_nofollow(&dir, name, meta)?;
        rustix::fs::chmodat(
            &dir,
            name,
            Mode::from_raw_mode(meta.mode & 0o7777),
            AtFlags::empty(),
        )?;
        Ok(())
    }

    /// Hard-links `rel` to the existing `existing` (both in the root).
    pub fn hardlink(&self, existing: &str, rel: &str, parents_owner: (u32, u32)) -> io::Result<()> {
        let (old_parent, old_name) = split(existing);
        let old_dir = self.open_at(old_parent, OFlags::PATH | OFlags::DIRECTORY, 0)?;
        let (dir, name) = self.parent(rel, parents_owner)?;
        Self::remove_non_dir(&dir, name)?;
        rustix::fs::linkat(&old_dir, old_name, &dir, name, AtFlags::empty())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    /// The caller's own ids, so that these tests also pass without root.
    fn me() -> (u32, u32) {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    }

    fn meta(mode: u32) -> Meta {
        Meta {
            uid: me().0,
            gid: me().1,
            mode,
            mtime_ns: 1_000_000_000_500,
        }
    }

    #[test]
    fn writes_through_symlinks_stay_inside_the_root() {
        let outside = tempfile::tempdir().expect("tempdir");
        let d = tempfile::tempdir().expect("tempdir");
        let target = outside.path().join("victim");
        // An absolute link to a host path, and a relative one climbing out.
        symlink(&target, d.path().join("abs")).expect("symlink");
        symlink("../../../../../../../../tmp", d.path().join("up")).expect("symlink");
        let inside = d.path().join(target.strip_prefix("/").expect("absolute"));
        // The link's directory exists inside the root too, as /etc would for /etc/x.
        std::fs::create_dir_all(inside.parent().expect("parent")).expect("mkdir");
        let root = DestRoot::open(d.path()).expect("open");
        root.write_file("abs", &mut &b"x"[..], meta(0o644), me())
            .expect("write");
        assert!(!target.exists());
        assert_eq!(std::fs::read(&inside).expect("inside"), b"x");
        root.write_file("up/f", &mut &b"y"[..], meta(0o644), me())
            .expect("write");
        assert_eq!(std::fs::read(d.path().join("tmp/f")).expect("tmp/f"), b"y");
    }

    #[test]
    fn file_keeps_mode_with_setuid_and_mtime() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = DestRoot::open(d.path()).expect("open");
        root.write_file("a/b/c", &mut &b"data"[..], meta(0o4755), me())
            .expect("write");
        let m = std::fs::metadata(d.path().join("a/b/c")).expect("stat");
        assert_eq!(m.mode() & 0o7777, 0o4755);
        assert_eq!((m.mtime(), m.mtime_nsec()), (1000, 500));
        assert_eq!(
            std::fs::metadata(d.path().join("a")).expect("a").mode() & 0o7777,
            0o755
        );
    }

    #[test]
    fn mkdir_all_reports_created_dirs_only() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("x")).expect("mkdir");
        let root = DestRoot::open(d.path()).expect("open");
        assert_eq!(
            root.mkdir_all("x/y/z", me()).expect("mkdir"),
            vec!["x/y", "x/y/z"]
        );
    }
}

//! docker's copy-up of a volume: a volume that is empty when a container mounts it gets a
//! copy of what the image holds at the mount point (moby `daemon/volumes_unix.go`
//! `copyExistingContents`: files, directories, symlinks, special files with their owners, modes
//! and times, and the directory's own owner and mode on the volume's root).
//!
//! Runs in the sandbox child before the volume is bound, on the overlay root: the mount point
//! is resolved inside the root ([`crate::fsroot`]), so a symlink in the image (`/src ->
//! /etc`, `../../..`) copies the image's own `/etc`, never the host's; below it every entry is
//! opened with `O_NOFOLLOW` from its parent's descriptor.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps};

use super::{InitError, Result};
use crate::fsroot::{self, Method};

/// Fills `volume` from `target` in `root` when `volume` is empty and `target` is a directory.
pub(super) fn populate(root: &OwnedFd, target: &str, volume: &Path) -> Result<()> {
    let err = |source: io::Error| InitError::Mount {
        what: format!(
            "a copy of the image's content into volume {}",
            volume.display()
        ),
        target: target.to_owned(),
        source,
    };
    let dst = rustix::fs::open(
        volume,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(e.into()))?;
    if !is_empty(dst.as_fd()).map_err(err)? {
        return Ok(());
    }
    let src = match fsroot::open_in(
        root.as_fd(),
        target,
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
        Method::Openat2,
    ) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    copy_dir(src.as_fd(), dst.as_fd()).map_err(err)?;
    let st = rustix::fs::fstat(&src).map_err(|e| err(e.into()))?;
    set_meta(dst.as_fd(), &st).map_err(err)
}

fn is_empty(dir: BorrowedFd<'_>) -> io::Result<bool> {
    let mut d = rustix::fs::Dir::read_from(dir)?;
    while let Some(e) = d.read() {
        let e = e?;
        if !matches!(e.file_name().to_bytes(), b"." | b"..") {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Owner, mode and times of `st` onto the open file or directory `fd`.
fn set_meta(fd: BorrowedFd<'_>, st: &rustix::fs::Stat) -> io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
    )?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    rustix::fs::futimens(fd, &times(st))?;
    Ok(())
}

fn times(st: &rustix::fs::Stat) -> Timestamps {
    let ts = |sec: i64, nsec: i64| rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    Timestamps {
        last_access: ts(st.st_atime, st.st_atime_nsec as i64),
        last_modification: ts(st.st_mtime, st.st_mtime_nsec as i64),
    }
}

fn copy_dir(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<()> {
    let mut d = rustix::fs::Dir::read_from(src)?;
    while let Some(e) = d.read() {
        let e = e?;
        let name = e.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        let st = rustix::fs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW)?;
        let nofollow = OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                rustix::fs::mkdirat(dst, name, Mode::from_raw_mode(0o700))?;
                let s = rustix::fs::openat(
                    src,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | nofollow,
                    Mode::empty(),
                )?;
                let t = rustix::fs::openat(
                    dst,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | nofollow,
                    Mode::empty(),
                )?;
                copy_dir(s.as_fd(), t.as_fd())?;
                set_meta(t.as_fd(), &st)?;
            }
            FileType::RegularFile => {
                let s = rustix::fs::openat(src, name, OFlags::RDONLY | nofollow, Mode::empty())?;
                let t = rustix::fs::openat(
                    dst,
                    name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | nofollow,
                    Mode::from_raw_mode(0o600),
                )?;
                let (mut s, mut t) = (std::fs::File::from(s), std::fs::File::from(t));
                io::copy(&mut s, &mut t)?;
                set_meta(t.as_fd(), &st)?;
            }
            FileType::Symlink => {
                let to = rustix::fs::readlinkat(src, name, Vec::new())?;
                rustix::fs::symlinkat(to.as_c_str(), dst, name)?;
                rustix::fs::chownat(
                    dst,
                    name,
                    Some(rustix::fs::Uid::from_raw(st.st_uid)),
                    Some(rustix::fs::Gid::from_raw(st.st_gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
                rustix::fs::utimensat(dst, name, &times(&st), AtFlags::SYMLINK_NOFOLLOW)?;
            }
            FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice => {
                let kind = FileType::from_raw_mode(st.st_mode);
                rustix::fs::mknodat(
                    dst,
                    name,
                    kind,
                    Mode::from_raw_mode(st.st_mode & 0o7777),
                    st.st_rdev,
                )?;
                rustix::fs::chownat(
                    dst,
                    name,
                    Some(rustix::fs::Uid::from_raw(st.st_uid)),
                    Some(rustix::fs::Gid::from_raw(st.st_gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
                rustix::fs::utimensat(dst, name, &times(&st), AtFlags::SYMLINK_NOFOLLOW)?;
            }
            // Sockets are not content (docker's copy skips them too).
            _ => {}
        }
    }
    Ok(())
}

//! Tar extraction helpers shared by kiln's two extractors: layer application
//! (`cache::layer::apply`, for pull, import and cache mounts) and ADD of local archives
//! (`executor::copy::archive`).
//!
//! The `tar` crate is the codec. It expands old GNU sparse entries (type `S`) itself, holes
//! read as zeros, but treats the three PAX sparse formats (0.0, 0.1, 1.0) as plain files
//! named `GNUSparseFile.<pid>/<name>` whose data is the packed chunks (and, for 1.0, the map).
//! [`sparse`] turns all four back into the real file, holes as holes. [`fields`] reads the
//! numeric header fields that some writers leave empty, as GNU tar and Go's archive/tar do.
//! [`remove_tree_at`] replaces an existing entry (docker's rule: whatever is at the path goes,
//! unless both are directories) without ever following a symlink.

pub mod fields;
pub mod sparse;

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;

/// Removes `name` in the directory `dir`: a file, symlink or device is unlinked (a symlink
/// itself, never its target), a directory is emptied recursively through file descriptors
/// opened with `O_NOFOLLOW` and then removed. Missing is not an error.
pub fn remove_tree_at<Fd: AsFd>(dir: Fd, name: &OsStr) -> io::Result<()> {
    let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        rustix::fs::unlinkat(&dir, name, AtFlags::empty())?;
        return Ok(());
    }
    let fd = rustix::fs::openat(
        &dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    empty_dir(&fd)?;
    rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

fn empty_dir(fd: &OwnedFd) -> io::Result<()> {
    // Names first, then removal: a directory is not modified while it is being read.
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(fd)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    for n in names {
        remove_tree_at(fd, OsStr::from_bytes(&n))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn removing_a_tree_never_follows_its_symlinks() {
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("keep"), b"k").expect("write");
        let d = tempfile::tempdir().expect("tempdir");
        let t = d.path().join("t");
        std::fs::create_dir_all(t.join("a/b")).expect("mkdir");
        std::fs::write(t.join("a/b/f"), b"x").expect("write");
        symlink(outside.path(), t.join("a/out")).expect("symlink");
        symlink(outside.path(), d.path().join("link")).expect("symlink");
        let root = rustix::fs::open(d.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            .expect("open");
        remove_tree_at(&root, OsStr::new("t")).expect("remove tree");
        remove_tree_at(&root, OsStr::new("link")).expect("remove link");
        remove_tree_at(&root, OsStr::new("missing")).expect("missing is fine");
        assert!(!t.exists() && !d.path().join("link").exists());
        assert_eq!(
            std::fs::read(outside.path().join("keep")).expect("kept"),
            b"k"
        );
    }
}

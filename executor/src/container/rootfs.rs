//! A stopped container's filesystem: its overlay (the image's layers under its writable
//! layer) mounted detached, for `kiln cp` to resolve paths in with [`crate::fsroot`], as
//! docker's `cp` reads and writes a stopped container.

use crate::spec::Rootfs;
use std::io;
use std::os::fd::OwnedFd;

/// Mounts `rootfs` as a detached overlay (attached nowhere; it goes when the fd is closed)
/// and returns its root. The work dir is emptied first, as `start` does: the last run's
/// `volatile` overlay left a marker there that refuses a second mount. Fails when not
/// privileged or a layer directory is missing. The container must not be running.
pub fn mount_stopped(rootfs: &Rootfs) -> io::Result<OwnedFd> {
    match std::fs::remove_dir_all(&rootfs.work) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(&rootfs.work)?;
    crate::init::apply::overlay_tree(&rootfs.lowers, Some((&rootfs.upper, &rootfs.work)))
        .map_err(io::Error::other)
}

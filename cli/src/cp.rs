//! `kiln cp`: files between a container (running or stopped) and the host, in either
//! direction, as `docker cp` (a directory is copied recursively, symlinks as symlinks, modes
//! kept).
//!
//! The container side is an untrusted tree: every path in it is resolved inside the
//! container's root (`/proc/PID/root` of its PID 1, or a stopped container's overlay mounted
//! detached) by `executor::fsroot`, and everything below
//! is reached through directory descriptors with `O_NOFOLLOW`, so no symlink in the container
//! can send a read or a write to the host.

use anyhow::{Context as _, bail};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::io::Write as _;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// `kiln cp` arguments.
#[derive(Debug, clap::Args)]
pub struct CpArgs {
    /// `CONTAINER:PATH` or a host path.
    src: String,
    /// `CONTAINER:PATH` or a host path.
    dest: String,
}

enum Side {
    Host(PathBuf),
    Container(String, String),
}

/// `CONTAINER:PATH` when the part before the first `:` is a container-like name (docker's
/// rule: a host path with a `:` needs a `/` before it, as `./a:b`).
fn side(s: &str) -> Side {
    match s.split_once(':') {
        Some((c, p)) if !c.is_empty() && !c.contains('/') => {
            Side::Container(c.to_owned(), p.to_owned())
        }
        _ => Side::Host(PathBuf::from(s)),
    }
}

/// `kiln cp`.
pub fn cp(a: &CpArgs) -> anyhow::Result<()> {
    match (side(&a.src), side(&a.dest)) {
        (Side::Container(c, p), Side::Host(h)) => out_of(&c, &p, &h),
        (Side::Host(h), Side::Container(c, p)) => into(&h, &c, &p),
        _ => bail!("one side of kiln cp must be CONTAINER:PATH and the other a host path"),
    }
}

/// The root of container `name`: its PID 1's while it runs; else its overlay mounted
/// detached (`executor::container::rootfs`), as docker's `cp` also works on stopped
/// containers.
fn container_root(name: &str) -> anyhow::Result<executor::fsroot::Root> {
    let (dir, state) = crate::containers::find(name)?;
    if state.is_running() {
        let pid = crate::containers::running_init_pid(name)?;
        return executor::fsroot::Root::open(Path::new(&format!("/proc/{pid}/root")))
            .with_context(|| format!("opening the root of container {name}"));
    }
    let spec_path = dir.join("spec.json");
    let spec: executor::spec::RunSpec = serde_json::from_slice(
        &std::fs::read(&spec_path).with_context(|| format!("reading {}", spec_path.display()))?,
    )
    .with_context(|| format!("parsing {}", spec_path.display()))?;
    let fd = executor::container::rootfs::mount_stopped(&spec.rootfs)
        .with_context(|| format!("mounting the filesystem of stopped container {name}"))?;
    Ok(executor::fsroot::Root::from_fd(fd))
}

/// The last component of `p` (`/` for the root).
fn base(p: &str) -> &str {
    p.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|b| !b.is_empty())
        .unwrap_or("/")
}

fn out_of(name: &str, path: &str, host: &Path) -> anyhow::Result<()> {
    let root = container_root(name)?;
    let what = || format!("{name}:{path}");
    if root.lstat(path).with_context(what)?.is_none() {
        bail!("no such file or directory: {}", what());
    }
    // Into an existing host directory: under the source's name (docker's rule).
    let target = if host.is_dir() {
        let b = base(path);
        host.join(if b == "/" { "." } else { b })
    } else {
        host.to_owned()
    };
    // A trailing `/` names the directory a symlink points to (inside the root); otherwise
    // the last component is copied as it is, a symlink as a symlink.
    if path.ends_with('/') {
        let fd = root
            .open_at(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .with_context(|| format!("{} is not a directory", what()))?;
        return copy_dir(&fd, &target)
            .with_context(|| format!("copying {} to {}", what(), target.display()));
    }
    match root.parent(path).with_context(what)? {
        Some((dir, last)) => copy_out(dir.as_fd(), last, &target),
        None => copy_out(root.fd(), ".", &target),
    }
    .with_context(|| format!("copying {} to {}", what(), target.display()))
}

/// Copies the container directory open as `fd` (and what it holds) to host path `target`.
fn copy_dir(fd: &OwnedFd, target: &Path) -> anyhow::Result<()> {
    let mode = rustix::fs::fstat(fd)?.st_mode & 0o7777;
    if !target.is_dir() {
        std::fs::create_dir(target).with_context(|| format!("creating {}", target.display()))?;
    }
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(fd)? {
        let e = e?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n != "." && n != ".." {
            names.push(n);
        }
    }
    for n in names {
        // `n` is one directory entry: it has no `/`.
        copy_out(fd.as_fd(), &n, &target.join(&n))?;
    }
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Copies entry `name` of container directory `dir` to host path `target`.
fn copy_out(dir: BorrowedFd<'_>, name: &str, target: &Path) -> anyhow::Result<()> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let mode = st.st_mode & 0o7777;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {
            let fd = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            copy_dir(&fd, target)?;
        }
        FileType::RegularFile => {
            let fd = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let mut from = std::fs::File::from(fd);
            let mut to = std::fs::File::create(target)
                .with_context(|| format!("creating {}", target.display()))?;
            std::io::copy(&mut from, &mut to)?;
            to.flush()?;
            std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode))?;
        }
        FileType::Symlink => {
            let link = rustix::fs::readlinkat(dir, name, Vec::new())?;
            let link = PathBuf::from(std::ffi::OsStr::new(
                std::str::from_utf8(link.to_bytes()).context("a non-UTF-8 symlink target")?,
            ));
            if target.symlink_metadata().is_ok() {
                std::fs::remove_file(target)?;
            }
            std::os::unix::fs::symlink(&link, target)
                .with_context(|| format!("creating {}", target.display()))?;
        }
        other => bail!("{name}: cannot copy a {other:?}"),
    }
    Ok(())
}

fn into(host: &Path, name: &str, path: &str) -> anyhow::Result<()> {
    let root = container_root(name)?;
    let what = || format!("{name}:{path}");
    std::fs::symlink_metadata(host).with_context(|| format!("reading {}", host.display()))?;
    // Into an existing directory (following symlinks inside the container's root): under the
    // source's name; otherwise as the last component of PATH.
    let host_base = host
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("the source has no file name")?;
    let existing_dir = root.open_at(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    );
    let (dir, last): (OwnedFd, String) = match existing_dir {
        Ok(fd) => (fd, host_base),
        // docker's rule: a PATH ending in `/` must be an existing directory.
        Err(e) if path.ends_with('/') => {
            return Err(anyhow::Error::new(e).context(format!("{} is not a directory", what())));
        }
        Err(_) => match root.parent(path).with_context(what)? {
            Some((fd, last)) => (fd, last.to_owned()),
            None => bail!("{}: not a directory", what()),
        },
    };
    copy_in(host, dir.as_fd(), &last)
        .with_context(|| format!("copying {} to {}", host.display(), what()))
}

/// Copies host path `src` to entry `name` of container directory `dir`.
fn copy_in(src: &Path, dir: BorrowedFd<'_>, name: &str) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    let mode = Mode::from_raw_mode(meta.permissions().mode() & 0o7777);
    let ft = meta.file_type();
    if ft.is_dir() {
        match rustix::fs::mkdirat(dir, name, mode) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        // An existing symlink there is not followed: it fails here instead.
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            copy_in(&e.path(), fd.as_fd(), &e.file_name().to_string_lossy())?;
        }
        rustix::fs::fchmod(&fd, mode)?;
    } else if ft.is_file() {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            mode,
        )?;
        rustix::fs::fchmod(&fd, mode)?;
        let mut to = std::fs::File::from(fd);
        std::io::copy(&mut std::fs::File::open(src)?, &mut to)?;
        to.flush()?;
    } else if ft.is_symlink() {
        let link = std::fs::read_link(src)?;
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        rustix::fs::symlinkat(&link, dir, name)?;
    } else {
        bail!("{}: cannot copy this file type", src.display());
    }
    Ok(())
}

//! The one resolver of untrusted paths: a path that a Dockerfile, a build context or an image
//! names (a mount source or target, a COPY destination, a cache seed) is looked up inside a
//! root directory as the kernel would look it up after `chroot` there. `..` stops at the
//! root, an absolute symlink starts again at the root, and magic links (`/proc/self/root`)
//! are never followed, so no spelling of a path and no symlink planted in the tree can name a
//! file outside it. BuildKit gives the same answers (a `../` chain is clamped to the root).
//!
//! Resolution returns file descriptors, never strings: callers work on the fd (or mount it
//! with `open_tree(fd, "", AT_EMPTY_PATH)`), so a symlink swapped in after the lookup cannot
//! redirect them. Nothing in kiln joins an untrusted path onto a host path; a test in
//! `solver` scans the sources for that.
//!
//! Where the kernel has `openat2` (5.6+), lookups use `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`.
//! Otherwise (older kernels, or a seccomp profile that refuses openat2 with ENOSYS) a checked
//! walk does the same by hand: one component at a time with `O_NOFOLLOW`, symlinks read and
//! expanded by us, `..` popped off our own stack of directory fds (so it cannot climb past the
//! root even if a directory is renamed meanwhile), at most [`MAX_LINKS`] symlinks.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Symlinks followed in one lookup before giving up with ELOOP (the kernel's limit).
pub const MAX_LINKS: u32 = 40;

/// How lookups are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, falling back to [`Method::Walk`]
    /// when the kernel does not have it.
    Openat2,
    /// The component-by-component walk (what older kernels get).
    Walk,
}

/// 0: unknown, 1: openat2 works, 2: openat2 is missing.
static OPENAT2: AtomicU8 = AtomicU8::new(0);

/// A directory that untrusted paths are resolved in.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    method: Method,
}

/// An untrusted path resolved inside a [`Root`]: an `O_PATH` descriptor of what it names.
/// Only [`Root::resolve`] makes one.
#[derive(Debug)]
pub struct Resolved {
    fd: OwnedFd,
}

impl Resolved {
    /// The descriptor (`O_PATH`, close-on-exec).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Gives up the descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Whether it is a directory.
    ///
    /// Fails only when `fstat` does.
    pub fn is_dir(&self) -> io::Result<bool> {
        let st = rustix::fs::fstat(&self.fd)?;
        Ok(FileType::from_raw_mode(st.st_mode) == FileType::Directory)
    }

    /// `/proc/<pid>/fd/<n>` of this process: a name for the resolved file that the kernel
    /// follows to this very file (not by re-resolving a path), usable by a child process while
    /// this `Resolved` is alive.
    pub fn proc_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd as _;
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.fd.as_raw_fd()
        ))
    }
}

impl Root {
    /// Opens the directory `path` (a host path kiln chose, never an untrusted one) as a root.
    ///
    /// Fails when it cannot be opened as a directory.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root::from_fd(fd))
    }

    /// A root from an open directory descriptor (a mount from `fsmount`, say).
    pub fn from_fd(fd: OwnedFd) -> Root {
        Root {
            fd,
            method: Method::Openat2,
        }
    }

    /// The same root, resolving with `method` (tests force [`Method::Walk`]).
    pub fn with_method(mut self, method: Method) -> Root {
        self.method = method;
        self
    }

    /// The root's own descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Resolves `path` (absolute or relative, both from the root) following every symlink
    /// inside the root.
    ///
    /// Fails as the kernel would (ENOENT, ENOTDIR, ELOOP); never with a file outside.
    pub fn resolve(&self, path: &str) -> io::Result<Resolved> {
        Ok(Resolved {
            fd: self.open_at(path, OFlags::PATH, Mode::empty())?,
        })
    }

    /// `openat` of `path` inside the root with `flags` (`O_CREAT` creates the last component,
    /// through a dangling symlink inside the root if need be). `O_NOFOLLOW` applies to the last
    /// component only, as for `openat`.
    ///
    /// Fails as `openat2` would.
    pub fn open_at(&self, path: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        open_in(self.fd.as_fd(), path, flags, mode, self.method)
    }

    /// Metadata of `path` itself (a final symlink is not followed; the parents are resolved
    /// inside the root); `None` when it does not exist.
    ///
    /// Fails on errors other than a missing path.
    pub fn lstat(&self, path: &str) -> io::Result<Option<rustix::fs::Stat>> {
        match self.open_at(path, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(fd) => Ok(Some(rustix::fs::fstat(&fd)?)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The parent directory of `path` (resolved inside the root) and the final name; `None`
    /// for the root itself (`/`, `..`, `a/..`).
    ///
    /// Fails when the parent cannot be resolved.
    pub fn parent<'a>(&self, path: &'a str) -> io::Result<Option<(OwnedFd, &'a str)>> {
        let trimmed = path.trim_end_matches('/');
        let (dir, name) = match trimmed.rfind('/') {
            Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
            None => ("", trimmed),
        };
        if name.is_empty() || name == "." || name == ".." {
            // `a/..` and friends: resolve the whole thing to know whether it is the root.
            return Ok(None);
        }
        let fd = self.open_at(dir, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
        Ok(Some((fd, name)))
    }
}

/// [`Root::open_at`] on a borrowed root descriptor (the sandbox's new root, a detached mount).
///
/// Fails as `openat2` would.
pub fn open_in(
    root: BorrowedFd<'_>,
    path: &str,
    flags: OFlags,
    mode: Mode,
    method: Method,
) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::CLOEXEC;
    if method == Method::Openat2 && OPENAT2.load(Ordering::Relaxed) != 2 {
        let p = if path.is_empty() { "." } else { path };
        for _ in 0..16 {
            match rustix::fs::openat2(
                root,
                p,
                flags,
                mode,
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(fd) => {
                    OPENAT2.store(1, Ordering::Relaxed);
                    return Ok(fd);
                }
                // A concurrent rename while `..` was resolved: the kernel asks to retry.
                Err(Errno::AGAIN) => continue,
                // No openat2 (kernel before 5.6, or a seccomp filter hiding it).
                Err(Errno::NOSYS) if OPENAT2.load(Ordering::Relaxed) != 1 => {
                    OPENAT2.store(2, Ordering::Relaxed);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if OPENAT2.load(Ordering::Relaxed) != 2 {
            return Err(Errno::AGAIN.into());
        }
    }
    walk(root, path, flags, mode)
}

/// [`Root::resolve`] on a borrowed root descriptor.
///
/// Fails as [`Root::resolve`].
pub fn resolve_in(root: BorrowedFd<'_>, path: &str) -> io::Result<Resolved> {
    Ok(Resolved {
        fd: open_in(root, path, OFlags::PATH, Mode::empty(), Method::Openat2)?,
    })
}

/// [`resolve_in`] as the context walker's resolver: the build context and COPY sources are
/// resolved by this module like every other untrusted path.
#[derive(Debug, Clone, Copy, Default)]
pub struct InRoot;

impl context::Resolve for InRoot {
    fn resolve_in(&self, root: BorrowedFd<'_>, path: &str) -> io::Result<OwnedFd> {
        resolve_in(root, path).map(Resolved::into_fd)
    }
}

/// A path's components without empty ones and `.`, in order.
fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

/// The checked walk (see the module docs). `flags` apply to the final open.
fn walk(root: BorrowedFd<'_>, path: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    // Directories below the root, deepest last; the root itself is never on it, so `..`
    // from the root is a no-op.
    let mut stack: Vec<OwnedFd> = Vec::new();
    // Components still to resolve, next last.
    let mut todo: Vec<String> = components(path).rev().map(str::to_owned).collect();
    let mut links = 0;
    let nofollow_last = flags.contains(OFlags::NOFOLLOW);
    while let Some(name) = todo.pop() {
        if name == ".." {
            stack.pop();
            continue;
        }
        let cur = stack.last().map_or(root, |fd| fd.as_fd());
        let last = todo.is_empty();
        let st = match rustix::fs::statat(cur, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(e.into()),
        };
        let is_link = st.is_some_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink);
        if is_link && !(last && nofollow_last) {
            links += 1;
            if links > MAX_LINKS {
                return Err(Errno::LOOP.into());
            }
            let target = rustix::fs::readlinkat(cur, name.as_str(), Vec::new())?;
            let target = target.to_string_lossy().into_owned();
            if target.starts_with('/') {
                stack.clear();
            }
            todo.extend(components(&target).rev().map(str::to_owned));
            continue;
        }
        if last {
            if st.is_none() && !flags.contains(OFlags::CREATE) {
                return Err(Errno::NOENT.into());
            }
            let fd = rustix::fs::openat(cur, name.as_str(), flags | OFlags::NOFOLLOW, mode)?;
            // Swapped for a symlink between the stat and the open: O_PATH opened the link
            // itself. Refuse rather than follow it unchecked.
            if !nofollow_last
                && FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) == FileType::Symlink
            {
                return Err(Errno::AGAIN.into());
            }
            return Ok(fd);
        }
        if st.is_none() {
            return Err(Errno::NOENT.into());
        }
        let dir = rustix::fs::openat(
            cur,
            name.as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        stack.push(dir);
    }
    // The path named a directory on the stack (or the root): reopen it with `flags`.
    let cur = stack.last().map_or(root, |fd| fd.as_fd());
    Ok(rustix::fs::openat(
        cur,
        ".",
        flags - OFlags::CREATE - OFlags::NOFOLLOW,
        mode,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const METHODS: [Method; 2] = [Method::Openat2, Method::Walk];

    /// A root holding `etc/passwd`, `dir/f`, and a host dir outside with a secret.
    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::create_dir_all(root.join("dir")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(root.join("etc/passwd"), "inside").expect("write");
        std::fs::write(root.join("dir/f"), "f").expect("write");
        std::fs::write(outside.join("secret"), "SECRET").expect("write");
        Fixture {
            _tmp: tmp,
            root,
            outside,
        }
    }

    fn read(root: &Root, path: &str) -> io::Result<String> {
        let fd = root.open_at(path, OFlags::RDONLY, Mode::empty())?;
        io::read_to_string(std::fs::File::from(fd))
    }

    fn roots(f: &Fixture) -> Vec<Root> {
        METHODS
            .iter()
            .map(|m| Root::open(&f.root).expect("open").with_method(*m))
            .collect()
    }

    fn errno(r: io::Result<impl std::fmt::Debug>) -> i32 {
        r.expect_err("an error")
            .raw_os_error()
            .expect("an OS error")
    }

    #[test]
    fn dotdot_chains_are_clamped_to_the_root() {
        let f = fixture();
        let chain = "../".repeat(64);
        for root in roots(&f) {
            assert_eq!(
                read(&root, &format!("{chain}etc/passwd")).expect("read"),
                "inside"
            );
            assert_eq!(
                read(&root, "/dir/../../../etc/passwd").expect("read"),
                "inside"
            );
            // The outside secret is one level up from the root: `../outside/secret`.
            assert_eq!(errno(read(&root, "../outside/secret")), libc::ENOENT);
            let top = root.resolve(&chain).expect("resolve");
            let st = rustix::fs::fstat(top.fd()).expect("fstat");
            let want = std::fs::metadata(&f.root).expect("stat");
            use std::os::unix::fs::MetadataExt as _;
            assert_eq!((st.st_dev, st.st_ino), (want.dev(), want.ino()));
        }
    }

    #[test]
    fn absolute_symlinks_start_again_at_the_root() {
        let f = fixture();
        symlink(&f.outside, f.root.join("abs")).expect("symlink");
        symlink("/", f.root.join("slash")).expect("symlink");
        std::fs::create_dir_all(f.root.join(f.outside.strip_prefix("/").expect("abs")))
            .expect("mkdir");
        for root in roots(&f) {
            assert_eq!(errno(read(&root, "abs/secret")), libc::ENOENT);
            assert_eq!(read(&root, "slash/etc/passwd").expect("read"), "inside");
            assert_eq!(
                read(&root, "slash/slash/slash/etc/passwd").expect("read"),
                "inside"
            );
        }
    }

    #[test]
    fn relative_symlinks_climbing_out_are_clamped() {
        let f = fixture();
        symlink("../../../../../../outside", f.root.join("dir/up")).expect("symlink");
        symlink("../etc", f.root.join("dir/etc")).expect("symlink");
        for root in roots(&f) {
            assert_eq!(errno(read(&root, "dir/up/secret")), libc::ENOENT);
            assert_eq!(read(&root, "dir/etc/passwd").expect("read"), "inside");
        }
    }

    #[test]
    fn magic_links_are_not_followed_out() {
        let f = fixture();
        symlink("/proc/self/root/etc/passwd", f.root.join("magic")).expect("symlink");
        for root in roots(&f) {
            // No /proc in the root: the link is read as an ordinary path inside it.
            assert_eq!(errno(read(&root, "magic")), libc::ENOENT);
        }
    }

    #[test]
    fn symlink_loops_and_long_link_chains_fail_with_eloop() {
        let f = fixture();
        symlink("b", f.root.join("a")).expect("symlink");
        symlink("a", f.root.join("b")).expect("symlink");
        symlink("self/x", f.root.join("self")).expect("symlink");
        // 50 links in a chain, more than the kernel's 40.
        for i in 0..50 {
            symlink(format!("l{}", i + 1), f.root.join(format!("l{i}"))).expect("symlink");
        }
        std::fs::write(f.root.join("l50"), "end").expect("write");
        for root in roots(&f) {
            assert_eq!(errno(read(&root, "a")), libc::ELOOP);
            assert_eq!(errno(read(&root, "self")), libc::ELOOP);
            assert_eq!(errno(read(&root, "l0")), libc::ELOOP);
            assert_eq!(read(&root, "l20").expect("30 links are fine"), "end");
        }
    }

    #[test]
    fn very_long_paths_resolve_or_fail_cleanly() {
        let f = fixture();
        let long = format!("{}etc/passwd", "dir/../".repeat(500));
        for root in roots(&f) {
            // Over PATH_MAX (4096): the kernel says ENAMETOOLONG; the walk has no limit.
            match read(&root, &long) {
                Ok(s) => assert_eq!(s, "inside"),
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG)),
            }
            let medium = format!("{}etc/passwd", "dir/../".repeat(100));
            assert_eq!(read(&root, &medium).expect("read"), "inside");
        }
    }

    #[test]
    fn missing_components_and_files_as_dirs_fail() {
        let f = fixture();
        for root in roots(&f) {
            assert_eq!(errno(read(&root, "nope/passwd")), libc::ENOENT);
            assert_eq!(errno(read(&root, "etc/nope")), libc::ENOENT);
            assert_eq!(errno(read(&root, "etc/passwd/x")), libc::ENOTDIR);
            assert!(root.lstat("nope/x").expect("lstat").is_none());
        }
    }

    #[test]
    fn create_through_a_dangling_symlink_lands_inside() {
        let f = fixture();
        let victim = f.outside.join("victim");
        symlink(&victim, f.root.join("dangling")).expect("symlink");
        std::fs::create_dir_all(f.root.join(f.outside.strip_prefix("/").expect("abs")))
            .expect("mkdir");
        for root in roots(&f) {
            let fd = root
                .open_at(
                    "dangling",
                    OFlags::WRONLY | OFlags::CREATE,
                    Mode::from_raw_mode(0o600),
                )
                .expect("create");
            drop(fd);
            assert!(!victim.exists(), "created outside the root");
        }
        let inside = f.root.join(victim.strip_prefix("/").expect("abs"));
        assert!(inside.exists());
    }

    #[test]
    fn nofollow_opens_the_last_symlink_itself() {
        let f = fixture();
        symlink("/etc/passwd", f.root.join("link")).expect("symlink");
        for root in roots(&f) {
            let st = root.lstat("link").expect("lstat").expect("exists");
            assert_eq!(FileType::from_raw_mode(st.st_mode), FileType::Symlink);
            let st = root.lstat("/dir/f").expect("lstat").expect("exists");
            assert_eq!(FileType::from_raw_mode(st.st_mode), FileType::RegularFile);
        }
    }
}

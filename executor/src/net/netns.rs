//! Named network namespaces pinned by a bind mount, as `ip netns` does, but under a directory
//! the caller chooses (kiln's run dir), so tests and parallel kiln roots never collide.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// Errors from creating, opening or removing a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A syscall on the namespace file failed.
    #[error("network namespace {path}: {op}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The namespace file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file exists but is not a mounted namespace (a stale file after a reboot).
    #[error("{path} is not a network namespace")]
    NotNetns {
        /// The file.
        path: PathBuf,
    },
}

type Result<T> = std::result::Result<T, NetnsError>;

/// `NSFS_MAGIC` from linux/magic.h: the filesystem type of namespace files.
const NSFS_MAGIC: u64 = 0x6e73_6673;

/// An open network namespace; `path` is its bind mount (or a /proc link).
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    file: File,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NetnsError + 'a {
    move |source| NetnsError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl Netns {
    /// Creates a new, empty network namespace (only a down `lo`) and pins it at `path`, a file
    /// that must not exist yet; its parent directory is created. Fails when not privileged.
    pub fn create(path: impl Into<PathBuf>) -> Result<Netns> {
        let path = path.into();
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(err("create directory", parent))?;
        }
        File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(err("create mount point", &path))?;
        let pinned = std::thread::scope(|s| {
            s.spawn(|| -> io::Result<()> {
                // A fresh thread unshares its own network namespace and is gone right after,
                // so no other work ever runs inside it.
                crate::sys::unshare(rustix::thread::UnshareFlags::NEWNET)?;
                rustix::mount::mount_bind("/proc/thread-self/ns/net", &path)?;
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("unshare thread panicked")))
        });
        if let Err(e) = pinned {
            let _ = fs::remove_file(&path);
            return Err(err("unshare and bind mount", &path)(e));
        }
        Netns::open(path)
    }

    /// Opens a pinned namespace (or `/proc/PID/ns/net`). Fails when the file is missing or
    /// is not a namespace.
    pub fn open(path: impl Into<PathBuf>) -> Result<Netns> {
        let path = path.into();
        let file = File::open(&path).map_err(err("open", &path))?;
        let st = rustix::fs::fstatfs(&file).map_err(|e| err("statfs", &path)(e.into()))?;
        // f_type's integer type differs between architectures.
        #[allow(clippy::unnecessary_cast)]
        if st.f_type as u64 != NSFS_MAGIC {
            return Err(NetnsError::NotNetns { path });
        }
        Ok(Netns { path, file })
    }

    /// The namespace of process `pid`, read through `proc` (normally `/proc`).
    pub fn of_pid(proc: &Path, pid: u32) -> Result<Netns> {
        Netns::open(proc.join(pid.to_string()).join("ns/net"))
    }

    /// The file the namespace is reachable by; the sandbox `setns`es into it by this path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its result. Sockets that
    /// `f` creates stay in the namespace after the thread ends.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd = self.file.as_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                rustix::thread::move_into_link_name_space(
                    fd,
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| err("setns", &self.path)(e.into()))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(err("run", &self.path)(io::Error::other("thread panicked"))))
        })
    }

    /// Unpins the namespace (lazy unmount, then removes the file). The namespace itself dies
    /// when its last process and open file are gone. Missing files are not an error.
    pub fn remove(self) -> Result<()> {
        let Netns { path, file } = self;
        drop(file);
        remove_path(&path)
    }
}

/// Unmounts and removes a namespace file, tolerating a file that is not mounted or gone.
pub fn remove_path(path: &Path) -> Result<()> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(err("unmount", path)(e.into())),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err("remove", path)(e)),
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

//! Thin wrappers over the few syscalls rustix does not offer. The only module with `unsafe`.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

pub mod bpf;
pub mod signals;

/// Result of [`fork`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// In the parent: the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// `fork(2)` in a single-threaded process (the `__init` process). Refused when the process has
/// other threads: the child of a multi-threaded process may call only async-signal-safe
/// functions (another thread may have held the allocator's lock), which Rust code after the
/// fork cannot promise. With one thread, no other thread can start before the fork, so the
/// check is not racy.
///
/// Fails when the process has other threads (or their count cannot be read) or fork fails.
pub fn fork() -> io::Result<Forked> {
    fork_with(&std::fs::File::open("/proc/self/task")?)
}

/// [`fork`], counting threads in `tasks`, this process's `/proc/self/task` opened earlier: a
/// process that joined a container's mount namespace sees the container's /proc, where it has
/// no entry of its own (`kiln exec`).
pub fn fork_with(tasks: &std::fs::File) -> io::Result<Forked> {
    let threads = thread_count(tasks)?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "fork refused: the process has {threads} threads, and the child of a \
             multi-threaded process may only make async-signal-safe calls"
        )));
    }
    // SAFETY: the process has exactly one thread (checked above, and only this thread could
    // start another), so the child's copy of every lock and allocator state is consistent.
    unsafe { fork_unchecked() }
}

/// Threads of this process: the entries of `tasks`, its `/proc/self/task`.
fn thread_count(tasks: &std::fs::File) -> io::Result<usize> {
    let mut n = 0;
    for e in rustix::fs::Dir::read_from(tasks)? {
        let name = e?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            n += 1;
        }
    }
    Ok(n)
}

/// `fork(2)` without the thread check.
///
/// # Safety
///
/// The process must be single-threaded: after a fork from a multi-threaded process the child
/// may only call async-signal-safe functions.
unsafe fn fork_unchecked() -> io::Result<Forked> {
    // SAFETY: fork has no memory-safety preconditions of its own; the caller guarantees the
    // process is single-threaded.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// `execve(2)`; returns only on failure.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: path, argv and envp are NUL-terminated C strings that outlive the call, and both
    // pointer arrays end with a null pointer as execve requires.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    io::Error::last_os_error()
}

#[repr(C)]
struct IfreqFlags {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;

/// Brings the loopback interface `lo` of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket(2) call; the returned fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfreqFlags {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: req is a properly sized `struct ifreq` (16-byte name, then the union) that lives
    // across the call; SIOCGIFFLAGS writes only ifr_flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads the struct.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes capability number `cap` from the bounding set (`PR_CAPBSET_DROP`).
pub fn drop_bounding_capability(cap: u32) -> io::Result<()> {
    // SAFETY: prctl(PR_CAPBSET_DROP, cap) takes integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    if r < 0 {
        let e = io::Error::last_os_error();
        // EINVAL: a capability this kernel does not know; nothing to drop.
        if e.raw_os_error() == Some(libc::EINVAL) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// `MOUNT_ATTR_*` bits for [`mount_setattr`].
pub mod attr {
    /// Read-only.
    pub const RDONLY: u64 = 0x1;
    /// nosuid.
    pub const NOSUID: u64 = 0x2;
    /// nodev.
    pub const NODEV: u64 = 0x4;
    /// noexec.
    pub const NOEXEC: u64 = 0x8;
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH | AT_RECURSIVE, {attr_set: set})`: sets attributes on
/// the mount tree `fd` refers to (a detached tree from `open_tree` or an attached mount).
pub fn mount_setattr(fd: impl AsFd, set: u64) -> io::Result<()> {
    setattr(fd.as_fd(), set, libc::AT_RECURSIVE)
}

/// [`mount_setattr`] of the one mount `fd` refers to, not the mounts below it.
pub fn mount_setattr_top(fd: impl AsFd, set: u64) -> io::Result<()> {
    setattr(fd.as_fd(), set, 0)
}

fn setattr(fd: BorrowedFd<'_>, set: u64, recursive: libc::c_int) -> io::Result<()> {
    let a = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the path is a valid empty C string, `a` is a correctly laid out `struct
    // mount_attr` of the size passed, and both outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | recursive,
            &a as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `unshare(2)` of namespaces (never `CLONE_FILES`).
pub fn unshare(flags: rustix::thread::UnshareFlags) -> rustix::io::Result<()> {
    debug_assert!(!flags.contains(rustix::thread::UnshareFlags::FILES));
    // SAFETY: the fd-table hazard of unshare_unsafe concerns CLONE_FILES only, which callers
    // never pass; the __init process is single-threaded anyway.
    unsafe { rustix::thread::unshare_unsafe(flags) }
}

/// Makes the kernel send SIGKILL to the caller when its parent dies.
pub fn die_with_parent() -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(io::Error::from)
}

/// Makes the process `cmd` starts get SIGKILL when the thread that spawns it dies
/// (`PR_SET_PDEATHSIG`, set between fork and exec, which exec keeps). The kernel tracks the
/// parent *thread*, so spawn from a thread that lives as long as the caller wants the child
/// to (see `solver::spawn`). A parent that died before the prctl is caught by comparing
/// `getppid` with the pid recorded here: the child then fails to start.
pub fn kill_with_spawner(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let hook = move || {
        // SAFETY: prctl and getppid are async-signal-safe system calls with integer
        // arguments; nothing is allocated or locked between fork and exec.
        unsafe {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe system calls (see above).
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// `_exit(2)`: leaves without running atexit handlers or flushing stdio buffers owned by the
/// parent's copy.
pub fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Signals `__init` relays to the sandbox's pid 1 (what `kill`, `docker stop` or a terminal
/// would send), plus SIGCHLD, which it waits for.
pub const RELAYED_SIGNALS: [i32; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// A saved signal mask.
#[derive(Clone, Copy)]
pub struct SigMask(libc::sigset_t);

impl std::fmt::Debug for SigMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigMask")
    }
}

fn relay_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write into the local, properly sized set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in RELAYED_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        libc::sigaddset(&mut set, libc::SIGCHLD);
        set
    }
}

/// Blocks [`RELAYED_SIGNALS`] and SIGCHLD, so that they queue for [`wait_signal`]; returns
/// the previous mask (to restore in the child before exec: masks survive exec).
pub fn block_relayed_signals() -> io::Result<SigMask> {
    let set = relay_set();
    // SAFETY: both pointers are valid sigset_t values for the duration of the call.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        if libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SigMask(old))
    }
}

/// Restores a mask saved by [`block_relayed_signals`].
pub fn restore_signal_mask(mask: &SigMask) -> io::Result<()> {
    // SAFETY: the mask is a valid sigset_t; the old-mask pointer may be null.
    if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &mask.0, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for one of the blocked signals and returns its number.
pub fn wait_signal() -> io::Result<i32> {
    let set = relay_set();
    loop {
        // SAFETY: set is a valid sigset_t; the siginfo pointer may be null.
        let r = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if r >= 0 {
            return Ok(r);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// A signalfd for [`RELAYED_SIGNALS`] and SIGCHLD (which must be blocked, see
/// [`block_relayed_signals`]), so that a poll loop can wait for them next to file descriptors.
pub fn relay_signalfd() -> io::Result<OwnedFd> {
    let set = relay_set();
    // SAFETY: set is a valid sigset_t; -1 asks for a new descriptor, which we own on success.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by signalfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until at least one of `fds` is readable (or hung up); returns which are.
pub fn poll_readable(fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: pfds is a valid, exclusively borrowed array of pfds.len() pollfd structs.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if r >= 0 {
            return Ok(pfds
                .iter()
                .map(|p| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
                .collect());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Whether the reading end of the pipe whose writing end is `fd` is closed everywhere (the
/// reader died): `poll` reports `POLLERR` on such a writing end. A zero timeout; never blocks.
pub fn pipe_reader_gone(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: pfd is one valid, exclusively borrowed pollfd struct; nfds is 1.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0 && pfd.revents & libc::POLLERR != 0
}

/// Installs a seccomp filter on the calling thread (`seccomp(SECCOMP_SET_MODE_FILTER)`);
/// the kernel requires no_new_privs (or CAP_SYS_ADMIN) first. It stays across exec.
pub fn load_seccomp(program: &[crate::seccomp::SockFilter]) -> io::Result<()> {
    let len =
        u16::try_from(program.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: SockFilter is #[repr(C)] with the layout of `struct sock_filter` (u16, u8, u8,
    // u32); `prog` points at `len` of them, and both outlive the call, which copies them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes every file descriptor from `first` on (close_range(2); on kernels before 5.9 each
/// one listed in /proc/self/fd).
pub fn close_from(first: u32) {
    // SAFETY: close_range only closes descriptors; the caller owns no object using them.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
    if r == 0 {
        return;
    }
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| u32::try_from(*fd).is_ok_and(|f| f >= first))
        .collect();
    for fd in fds {
        // SAFETY: as above; the read_dir's own descriptor is closed already (EBADF).
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    #[test]
    fn a_pipe_writer_sees_its_reader_die() {
        let (reader, writer) = rustix::pipe::pipe().expect("pipe");
        assert!(
            !super::pipe_reader_gone(writer.as_fd()),
            "reader still open"
        );
        drop(reader);
        assert!(super::pipe_reader_gone(writer.as_fd()), "reader closed");
    }

    #[test]
    fn fork_refuses_a_multi_threaded_process() {
        // Hold a second thread for the duration of the call (libtest's own threads may add
        // more; any count above one must be refused).
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv());
        let err = super::fork().expect_err("two threads at least");
        assert!(err.to_string().starts_with("fork refused"), "{err}");
        drop(tx);
        other.join().expect("join").expect_err("sender dropped");
    }
}

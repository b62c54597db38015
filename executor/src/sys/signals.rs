//! A self-pipe for signals: a handler that writes each caught signal's number into a pipe, so
//! that an ordinary thread can wait for signals with `read`/`poll` in a process that already
//! has other threads (where blocking the signals and `sigwait`ing would need every thread's
//! mask changed first).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};

/// The write end of the pipe, for the handler (-1 until [`catch`] made it).
static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

/// Both ends of the pipe; made once, open for the rest of the process's life.
static PIPE: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();

extern "C" fn note(sig: libc::c_int) {
    let fd = WRITE_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let byte = sig as u8;
    // SAFETY: __errno_location and write are async-signal-safe; errno is saved and restored
    // so the interrupted code does not see the handler's. The buffer is one local byte; the
    // fd is the pipe's write end, which is never closed once stored (PIPE is static). It is
    // non-blocking, so a full pipe (a flood of signals nobody reads) drops the byte.
    unsafe {
        let errno = libc::__errno_location();
        let saved = *errno;
        libc::write(fd, (&raw const byte).cast(), 1);
        *errno = saved;
    }
}

/// Catches `signals` for the rest of the process's life: each one that arrives writes its
/// number, as one byte, into a pipe whose reading end is returned (the same pipe for every
/// call; the handlers are installed before this returns, so a signal sent after it is never
/// lost). Fails when the pipe cannot be made or a handler cannot be installed.
pub fn catch(signals: &[i32]) -> io::Result<&'static OwnedFd> {
    let (read, write) = match PIPE.get() {
        Some(p) => p,
        None => {
            let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            rustix::fs::fcntl_setfl(&w, rustix::fs::OFlags::NONBLOCK)?;
            // A racing first call may have won: its pipe is the one, this one is dropped.
            PIPE.get_or_init(|| (r, w))
        }
    };
    WRITE_FD.store(write.as_raw_fd(), Ordering::Relaxed);
    for &sig in signals {
        // SAFETY: the sigaction struct is zeroed and then filled with a valid handler (an
        // `extern "C" fn(c_int)` that only makes async-signal-safe calls), an empty mask and
        // SA_RESTART; the old-action pointer may be null.
        let r = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = note as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut act.sa_mask);
            act.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(read)
}

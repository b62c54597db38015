//! `kiln run --init`: the container's PID 1 stays kiln (already loaded, so the image needs no
//! init binary) and runs the command as its child, as docker's `docker-init` (tini) does: it
//! forwards the signals it gets ([`sys::RELAYED_SIGNALS`]) to the command, reaps every
//! orphan the kernel hands it, and exits with the command's status (128+N when a signal N
//! killed it) once the command is gone.

use std::convert::Infallible;
use std::ffi::{CStr, CString};
use std::io;

use crate::sys;

/// The name PID 1 shows in `ps` (its `comm`).
pub const NAME: &str = "kiln-init";

/// Forks: the child execs `path` (under the seccomp filter already loaded), this process
/// becomes the reaper and exits with the child's status. Returns only when the fork or the
/// signal set-up fails; the child's exec failure is its exit (127 or 126 as a shell's).
pub(super) fn exec_under_reaper(
    path: &CStr,
    argv: &[CString],
    envp: &[CString],
) -> io::Result<Infallible> {
    // Named before the fork, so that nobody in the container ever sees PID 1 as kiln (the
    // command's exec gives it its own name and line).
    let _ = rustix::thread::set_name(c"kiln-init");
    show_as_init(argv);
    let old = sys::block_relayed_signals()?;
    match sys::fork()? {
        sys::Forked::Child => {
            let e = match sys::restore_signal_mask(&old) {
                Ok(()) => sys::execve(path, argv, envp),
                Err(e) => e,
            };
            let _ = io::Write::write_all(
                &mut io::stderr(),
                format!("kiln-init: exec {}: {e}\n", path.to_string_lossy()).as_bytes(),
            );
            let code = match e.kind() {
                io::ErrorKind::NotFound => 127,
                _ => 126,
            };
            sys::exit_immediately(code)
        }
        sys::Forked::Parent(pid) => {
            // The reaper needs no descriptor, and one it kept (the report pipe `__init` reads
            // until the command execs) would hold up whoever waits for it to close.
            sys::close_from(3);
            sys::exit_immediately(reap(pid))
        }
    }
}

/// Rewrites this process's command line (what `ps` and /proc/1/cmdline show in the container)
/// as docker-init's reads, `kiln-init -- CMD...`, in place of kiln's own `__init` argument,
/// the sandbox spec with host paths, which the container has no business reading. The bytes
/// are written over the argument area (/proc/self/stat's arg_start..arg_end) through
/// /proc/self/mem, cut to fit and padded with NULs; on failure the old line stays.
fn show_as_init(argv: &[CString]) {
    use std::os::unix::fs::FileExt as _;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the `(comm)`: state is field 3, arg_start and arg_end are 48 and 49.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, r)| r.split_whitespace().collect());
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let (Some(start), Some(end)) = (field(48), field(49)) else {
        return;
    };
    let Some(len) = end.checked_sub(start).and_then(|l| usize::try_from(l).ok()) else {
        return;
    };
    let mut line = b"kiln-init\0--\0".to_vec();
    for a in argv {
        line.extend_from_slice(a.as_bytes_with_nul());
    }
    line.resize(len, 0);
    if let Some(last) = line.last_mut() {
        *last = 0;
    }
    if let Ok(mem) = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")
    {
        let _ = mem.write_all_at(&line, start);
    }
}

/// Forwards signals to `child` and reaps every child until `child` exits; its exit code.
fn reap(child: i32) -> i32 {
    let Some(main) = rustix::process::Pid::from_raw(child) else {
        return 125;
    };
    loop {
        // Collect every exited child: the command's end is the reaper's.
        loop {
            match rustix::process::wait(rustix::process::WaitOptions::NOHANG) {
                Ok(Some((pid, status))) if pid == main => {
                    if let Some(code) = status.exit_status() {
                        return code;
                    }
                    if let Some(sig) = status.terminating_signal() {
                        return 128 + sig;
                    }
                }
                Ok(Some(_)) | Err(rustix::io::Errno::INTR) => {}
                // No more exited children (None), or none at all (ECHILD).
                Ok(None) | Err(_) => break,
            }
        }
        let Ok(sig) = sys::wait_signal() else {
            return 125;
        };
        if sig != libc::SIGCHLD
            && let Some(signal) = rustix::process::Signal::from_named_raw(sig)
        {
            let _ = rustix::process::kill_process(main, signal);
        }
    }
}

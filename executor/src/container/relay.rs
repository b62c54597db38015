//! A foreground container's signal relay: while `kiln run` waits for its sandbox, SIGINT,
//! SIGTERM and SIGHUP to kiln kill the sandbox (its container dies with it), so that kiln
//! lives on to undo the container's network and cgroup. No async runtime: a self-pipe
//! ([`crate::sys::signals`]) and one thread that polls it.

use std::io;
use std::os::fd::{AsFd as _, OwnedFd};
use std::process::{Child, ExitStatus};

/// The signals that kill a foreground container instead of kiln.
pub const KILLING_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Waits for `child`, sending it SIGKILL when this process gets one of [`KILLING_SIGNALS`].
/// The handlers are installed before the wait starts, so a signal never escapes the caller's
/// cleanup, and they stay installed afterwards (a later signal is caught and does nothing), as
/// the cleanup after the wait must not be cut short either. Fails when the handlers cannot be
/// installed or the wait fails.
pub fn wait_killing_on_signal(child: &mut Child) -> io::Result<ExitStatus> {
    let signals = crate::sys::signals::catch(&KILLING_SIGNALS)?;
    let (stop_read, stop_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let pid = child.id();
    std::thread::scope(|s| {
        let relay = s.spawn(|| relay(signals, &stop_read, pid));
        // Exited but not reaped: until `child.wait` below, the pid cannot be reused, so a kill
        // from the relay racing with the exit hits the zombie, never another process.
        let exited = wait_exit_keeping_zombie(pid);
        drop(stop_write);
        let _ = relay.join();
        exited?;
        child.wait()
    })
}

/// Kills `pid` on each signal read from `signals`, until `stop` hangs up.
fn relay(signals: &OwnedFd, stop: &OwnedFd, pid: u32) {
    loop {
        let Ok(ready) = crate::sys::poll_readable(&[signals.as_fd(), stop.as_fd()]) else {
            return;
        };
        if ready[1] {
            return;
        }
        let mut buf = [0u8; 64];
        if ready[0] && rustix::io::read(signals, &mut buf).is_ok_and(|n| n > 0) {
            super::process::kill(i32::try_from(pid).ok(), rustix::process::Signal::KILL);
        }
    }
}

/// `waitid(P_PID, pid, WEXITED | WNOWAIT)`: returns once `pid` has exited, leaving it to be
/// reaped.
fn wait_exit_keeping_zombie(pid: u32) -> io::Result<()> {
    use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        match waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        ) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay as `kiln run` uses it: a SIGTERM to this process kills the child and the
    /// wait returns its status, while the process itself lives on. The signal is sent once
    /// the handlers are in but before the wait: it must not be lost either.
    #[test]
    fn a_signal_to_the_waiter_kills_the_child_not_the_waiter() {
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("sleep runs");
        crate::sys::signals::catch(&KILLING_SIGNALS).expect("handlers");
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::TERM)
            .expect("kill");
        let st = wait_killing_on_signal(&mut child).expect("wait");
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    }
}

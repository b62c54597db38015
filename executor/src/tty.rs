//! `kiln run -t` / `kiln exec -t`: a pseudo-terminal allocated *inside* the sandbox.
//!
//! The sandbox mounts its own devpts instance, so a pty from the host's /dev/pts would not be a
//! terminal there (`tty` says "not a tty": its device belongs to another instance). Like runc's
//! console socket, the process to be exec'd opens `/dev/ptmx` after `pivot_root` (the
//! sandbox's instance), makes the slave its controlling terminal and stdio, and passes the
//! master to the `__init` parent over a socketpair ([`take_new_pty`]). The parent then copies
//! its stdin to the master and the master to its stdout, forwards window size changes and
//! relays signals, until the process exits ([`relay`]). The caller's terminal is put in raw
//! mode by the cli, so keys such as ^C reach the container's terminal as bytes.

use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::pty::OpenptFlags;

use crate::sys;

/// The two ends of the socket the master travels on: (parent, child).
pub(crate) fn console_socket() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// In the process about to exec (after pivot_root): opens a pty of the sandbox's devpts, makes
/// its slave the controlling terminal and stdin/stdout/stderr (with the window size of the
/// caller's terminal, when stdin was one), and sends the master over `socket`.
pub(crate) fn take_new_pty(socket: OwnedFd) -> io::Result<()> {
    let winsize = rustix::termios::tcgetwinsize(rustix::stdio::stdin()).ok();
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let slave = rustix::pty::ioctl_tiocgptpeer(&master, OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    if let Some(ws) = winsize {
        rustix::termios::tcsetwinsize(&slave, ws)?;
    }
    rustix::process::setsid()?;
    rustix::process::ioctl_tiocsctty(&slave)?;
    rustix::stdio::dup2_stdin(&slave)?;
    rustix::stdio::dup2_stdout(&slave)?;
    rustix::stdio::dup2_stderr(&slave)?;
    drop(slave);
    let fds = [master.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        &socket,
        &[io::IoSlice::new(b"m")],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// In the `__init` parent: the master sent by [`take_new_pty`], or None when the child failed
/// before sending it (its error is on stderr and in its exit status).
pub(crate) fn receive_master(socket: OwnedFd) -> io::Result<Option<OwnedFd>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    rustix::net::recvmsg(
        &socket,
        &mut [io::IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg
            && let Some(fd) = fds.next()
        {
            return Ok(Some(fd));
        }
    }
    Ok(None)
}

fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Copies stdin to `master` and `master` to stdout until process `pid` exits; relays the
/// signals of [`sys::RELAYED_SIGNALS`] to it (SIGWINCH also copies stdin's window size to the
/// pty). Returns its exit status (128+N for signal N). The signals must be blocked.
pub(crate) fn relay(master: OwnedFd, pid: rustix::process::Pid) -> io::Result<i32> {
    let sigfd = sys::relay_signalfd()?;
    let stdin = rustix::stdio::stdin();
    let stdout = rustix::stdio::stdout();
    let (mut stdin_open, mut master_open) = (true, true);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut fds = vec![sigfd.as_fd()];
        if master_open {
            fds.push(master.as_fd());
        }
        if stdin_open {
            fds.push(stdin);
        }
        let ready = sys::poll_readable(&fds)?;
        let mut i = 1;
        if master_open {
            if ready[i] {
                match rustix::io::read(&master, &mut buf) {
                    Ok(0) | Err(rustix::io::Errno::IO) => master_open = false,
                    Ok(n) => {
                        write_all(stdout, &buf[..n])?;
                        let _ = io::stdout().flush();
                    }
                    Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            i += 1;
        }
        if stdin_open && ready[i] {
            match rustix::io::read(stdin, &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => write_all(master.as_fd(), &buf[..n])?,
            }
        }
        if ready[0] {
            let mut info = [0u8; 128];
            let n = rustix::io::read(&sigfd, &mut info)?;
            if n < 4 {
                continue;
            }
            let signo = i32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
            if signo == libc::SIGCHLD {
                if let Some((_, status)) =
                    rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG)?
                {
                    drain(&master, stdout, &mut buf);
                    return Ok(status
                        .exit_status()
                        .or_else(|| status.terminating_signal().map(|s| 128 + s))
                        .unwrap_or(255));
                }
                continue;
            }
            if signo == libc::SIGWINCH
                && let Ok(ws) = rustix::termios::tcgetwinsize(stdin)
            {
                let _ = rustix::termios::tcsetwinsize(&master, ws);
            }
            if let Some(sig) = rustix::process::Signal::from_named_raw(signo) {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
    }
}

/// Copies what the exited process left in the pty, without blocking.
fn drain(master: &OwnedFd, stdout: BorrowedFd<'_>, buf: &mut [u8]) {
    let flags = rustix::fs::fcntl_getfl(master).unwrap_or(rustix::fs::OFlags::empty());
    let _ = rustix::fs::fcntl_setfl(master, flags | rustix::fs::OFlags::NONBLOCK);
    while let Ok(n) = rustix::io::read(master, &mut *buf) {
        if n == 0 || write_all(stdout, &buf[..n]).is_err() {
            break;
        }
    }
}

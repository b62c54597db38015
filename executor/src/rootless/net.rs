//! The rootless session's uplink: a user-mode network stack attached to the session's network
//! namespace, which holds kiln's bridges, NAT and the RUN netns pool as in root mode.
//!
//! - [`Backend::Slirp4netns`] (the default): `slirp4netns --configure` makes `tap0`
//!   (10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3); published ports are added at run time
//!   through its API socket ([`forward`]): host port -> 10.0.2.100:port, where kiln's DNAT
//!   rule takes them to the container as in root mode.
//! - [`Backend::Pasta`]: `pasta --config-net` copies the host's addresses into the
//!   namespace; it has no API to add a port forward after start, so `-p` is refused with it
//!   (its `-t auto` scans the namespace's listening sockets once a second and publishes all
//!   of them, host-network containers' too; Debian 12's pasta does not scan with `-T none`).
//! - [`Backend::None`]: loopback only.
//! - [`Backend::Host`]: no network namespace of its own: the session keeps its creator's
//!   (as rootless BuildKit's `--oci-worker-net=host`), so kiln's own traffic, RUN steps and
//!   containers use the host's (or the surrounding container's) network directly; no bridge,
//!   no NAT, no `-p` (ports are the host's). The automatic choice when `/dev/net/tun` cannot
//!   be opened ([`tun_usable`]), e.g. inside an unprivileged container.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The session's address on slirp4netns's network, where forwarded ports arrive.
pub const SLIRP_GUEST_ADDR: &str = "10.0.2.100";

/// Errors of the network helper.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The helper could not be started.
    #[error("starting {tool} (Debian package {package})")]
    Spawn {
        /// slirp4netns or pasta.
        tool: &'static str,
        /// Its package.
        package: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The helper started but did not come up.
    #[error("{tool} did not come up (see {log})")]
    NotReady {
        /// slirp4netns or pasta.
        tool: &'static str,
        /// Its log file.
        log: PathBuf,
    },
    /// The API socket refused or failed a request.
    #[error("slirp4netns API {socket}: {what}")]
    Api {
        /// The socket.
        socket: PathBuf,
        /// What went wrong.
        what: String,
    },
    /// Port publishing needs slirp4netns.
    #[error(
        "publishing ports in rootless mode needs the slirp4netns network helper (this session uses \
         {0}, which cannot add a port forward once started)\n\
         hint: end the session (kill $(cat $XDG_RUNTIME_DIR/kiln/pause.pid)) and start the next one \
         with KILN_ROOTLESS_NET=slirp4netns, or with KILN_ROOTLESS_NET=host (the ports are the \
         host's)"
    )]
    NoForwarder(&'static str),
}

type Result<T> = std::result::Result<T, NetError>;

/// The user-mode network helper of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// slirp4netns (default).
    Slirp4netns,
    /// pasta (passt).
    Pasta,
    /// No uplink.
    None,
    /// The creator's network namespace, not unshared.
    Host,
}

impl Backend {
    /// Parses `slirp4netns`, `pasta`, `none` or `host`.
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "slirp4netns" | "" => Some(Backend::Slirp4netns),
            "pasta" => Some(Backend::Pasta),
            "none" => Some(Backend::None),
            "host" => Some(Backend::Host),
            _ => None,
        }
    }

    /// The name, as [`Backend::parse`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Slirp4netns => "slirp4netns",
            Backend::Pasta => "pasta",
            Backend::None => "none",
            Backend::Host => "host",
        }
    }
}

/// Whether this process can open `/dev/net/tun` (slirp4netns and pasta need it); the error
/// says why not.
pub fn tun_usable() -> std::result::Result<(), io::Error> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map(drop)
}

/// The slirp4netns API socket of a session.
pub fn api_socket(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("slirp4netns.sock")
}

/// The backend a running session uses (recorded by [`start`]).
pub fn session_backend(runtime_dir: &Path) -> Backend {
    std::fs::read_to_string(runtime_dir.join("net"))
        .ok()
        .and_then(|s| Backend::parse(s.trim()))
        .unwrap_or(Backend::None)
}

/// Starts the helper on the network namespace of `pid`; returns once it is up.
/// slirp4netns exits when `exit_fd` (a pipe whose write end the pause process holds) reads
/// EOF.
pub fn start(
    backend: Backend,
    pid: i32,
    runtime_dir: &Path,
    exit_fd: &std::os::fd::OwnedFd,
) -> Result<()> {
    let _ = std::fs::write(runtime_dir.join("net"), backend.name());
    let (tool, package) = match backend {
        Backend::None | Backend::Host => return Ok(()),
        Backend::Slirp4netns => ("slirp4netns", "slirp4netns"),
        Backend::Pasta => ("pasta", "passt"),
    };
    let log = runtime_dir.join(format!("{tool}.log"));
    let spawn_err = |source| NetError::Spawn {
        tool,
        package,
        source,
    };
    let log_file = std::fs::File::create(&log).map_err(spawn_err)?;
    let log_err = log_file.try_clone().map_err(spawn_err)?;
    let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| spawn_err(e.into()))?;
    let mut cmd = match backend {
        Backend::Slirp4netns => {
            let sock = api_socket(runtime_dir);
            let _ = std::fs::remove_file(&sock);
            // The write end is handed over without close-on-exec (`dup` clears the flag).
            let ready = rustix::io::dup(&writer).map_err(|e| spawn_err(e.into()))?;
            let exit = rustix::io::dup(exit_fd).map_err(|e| spawn_err(e.into()))?;
            let mut c = Command::new("slirp4netns");
            c.args(["--configure", "--mtu=65520", "--disable-host-loopback"])
                .arg("--api-socket")
                .arg(&sock)
                .arg("--ready-fd")
                .arg(ready.as_raw_fd().to_string())
                .arg("--exit-fd")
                .arg(exit.as_raw_fd().to_string())
                .arg(pid.to_string())
                .arg("tap0");
            let child = spawn_detached(&mut c, log_file, log_err).map_err(spawn_err)?;
            drop((ready, exit));
            drop(writer);
            let mut buf = [0u8; 1];
            let mut r = std::fs::File::from(reader);
            if !matches!(r.read(&mut buf), Ok(1)) || buf[0] != b'1' {
                return Err(NetError::NotReady { tool, log });
            }
            std::mem::forget(child);
            return Ok(());
        }
        Backend::Pasta => {
            drop((reader, writer));
            let mut c = Command::new("pasta");
            c.args([
                "--config-net",
                "--quiet",
                "-t",
                "none",
                "-u",
                "none",
                "--pid",
            ])
            .arg(runtime_dir.join("pasta.pid"))
            .args(["-T", "none", "-U", "none", "--netns"])
            .arg(format!("/proc/{pid}/ns/net"))
            .arg("--userns")
            .arg(format!("/proc/{pid}/ns/user"));
            c
        }
        Backend::None | Backend::Host => unreachable!("returned above"),
    };
    // pasta forks to the background once the namespace is configured, then its first process
    // exits 0.
    let mut child = spawn_detached(&mut cmd, log_file, log_err).map_err(spawn_err)?;
    match child.wait() {
        Ok(s) if s.success() => Ok(()),
        _ => Err(NetError::NotReady { tool, log }),
    }
}

/// Stops the pasta of a previous session (pasta cannot tell that a namespace named by
/// `/proc/PID/ns/net` is gone, so it would outlive its session; slirp4netns exits by itself).
pub fn stop_stale(runtime_dir: &Path) {
    let pid_file = runtime_dir.join("pasta.pid");
    let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let is_pasta = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|b| *b == 0)
            .next()
            .is_some_and(|a| a.ends_with(b"pasta"))
    });
    if is_pasta && let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let _ = std::fs::remove_file(pid_file);
}

fn spawn_detached(
    cmd: &mut Command,
    out: std::fs::File,
    err: std::fs::File,
) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt as _;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
}

/// A published port: TCP or UDP host port -> the same port on the session's address.
pub fn forward(runtime_dir: &Path, udp: bool, host_ip: &str, port: u16) -> Result<()> {
    match session_backend(runtime_dir) {
        Backend::Slirp4netns => {}
        other => return Err(NetError::NoForwarder(other.name())),
    }
    let req = serde_json::json!({
        "execute": "add_hostfwd",
        "arguments": {
            "proto": if udp { "udp" } else { "tcp" },
            "host_addr": if host_ip.is_empty() { "0.0.0.0" } else { host_ip },
            "host_port": port,
            "guest_addr": SLIRP_GUEST_ADDR,
            "guest_port": port,
        }
    });
    let resp = api(runtime_dir, &req)?;
    if let Some(e) = resp.get("error") {
        return Err(NetError::Api {
            socket: api_socket(runtime_dir),
            what: format!("add_hostfwd {port}: {e}"),
        });
    }
    Ok(())
}

/// Removes the forwards of host port `port` (when the container that published it goes).
pub fn unforward(runtime_dir: &Path, udp: bool, port: u16) -> Result<()> {
    if session_backend(runtime_dir) != Backend::Slirp4netns {
        return Ok(());
    }
    let list = api(runtime_dir, &serde_json::json!({"execute": "list_hostfwd"}))?;
    let proto = if udp { "udp" } else { "tcp" };
    let entries = list["return"]["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for e in entries {
        if e["host_port"].as_u64() == Some(u64::from(port)) && e["proto"] == proto {
            api(
                runtime_dir,
                &serde_json::json!({"execute": "remove_hostfwd", "arguments": {"id": e["id"]}}),
            )?;
        }
    }
    Ok(())
}

fn api(runtime_dir: &Path, req: &serde_json::Value) -> Result<serde_json::Value> {
    let socket = api_socket(runtime_dir);
    let err = |what: String| NetError::Api {
        socket: socket.clone(),
        what,
    };
    let mut s = std::os::unix::net::UnixStream::connect(&socket).map_err(|e| err(e.to_string()))?;
    s.write_all(req.to_string().as_bytes())
        .map_err(|e| err(e.to_string()))?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&out).map_err(|e| err(format!("{e}: {out:?}")))
}

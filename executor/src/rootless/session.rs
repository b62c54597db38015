//! The per-user rootless session: a pause process holding a user, mount and network
//! namespace, created once and joined by every kiln command.
//!
//! Creation, between the creating kiln (C) and `kiln __rootless-pause` (P), over P's stdio:
//! P unshares user+mount+net and says `unshared`; C writes P's uid_map and gid_map (through
//! `newuidmap`/`newgidmap` with subordinate ranges, or directly for the single-id map) and says
//! `mapped`; P makes its mounts slaves of the host's (host mounts still appear, ours never
//! leak out), brings `lo` up, says `ready` and sleeps forever with stdio on /dev/null. C
//! records P's pid in `pause.pid` (under `pause.lock`), starts the network helper and joins.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::thread::{LinkNameSpaceType, UnshareFlags};

use super::net::{self, Backend};
use super::subid::{self, IdRange};

/// Errors of the rootless session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A file of the runtime dir could not be used.
    #[error("rootless runtime dir: {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The pause process failed or said something unexpected.
    #[error("rootless pause process: {what}")]
    Pause {
        /// What went wrong.
        what: String,
    },
    /// newuidmap or newgidmap failed.
    #[error("{tool} {args} failed: {stderr}")]
    IdMap {
        /// newuidmap or newgidmap.
        tool: &'static str,
        /// Its arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
    /// A tool could not be started.
    #[error("running {tool}")]
    Spawn {
        /// The tool.
        tool: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Joining a namespace of the pause process failed.
    #[error("joining the rootless {what} namespace of pid {pid}")]
    Join {
        /// user, mnt or net.
        what: &'static str,
        /// The pause process.
        pid: i32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The network helper failed.
    #[error(transparent)]
    Net(#[from] net::NetError),
}

type Result<T> = std::result::Result<T, SessionError>;

/// What [`enter`] needs; cli fills it from the environment and /etc/sub{u,g}id.
#[derive(Debug, Clone)]
pub struct Config {
    /// `$XDG_RUNTIME_DIR/kiln`: pause.pid, pause.lock, the network helper's socket and log.
    pub runtime_dir: PathBuf,
    /// The kiln binary (re-executed as `__rootless-pause`).
    pub exe: PathBuf,
    /// The user's uid and gid on the host.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// The uid map ([`subid::id_map`]).
    pub uid_map: Vec<IdRange>,
    /// The gid map.
    pub gid_map: Vec<IdRange>,
    /// The network helper for a new session.
    pub net: Backend,
}

/// What [`enter`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entered {
    /// The pause process.
    pub pid: i32,
    /// True when this call created the session.
    pub created: bool,
}

/// Joins the user's session, creating it first when there is none. Call it while the process
/// is single-threaded (`setns` into a user namespace requires it). The working directory is
/// kept (by path).
pub fn enter(cfg: &Config) -> Result<Entered> {
    let dir = &cfg.runtime_dir;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let lock_path = dir.join("pause.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err(&lock_path)(e.into()))?;
    let pid_path = dir.join("pause.pid");
    let (pid, created) = match alive_pause(&pid_path) {
        Some(pid) => (pid, false),
        None => {
            // What the previous session's namespaces left (netns pins, leases, the RUN pool)
            // describes namespaces that died with it, as /run/kiln does after a reboot.
            net::stop_stale(dir);
            let state = state_dir(dir);
            if state.exists() {
                std::fs::remove_dir_all(&state).map_err(io_err(&state))?;
            }
            // The pause process holds the write end of this pipe; the network helper exits
            // when it reads EOF from it, so it never outlives the session.
            let (exit_r, exit_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| io_err(dir)(e.into()))?;
            let pid = create(cfg, &exit_w)?;
            drop(exit_w);
            let tmp = dir.join("pause.pid.tmp");
            std::fs::write(&tmp, format!("{pid}\n")).map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &pid_path).map_err(io_err(&pid_path))?;
            net::start(cfg.net, pid, dir, &exit_r)?;
            (pid, true)
        }
    };
    join(pid)?;
    drop(lock);
    Ok(Entered { pid, created })
}

/// The session's runtime state (what /run/kiln holds in root mode).
pub fn state_dir(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("run")
}

/// True when this process is in the user namespace of the session of `runtime_dir`.
pub fn is_current(runtime_dir: &Path) -> bool {
    let ino = |p: &str| {
        std::fs::metadata(p)
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
    };
    match alive_pause(&runtime_dir.join("pause.pid")) {
        Some(pid) => {
            let theirs = ino(&format!("/proc/{pid}/ns/user"));
            theirs.is_some() && theirs == ino("/proc/self/ns/user")
        }
        None => false,
    }
}

/// The pid in `pid_path` when that process is still a kiln pause process.
fn alive_pause(pid_path: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_path)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline
        .split(|b| *b == 0)
        .any(|a| a == PAUSE_ARG.as_bytes())
        .then_some(pid)
}

/// The hidden subcommand of the pause process.
pub const PAUSE_ARG: &str = "__rootless-pause";

/// The pause process's argument for [`Backend::Host`]: keep the creator's network namespace.
const KEEP_NET_ARG: &str = "--keep-net";

fn create(cfg: &Config, hold: &std::os::fd::OwnedFd) -> Result<i32> {
    // Inherited across exec (`dup` clears close-on-exec), closed here after the spawn.
    let held = rustix::io::dup(hold).map_err(|e| SessionError::Spawn {
        tool: cfg.exe.display().to_string(),
        source: e.into(),
    })?;
    let mut cmd = Command::new(&cfg.exe);
    cmd.arg(PAUSE_ARG);
    if cfg.net == Backend::Host {
        cmd.arg(KEEP_NET_ARG);
    }
    let spawned = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn();
    drop(held);
    let mut child = spawned.map_err(|source| SessionError::Spawn {
        tool: cfg.exe.display().to_string(),
        source,
    })?;
    let pid = i32::try_from(child.id()).expect("pids fit in i32");
    let mut to = child.stdin.take().expect("stdin is piped");
    let mut from = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut expect = |word: &str| -> Result<()> {
        let mut line = String::new();
        let _ = from.read_line(&mut line);
        if line.trim() == word {
            Ok(())
        } else {
            Err(SessionError::Pause {
                what: format!("expected {word:?}, got {:?}", line.trim()),
            })
        }
    };
    let result = (|| {
        expect("unshared")?;
        write_maps(cfg, pid)?;
        to.write_all(b"mapped\n").map_err(|e| SessionError::Pause {
            what: format!("writing to it: {e}"),
        })?;
        expect("ready")
    })();
    if let Err(e) = result {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    // The pause process outlives us; its exit status is nobody's business.
    std::mem::forget(child);
    Ok(pid)
}

fn write_maps(cfg: &Config, pid: i32) -> Result<()> {
    if cfg.uid_map.len() == 1 && cfg.gid_map.len() == 1 {
        // The single-id map needs no helper: a process may map its own ids.
        let write = |file: &str, text: String| {
            let p = PathBuf::from(format!("/proc/{pid}/{file}"));
            std::fs::write(&p, text).map_err(io_err(&p))
        };
        write("uid_map", format!("0 {} 1\n", cfg.uid))?;
        write("setgroups", "deny\n".to_owned())?;
        write("gid_map", format!("0 {} 1\n", cfg.gid))?;
        return Ok(());
    }
    for (tool, map) in [("newuidmap", &cfg.uid_map), ("newgidmap", &cfg.gid_map)] {
        let args = subid::map_args(map);
        let out = Command::new(tool)
            .arg(pid.to_string())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| SessionError::Spawn {
                tool: tool.to_owned(),
                source,
            })?;
        if !out.status.success() {
            return Err(SessionError::IdMap {
                tool,
                args: format!("{pid} {}", args.join(" ")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
    }
    Ok(())
}

fn join(pid: i32) -> Result<()> {
    let cwd = std::env::current_dir().ok();
    let open =
        |what: &'static str| {
            std::fs::File::open(format!("/proc/{pid}/ns/{what}"))
                .map_err(|source| SessionError::Join { what, pid, source })
        };
    let (user, mnt, netns) = (open("user")?, open("mnt")?, open("net")?);
    // A host-network session (`Backend::Host`) shares our network namespace, which belongs to
    // a user namespace we are not root in: joining it again would be refused.
    let ino = |f: &std::fs::File| {
        f.metadata()
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
    };
    let same_net = std::fs::File::open("/proc/self/ns/net")
        .is_ok_and(|own| ino(&own).is_some() && ino(&own) == ino(&netns));
    let mut joins = vec![
        ("user", &user, LinkNameSpaceType::User),
        ("mnt", &mnt, LinkNameSpaceType::Mount),
    ];
    if !same_net {
        joins.push(("net", &netns, LinkNameSpaceType::Network));
    }
    for (what, file, kind) in joins {
        rustix::thread::move_into_link_name_space(std::os::fd::AsFd::as_fd(file), Some(kind))
            .map_err(|e| SessionError::Join {
                what,
                pid,
                source: e.into(),
            })?;
    }
    // Joining a mount namespace moves the working directory to its root.
    if let Some(cwd) = cwd {
        let _ = std::env::set_current_dir(cwd);
    }
    Ok(())
}

/// `kiln __rootless-pause`: the pause process (see the module doc). Never returns.
pub fn pause_main() -> ! {
    let keep_net = std::env::args().nth(2).as_deref() == Some(KEEP_NET_ARG);
    let mut out = io::stdout().lock();
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        let _ = writeln!(io::stderr(), "kiln: rootless pause: {what}: {e}");
        std::process::exit(1)
    };
    let mut flags = UnshareFlags::NEWUSER | UnshareFlags::NEWNS;
    if !keep_net {
        flags |= UnshareFlags::NEWNET;
    }
    if let Err(e) = crate::sys::unshare(flags) {
        fail("unsharing user, mount and network namespaces", &e);
    }
    let _ = writeln!(out, "unshared");
    let _ = out.flush();
    let mut line = String::new();
    let _ = io::stdin().lock().read_line(&mut line);
    if line.trim() != "mapped" {
        std::process::exit(1);
    }
    if let Err(e) = rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::DOWNSTREAM
            | rustix::mount::MountPropagationFlags::REC,
    ) {
        fail("making mounts slaves", &e);
    }
    if !keep_net && let Err(e) = crate::sys::loopback_up() {
        fail("bringing up lo", &e);
    }
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    drop(out);
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
    loop {
        std::thread::park();
    }
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> SessionError + '_ {
    move |source| SessionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

//! A detached container's supervisor: `kiln run -d` (and `start`) prepares the container and
//! its network in the foreground (so errors such as a taken port are reported there), then
//! [`launch`]es `kiln __supervise ID` in its own process group. The supervisor ([`supervise`])
//! takes over the container's owner record (see [`super::owner`]), spawns the sandbox, records
//! its pid, waits for it, records the exit code and undoes the network. A container whose
//! sandbox process is gone is shown as exited whatever its state file says.

use super::network::{Joined, release};
use super::owner::{Owner, OwnerError, Owners};
use super::process::{alive, exit_code, kill, parse_signal, ready_init_pid, send_stop_signal};
use super::runtime::owners_dir;
use super::state::{self, State, StateError, Status};
use super::time::now_rfc3339;
use crate::spec::{InitSpec, RunSpec};
use rustix::process::Signal;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Errors of launching, supervising and stopping a container.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// Its state could not be read or written, or its status cannot change so.
    #[error(transparent)]
    State(#[from] StateError),
    /// A file of the container could not be used.
    #[error("{what} {}", .path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Its spec.json is not a run spec.
    #[error("parsing {}", .path.display())]
    Spec {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The owner record could not be written.
    #[error("recording the owner of container {id}")]
    Owner {
        /// The container id.
        id: String,
        /// The cause.
        #[source]
        source: OwnerError,
    },
    /// The supervisor never reported the container running.
    #[error("the supervisor of {0} did not start it")]
    NotStarted(String),
    /// The network could not be set up again.
    #[error(transparent)]
    Net(#[from] super::network::NetError),
    /// The cgroup could not be created again.
    #[error("creating the cgroup of container {id}")]
    Cgroup {
        /// The container id.
        id: String,
        /// The cause.
        #[source]
        source: crate::cgroup::CgroupError,
    },
    /// The image's STOPSIGNAL is not one kiln sends.
    #[error(transparent)]
    Signal(#[from] super::process::UnknownSignal),
}

type Result<T> = std::result::Result<T, SuperviseError>;

/// Reads `dir/spec.json`.
pub fn read_spec(dir: &Path) -> Result<RunSpec> {
    let path = dir.join("spec.json");
    let bytes = std::fs::read(&path).map_err(|source| SuperviseError::Io {
        what: "reading",
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| SuperviseError::Spec { path, source })
}

/// Writes `dir/spec.json`.
pub fn write_spec(dir: &Path, spec: &RunSpec) -> Result<()> {
    let path = dir.join("spec.json");
    let bytes = serde_json::to_vec(spec).map_err(|source| SuperviseError::Spec {
        path: path.clone(),
        source,
    })?;
    kroot::write_atomic(&path, &bytes).map_err(|source| SuperviseError::Io {
        what: "writing",
        path,
        source,
    })
}

/// Starts `exe __supervise ID` (`exe` is the kiln binary) for the prepared container in `dir`
/// and waits until the container runs (its PID 1 has exec'd its command, so `inspect` and
/// `exec` right after see its cgroups, namespaces and mounts) or has already exited. Its
/// network (`joined`) is the supervisor's from then on.
pub fn launch(
    exe: &Path,
    dir: &Path,
    spec: &RunSpec,
    state: State,
    joined: Option<Joined>,
) -> Result<()> {
    write_spec(dir, spec)?;
    state::write(dir, &state)?;
    use std::os::unix::process::CommandExt as _;
    let spawned = std::process::Command::new(exe)
        .args(["__supervise", &state.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    // The supervisor owns the network from here on; the pinned namespace outlives this fd.
    let supervisor = match spawned {
        Ok(c) => c,
        Err(source) => {
            if let Some(j) = joined {
                let _ = j.teardown();
            }
            if state.created.is_some() && state.started_at.is_none() {
                // A new container: nothing of it is worth keeping.
                crate::volume::remove_anonymous(&spec.mounts);
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(SuperviseError::Io {
                what: "starting the supervisor",
                path: exe.to_path_buf(),
                source,
            });
        }
    };
    drop(joined);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = match state::read(dir) {
            Ok(s) => s,
            // --rm containers that already exited are gone.
            Err(_) if !dir.exists() => break,
            Err(e) => return Err(e.into()),
        };
        let started = s.is_running() && s.pid.and_then(ready_init_pid).is_some();
        if started || s.status == Status::Exited || !alive(s.pid) && s.status != Status::Created {
            break;
        }
        if Instant::now() > deadline {
            return Err(SuperviseError::NotStarted(state.id));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(supervisor);
    Ok(())
}

/// `kiln __supervise ID`: runs container `id` of `containers` (`KILN_ROOT/containers`) with
/// `exe` (the kiln binary) until it exits, then records the exit and undoes its network and
/// cgroups (and removes it with `--rm`).
pub fn supervise(exe: &Path, containers: &Path, id: &str) -> Result<()> {
    crate::names::check_container(id).map_err(|_| StateError::NotFound(id.to_owned()))?;
    let dir = containers.join(id);
    let mut state = state::read(&dir)?;
    let spec = read_spec(&dir)?;
    // Appended to: a restarted container's log follows the earlier runs' (as docker's).
    let log_path = dir.join("log");
    let io = |what, source| SuperviseError::Io {
        what,
        path: log_path.clone(),
        source,
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| io("opening", e))?;
    let log2 = log.try_clone().map_err(|e| io("opening", e))?;
    // This process owns the container's network and cgroups from here on: recorded before
    // the state says running, which is what `kiln run -d` waits for before it exits.
    let owners = Owners::open(owners_dir()).ok();
    let mut rec = owners
        .as_ref()
        .and_then(|o| o.get(id))
        .unwrap_or_else(|| Owner::new(id, &dir));
    rec.take_over();
    let record = |rec: &Owner| match &owners {
        Some(o) => o.record(rec).map_err(|source| SuperviseError::Owner {
            id: id.to_owned(),
            source,
        }),
        None => Ok(()),
    };
    record(&rec)?;
    let result = crate::sandbox::command(exe, &InitSpec::Run(spec)).and_then(|mut cmd| {
        cmd.stdin(Stdio::null()).stdout(log2).stderr(log);
        super::SandboxCgroups(state.cgroups.clone()).pass_to(&mut cmd)?;
        cmd.spawn()
    });
    let result = match result {
        Ok(mut child) => {
            state.pid = i32::try_from(child.id()).ok();
            if let Some(pid) = state.pid {
                rec.set_sandbox(pid);
                record(&rec)?;
            }
            state.transition(Status::Running)?;
            state.started_at = Some(now_rfc3339());
            state::write(&dir, &state)?;
            child.wait().map(|st| exit_code(&st))
        }
        Err(e) => Err(e),
    };
    state.exit_code = Some(result.as_ref().copied().unwrap_or(125));
    state.transition(Status::Exited)?;
    state.finished_at = Some(now_rfc3339());
    release(
        containers,
        &state.id,
        state.network.as_deref(),
        &state.ports,
        false,
    );
    // The processes are gone with the sandbox: its cgroup can go too (rm retries it).
    let _ = crate::cgroup::Cgroup::open(state.cgroups.clone()).remove();
    if state.auto_remove {
        crate::volume::remove_anonymous_of(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        super::name::release(containers, state.name(), &state.id);
    } else {
        state::write(&dir, &state)?;
    }
    Ok(())
}

/// `kiln start`: exited container `s` (in `dir` under `containers`) runs again under a new
/// supervisor, with its spec (its writable layer kept), network mode, published ports and
/// limits, as docker's. A running container is left alone.
pub fn start(exe: &Path, containers: &Path, dir: &Path, mut s: State) -> Result<()> {
    if s.is_running() {
        return Ok(());
    }
    let mut spec = read_spec(dir)?;
    // Whatever the last run left (its supervisor normally undid it already).
    release(
        containers,
        &s.id,
        s.network.as_deref(),
        &s.ports,
        alive(s.pid),
    );
    let mut rec = super::network::Record::new(&s.id, dir);
    // Overlay's work dir must be empty again: a `volatile` overlay leaves a marker in it that
    // refuses a second mount (the first one is gone with the container's mount namespace).
    let work = spec.rootfs.work.clone();
    let io = |what, source| SuperviseError::Io {
        what,
        path: work.clone(),
        source,
    };
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| io("emptying", e))?;
    }
    std::fs::create_dir_all(&work).map_err(|e| io("creating", e))?;
    let mode: super::network::Mode = match (&s.network_mode, &s.network) {
        (Some(m), _) => m.parse()?,
        (None, Some(n)) => super::network::Mode::Bridge(n.clone()),
        (None, None) => super::network::Mode::None,
    };
    let (network, joined) = super::network::setup(
        containers,
        &mode,
        &s.id,
        s.name(),
        &spec.hostname,
        &s.ports,
        dir,
        true,
        &mut rec,
    )?;
    spec.network = network;
    let cgroup = match super::create_cgroup(&s.id, &s.limits) {
        Ok(c) => c,
        Err(source) => {
            if let Some(j) = joined {
                let _ = j.teardown();
            }
            return Err(SuperviseError::Cgroup {
                id: s.id.clone(),
                source,
            });
        }
    };
    s.cgroups = cgroup.map(|c| c.dirs().to_vec()).unwrap_or_default();
    rec.owner.cgroups = s.cgroups.clone();
    rec.save_if_possible();
    s.transition(Status::Created)?;
    s.pid = None;
    s.exit_code = None;
    s.finished_at = None;
    if let Some(att) = joined.as_ref().map(|j| j.attachment.clone()) {
        s.network = Some(att.network);
        s.ip = Some(att.ip);
        s.gateway = Some(att.gateway);
        s.ports = att.ports;
    }
    launch(exe, dir, &spec, s, joined)
}

/// Waits until the container in `dir` is exited (its supervisor has cleaned up) or `timeout`
/// passes; false then.
pub fn wait_exited(dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match state::read(dir) {
            Ok(s) if s.status == Status::Exited => return true,
            Err(_) if !dir.exists() => return true,
            _ => {}
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `kiln stop`: the image's STOPSIGNAL (TERM by default), then KILL after `timeout`. A
/// container that does not run is left alone.
pub fn stop(dir: &Path, s: &State, timeout: Duration) -> Result<()> {
    if !s.is_running() {
        return Ok(());
    }
    let sig = s
        .stop_signal
        .as_deref()
        .filter(|x| !x.is_empty())
        .map(parse_signal)
        .transpose()?
        .unwrap_or(Signal::TERM);
    send_stop_signal(s.pid, sig);
    if !wait_exited(dir, timeout) {
        kill(s.pid, Signal::KILL);
        wait_exited(dir, Duration::from_secs(10));
    }
    Ok(())
}

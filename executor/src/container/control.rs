//! Commands on an existing container, found under `containers` (`KILN_ROOT/containers`) by
//! its name, id or a unique id prefix: `kiln start`, `stop`, `kill`, `rm`, the sandbox spec of
//! `kiln exec`, and the processes `top`, `stats` and `cp` look at. The cli only parses their
//! arguments and prints.

use super::process::{alive, init_pid, ready_init_pid};
use super::state::{self, State, StateError, Status};
use super::supervisor::{self, SuperviseError};
use crate::spec::ExecSpec;
use rustix::process::Signal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors of the commands on a container.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// It cannot be found, or its state cannot be read or changed so.
    #[error(transparent)]
    State(#[from] StateError),
    /// Starting or stopping it failed, or its spec cannot be read.
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
    /// The command needs it running.
    #[error("container {0} is not running")]
    NotRunning(String),
    /// It runs, but its PID 1 is gone or not there yet.
    #[error("container {0} has no running process")]
    NoProcess(String),
    /// `rm` of a running container without `-f`.
    #[error("container {0} is running: stop it first or use rm -f")]
    Running(String),
    /// Its cgroup could not be removed.
    #[error("removing the cgroup of {name}")]
    Cgroup {
        /// The container as named.
        name: String,
        /// The cause.
        #[source]
        source: crate::cgroup::CgroupError,
    },
    /// A file or directory could not be read or removed.
    #[error("{what} {}", .path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, ControlError>;

/// How long `kill` and `rm -f` wait for the supervisor to record the exit.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The running container `name` (its directory and state). Fails when it is not found or
/// not running.
fn running(containers: &Path, name: &str) -> Result<(PathBuf, State)> {
    let (dir, s) = state::find(containers, name)?;
    if !s.is_running() {
        return Err(ControlError::NotRunning(name.to_owned()));
    }
    Ok((dir, s))
}

/// `kiln start`: exited container `name` runs again under a new supervisor started from `exe`
/// (the kiln binary); see [`supervisor::start`].
pub fn start(exe: &Path, containers: &Path, name: &str) -> Result<()> {
    let (dir, s) = state::find(containers, name)?;
    Ok(supervisor::start(exe, containers, &dir, s)?)
}

/// `kiln stop`: the image's STOPSIGNAL, then SIGKILL after `timeout`; see
/// [`supervisor::stop`].
pub fn stop(containers: &Path, name: &str, timeout: Duration) -> Result<()> {
    let (dir, s) = state::find(containers, name)?;
    Ok(supervisor::stop(&dir, &s, timeout)?)
}

/// `kiln kill`: SIGKILL to running container `name`, then a wait (up to 10 s) until its
/// supervisor has recorded the exit. Fails when it does not run.
pub fn kill(containers: &Path, name: &str) -> Result<()> {
    let (dir, s) = running(containers, name)?;
    super::process::kill(s.pid, Signal::KILL);
    supervisor::wait_exited(&dir, KILL_WAIT);
    Ok(())
}

/// Detaches container `s` from its network (or from the one it shares) and unpins its
/// namespace; idempotent.
pub fn cleanup_network(containers: &Path, s: &State) {
    super::network::release(
        containers,
        &s.id,
        s.network.as_deref(),
        &s.ports,
        alive(s.pid),
    );
}

/// `kiln rm`: container `name` (killed first with `force`) and everything it holds: its
/// network, cgroup, directory and name. Fails when it runs and `force` is not given, or its
/// cgroup or directory cannot be removed.
pub fn remove(containers: &Path, name: &str, force: bool) -> Result<()> {
    let (dir, mut s) = state::find(containers, name)?;
    if s.is_running() {
        if !force {
            return Err(ControlError::Running(name.to_owned()));
        }
        super::process::kill(s.pid, Signal::KILL);
        supervisor::wait_exited(&dir, KILL_WAIT);
    }
    cleanup_network(containers, &s);
    if s.transition(Status::Removing).is_ok() {
        let _ = state::write(&dir, &s);
    }
    crate::cgroup::Cgroup::open(s.cgroups.clone())
        .remove()
        .map_err(|source| ControlError::Cgroup {
            name: name.to_owned(),
            source,
        })?;
    std::fs::remove_dir_all(&dir).map_err(|source| ControlError::Io {
        what: "removing",
        path: dir.clone(),
        source,
    })?;
    super::name::release(containers, s.name(), &s.id);
    Ok(())
}

/// The PID 1 (a host pid) of running container `name`, once it has exec'd its command.
/// Fails when it is not running.
pub fn running_init_pid(containers: &Path, name: &str) -> Result<i32> {
    let (_, s) = running(containers, name)?;
    s.pid
        .and_then(ready_init_pid)
        .ok_or_else(|| ControlError::NoProcess(name.to_owned()))
}

/// The state of running container `name` and the host pids of every process in its PID
/// namespace, in order. Fails when it is not running.
pub fn processes(containers: &Path, name: &str) -> Result<(State, Vec<i32>)> {
    let (_, s) = running(containers, name)?;
    let init = s
        .pid
        .and_then(init_pid)
        .ok_or_else(|| ControlError::NoProcess(name.to_owned()))?;
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let want = ns(init).ok_or_else(|| ControlError::Io {
        what: "reading the PID namespace of",
        path: PathBuf::from(format!("/proc/{init}")),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let proc = Path::new("/proc");
    let mut pids: Vec<i32> = std::fs::read_dir(proc)
        .map_err(|source| ControlError::Io {
            what: "reading",
            path: proc.to_path_buf(),
            source,
        })?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|p| ns(*p).as_ref() == Some(&want))
        .collect();
    pids.sort_unstable();
    Ok((s, pids))
}

/// What `kiln exec` asks for.
#[derive(Debug, Clone, Default)]
pub struct Exec {
    /// The command and its arguments.
    pub args: Vec<String>,
    /// `-e K=V`, over the container's environment.
    pub env: Vec<String>,
    /// `-w`; the container's working directory when None.
    pub workdir: Option<String>,
    /// `-u`; the container's user when None.
    pub user: Option<String>,
    /// `-t`.
    pub tty: bool,
}

/// The sandbox spec that runs `e` in all the namespaces of running container `name` (its
/// PID 1 is the sandbox process's child); a container being started is waited for (up to
/// 5 s) until its setup is complete. Fails when it is not running or its spec cannot be read.
pub fn exec_spec(containers: &Path, name: &str, e: Exec) -> Result<ExecSpec> {
    let (dir, s) = running(containers, name)?;
    let sandbox = s
        .pid
        .ok_or_else(|| ControlError::NoProcess(name.to_owned()))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while ready_init_pid(sandbox).is_none() && alive(Some(sandbox)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = init_pid(sandbox).ok_or_else(|| ControlError::NoProcess(name.to_owned()))?;
    let spec = supervisor::read_spec(&dir)?;
    let env = super::spec::with_term(e.env, &spec.env, e.tty);
    Ok(ExecSpec {
        pid,
        args: e.args,
        env: super::spec::env(&spec.env, &env),
        cwd: e.workdir.unwrap_or(spec.cwd),
        user: e.user.unwrap_or(spec.user),
        tty: e.tty,
        security: spec.security,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(containers: &Path, name: &str) -> String {
        super::super::runtime::private_run_dir();
        let id = state::new_id();
        let dir = containers.join(&id);
        std::fs::create_dir_all(dir.join("upper")).expect("mkdir");
        let s = State {
            status: Status::Exited,
            exit_code: Some(0),
            network_mode: Some("none".to_owned()),
            options: Default::default(),
            ..state::sample(&id, name)
        };
        state::write(&dir, &s).expect("state");
        super::super::name::reserve(containers, name, &id).expect("name");
        id
    }

    #[test]
    fn commands_that_need_a_running_container_say_so() {
        let root = tempfile::tempdir().expect("tempdir");
        let containers = root.path().join("containers");
        exited(&containers, "web");
        for e in [
            kill(&containers, "web").err(),
            running_init_pid(&containers, "web").err(),
            processes(&containers, "web").err(),
            exec_spec(&containers, "web", Exec::default()).err(),
        ] {
            let e = e.expect("refused");
            assert_eq!(e.to_string(), "container web is not running");
        }
        assert!(matches!(
            kill(&containers, "nosuch"),
            Err(ControlError::State(StateError::NotFound(_)))
        ));
    }

    #[test]
    fn rm_of_an_exited_container_removes_its_directory_and_gives_its_name_back() {
        let root = tempfile::tempdir().expect("tempdir");
        let containers = root.path().join("containers");
        let id = exited(&containers, "web");
        remove(&containers, &id[..12], false).expect("rm");
        assert!(!containers.join(&id).exists());
        let names = super::super::name::names_dir(&containers);
        assert!(!names.join("web").exists());
        assert!(matches!(
            remove(&containers, "web", false),
            Err(ControlError::State(StateError::NotFound(_)))
        ));
    }
}

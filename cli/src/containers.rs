//! Detached containers: `kiln run -d`, `ps`, `logs`, `stop`, `kill`, `rm`.
//!
//! State lives in `KILN_ROOT/containers/<id>/`: `spec.json` (the sandbox spec), `state.json`
//! ([`State`]) and `log` (stdout and stderr). `kiln run -d` prepares the container and its
//! network in the foreground (so errors such as a taken port are reported there), then starts
//! `kiln __supervise ID` in its own process group. The supervisor spawns the sandbox, records
//! its pid, waits for it, records the exit code and undoes the network. A container whose
//! sandbox process is gone is shown as exited whatever its state file says.

use anyhow::Context as _;
use executor::net::PortMapping;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The container id (its name when `--name` was given).
    pub id: String,
    /// The image as given on the command line.
    pub image: String,
    /// The command.
    pub command: Vec<String>,
    /// `created`, `running` or `exited`.
    pub status: String,
    /// The sandbox process.
    pub pid: Option<i32>,
    /// Exit code once exited.
    pub exit_code: Option<i32>,
    /// The bridge network, when attached.
    pub network: Option<String>,
    /// The container's address.
    pub ip: Option<Ipv4Addr>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// Remove everything on exit (`--rm`).
    pub auto_remove: bool,
    /// The bridge gateway, when attached.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// The image's STOPSIGNAL (`SIGTERM` when unset).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// When the container was created (RFC 3339, UTC).
    #[serde(default)]
    pub created: Option<String>,
    /// When its process started.
    #[serde(default)]
    pub started_at: Option<String>,
    /// When its process exited.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Its cgroup directories (one per v1 hierarchy, or one on v2), removed with it.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// `--memory`, `--cpus` (in millicpus), `--pids-limit`, as given.
    #[serde(default)]
    pub limits: executor::cgroup::Limits,
    /// `--network` as given (`bridge`, `none`, `host`, `container:NAME`, a network).
    #[serde(default)]
    pub network_mode: Option<String>,
}

/// `kiln ps` flags.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Show exited containers too.
    #[arg(short, long)]
    all: bool,
    /// Only show container ids.
    #[arg(short, long)]
    quiet: bool,
    /// Don't truncate ids and commands.
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Print each container through a Go template (`{{.ID}} {{.Names}}`; a leading `table`
    /// adds a header row and aligns the tab-separated columns).
    #[arg(long)]
    format: Option<String>,
}

/// Container subcommands (flattened into the top-level command enum).
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List containers (running ones; all with -a).
    Ps(PsArgs),
    /// Start stopped containers again (same command, network mode, ports and limits).
    Start {
        /// Containers.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop running containers (as `stop`) and start them again.
    Restart {
        /// Seconds to wait before killing.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        /// Containers.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show the CPU, memory, network and process use of running containers.
    Stats(crate::info::StatsArgs),
    /// Show the processes of a running container.
    Top {
        /// Container.
        name: String,
    },
    /// Print a detached container's output.
    Logs {
        /// Keep printing until the container exits.
        #[arg(short, long)]
        follow: bool,
        /// Container.
        name: String,
    },
    /// Stop a container: SIGTERM, then SIGKILL after the timeout.
    Stop {
        /// Seconds to wait before killing.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        /// Containers.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Kill a container (SIGKILL).
    Kill {
        /// Containers.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Kill a running container first.
        #[arg(short, long)]
        force: bool,
        /// Containers.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Run a command inside a running container (all its namespaces).
    Exec {
        /// Set an environment variable (`K=V`).
        #[arg(short = 'e', long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Working directory inside the container.
        #[arg(short = 'w', long = "workdir")]
        workdir: Option<String>,
        /// User (`name`, `uid`, `user:group`).
        #[arg(short = 'u', long = "user", allow_hyphen_values = true)]
        user: Option<String>,
        /// Keep stdin open.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Allocate a pseudo-terminal.
        #[arg(short = 't', long)]
        tty: bool,
        /// Container.
        name: String,
        /// Command and arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Internal: supervises a detached container.
    #[command(name = "__supervise", hide = true)]
    Supervise {
        /// Container id.
        id: String,
    },
}

fn containers_dir() -> anyhow::Result<PathBuf> {
    Ok(crate::kiln_root()?.join("containers"))
}

fn read_state(dir: &Path) -> anyhow::Result<State> {
    let p = dir.join("state.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

/// Writes `state.json` atomically ([`kroot::write_atomic`]).
pub fn write_state(dir: &Path, s: &State) -> anyhow::Result<()> {
    let p = dir.join("state.json");
    kroot::write_atomic(&p, &serde_json::to_vec_pretty(s)?)
        .with_context(|| format!("writing {}", p.display()))
}

fn alive(pid: Option<i32>) -> bool {
    pid.is_some_and(|p| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            // A zombie (state Z) is dead: its supervisor has not reaped it yet.
            .is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| !r.trim_start().starts_with('Z'))
            })
    })
}

/// Every container's state, corrected (see [`effective`]).
pub fn all() -> anyhow::Result<Vec<State>> {
    let mut states = Vec::new();
    if let Ok(rd) = std::fs::read_dir(containers_dir()?) {
        for e in rd.flatten() {
            if let Ok(s) = read_state(&e.path()) {
                states.push(effective(s));
            }
        }
    }
    Ok(states)
}

/// The state with `status` corrected: running but without a live process is exited.
fn effective(mut s: State) -> State {
    if s.status != "exited" && !alive(s.pid) && s.status == "running" {
        s.status = "exited".to_owned();
    }
    s
}

/// Finds a container by id, name or unique id prefix.
pub(crate) fn find(name: &str) -> anyhow::Result<(PathBuf, State)> {
    lookup(name)?.with_context(|| format!("no such container: {name}"))
}

/// Like [`find`], but None when no container matches.
fn lookup(name: &str) -> anyhow::Result<Option<(PathBuf, State)>> {
    let root = containers_dir()?;
    // Only a valid name is joined to the directory (`..` would name KILN_ROOT itself); any
    // other string can still match an id prefix below, which never leaves the directory.
    let exact = root.join(name);
    if executor::names::check_container(name).is_ok() && exact.join("state.json").exists() {
        let s = read_state(&exact)?;
        return Ok(Some((exact, effective(s))));
    }
    let mut hits = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(name) && e.path().join("state.json").exists() {
                hits.push(e.path());
            }
        }
    }
    match hits.as_slice() {
        [one] => Ok(Some((one.clone(), effective(read_state(one)?)))),
        [] => Ok(None),
        _ => anyhow::bail!("container name {name:?} is ambiguous"),
    }
}

/// `kiln inspect` of a container, in docker's shape; None when no container matches `name`.
pub fn inspect(name: &str) -> anyhow::Result<Option<serde_json::Value>> {
    let Some((dir, s)) = lookup(name)? else {
        return Ok(None);
    };
    let spec: Option<executor::spec::RunSpec> = std::fs::read(dir.join("spec.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let running = s.status == "running";
    let pid = if running {
        s.pid.map(|p| init_pid(p).unwrap_or(p)).unwrap_or(0)
    } else {
        0
    };
    let mut ports = serde_json::Map::new();
    for p in &s.ports {
        let key = format!("{}/{}", p.container_port, p.proto);
        let binding = serde_json::json!({
            "HostIp": p.host_ip.map_or("0.0.0.0".to_owned(), |i| i.to_string()),
            "HostPort": p.host_port.to_string(),
        });
        match ports.get_mut(&key).and_then(|v| v.as_array_mut()) {
            Some(list) => list.push(binding),
            None => {
                ports.insert(key, serde_json::json!([binding]));
            }
        }
    }
    let ip = s.ip.map(|i| i.to_string()).unwrap_or_default();
    let gateway = s.gateway.map(|i| i.to_string()).unwrap_or_default();
    let mut networks = serde_json::Map::new();
    if let Some(n) = &s.network {
        let prefix = executor::net::Ipam::open(crate::netrun::STATE_DIR)
            .and_then(|i| i.network(n))
            .map_or(0, |c| c.subnet.prefix());
        networks.insert(
            n.clone(),
            serde_json::json!({ "IPAddress": ip, "Gateway": gateway, "IPPrefixLen": prefix }),
        );
    }
    let (path, args) = s
        .command
        .split_first()
        .map_or((String::new(), Vec::new()), |(p, a)| {
            (p.clone(), a.to_vec())
        });
    Ok(Some(serde_json::json!({
        "Id": s.id,
        "Created": s.created.clone().unwrap_or_default(),
        "Path": path,
        "Args": args,
        "State": {
            "Status": s.status,
            "Running": running,
            "Paused": false,
            "Pid": pid,
            "ExitCode": s.exit_code.unwrap_or(0),
            "StartedAt": s.started_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".to_owned()),
            "FinishedAt": s.finished_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".to_owned()),
        },
        "Name": format!("/{}", s.id),
        "Config": {
            "Hostname": spec.as_ref().map(|x| x.hostname.clone()).unwrap_or_default(),
            "Image": s.image,
            "Cmd": s.command,
            "Env": spec.as_ref().map(|x| x.env.clone()).unwrap_or_default(),
            "WorkingDir": spec.as_ref().map(|x| x.cwd.clone()).unwrap_or_default(),
            "User": spec.as_ref().map(|x| x.user.clone()).unwrap_or_default(),
            "StopSignal": s.stop_signal.clone().unwrap_or_else(|| "SIGTERM".to_owned()),
        },
        "HostConfig": {
            "NetworkMode": s.network_mode.clone().or_else(|| s.network.clone()).unwrap_or_default(),
            "AutoRemove": s.auto_remove,
            "Memory": s.limits.memory.unwrap_or(0),
            "NanoCpus": s.limits.millicpus.unwrap_or(0) * 1_000_000,
            "PidsLimit": s.limits.pids.unwrap_or(0),
        },
        "NetworkSettings": {
            "IPAddress": ip,
            "Gateway": gateway,
            "Ports": ports,
            "Networks": networks,
        },
    })))
}

/// `kiln start`: an exited container runs again under a new supervisor, with its spec (its
/// writable layer kept), network mode, published ports and limits, as docker's.
fn start(name: &str) -> anyhow::Result<()> {
    let (dir, mut s) = find(name)?;
    if s.status == "running" {
        return Ok(());
    }
    let spec_path = dir.join("spec.json");
    let mut spec: executor::spec::RunSpec = serde_json::from_slice(
        &std::fs::read(&spec_path).with_context(|| format!("reading {}", spec_path.display()))?,
    )
    .with_context(|| format!("parsing {}", spec_path.display()))?;
    // Whatever the last run left (its supervisor normally undid it already).
    cleanup_network(&s);
    // Overlay's work dir must be empty again: a `volatile` overlay leaves a marker in it that
    // refuses a second mount (the first one is gone with the container's mount namespace).
    let work = &spec.rootfs.work;
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("emptying {}", work.display()))?;
    }
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let mode: crate::netrun::Mode = match (&s.network_mode, &s.network) {
        (Some(m), _) => m.parse()?,
        (None, Some(n)) => crate::netrun::Mode::Bridge(n.clone()),
        (None, None) => crate::netrun::Mode::None,
    };
    let (network, joined) =
        crate::netrun::setup(&mode, &s.id, &spec.hostname, &s.ports, &dir, true)?;
    spec.network = network;
    let cgroup = match create_cgroup(&s.id, &s.limits) {
        Ok(c) => c,
        Err(e) => {
            if let Some(j) = joined {
                let _ = j.teardown();
            }
            return Err(e);
        }
    };
    s.cgroups = cgroup.map(|c| c.dirs().to_vec()).unwrap_or_default();
    s.status = "created".to_owned();
    s.pid = None;
    s.exit_code = None;
    s.finished_at = None;
    if let Some(att) = joined.as_ref().map(|j| j.attachment.clone()) {
        s.network = Some(att.network);
        s.ip = Some(att.ip);
        s.gateway = Some(att.gateway);
        s.ports = att.ports;
    }
    launch(&dir, &spec, s, joined)
}

/// Starts a prepared container in the background under a supervisor; prints its id.
pub fn start_detached(
    dir: &Path,
    spec: &executor::spec::RunSpec,
    state: State,
    joined: Option<crate::netrun::Joined>,
) -> anyhow::Result<ExitCode> {
    let id = state.id.clone();
    launch(dir, spec, state, joined)?;
    writeln!(std::io::stdout().lock(), "{id}")?;
    Ok(ExitCode::SUCCESS)
}

/// Starts the supervisor of a prepared container and waits until the container runs (or
/// has already exited).
fn launch(
    dir: &Path,
    spec: &executor::spec::RunSpec,
    state: State,
    joined: Option<crate::netrun::Joined>,
) -> anyhow::Result<()> {
    let spec_path = dir.join("spec.json");
    kroot::write_atomic(&spec_path, &serde_json::to_vec(spec)?)
        .with_context(|| format!("writing {}", spec_path.display()))?;
    write_state(dir, &state)?;
    let exe = std::env::current_exe().context("locating the kiln binary")?;
    use std::os::unix::process::CommandExt as _;
    let spawned = std::process::Command::new(&exe)
        .args(["__supervise", &state.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    // The supervisor owns the network from here on; the pinned namespace outlives this fd.
    let supervisor = match spawned {
        Ok(c) => c,
        Err(e) => {
            if let Some(j) = joined {
                let _ = j.teardown();
            }
            if state.created.is_some() && state.started_at.is_none() {
                // A new container: nothing of it is worth keeping.
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(anyhow::Error::new(e).context("starting the supervisor"));
        }
    };
    drop(joined);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = read_state(dir).or_else(|e| {
            // --rm containers that already exited are gone.
            if dir.exists() {
                Err(e)
            } else {
                Ok(state.clone())
            }
        })?;
        // Started means the container's PID 1 has exec'd its command (its cgroups, namespaces
        // and mounts are complete, so `inspect` and `exec` right after `run -d` see them), or
        // it has already exited.
        let started = s.status == "running" && s.pid.and_then(ready_init_pid).is_some();
        if started || s.status == "exited" || !alive(s.pid) && s.status != "created" {
            break;
        }
        if !dir.exists() {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("the supervisor of {} did not start it", state.id);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(supervisor);
    Ok(())
}

fn supervise(id: &str) -> anyhow::Result<ExitCode> {
    let dir = containers_dir()?.join(id);
    let mut state = read_state(&dir)?;
    let spec: executor::spec::RunSpec =
        serde_json::from_slice(&std::fs::read(dir.join("spec.json"))?)?;
    // Appended to: a restarted container's log follows the earlier runs' (as docker's).
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .context("opening the log")?;
    let exe = std::env::current_exe().context("locating the kiln binary")?;
    let mut cmd = executor::sandbox::command(&exe, &executor::spec::InitSpec::Run(spec))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    set_cgroup_env(&mut cmd, &state.cgroups);
    let result = match cmd.spawn() {
        Ok(mut child) => {
            state.pid = i32::try_from(child.id()).ok();
            state.status = "running".to_owned();
            state.started_at = Some(now_rfc3339());
            write_state(&dir, &state)?;
            child.wait().map(|st| exit_code(&st))
        }
        Err(e) => Err(e),
    };
    state.exit_code = Some(result.as_ref().copied().unwrap_or(125));
    state.status = "exited".to_owned();
    state.finished_at = Some(now_rfc3339());
    cleanup_network(&state);
    // The processes are gone with the sandbox: its cgroup can go too (rm retries it).
    let _ = executor::cgroup::Cgroup::open(state.cgroups.clone()).remove();
    if state.auto_remove {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        write_state(&dir, &state)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Detaches the container from its network and unpins its namespace; idempotent.
fn cleanup_network(state: &State) {
    if let Some(net) = &state.network {
        let _ = executor::net::netns::remove_path(&crate::netrun::netns_path(&state.id));
        if let Ok(mut nets) = executor::net::Networks::open(crate::netrun::STATE_DIR) {
            // A container still running here is being killed by `rm -f`: delete its veth
            // now. Otherwise the namespace died with the sandbox and takes the veth along.
            let _ = if alive(state.pid) {
                nets.detach(net, &state.id)
            } else {
                nets.forget(net, &state.id)
            };
        }
        crate::netrun::refresh_hosts(net);
    }
}

/// Tells `kiln __init` which cgroups to join before it forks (see `main`).
pub fn set_cgroup_env(cmd: &mut std::process::Command, dirs: &[PathBuf]) {
    if !dirs.is_empty() {
        let joined: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        cmd.env(CGROUP_ENV, joined.join(":"));
    }
}

/// The variable [`set_cgroup_env`] sets.
pub const CGROUP_ENV: &str = "KILN_CGROUP";

/// The cgroup of container `id` with `limits`, or None when nothing is limited. Fails when
/// no hierarchy has a needed controller or the cgroup cannot be written.
pub fn create_cgroup(
    id: &str,
    limits: &executor::cgroup::Limits,
) -> anyhow::Result<Option<executor::cgroup::Cgroup>> {
    if limits.is_empty() {
        return Ok(None);
    }
    let h = executor::cgroup::Hierarchy::host().context("no cgroup filesystem is mounted")?;
    let plan = executor::cgroup::plan(&h, id, limits)?;
    Ok(Some(executor::cgroup::Cgroup::create(&plan).with_context(
        || format!("creating the cgroup of container {id}"),
    )?))
}

/// The current time as RFC 3339 (UTC, second precision), as docker's `StartedAt`.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn signal(s: &State, sig: rustix::process::Signal) {
    if let Some(p) = s.pid.and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// The container's PID 1 (a host pid): the sandbox process's only child.
fn init_pid(sandbox: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{sandbox}/task/{sandbox}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The PID 1 (a host pid) of running container `name`. Fails when it is not running.
pub fn running_init_pid(name: &str) -> anyhow::Result<i32> {
    let (_, s) = find(name)?;
    anyhow::ensure!(s.status == "running", "container {name} is not running");
    s.pid
        .and_then(ready_init_pid)
        .with_context(|| format!("container {name} has no running process"))
}

/// The container's PID 1 once it has exec'd the container's command: before that it is still
/// `kiln __init` setting up mounts, and a `kiln exec` joining its mount namespace then would
/// see a half-built one.
fn ready_init_pid(sandbox: i32) -> Option<i32> {
    let pid = init_pid(sandbox)?;
    let exe = |p: i32| std::fs::read_link(format!("/proc/{p}/exe")).ok();
    let own = exe(pid)?;
    (Some(own) != exe(sandbox)).then_some(pid)
}

/// A signal by name (`SIGTERM`, `TERM`, `term`) or number, as STOPSIGNAL gives it.
fn parse_signal(s: &str) -> anyhow::Result<rustix::process::Signal> {
    use rustix::process::Signal;
    let t = s.trim().to_ascii_uppercase();
    let name = t.strip_prefix("SIG").unwrap_or(&t);
    let sig = match name {
        "HUP" | "1" => Signal::HUP,
        "INT" | "2" => Signal::INT,
        "QUIT" | "3" => Signal::QUIT,
        "KILL" | "9" => Signal::KILL,
        "USR1" | "10" => Signal::USR1,
        "USR2" | "12" => Signal::USR2,
        "TERM" | "15" => Signal::TERM,
        "WINCH" | "28" => Signal::WINCH,
        "PWR" | "30" => Signal::POWER,
        _ => anyhow::bail!("unsupported stop signal {s:?}"),
    };
    Ok(sig)
}

/// Sends the stop signal: the signals `__init` relays go to it (it forwards them to PID 1),
/// others straight to PID 1.
fn send_stop_signal(s: &State, sig: rustix::process::Signal) {
    use rustix::process::Signal;
    let relayed = [
        Signal::TERM,
        Signal::INT,
        Signal::HUP,
        Signal::QUIT,
        Signal::USR1,
        Signal::USR2,
        Signal::WINCH,
    ];
    let target = if relayed.contains(&sig) {
        s.pid
    } else {
        s.pid.and_then(init_pid).or(s.pid)
    };
    if let Some(p) = target.and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Waits until the container is exited (its supervisor has cleaned up) or `timeout` passes.
fn wait_exited(dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match read_state(dir) {
            Ok(s) if s.status == "exited" => return true,
            Err(_) if !dir.exists() => return true,
            _ => {}
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stop(name: &str, timeout: Duration) -> anyhow::Result<()> {
    let (dir, s) = find(name)?;
    if s.status != "running" {
        return Ok(());
    }
    let sig = s
        .stop_signal
        .as_deref()
        .filter(|x| !x.is_empty())
        .map(parse_signal)
        .transpose()?
        .unwrap_or(rustix::process::Signal::TERM);
    send_stop_signal(&s, sig);
    if !wait_exited(&dir, timeout) {
        signal(&s, rustix::process::Signal::KILL);
        wait_exited(&dir, Duration::from_secs(10));
    }
    Ok(())
}

/// Seconds since the epoch of an RFC 3339 UTC time as [`rfc3339`] writes it.
fn parse_rfc3339(t: &str) -> Option<u64> {
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Civil date to days (Howard Hinnant's algorithm, the inverse of `rfc3339`'s).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
}

/// A duration as docker's `units.HumanDuration` words it (`5 seconds`, `About a minute`).
fn human_duration(secs: u64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        0 => "Less than a second".to_owned(),
        1 => "1 second".to_owned(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".to_owned(),
        s if s < 3600 => format!("{m} minutes"),
        s if s < 7200 => "About an hour".to_owned(),
        s if s < 48 * 3600 => format!("{h} hours"),
        s if s < 14 * 86400 => format!("{d} days"),
        s if s < 60 * 86400 => format!("{} weeks", d / 7),
        s if s < 730 * 86400 => format!("{} months", d / 30),
        _ => format!("{} years", d / 365),
    }
}

/// One `kiln ps` row with docker's `--format` field names.
fn ps_row(s: &State, no_trunc: bool) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ago = |t: &Option<String>| {
        t.as_deref()
            .and_then(parse_rfc3339)
            .map(|t| human_duration(now.saturating_sub(t)))
    };
    let status = match (s.status.as_str(), s.exit_code) {
        ("exited", code) => format!(
            "Exited ({}) {} ago",
            code.unwrap_or(0),
            ago(&s.finished_at).unwrap_or_default()
        ),
        ("running", _) => format!("Up {}", ago(&s.started_at).unwrap_or_default()),
        ("created", _) => "Created".to_owned(),
        (o, _) => o.to_owned(),
    };
    let ports: Vec<String> = s
        .ports
        .iter()
        .map(|p| {
            format!(
                "{}:{}->{}/{}",
                p.host_ip.map_or("0.0.0.0".to_owned(), |i| i.to_string()),
                p.host_port,
                p.container_port,
                p.proto
            )
        })
        .collect();
    let mut command = s.command.join(" ");
    if !no_trunc && command.chars().count() > 20 {
        command = command.chars().take(19).collect::<String>() + "…";
    }
    // A generated id is hex and shown as docker shows one, 12 digits; a name is the id.
    let hex = s.id.len() > 12 && s.id.bytes().all(|b| b.is_ascii_hexdigit());
    let id = if hex && !no_trunc { &s.id[..12] } else { &s.id };
    let created_at = s
        .created
        .as_deref()
        .map(|c| {
            format!(
                "{} {} +0000 UTC",
                &c[..10.min(c.len())],
                c.get(11..19).unwrap_or("")
            )
        })
        .unwrap_or_default();
    serde_json::json!({
        "ID": id,
        "Names": s.id,
        "Image": s.image,
        "Command": format!("\"{command}\""),
        "CreatedAt": created_at,
        "RunningFor": ago(&s.created).map(|a| a + " ago").unwrap_or_default(),
        "Status": status,
        "State": s.status,
        "Ports": ports.join(", "),
        "Networks": s.network.clone().unwrap_or_default(),
    })
}

/// Docker's column titles for `--format 'table ...'`.
pub const CONTAINER_HEADERS: &[(&str, &str)] = &[
    ("ID", "CONTAINER ID"),
    ("Names", "NAMES"),
    ("Image", "IMAGE"),
    ("Command", "COMMAND"),
    ("CreatedAt", "CREATED AT"),
    ("RunningFor", "CREATED"),
    ("Status", "STATUS"),
    ("State", "STATE"),
    ("Ports", "PORTS"),
    ("Networks", "NETWORKS"),
];

/// Prints `rows` through the `--format` template `src`, as docker's `ps` and `images` do:
/// a leading `table` adds a header row and aligns the tab-separated columns (docker's
/// tabwriter: at least 10 wide, 3 spaces of padding); `\t` in the template is a tab.
pub fn print_rows(
    out: &mut impl std::io::Write,
    src: &str,
    headers: &[(&str, &str)],
    rows: &[serde_json::Value],
) -> anyhow::Result<()> {
    let src = src.replace("\\t", "\t");
    let (table, body) = match src.trim_start().strip_prefix("table") {
        Some(b) => (true, b.trim_start().to_owned()),
        None => (false, src),
    };
    let t = crate::gotmpl::Template::parse(&body)?;
    let mut lines = Vec::new();
    if table {
        let mut hdr = serde_json::Map::new();
        let keys = rows
            .first()
            .and_then(|r| r.as_object())
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_else(|| headers.iter().map(|(k, _)| (*k).to_owned()).collect());
        for k in keys {
            let title = headers
                .iter()
                .find(|(f, _)| *f == k)
                .map_or_else(|| k.to_uppercase(), |(_, t)| (*t).to_owned());
            hdr.insert(k, serde_json::Value::String(title));
        }
        lines.push(t.render(&serde_json::Value::Object(hdr))?);
    }
    for r in rows {
        lines.push(t.render(r)?);
    }
    if !table {
        for l in lines {
            writeln!(out, "{l}")?;
        }
        return Ok(());
    }
    let cells: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    let mut widths = Vec::new();
    for row in &cells {
        // The last cell of a line is not a column (it has no tab after it).
        for (i, c) in row.iter().take(row.len().saturating_sub(1)).enumerate() {
            let w = (c.chars().count() + 3).max(10);
            if widths.len() <= i {
                widths.push(w);
            } else {
                widths[i] = widths[i].max(w);
            }
        }
    }
    for row in &cells {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            line.push_str(c);
            if i + 1 < row.len() {
                let pad = widths[i] - c.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// `kiln ps`: docker's columns, `-q` ids, `--format` templates.
fn ps(a: &PsArgs, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let mut states = all()?;
    // Newest first, as docker lists them.
    states.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
    let rows: Vec<serde_json::Value> = states
        .iter()
        .filter(|s| a.all || s.status == "running")
        .map(|s| ps_row(s, a.no_trunc))
        .collect();
    if a.quiet {
        for r in &rows {
            writeln!(out, "{}", r["ID"].as_str().unwrap_or_default())?;
        }
        return Ok(());
    }
    let default = "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}";
    print_rows(
        out,
        a.format.as_deref().unwrap_or(default),
        CONTAINER_HEADERS,
        &rows,
    )
}

/// `kiln top`: the processes in the container's PID namespace, as `ps -ef` columns.
/// The state of running container `name` and the host pids of every process in its PID
/// namespace, in order. Fails when it is not running.
pub fn processes(name: &str) -> anyhow::Result<(State, Vec<i32>)> {
    let (_, s) = find(name)?;
    anyhow::ensure!(s.status == "running", "container {name} is not running");
    let init = s
        .pid
        .and_then(init_pid)
        .with_context(|| format!("container {name} has no running process"))?;
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let want = ns(init).context("reading the container's PID namespace")?;
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|p| ns(*p).as_ref() == Some(&want))
        .collect();
    pids.sort_unstable();
    Ok((s, pids))
}

fn top(name: &str, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let (_, pids) = processes(name)?;
    writeln!(out, "{:<10} {:<10} {:<10} CMD", "UID", "PID", "PPID")?;
    for p in pids {
        let (Ok(stat), Ok(status), Ok(cmdline)) = (
            std::fs::read_to_string(format!("/proc/{p}/stat")),
            std::fs::read_to_string(format!("/proc/{p}/status")),
            std::fs::read(format!("/proc/{p}/cmdline")),
        ) else {
            continue;
        };
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .unwrap_or("0");
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("?");
        let cmd: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        writeln!(out, "{uid:<10} {p:<10} {ppid:<10} {}", cmd.join(" "))?;
    }
    Ok(())
}

/// Runs a container subcommand.
pub fn dispatch(cmd: Cmd) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        Cmd::Ps(a) => ps(&a, &mut out)?,
        Cmd::Top { name } => top(&name, &mut out)?,
        Cmd::Stats(a) => crate::info::stats(&a, &mut out)?,
        Cmd::Start { names } => {
            for n in &names {
                start(n)?;
                writeln!(out, "{n}")?;
            }
        }
        Cmd::Restart { time, names } => {
            for n in &names {
                stop(n, Duration::from_secs(time))?;
                start(n)?;
                writeln!(out, "{n}")?;
            }
        }
        Cmd::Logs { follow, name } => {
            let (dir, _) = find(&name)?;
            let mut f = std::fs::File::open(dir.join("log"))
                .with_context(|| format!("container {name} has no log (not run with -d)"))?;
            loop {
                std::io::copy(&mut f, &mut out)?;
                out.flush()?;
                if !follow {
                    break;
                }
                let done = read_state(&dir).map_or(true, |s| effective(s).status == "exited");
                if done {
                    std::io::copy(&mut f, &mut out)?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Cmd::Stop { time, names } => {
            for n in &names {
                stop(n, Duration::from_secs(time))?;
                writeln!(out, "{n}")?;
            }
        }
        Cmd::Kill { names } => {
            for n in &names {
                let (dir, s) = find(n)?;
                anyhow::ensure!(s.status == "running", "container {n} is not running");
                signal(&s, rustix::process::Signal::KILL);
                wait_exited(&dir, Duration::from_secs(10));
                writeln!(out, "{n}")?;
            }
        }
        Cmd::Rm { force, names } => {
            for n in &names {
                let (dir, s) = find(n)?;
                if s.status == "running" {
                    anyhow::ensure!(
                        force,
                        "container {n} is running: stop it first or use rm -f"
                    );
                    signal(&s, rustix::process::Signal::KILL);
                    wait_exited(&dir, Duration::from_secs(10));
                }
                cleanup_network(&s);
                executor::cgroup::Cgroup::open(s.cgroups.clone())
                    .remove()
                    .with_context(|| format!("removing the cgroup of {n}"))?;
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
                writeln!(out, "{n}")?;
            }
        }
        Cmd::Exec {
            env,
            workdir,
            user,
            interactive,
            tty,
            name,
            command,
        } => {
            drop(out);
            return exec(&name, env, workdir, user, (interactive, tty), command);
        }
        Cmd::Supervise { id } => return supervise(&id),
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln exec`: the container's PID 1 is the sandbox process's child.
fn exec(
    name: &str,
    env: Vec<String>,
    workdir: Option<String>,
    user: Option<String>,
    (interactive, tty): (bool, bool),
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    // docker's check, before anything else: a tty relay needs a terminal on stdin.
    if tty && interactive && !rustix::termios::isatty(rustix::stdio::stdin()) {
        return Err(anyhow::Error::new(NotATty));
    }
    crate::run::check_env(&env)?;
    crate::run::check_workdir(workdir.as_deref())?;
    crate::run::check_user(user.as_deref())?;
    let (dir, s) = find(name)?;
    anyhow::ensure!(s.status == "running", "container {name} is not running");
    let sandbox = s.pid.context("the container has no process")?;
    // A container being started: wait (briefly) until its setup is complete.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ready_init_pid(sandbox).is_none() && alive(Some(sandbox)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid =
        init_pid(sandbox).with_context(|| format!("container {name} has no running process"))?;
    let spec: executor::spec::RunSpec =
        serde_json::from_slice(&std::fs::read(dir.join("spec.json"))?)?;
    let exec = executor::spec::ExecSpec {
        pid,
        args: command,
        env: solver::run::env(&spec.env, &with_term(env, &spec.env, tty)),
        cwd: workdir.unwrap_or(spec.cwd),
        user: user.unwrap_or(spec.user),
        tty,
        security: spec.security.clone(),
    };
    let exe = std::env::current_exe().context("locating the kiln binary")?;
    let mut cmd = executor::sandbox::command(&exe, &executor::spec::InitSpec::Exec(exec))?;
    if !interactive {
        cmd.stdin(Stdio::null());
    }
    let raw = tty.then(crate::run::RawTerminal::enter).flatten();
    let st = cmd
        .status()
        .with_context(|| format!("starting {}", exe.display()));
    drop(raw);
    let code = exit_code(&st?);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}

/// `kiln exec -it` with stdin not a terminal (docker's message; exit status 1).
#[derive(Debug)]
pub struct NotATty;

impl std::fmt::Display for NotATty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the input device is not a TTY")
    }
}

impl std::error::Error for NotATty {}

/// `-e` values plus `TERM=xterm` when a tty is allocated and neither they nor `base` (the
/// image's or container's environment) set TERM, as docker does.
pub fn with_term(mut env: Vec<String>, base: &[String], tty: bool) -> Vec<String> {
    let has = |l: &[String]| l.iter().any(|e| e.split('=').next() == Some("TERM"));
    if tty && !has(&env) && !has(base) {
        env.insert(0, "TERM=xterm".to_owned());
    }
    env
}

/// A process's exit status as a shell reports it: its code, or 128 + the signal that killed it.
pub fn exit_code(st: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 + 3661), "2000-02-29T01:01:01Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        for t in [0, 951_782_400 + 3661, 1_795_000_000, 4_102_444_799] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{}", rfc3339(t));
        }
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn durations_read_as_docker_words_them() {
        for (s, want) in [
            (0, "Less than a second"),
            (1, "1 second"),
            (59, "59 seconds"),
            (90, "About a minute"),
            (600, "10 minutes"),
            (3700, "About an hour"),
            (5 * 3600, "5 hours"),
            (3 * 86400, "3 days"),
            (21 * 86400, "3 weeks"),
            (90 * 86400, "3 months"),
            (800 * 86400, "2 years"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    #[test]
    fn table_formats_align_like_docker_tabwriter() {
        let rows = [
            serde_json::json!({"ID": "abc", "Names": "a-long-name-here"}),
            serde_json::json!({"ID": "0123456789ab", "Names": "b"}),
        ];
        let mut out = Vec::new();
        print_rows(
            &mut out,
            "table {{.ID}}\\t{{.Names}}",
            CONTAINER_HEADERS,
            &rows,
        )
        .expect("renders");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "CONTAINER ID   NAMES\nabc            a-long-name-here\n0123456789ab   b\n"
        );
        let mut out = Vec::new();
        print_rows(&mut out, "{{.Names}}", CONTAINER_HEADERS, &rows).expect("renders");
        assert_eq!(out, b"a-long-name-here\nb\n");
    }

    #[test]
    fn stop_signals_parse_by_name_or_number() {
        use rustix::process::Signal;
        for (s, want) in [
            ("SIGTERM", Signal::TERM),
            ("term", Signal::TERM),
            ("15", Signal::TERM),
            ("SIGUSR1", Signal::USR1),
            ("QUIT", Signal::QUIT),
        ] {
            assert_eq!(parse_signal(s).expect(s), want, "{s}");
        }
        assert!(parse_signal("SIGRTMIN+3").is_err());
    }
}

//! Container commands: `ps`, `start`, `restart`, `logs`, `stop`, `kill`, `rm`, `exec`,
//! `top`, `inspect` of containers, and the hidden `__supervise`: their arguments and output.
//! The lifecycle itself (state and its transitions, the supervisor, networks, owner records
//! and orphan reclaim, cgroups) is `executor::container`.
//!
//! State lives in `KILN_ROOT/containers/<id>/`: `spec.json` (the sandbox spec), `state.json`
//! ([`State`]), `log` (stdout and stderr) and `hosts`.

use anyhow::Context as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

pub use executor::container::State;
use executor::container::control;
use executor::container::process::{exit_code as status_code, init_pid};
pub use executor::container::spec::with_term;
use executor::container::time::{human_duration, parse_rfc3339};
use executor::container::{Status, state};

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
    /// Only containers matching (`label=K` or `label=K=V`; docker's other filters are not
    /// supported).
    #[arg(short = 'f', long = "filter", value_name = "FILTER")]
    filter: Vec<String>,
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
        /// Seconds to wait before killing (default: the container's --stop-timeout, or 10).
        #[arg(short = 't', long = "time")]
        time: Option<u64>,
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
        /// Seconds to wait before killing (default: the container's --stop-timeout, or 10).
        #[arg(short = 't', long = "time")]
        time: Option<u64>,
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
        /// Remove its anonymous volumes too (named volumes stay).
        #[arg(short, long)]
        volumes: bool,
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
        /// Read environment variables from a file (as `kiln run --env-file`).
        #[arg(long = "env-file", value_name = "FILE")]
        env_file: Vec<String>,
        /// Run the command in the background (its output is discarded, as docker's).
        #[arg(short = 'd', long)]
        detach: bool,
        /// Every capability and no seccomp filter for the command.
        #[arg(long)]
        privileged: bool,
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
    Ok(kroot::Dir::Containers.path(&crate::kiln_root()?))
}

fn exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating the kiln binary")
}

/// Every container's state, corrected (see [`State::effective`]).
pub fn all() -> anyhow::Result<Vec<State>> {
    Ok(state::all(&containers_dir()?)
        .into_iter()
        .map(|(_, s)| s)
        .collect())
}

/// Finds a container by name, id or unique id prefix.
pub(crate) fn find(name: &str) -> anyhow::Result<(PathBuf, State)> {
    Ok(state::find(&containers_dir()?, name)?)
}

/// Like [`find`], but None when no container matches.
fn lookup(name: &str) -> anyhow::Result<Option<(PathBuf, State)>> {
    Ok(state::lookup(&containers_dir()?, name)?)
}

/// `kiln inspect` of a container, in docker's shape; None when no container matches `name`.
pub fn inspect(name: &str) -> anyhow::Result<Option<serde_json::Value>> {
    let Some((dir, s)) = lookup(name)? else {
        return Ok(None);
    };
    let spec: Option<executor::spec::RunSpec> = std::fs::read(dir.join("spec.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let running = s.is_running();
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
        let prefix = executor::net::Ipam::open(crate::netrun::state_dir())
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
    let o = &s.options;
    let or_null = |v: &[String]| match v.is_empty() {
        true => serde_json::Value::Null,
        false => serde_json::json!(v),
    };
    let ulimits: Vec<serde_json::Value> = o
        .ulimits
        .iter()
        .map(|u| {
            let n = |x: Option<u64>| x.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
            serde_json::json!({ "Name": u.name, "Hard": n(u.hard), "Soft": n(u.soft) })
        })
        .collect();
    let mut v = serde_json::json!({
        "Id": s.id,
        "Created": s.created.clone().unwrap_or_default(),
        "Path": path,
        "Args": args,
        "State": {
            "Status": s.status.as_str(),
            "Running": running,
            "Paused": false,
            "Pid": pid,
            "ExitCode": s.exit_code.unwrap_or(0),
            "StartedAt": s.started_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".to_owned()),
            "FinishedAt": s.finished_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".to_owned()),
        },
        "Name": format!("/{}", s.name()),
        "Config": {
            "Hostname": spec.as_ref().map(|x| x.hostname.clone()).unwrap_or_default(),
            "Image": s.image,
            "Cmd": s.command,
            // Without the HOSTNAME kiln adds at run time, as docker's daemon does.
            "Env": spec.as_ref().map(|x| {
                let own = format!("HOSTNAME={}", x.hostname);
                x.env.iter().filter(|e| **e != own).cloned().collect::<Vec<_>>()
            }).unwrap_or_default(),
            "WorkingDir": spec.as_ref().map(|x| x.cwd.clone()).unwrap_or_default(),
            "User": spec.as_ref().map(|x| x.user.clone()).unwrap_or_default(),
            "StopSignal": s.stop_signal.clone().unwrap_or_else(|| "SIGTERM".to_owned()),
            "Labels": o.labels,
        },
        "HostConfig": {
            "NetworkMode": s.network_mode.clone().or_else(|| s.network.clone()).unwrap_or_default(),
            "AutoRemove": s.auto_remove,
            "Memory": s.limits.memory.unwrap_or(0),
            "NanoCpus": s.limits.millicpus.unwrap_or(0) * 1_000_000,
            "PidsLimit": s.limits.pids.unwrap_or(0),
            "CapAdd": or_null(&o.cap_add),
            "CapDrop": or_null(&o.cap_drop),
            "Dns": o.dns,
            "DnsSearch": o.dns_search,
            "DnsOptions": o.dns_options,
            "ExtraHosts": or_null(&o.extra_hosts),
            "GroupAdd": or_null(&o.group_add),
            "Privileged": o.privileged,
            "Ulimits": if ulimits.is_empty() { serde_json::Value::Null } else { ulimits.into() },
            "ShmSize": o.shm_size.unwrap_or(64 * 1024 * 1024),
            "RestartPolicy": { "Name": "no", "MaximumRetryCount": 0 },
            "Devices": o.devices.iter().map(|[h, c, p]| serde_json::json!({
                "PathOnHost": h, "PathInContainer": c, "CgroupPermissions": p,
            })).collect::<Vec<_>>(),
            "ReadonlyRootfs": spec.as_ref().is_some_and(|x| x.security.read_only_rootfs),
        },
        "Mounts": crate::runmounts::inspect(spec.as_ref().map_or(&[][..], |x| &x.mounts)),
        "NetworkSettings": {
            "IPAddress": ip,
            "Gateway": gateway,
            "Ports": ports,
            "Networks": networks,
        },
    });
    // docker leaves these out unless given.
    if o.init {
        v["HostConfig"]["Init"] = true.into();
    }
    if let Some(t) = o.stop_timeout {
        v["Config"]["StopTimeout"] = t.into();
    }
    Ok(Some(v))
}

fn supervise(id: &str) -> anyhow::Result<ExitCode> {
    executor::container::supervisor::supervise(&exe()?, &containers_dir()?, id)?;
    Ok(ExitCode::SUCCESS)
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
    let status = match s.status {
        Status::Exited => format!(
            "Exited ({}) {} ago",
            s.exit_code.unwrap_or(0),
            ago(&s.finished_at).unwrap_or_default()
        ),
        Status::Running => format!("Up {}", ago(&s.started_at).unwrap_or_default()),
        Status::Created => "Created".to_owned(),
        Status::Removing => "Removal In Progress".to_owned(),
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
    // An id is shown as docker shows one, 12 digits (state from before ids were separate
    // from names may have a name as its id).
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
        "Names": s.name(),
        "Image": s.image,
        "Command": format!("\"{command}\""),
        "CreatedAt": created_at,
        "RunningFor": ago(&s.created).map(|a| a + " ago").unwrap_or_default(),
        "Status": status,
        "State": s.status.as_str(),
        "Ports": ports.join(", "),
        "Networks": s.network.clone().unwrap_or_default(),
        "Labels": s.options.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
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
    let labels = a
        .filter
        .iter()
        .map(|f| match f.split_once('=') {
            Some(("label", l)) => Ok(l),
            _ => anyhow::bail!("--filter {f}: kiln supports only label=KEY[=VALUE]"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut states = all()?;
    // Newest first, as docker lists them.
    states.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
    let rows: Vec<serde_json::Value> = states
        .iter()
        .filter(|s| a.all || s.is_running())
        .filter(|s| labels.iter().all(|l| s.options.has_label(l)))
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

/// The state of running container `name` and the host pids of every process in its PID
/// namespace (see [`control::processes`]).
pub fn processes(name: &str) -> anyhow::Result<(State, Vec<i32>)> {
    Ok(control::processes(&containers_dir()?, name)?)
}

/// The PID 1 (a host pid) of running container `name` (see [`control::running_init_pid`]).
pub fn running_init_pid(name: &str) -> anyhow::Result<i32> {
    Ok(control::running_init_pid(&containers_dir()?, name)?)
}

/// `kiln top`: the processes in the container's PID namespace, as `ps -ef` columns.
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

/// `stop`/`restart -t`: the seconds given, else the container's `--stop-timeout`, else 10
/// (docker's default).
fn stop_time(given: Option<u64>, name: &str) -> anyhow::Result<u64> {
    Ok(match given {
        Some(t) => t,
        None => find(name)?
            .1
            .options
            .stop_timeout
            // A negative one (docker's -1) waits as good as forever: ten years.
            .map_or(10, |t| u64::try_from(t).unwrap_or(315_360_000)),
    })
}

/// Runs a container subcommand.
pub fn dispatch(cmd: Cmd) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        Cmd::Ps(a) => {
            crate::netrun::reclaim_orphans();
            ps(&a, &mut out)?
        }
        Cmd::Top { name } => top(&name, &mut out)?,
        Cmd::Stats(a) => crate::info::stats(&a, &mut out)?,
        Cmd::Start { names } => {
            for n in &names {
                control::start(&exe()?, &containers_dir()?, n)?;
                writeln!(out, "{n}")?;
            }
        }
        Cmd::Restart { time, names } => {
            for n in &names {
                let time = stop_time(time, n)?;
                control::stop(&containers_dir()?, n, Duration::from_secs(time))?;
                control::start(&exe()?, &containers_dir()?, n)?;
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
                let done =
                    state::read(&dir).map_or(true, |s| s.effective().status == Status::Exited);
                if done {
                    std::io::copy(&mut f, &mut out)?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Cmd::Stop { time, names } => {
            for n in &names {
                let time = stop_time(time, n)?;
                control::stop(&containers_dir()?, n, Duration::from_secs(time))?;
                writeln!(out, "{n}")?;
            }
        }
        Cmd::Kill { names } => {
            for n in &names {
                control::kill(&containers_dir()?, n)?;
                writeln!(out, "{n}")?;
            }
        }
        Cmd::Rm {
            force,
            volumes,
            names,
        } => {
            for n in &names {
                // Read before the container goes: its anonymous volumes (docker's `rm -v`).
                let mounts = match volumes {
                    true => find(n)
                        .ok()
                        .and_then(|(d, _)| executor::container::supervisor::read_spec(&d).ok())
                        .map(|s| s.mounts),
                    false => None,
                };
                control::remove(&containers_dir()?, n, force)?;
                if let Some(m) = mounts {
                    executor::volume::remove_anonymous(&m);
                }
                writeln!(out, "{n}")?;
            }
        }
        Cmd::Exec {
            env,
            workdir,
            user,
            interactive,
            tty,
            env_file,
            detach,
            privileged,
            name,
            command,
        } => {
            drop(out);
            let mut all = Vec::new();
            let lookup = |k: &str| std::env::var(k).ok();
            for f in &env_file {
                all.extend(crate::runflags::parse_kv_file(f, Some(&lookup))?);
            }
            all.extend(crate::run::caller_env(&env));
            let how = ExecHow {
                interactive,
                tty,
                detach,
                privileged,
            };
            return exec(&name, all, workdir, user, how, command);
        }
        Cmd::Supervise { id } => return supervise(&id),
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln exec -i -t -d --privileged`.
#[derive(Debug, Clone, Copy)]
struct ExecHow {
    interactive: bool,
    tty: bool,
    detach: bool,
    privileged: bool,
}

/// `kiln exec`: the container's PID 1 is the sandbox process's child.
fn exec(
    name: &str,
    env: Vec<String>,
    workdir: Option<String>,
    user: Option<String>,
    how: ExecHow,
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let ExecHow {
        interactive,
        tty,
        detach,
        privileged,
    } = how;
    // docker's check, before anything else: a tty relay needs a terminal on stdin.
    if tty && interactive && !rustix::termios::isatty(rustix::stdio::stdin()) {
        return Err(anyhow::Error::new(NotATty));
    }
    crate::run::check_env(&env)?;
    crate::run::check_workdir(workdir.as_deref())?;
    crate::run::check_user(user.as_deref())?;
    let exec = control::exec_spec(
        &containers_dir()?,
        name,
        control::Exec {
            args: command,
            env,
            workdir,
            user,
            tty,
        },
    )?;
    let mut exec = exec;
    if privileged {
        // docker's exec --privileged: every capability, no seccomp filter.
        exec.security.privileged = true;
        exec.security.seccomp = executor::spec::Seccomp::Unconfined;
    }
    let exe = exe()?;
    let mut cmd = executor::sandbox::command(&exe, &executor::spec::InitSpec::Exec(exec))?;
    if detach {
        // Not waited for: `__init` waits for the command and exits with it.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
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

/// A process's exit status as a shell reports it: its code, or 128 + the signal that killed it.
pub fn exit_code(st: &std::process::ExitStatus) -> i32 {
    status_code(st)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! `kiln run`: its flags, the image (found or pulled), the terminal and the exit code; the
//! container itself is made and run by `executor::container::create`.

use anyhow::Context as _;
use std::io::Write as _;
use std::process::ExitCode;

/// `kiln run` flags.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Remove the container's directory when it exits.
    #[arg(long)]
    rm: bool,
    /// Set an environment variable (`K=V`, or `K` to pass the caller's value).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// User (`name`, `uid`, `user:group`).
    #[arg(short = 'u', long = "user", allow_hyphen_values = true)]
    user: Option<String>,
    /// Override the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Container name (default: a made-up `adjective_surname`, as docker's).
    #[arg(long)]
    name: Option<String>,
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-terminal in the container (the caller's terminal goes raw).
    #[arg(short = 't', long)]
    tty: bool,
    /// Network: `bridge` (default, kiln0), `none` (only lo), `host`, or a network name.
    #[arg(long = "network", alias = "net", default_value = "bridge")]
    network: crate::netrun::Mode,
    /// Publish a port: `HOSTPORT:CPORT[/tcp|udp]` or `IP:HOSTPORT:CPORT[/proto]`.
    #[arg(short = 'p', long = "publish", value_name = "[IP:]HOSTPORT:CPORT")]
    publish: Vec<String>,
    /// Publish every EXPOSEd port on a free host port.
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    /// Run in the background and print the container id.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Memory limit (`64m`, `1g`, bytes).
    #[arg(short = 'm', long, value_name = "BYTES")]
    memory: Option<String>,
    /// CPU limit in CPUs (`1.5`).
    #[arg(long)]
    cpus: Option<String>,
    /// Maximum number of processes (`-1` or `0`: unlimited).
    #[arg(long = "pids-limit")]
    pids_limit: Option<i64>,
    /// When to pull the image: `missing` (default), `always`, `never` (docker's `--pull`).
    #[arg(long, value_enum, default_value = "missing")]
    pull: crate::runimage::PullPolicy,
    /// Platform of the image (`os/arch[/variant]`; default: this machine's).
    #[arg(long)]
    platform: Option<String>,
    /// `seccomp=unconfined`, `seccomp=PROFILE.json` (docker's format), `no-new-privileges`.
    #[arg(long = "security-opt", value_name = "OPT")]
    security_opt: Vec<String>,
    /// `--env-file`, `-h`, `--add-host`, `--dns*`, `--cap-*`, `--privileged`, `--init`,
    /// `-l`, `--ulimit`, `--shm-size`, `--stop-*`, `--restart` (see [`crate::runflags`]).
    #[command(flatten)]
    docker: crate::runflags::DockerFlags,
    /// Bind a host path, mount a volume, or an anonymous one: `HOST:CTR[:ro]`,
    /// `NAME:CTR[:ro]`, `CTR` (docker's `-v`).
    #[arg(short = 'v', long = "volume", value_name = "[SRC:]CTR[:MODE]")]
    volume: Vec<String>,
    /// docker's `--mount type=bind|volume|tmpfs,source=..,target=..[,readonly][,...]`.
    #[arg(long = "mount", value_name = "MOUNT")]
    mount: Vec<String>,
    /// A tmpfs: `CTR[:size=64m,mode=1777,ro]`.
    #[arg(long = "tmpfs", value_name = "CTR[:OPTS]")]
    tmpfs: Vec<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long = "read-only")]
    read_only: bool,
    /// Image to run.
    image: String,
    /// Command and arguments (replace the image's CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `-e` values as docker's opts.ValidateEnv takes them: `=x` and `` (no name) are refused
/// with docker's message. Fails on the first bad one.
pub(crate) fn check_env(env: &[String]) -> anyhow::Result<()> {
    for e in env {
        let name = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        anyhow::ensure!(!name.is_empty(), "invalid environment variable: {e}");
    }
    Ok(())
}

/// `-e` values as docker takes them: `K=V` as given, `K` alone the caller's value of K, and
/// nothing when the caller has no K (docker leaves it out).
pub(crate) fn caller_env<'a>(env: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    env.into_iter()
        .filter_map(|e| match e.split_once('=') {
            Some(_) => Some(e.clone()),
            None => std::env::var(e).ok().map(|v| format!("{e}={v}")),
        })
        .collect()
}

/// `-w` must be absolute, as docker requires (the daemon's message; runc refuses a relative
/// cwd too). Fails when it is not.
pub(crate) fn check_workdir(workdir: Option<&str>) -> anyhow::Result<()> {
    if let Some(w) = workdir {
        anyhow::ensure!(
            w.starts_with('/'),
            "the working directory '{w}' is invalid, it needs to be an absolute path"
        );
    }
    Ok(())
}

/// `-u`: a numeric uid or gid must be in docker's range (the image's /etc/passwd is checked
/// when the container starts, see `executor::user`). Fails on one outside it.
pub(crate) fn check_user(user: Option<&str>) -> anyhow::Result<()> {
    if let Some(u) = user {
        executor::user::check_spec(u)?;
    }
    Ok(())
}

/// The smallest `--memory` docker accepts (daemon/daemon_unix.go `linuxMinMemory`).
const MIN_MEMORY: u64 = 6 * 1024 * 1024;

/// `--memory`: None for unlimited (no flag, or `0` as in docker), else the limit in bytes.
/// Fails on a malformed size or one below docker's 6 MB minimum.
fn memory_limit(memory: Option<&str>) -> anyhow::Result<Option<u64>> {
    let Some(m) = memory else {
        return Ok(None);
    };
    let bytes = kroot::size::parse(m).with_context(|| format!("--memory {m}"))?;
    if bytes == 0 {
        return Ok(None);
    }
    anyhow::ensure!(
        bytes >= MIN_MEMORY,
        "--memory {m}: Minimum memory limit allowed is 6MB"
    );
    Ok(Some(bytes))
}

/// Everything on the command line that docker refuses before creating a container.
fn check(a: &RunArgs) -> anyhow::Result<()> {
    if let Some(n) = &a.name {
        executor::names::check_container(n)?;
    }
    check_env(&a.env)?;
    check_workdir(a.workdir.as_deref())?;
    check_user(a.user.as_deref())?;
    Ok(())
}

/// Runs `kiln run`; the exit code is the container's.
pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    check(&a)?;
    let mounts = crate::runmounts::parse(&a.volume, &a.mount, &a.tmpfs)?;
    let store = crate::open_store()?;
    let image = crate::runimage::image(&store, &a.image, a.pull, a.platform.as_deref())?;
    let mounts = crate::runmounts::with_image_volumes(mounts, image.config.config.volumes.keys());
    // An image of another architecture runs through its binfmt handler, which must exist.
    executor::binfmt::check(
        std::path::Path::new(executor::binfmt::BINFMT_MISC),
        &image.config.architecture,
        &cache::oci::Platform::host().architecture,
    )
    .with_context(|| format!("image {}", a.image))?;
    let mut security = crate::security::parse(&a.security_opt)?;
    let flags = crate::runflags::apply(&a.docker, a.rm, &mut security)?;
    let env = caller_env(flags.env.iter().chain(&a.env));
    let env = crate::containers::with_term(env, &image.config.config.env, a.tty);
    let mut overrides = executor::container::spec::Overrides {
        env,
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        entrypoint: a.entrypoint.clone(),
        cmd: a.command.clone(),
        tty: a.tty,
        // Made right before the container (see below).
        mounts: Vec::new(),
    };
    let ports = crate::netrun::ports(
        &a.publish,
        a.publish_all,
        &image.config.config.exposed_ports,
    )?;
    let limits = executor::cgroup::Limits {
        memory: memory_limit(a.memory.as_deref())?,
        millicpus: a
            .cpus
            .as_deref()
            .map(|c| {
                executor::cgroup::parse_cpus(c)
                    .with_context(|| format!("--cpus {c}: expected a positive number"))
            })
            .transpose()?,
        pids: a.pids_limit.filter(|n| *n > 0).map(|n| n as u64),
    };
    security.read_only_rootfs = a.read_only;
    crate::netrun::reclaim_orphans();
    let exe = std::env::current_exe().context("locating the kiln binary")?;
    let c = &image.config.config;
    let created = {
        // Held until spec.json names the snapshots (see `executor::container::Request`).
        let _lock = store.lock_shared().context("locking the store")?;
        let lowers = image
            .config
            .rootfs
            .diff_ids
            .iter()
            .rev()
            .map(|d| {
                anyhow::ensure!(
                    store.has_layer(d),
                    "layer {d} of the image is missing from the store"
                );
                Ok(store.snapshot_path(d))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Host directories and volumes, made last: a failing create takes back the anonymous
        // volumes it would have used (named ones stay, as docker's).
        let volumes = executor::volume::Volumes::new(store.dir(kroot::Dir::Volumes));
        // Held until spec.json names the volumes, so no prune takes them meanwhile.
        let _volumes_lock = match mounts.is_empty() {
            true => None,
            false => Some(volumes.lock_shared()?),
        };
        let made = crate::runmounts::prepare(&mounts, &volumes)?;
        overrides.mounts = made.clone();
        let created = executor::container::create(executor::container::Request {
            containers: store.dir(kroot::Dir::Containers),
            name: a.name.clone(),
            image_ref: a.image.clone(),
            image: executor::container::spec::Image {
                entrypoint: c.entrypoint.clone(),
                cmd: c.cmd.clone(),
                env: c.env.clone(),
                working_dir: c.working_dir.clone(),
                user: c.user.clone(),
                lowers,
            },
            stop_signal: flags.stop_signal.or_else(|| Some(c.stop_signal.clone())),
            overrides,
            security,
            options: flags.options,
            network: a.network.clone(),
            ports,
            apply_limits: limits.is_empty() || crate::rootless::limits_possible(&limits),
            limits,
            auto_remove: a.rm,
            detach: a.detach,
        });
        created.inspect_err(|_| executor::volume::remove_anonymous(&made))?
    };
    if a.detach {
        let id = created.start_detached(&exe)?;
        writeln!(std::io::stdout().lock(), "{id}")?;
        return Ok(ExitCode::SUCCESS);
    }
    let raw = a.tty.then(RawTerminal::enter).flatten();
    let status = created.run_attached(&exe, a.interactive || a.tty);
    drop(raw);
    let code = executor::container::process::exit_code(&status?);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}

/// The caller's terminal in raw mode while a container's terminal is relayed (keys such as ^C
/// go to the container as bytes); restored on drop.
#[derive(Debug)]
pub struct RawTerminal {
    saved: rustix::termios::Termios,
}

impl RawTerminal {
    /// Puts stdin in raw mode; None when stdin is not a terminal.
    pub fn enter() -> Option<RawTerminal> {
        let stdin = rustix::stdio::stdin();
        if !rustix::termios::isatty(stdin) {
            return None;
        }
        let saved = rustix::termios::tcgetattr(stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            rustix::stdio::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

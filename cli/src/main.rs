//! The `kiln` binary: argument parsing, output and exit codes. All the work happens in the
//! library crates; this file only wires them together.

mod bases;
mod build;
mod cacheopts;
mod check;
mod containers;
mod cp;
mod gcroots;
mod gotmpl;
mod images;
mod info;
mod netrun;
mod network;
mod prune;
mod registry;
mod render;
mod rootless;
mod run;
mod runflags;
mod runimage;
mod runmounts;
mod security;
mod system;
mod volume;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

const EXIT_CODES: &str = "\
Exit status:
  0    success
  1    a build or command failed (as docker: `exec -it` without a terminal, no such
       container or image)
  125  the command line was wrong (unknown flag or subcommand, missing argument; docker
       exits 125 for these too), or `kiln run`: kiln itself failed (image not found,
       sandbox setup)
  N    `kiln run`: the container's own exit status (128+N when killed by signal N)
A closed stdout (broken pipe) exits 0.

Environment:
  KILN_ROOT  the store (default: /var/lib/kiln as root, $XDG_DATA_HOME/kiln otherwise)
  KILN_ROOTLESS_NET  a new rootless session's network helper: slirp4netns (default), pasta,
             none, or host (the caller's network; the default without /dev/net/tun)
  KILN_REGISTRY_TIMEOUT  registry timeouts: `90s`, or `connect=30s,response=60s,idle=60s`
             (the defaults)";

/// kiln: a daemonless container image builder.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant (build's flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Build an image from a Dockerfile.
    Build(Box<build::BuildArgs>),
    /// Import a root filesystem tarball as a one-layer image.
    Import(images::ImportArgs),
    /// List images (`kiln images busybox`, `-q` for ids only).
    Images(images::ListArgs),
    /// Show containers or images as a JSON array (containers are looked up first).
    Inspect(InspectArgs),
    /// Image commands under docker's `image` namespace (`image ls`, `image rm`, ...).
    Image {
        /// The subcommand.
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Container commands under docker's `container` namespace (`container ls`, ...).
    Container {
        /// The subcommand.
        #[command(subcommand)]
        cmd: ContainerCmd,
    },
    /// Show the layers an image was built from.
    History(images::HistoryArgs),
    /// Copy files between a running container and the host (`CONTAINER:PATH`).
    Cp(cp::CpArgs),
    /// Show the store, its containers and images, and the host.
    Info(info::InfoArgs),
    /// Show kiln's version.
    Version {
        /// Go template over docker's shape (`{{.Client.Version}}`).
        #[arg(short, long)]
        format: Option<String>,
    },
    /// Give an image another name.
    Tag {
        /// Existing image.
        source: String,
        /// New name.
        target: String,
    },
    /// Remove an image name.
    Rmi {
        /// Image names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Write images to a tar (OCI layout plus docker-archive manifest.json).
    Save {
        /// Images.
        #[arg(required = true)]
        names: Vec<String>,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Run a command in a new container.
    Run(Box<run::RunArgs>),
    /// Remove build cache: records, cache mounts and the layers only they hold.
    Prune(prune::PruneArgs),
    /// Store management (`kiln system df`, `kiln system prune`).
    System {
        #[command(subcommand)]
        cmd: system::SystemCommand,
    },
    /// Pull an image from a registry.
    Pull {
        /// Image reference (`busybox`, `registry:5000/app:1`, `name@sha256:...`).
        reference: String,
        /// Platform to pick from a multi-platform image (`linux/amd64`).
        #[arg(long)]
        platform: Option<String>,
        /// Allow plain HTTP to this registry (`host:port`); may be repeated.
        #[arg(long = "insecure-registry", value_name = "HOST")]
        insecure: Vec<String>,
    },
    /// Push an image to a registry.
    Push {
        /// Local image.
        name: String,
        /// Destination reference (default: NAME).
        dest: Option<String>,
        /// Allow plain HTTP to this registry (`host:port`); may be repeated.
        #[arg(long = "insecure-registry", value_name = "HOST")]
        insecure: Vec<String>,
    },
    /// Save registry credentials.
    Login {
        /// Registry host (default: docker.io).
        registry: Option<String>,
        /// User name.
        #[arg(short, long)]
        username: String,
        /// Password (prefer --password-stdin).
        #[arg(short, long)]
        password: Option<String>,
        /// Read the password from stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Allow plain HTTP to this registry (`host:port`); may be repeated.
        #[arg(long = "insecure-registry", value_name = "HOST")]
        insecure: Vec<String>,
    },
    /// Remove saved registry credentials.
    Logout {
        /// Registry host (default: docker.io).
        registry: Option<String>,
    },
    /// Manage networks: create, ls, rm.
    Network {
        /// The subcommand.
        #[command(subcommand)]
        cmd: network::Cmd,
    },
    /// Manage volumes: create, ls, inspect, rm, prune.
    Volume {
        /// The subcommand.
        #[command(subcommand)]
        cmd: volume::Cmd,
    },
    /// Container commands: ps, logs, stop, kill, rm.
    #[command(flatten)]
    Containers(containers::Cmd),
    /// Internal: the sandbox init process.
    #[command(name = "__init", hide = true)]
    Init {
        /// The spec, as JSON.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `kiln inspect` flags.
#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// Print each object through a Go template (`{{.NetworkSettings.IPAddress}}`).
    #[arg(short, long)]
    format: Option<String>,
    /// Container or image names or ids.
    #[arg(required = true)]
    names: Vec<String>,
}

/// `kiln image ...`.
#[derive(Debug, Subcommand)]
enum ImageCmd {
    /// List images.
    #[command(visible_alias = "list")]
    Ls(images::ListArgs),
    /// Remove image names.
    #[command(visible_alias = "remove")]
    Rm {
        /// Image names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show images as a JSON array.
    Inspect(InspectArgs),
    /// Show the layers an image was built from.
    History(images::HistoryArgs),
    /// Give an image another name.
    Tag {
        /// Existing image.
        source: String,
        /// New name.
        target: String,
    },
    /// Import a root filesystem tarball as a one-layer image.
    Import(images::ImportArgs),
}

/// `kiln container ...`.
#[derive(Debug, Subcommand)]
enum ContainerCmd {
    /// List containers.
    #[command(visible_alias = "list")]
    Ls(containers::PsArgs),
    /// Show containers as a JSON array.
    Inspect(InspectArgs),
    /// Run a command in a new container.
    Run(Box<run::RunArgs>),
    /// Copy files between a running container and the host.
    Cp(cp::CpArgs),
    /// Container commands: ps, logs, stop, kill, rm, exec, top.
    #[command(flatten)]
    Other(containers::Cmd),
}

/// The store root: KILN_ROOT, else /var/lib/kiln as root, else the XDG data dir.
pub(crate) fn kiln_root() -> anyhow::Result<PathBuf> {
    if let Some(r) = std::env::var_os("KILN_ROOT").filter(|r| !r.is_empty()) {
        return Ok(PathBuf::from(r));
    }
    if let Some(a) = rootless::active() {
        return Ok(a.data_dir.clone());
    }
    if rustix::process::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/kiln"));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|r| !r.is_empty()) {
        return Ok(PathBuf::from(x).join("kiln"));
    }
    let home =
        std::env::var_os("HOME").context("neither KILN_ROOT, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/kiln"))
}

fn open_store() -> anyhow::Result<cache::store::Store> {
    let root = kiln_root()?;
    cache::store::Store::open(&root)
        .with_context(|| format!("opening the store at {}", root.display()))
}

/// True when `e`'s chain holds a broken pipe (stdout closed by the reader).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let io = c.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
        let json = c
            .downcast_ref::<serde_json::Error>()
            .and_then(serde_json::Error::io_error_kind);
        io.or(json) == Some(std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    // The sandbox init runs before anything else: single-threaded, no clap, no runtime.
    if std::env::args().nth(1).as_deref() == Some("__init") {
        // Limits apply from the start: join the container's cgroups before __init forks.
        if let Some(cgroups) = executor::container::SandboxCgroups::from_env()
            && let Err(e) = cgroups.join(std::process::id())
        {
            let _ = writeln!(std::io::stderr().lock(), "kiln: {e:#}");
            std::process::exit(125);
        }
        executor::init::main(std::env::args().collect());
    }
    if std::env::args().nth(1).as_deref() == Some(executor::rootless::session::PAUSE_ARG) {
        executor::rootless::session::pause_main();
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        // Help and --version print to stdout and succeed; a wrong command line exits 125,
        // as docker's does.
        Err(e) if !e.use_stderr() => e.exit(),
        // `kiln` or `kiln image` alone: the help, successfully (as docker).
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(125);
        }
    };
    if std::env::var_os("KILN_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("KILN_LOG"))
            .with_writer(std::io::stderr)
            .init();
    }
    let is_run = matches!(
        cli.command,
        Command::Run(_)
            | Command::Container {
                cmd: ContainerCmd::Run(_)
            }
    );
    let sandboxes = matches!(
        cli.command,
        Command::Build(_) | Command::Run(_) | Command::Containers(_) | Command::Container { .. }
    );
    // Not root: join the user's rootless session, still single-threaded (setns needs it).
    if let Err(e) = rootless::enter_if_unprivileged(sandboxes) {
        let _ = writeln!(std::io::stderr().lock(), "error: {e:#}");
        return ExitCode::from(if is_run { 125 } else { 1 });
    }
    // Sandboxes are born under the device policy: join it once, before any thread exists.
    // (Rootless, the user namespace cannot create device nodes and host devices are only
    // bind-mounted, so there is no device cgroup to join.)
    // `kiln build --cgroup-parent P`: the build (and so every RUN sandbox) in P/kiln-<pid>
    // of every v1 hierarchy instead, the device policy configured there first.
    let cgroup_parent = match &cli.command {
        Command::Build(b) => build::cgroup_parent(b).map(str::to_owned),
        _ => None,
    };
    let mut parented = None;
    if let Some(p) = &cgroup_parent {
        let entered = match rootless::active() {
            Some(_) => Err(executor::devices::DeviceError::CgroupParent {
                parent: p.clone(),
                why: "not supported rootless (no cgroup to create)".into(),
            }),
            None => executor::cgparent::enter(p),
        };
        match entered {
            Ok(x) => parented = Some(x),
            Err(e) => {
                let _ = writeln!(std::io::stderr().lock(), "error: {e}");
                return ExitCode::from(1);
            }
        }
    }
    if sandboxes
        && cgroup_parent.is_none()
        && rootless::active().is_none()
        && let Err(e) = executor::devices::confine_self()
    {
        let _ = writeln!(
            std::io::stderr().lock(),
            "error: {:#}",
            anyhow::Error::new(e)
        );
        return ExitCode::from(if is_run { 125 } else { 1 });
    }
    let result = dispatch(cli.command);
    if let Some(p) = &mut parented {
        p.leave();
    }
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed stderr leaves only the exit status to tell.
            let _ = writeln!(std::io::stderr().lock(), "error: {e:#}");
            ExitCode::from(if is_run { 125 } else { 1 })
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn print_line(s: &str) -> anyhow::Result<ExitCode> {
    writeln!(std::io::stdout().lock(), "{s}")?;
    Ok(ExitCode::SUCCESS)
}

/// `kiln inspect`: containers first (when `containers`), then images; a JSON array, or each
/// object through `a.format`.
fn inspect(a: &InspectArgs, containers: bool) -> anyhow::Result<()> {
    let mut docs = Vec::new();
    for n in &a.names {
        let c = if containers {
            containers::inspect(n)?
        } else {
            None
        };
        docs.push(match c {
            Some(c) => c,
            None => images::inspect_value(n)?,
        });
    }
    if let Some(f) = &a.format {
        return print_template(f, &docs);
    }
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &docs)?;
    writeln!(out)?;
    Ok(())
}

/// Prints each of `docs` through the Go template `src`, one line each (as docker does).
fn print_template(src: &str, docs: &[serde_json::Value]) -> anyhow::Result<()> {
    let t = gotmpl::Template::parse(src)?;
    let mut out = std::io::stdout().lock();
    for d in docs {
        writeln!(out, "{}", t.render(d)?)?;
    }
    Ok(())
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Build(a) => build::build(*a),
        Command::Import(a) => images::import(a).map(|()| ExitCode::SUCCESS),
        Command::Images(a) => images::list(&a).map(|()| ExitCode::SUCCESS),
        Command::Inspect(a) => inspect(&a, true).map(|()| ExitCode::SUCCESS),
        Command::Image { cmd } => dispatch(match cmd {
            ImageCmd::Ls(a) => Command::Images(a),
            ImageCmd::Rm { names } => Command::Rmi { names },
            ImageCmd::Inspect(a) => return inspect(&a, false).map(|()| ExitCode::SUCCESS),
            ImageCmd::History(a) => Command::History(a),
            ImageCmd::Tag { source, target } => Command::Tag { source, target },
            ImageCmd::Import(a) => Command::Import(a),
        }),
        Command::Container { cmd } => match cmd {
            ContainerCmd::Ls(a) => containers::dispatch(containers::Cmd::Ps(a)),
            ContainerCmd::Inspect(a) => {
                for n in &a.names {
                    containers::find(n)?;
                }
                inspect(&a, true).map(|()| ExitCode::SUCCESS)
            }
            ContainerCmd::Run(a) => run::run(*a),
            ContainerCmd::Cp(a) => cp::cp(&a).map(|()| ExitCode::SUCCESS),
            ContainerCmd::Other(c) => containers::dispatch(c),
        },
        Command::Cp(a) => cp::cp(&a).map(|()| ExitCode::SUCCESS),
        Command::Info(a) => info::info(&a).map(|()| ExitCode::SUCCESS),
        Command::History(a) => images::history(&a).map(|()| ExitCode::SUCCESS),
        Command::Version { format } => {
            let v = serde_json::json!({
                "Client": {
                    "Version": env!("CARGO_PKG_VERSION"),
                    "Os": std::env::consts::OS,
                    "Arch": cache::oci::Platform::host().architecture,
                },
            });
            match format {
                Some(f) => print_template(&f, std::slice::from_ref(&v)),
                None => {
                    let c = &v["Client"];
                    print_line(&format!(
                        "Client: kiln\n Version:     {}\n OS/Arch:     {}/{}\n Daemonless:  true",
                        env!("CARGO_PKG_VERSION"),
                        c["Os"].as_str().unwrap_or_default(),
                        c["Arch"].as_str().unwrap_or_default(),
                    ))
                    .map(|_| ())
                }
            }
            .map(|()| ExitCode::SUCCESS)
        }
        Command::Tag { source, target } => {
            images::tag(&source, &target).map(|()| ExitCode::SUCCESS)
        }
        Command::Rmi { names } => images::rmi(&names).map(|()| ExitCode::SUCCESS),
        Command::Save { names, output } => {
            images::save(&names, &output).map(|()| ExitCode::SUCCESS)
        }
        Command::Run(a) => run::run(*a),
        Command::Prune(a) => prune::prune(a).map(|()| ExitCode::SUCCESS),
        Command::System { cmd } => system::system(cmd).map(|()| ExitCode::SUCCESS),
        Command::Pull {
            reference,
            platform,
            insecure,
        } => {
            let store = open_store()?;
            let cfg = registry::RegistryConfig::from_env(&insecure);
            let pulled = runtime()?.block_on(async {
                let _lock = store.lock_shared().context("locking the store")?;
                registry::pull(&store, &reference, platform.as_deref(), &cfg).await
            })?;
            // The registry's digest, as docker prints it: `name@digest` pulls the same image.
            print_line(&pulled.digest.to_string())
        }
        Command::Push {
            name,
            dest,
            insecure,
        } => {
            let store = open_store()?;
            let cfg = registry::RegistryConfig::from_env(&insecure);
            // Push writes compressed blobs: prune must not run meanwhile.
            let _lock = store.lock_shared().context("locking the store")?;
            let digest =
                runtime()?.block_on(registry::push(&store, &name, dest.as_deref(), &cfg))?;
            print_line(&digest.to_string())
        }
        Command::Login {
            registry: host,
            username,
            password,
            password_stdin,
            insecure,
        } => {
            let password = match (password, password_stdin) {
                (Some(p), false) => p,
                (None, true) => registry::read_password_stdin()?,
                (Some(_), true) => anyhow::bail!("--password and --password-stdin are exclusive"),
                (None, false) => {
                    anyhow::bail!("give the password with --password-stdin (or --password)")
                }
            };
            let cfg = registry::RegistryConfig::from_env(&insecure);
            runtime()?.block_on(registry::login(&cfg, host.as_deref(), &username, &password))?;
            print_line("Login Succeeded")
        }
        Command::Logout { registry: host } => {
            let cfg = registry::RegistryConfig::from_env(&[]);
            let removed = registry::logout(&cfg, host.as_deref())?;
            let name = registry::registry_host(host.as_deref());
            print_line(&if removed {
                format!("Removing login credentials for {name}")
            } else {
                format!("Not logged in to {name}")
            })
        }
        Command::Network { cmd } => network::dispatch(cmd).map(|()| ExitCode::SUCCESS),
        Command::Volume { cmd } => volume::dispatch(cmd),
        Command::Containers(c) => containers::dispatch(c),
        Command::Init { .. } => executor::init::main(std::env::args().collect()),
    }
}

//! `kiln run`: a container from an image, with the caller's stdio.

use anyhow::Context as _;
use std::process::{ExitCode, Stdio};

/// `kiln run` flags.
#[derive(Debug, clap::Args)]
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
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Override the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Container name (default: a generated id).
    #[arg(long)]
    name: Option<String>,
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a terminal (stdin must be one).
    #[arg(short = 't', long)]
    tty: bool,
    /// Image to run.
    image: String,
    /// Command and arguments (replace the image's CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn container_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seed = format!(
        "{}-{}-{}",
        std::process::id(),
        now.as_nanos(),
        std::thread::current().name().unwrap_or("")
    );
    cache::oci::Digest::of(seed.as_bytes()).hex()[..16].to_owned()
}

/// Runs `kiln run`; the exit code is the container's.
pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let store = crate::open_store()?;
    let image = store
        .resolve(&a.image)
        .with_context(|| format!("looking up image {}", a.image))?
        .with_context(|| format!("no such image: {}", a.image))?;
    let env = a
        .env
        .iter()
        .map(|e| match e.split_once('=') {
            Some(_) => e.clone(),
            None => format!("{e}={}", std::env::var(e).unwrap_or_default()),
        })
        .collect();
    let overrides = solver::run::Overrides {
        env,
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        entrypoint: a.entrypoint.clone(),
        cmd: a.command.clone(),
        tty: a.tty,
    };
    let id = a.name.clone().unwrap_or_else(container_id);
    let container = {
        let _lock = store.lock_shared().context("locking the store")?;
        solver::run::prepare(&store, &image.config, &id, &overrides)
            .with_context(|| format!("preparing container {id}"))?
    };
    let exe = std::env::current_exe().context("locating the kiln binary")?;
    let spec = executor::spec::InitSpec::Run(container.spec.clone());
    let mut cmd =
        executor::sandbox::command(&exe, &spec).context("building the sandbox command")?;
    if !a.interactive && !a.tty {
        cmd.stdin(Stdio::null());
    }
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", exe.display()));
    if a.rm {
        let _ = std::fs::remove_dir_all(&container.dir);
    }
    let status = status?;
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}

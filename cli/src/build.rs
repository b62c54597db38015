//! `kiln build`: read the Dockerfile and context, resolve base images, lower, solve, tag.

use crate::render::{Mode, Renderer};
use anyhow::{Context as _, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `kiln build` flags.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Name (and tag) of the result; may be given more than once.
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Build this stage instead of the last one.
    #[arg(long)]
    target: Option<String>,
    /// Set a build argument.
    #[arg(long = "build-arg", value_name = "K=V")]
    build_args: Vec<String>,
    /// Run every step; ignore the build cache.
    #[arg(long)]
    no_cache: bool,
    /// After the build, list every step that missed the cache and why.
    #[arg(long)]
    explain: bool,
    /// Progress output.
    #[arg(long, value_enum, default_value = "auto")]
    progress: Mode,
    /// Steps run at once (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// Pull base images from their registry even when the local store has them (the tag is
    /// resolved again; a moved tag gives a new base and a cache miss).
    #[arg(long)]
    pull: bool,
    /// Push the result to the registry of every `-t` name and print the pushed digest.
    #[arg(long)]
    push: bool,
    /// Allow plain HTTP to this registry (`host:port`); may be repeated.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    /// A secret for RUN --mount=type=secret: `id=x,src=FILE` or `id=x,env=VAR`.
    #[arg(long = "secret", value_name = "id=ID,src=FILE|env=VAR")]
    secrets: Vec<String>,
    /// Network of RUN steps that do not set `--network`: default, none or host.
    #[arg(long, value_name = "MODE", default_value = "default", value_parser = ["default", "none", "host"])]
    network: String,
    /// Parse and lower the Dockerfile without building; print lint warnings and errors as
    /// `Dockerfile:LINE:COL: [rule] message` and exit non-zero on an error.
    #[arg(long)]
    check: bool,
    /// The build context directory.
    context: PathBuf,
}

/// `.dockerignore` of a build: `<Dockerfile>.dockerignore` beside the Dockerfile wins over
/// the context's `.dockerignore` (BuildKit's rule).
fn read_dockerignore(dockerfile: &Path, context: &Path) -> anyhow::Result<String> {
    let mut specific = dockerfile.as_os_str().to_owned();
    specific.push(".dockerignore");
    for p in [PathBuf::from(specific), context.join(".dockerignore")] {
        match std::fs::read_to_string(&p) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }
    Ok(String::new())
}

fn parse_build_args(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in args {
        match a.split_once('=') {
            Some((k, v)) => out.insert(k.to_owned(), v.to_owned()),
            // `--build-arg K` takes K from the environment, as docker does.
            None => match std::env::var(a) {
                Ok(v) => out.insert(a.clone(), v),
                Err(_) => continue,
            },
        };
    }
    Ok(out)
}

/// Runs `kiln build`.
pub fn build(a: BuildArgs) -> anyhow::Result<()> {
    let context = std::fs::canonicalize(&a.context)
        .with_context(|| format!("build context {}", a.context.display()))?;
    if !context.is_dir() {
        bail!("build context {} is not a directory", a.context.display());
    }
    let dockerfile = a.file.clone().unwrap_or_else(|| context.join("Dockerfile"));
    let dockerfile_name = a
        .file
        .as_ref()
        .map_or_else(|| "Dockerfile".to_owned(), |f| f.display().to_string());
    let text = std::fs::read_to_string(&dockerfile).with_context(|| {
        format!(
            "{dockerfile_name}: cannot read Dockerfile {}",
            dockerfile.display()
        )
    })?;
    let dockerignore = read_dockerignore(&dockerfile, &context)?;
    for t in &a.tags {
        cache::reference::Reference::parse(t).with_context(|| format!("invalid tag {t:?}"))?;
    }

    let opts = frontend::BuildOptions {
        dockerfile_name: dockerfile_name.clone(),
        target: a.target.clone(),
        build_args: parse_build_args(&a.build_args)?,
        platform: cache::oci::Platform::host(),
    };
    if a.check {
        return crate::check::run(&text, &opts, &context, &dockerignore);
    }
    let df = frontend::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let refs = frontend::base_images(&df, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    if a.push && a.tags.is_empty() {
        bail!("--push needs a name to push to: add -t REGISTRY/REPOSITORY:TAG");
    }
    let store = crate::open_store()?;
    let mut reg_cfg = crate::registry::RegistryConfig::from_env(&a.insecure);
    reg_cfg.progress = !matches!(a.progress, Mode::Rawjson);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let bases = rt.block_on(async {
        let _lock = store.lock_shared().context("locking the store")?;
        crate::bases::resolve(
            &store,
            &refs,
            &dockerfile_name,
            &opts.platform,
            a.pull,
            &reg_cfg,
        )
        .await
    })?;
    let graph = frontend::lower(&df, &opts, &bases).map_err(|e| anyhow::anyhow!("{e}"))?;

    let solve_opts = solver::SolveOptions {
        context,
        dockerignore,
        jobs: a
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        no_cache: a.no_cache,
        kiln_exe: std::env::current_exe().context("locating the kiln binary")?,
        dockerfile_name,
        secrets: crate::check::secrets(&a.secrets)?,
        network: match a.network.as_str() {
            "host" => solver::graph::NetworkMode::Host,
            "none" => solver::graph::NetworkMode::None,
            _ => solver::graph::NetworkMode::Default,
        },
        // RUN steps on the default network join the bridge (pooled namespaces).
        bridge: match a.network.as_str() {
            "host" | "none" => None,
            _ => Some(crate::netrun::build_network()?),
        },
    };
    let image = rt.block_on(async {
        let _lock = store.lock_shared().context("locking the store")?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<solver::progress::Event>();
        let mut renderer = Renderer::new(a.progress);
        let render = async move {
            let mut misses = Vec::new();
            while let Some(ev) = rx.recv().await {
                if let solver::progress::EventKind::Log { bytes, .. } = &ev.kind {
                    let text = String::from_utf8_lossy(bytes);
                    if let Some(why) = text.strip_prefix(solver::explain::PREFIX) {
                        misses.push(format!("{}: {}", ev.name, why.trim_end()));
                    }
                }
                // A closed stderr must not stop the build.
                let _ = renderer.event(&ev);
            }
            misses
        };
        let solver = solver::Solver::new(store.clone(), solve_opts);
        let (image, misses) = tokio::join!(solver.solve(&graph, tx), render);
        if a.explain {
            use std::io::Write as _;
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "cache misses: {}", misses.len());
            for m in &misses {
                let _ = writeln!(err, "  {m}");
            }
        }
        anyhow::Ok(image?)
    })?;
    for t in &a.tags {
        store
            .tag(t, &image.manifest_digest)
            .with_context(|| format!("tagging {t}"))?;
    }
    let mut err = std::io::stderr().lock();
    use std::io::Write as _;
    let _ = writeln!(err, "writing image {} done", image.manifest_digest);
    for t in &a.tags {
        let _ = writeln!(err, "naming to {t} done");
    }
    drop(err);
    if a.push {
        for t in &a.tags {
            let digest = rt.block_on(crate::registry::push(&store, t, None, &reg_cfg))?;
            let _ = writeln!(std::io::stderr(), "pushing {t} done: {digest}");
            writeln!(std::io::stdout().lock(), "{digest}")?;
        }
    }
    Ok(())
}

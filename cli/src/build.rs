//! `kiln build`: read the Dockerfile and context, resolve base images, lower, solve, tag.

mod attest;
mod call;
pub use call::{Call, GoJson, instruction_end, location, source_info};
pub mod dates;
mod fsout;
mod input;
mod load;
mod named;
mod oci_layout;
mod outline;
mod output;
pub mod platforms;
pub(crate) mod runopts;
mod sbom;

use crate::render::{Mode, Renderer};
use anyhow::{Context as _, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `kiln build` flags.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// `seccomp=unconfined`, `seccomp=PROFILE.json` (docker's format) for every RUN.
    #[arg(long = "security-opt", value_name = "OPT")]
    security_opt: Vec<String>,
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
    /// Run the steps of these stages again (ignore their cache); comma-separated or repeated.
    /// Steps of other stages that use them run again only when the re-run changed a result.
    #[arg(long = "no-cache-filter", value_name = "STAGE", value_delimiter = ',')]
    no_cache_filter: Vec<String>,
    /// After the build, list every step that missed the cache and why.
    #[arg(long)]
    explain: bool,
    /// Progress output: auto, plain, tty, rawjson, or quiet (as `-q`).
    #[arg(long, default_value = "auto", value_parser = parse_progress)]
    progress: Progress,
    /// Print only the image id on stdout; no progress.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Set an image label (`K=V`, or `K` for an empty value); overrides the Dockerfile's
    /// LABEL of that key; may be repeated.
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Write the image id (`sha256:...`, no newline) to this file.
    #[arg(long = "iidfile", value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Write the build result's metadata as JSON (buildx's keys) to this file.
    #[arg(long = "metadata-file", value_name = "FILE")]
    metadata_file: Option<PathBuf>,
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
    /// An ssh agent for RUN --mount=type=ssh and ssh git remotes: `default` ($SSH_AUTH_SOCK),
    /// `ID=SOCKET`, or `ID=KEY[,KEY...]` (the keys are loaded into a private `ssh-agent`).
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET|KEY[,KEY...]]")]
    ssh: Vec<String>,
    /// Network of RUN steps that do not set `--network`: default, none or host.
    #[arg(long, value_name = "MODE", default_value = "default", value_parser = ["default", "none", "host"])]
    network: String,
    /// Parse and lower the Dockerfile without building and print the lint warnings as buildx
    /// does (`--call check`); exit 1 when there is a warning or an error.
    #[arg(long)]
    check: bool,
    /// Export the build cache: `type=registry,ref=REF[,mode=min|max][,mounts=true]`,
    /// `type=local,dest=DIR[,...]` (an OCI layout) or `type=inline`; may be repeated.
    #[arg(long = "cache-to", value_name = "SPEC")]
    cache_to: Vec<String>,
    /// Import a build cache: `type=registry,ref=REF`, `REF`, or `type=local,src=DIR`; may be
    /// repeated (the first that has a step wins). Layers are downloaded only when needed.
    #[arg(long = "cache-from", value_name = "SPEC")]
    cache_from: Vec<String>,
    /// Target platforms (`linux/amd64,linux/arm64`; comma-separated or repeated): one image
    /// per platform, under one OCI index when there are several. RUN steps of another
    /// architecture run through qemu-user binfmt handlers.
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    platforms: Vec<String>,
    /// Add `NAME:IP` to /etc/hosts of every RUN step; may be repeated.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_hosts: Vec<String>,
    /// Size of /dev/shm in RUN steps (`128m`; default 64m).
    #[arg(long = "shm-size", value_name = "SIZE")]
    shm_size: Option<String>,
    /// A resource limit of RUN steps, `NAME=SOFT[:HARD]` (`nofile=1024:2048`); may be repeated.
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    ulimits: Vec<String>,
    /// The cgroup the RUN steps' cgroups go under (`PARENT/kiln-<pid>` in every cgroup v1
    /// hierarchy, or the unified one on cgroup v2; relative: below kiln's own cgroup there),
    /// with the device policy applied.
    #[arg(long = "cgroup-parent", value_name = "CGROUP")]
    cgroup_parent: Option<String>,
    /// Entitlements: `network.host` (for `RUN --network=host`), `security.insecure` (for
    /// `RUN --security=insecure`); comma-separated or repeated.
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    allow: Vec<String>,
    /// What to do with the Dockerfile, as buildx's `--call`: `build` (default), `check` (as
    /// `--check`: lint, exit 1 when something was found), `targets` (list the stages) or
    /// `outline` (what the target takes); `,format=json` prints BuildKit's JSON result,
    /// `,ignorestatus=true` exits 0 after a check that found something.
    #[arg(
        long = "call",
        value_name = "METHOD[,format=json][,ignorestatus=BOOL]",
        default_value = "build"
    )]
    call: String,
    /// `-o/--output`, `--load`, `--annotation`, `--provenance`, `--sbom`, `--attest`.
    #[command(flatten)]
    outputs: output::OutputFlags,
    /// `NAME=VALUE`: replace the stage or image NAME with a directory, `docker-image://REF`, a
    /// git URL, an http(s) archive URL or `oci-layout://DIR@sha256:...` (buildx
    /// `--build-context`); may be repeated.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    build_contexts: Vec<String>,
    /// The build context: a directory, `-` (stdin), a git URL or an http(s) URL.
    context: PathBuf,
}

/// `--progress`: a renderer mode, or `quiet` (nothing on stderr, the image id on stdout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Quiet,
    Show(Mode),
}

fn parse_progress(s: &str) -> Result<Progress, String> {
    if s.eq_ignore_ascii_case("quiet") {
        return Ok(Progress::Quiet);
    }
    <Mode as clap::ValueEnum>::from_str(s, true)
        .map(Progress::Show)
        .map_err(|_| "expected auto, plain, tty, rawjson or quiet".to_owned())
}

/// buildx's `buildx.build.ref` shape, `BUILDER/NODE/ID`, with a random 25-character id.
fn build_ref() -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom for the build ref")?;
    let mut n = u128::from_be_bytes(b);
    let mut id = String::with_capacity(25);
    for _ in 0..25 {
        id.push(char::from_digit((n % 36) as u32, 36).expect("a digit below 36"));
        n /= 36;
    }
    Ok(format!("kiln/local/{id}"))
}

/// The `--metadata-file` document: the keys `docker buildx build` writes for an image.
/// `manifest` describes the manifest kiln stored, or the one it pushed.
fn metadata(
    config_digest: &cache::oci::Digest,
    manifest: &cache::oci::Descriptor,
    tags: &[String],
    build_ref: &str,
) -> serde_json::Value {
    serde_json::json!({
        "buildx.build.ref": build_ref,
        "containerimage.config.digest": config_digest.to_string(),
        "containerimage.descriptor": {
            "mediaType": manifest.media_type,
            "digest": manifest.digest.to_string(),
            "size": manifest.size,
        },
        "containerimage.digest": manifest.digest.to_string(),
        "image.name": tags.join(","),
    })
}

/// `--cgroup-parent`, which `main` applies before any thread exists.
pub fn cgroup_parent(a: &BuildArgs) -> Option<&str> {
    a.cgroup_parent.as_deref()
}

/// The descriptor of the manifest `push` sent for `image`: kiln's own images go out with
/// compressed layers (the memoized blobs push made), others as stored. Checked against the
/// digest the push returned.
fn pushed_descriptor(
    store: &cache::store::Store,
    image: &cache::image::Image,
    stored: &cache::oci::Descriptor,
    pushed: &cache::oci::Digest,
    compression: cache::compress::Compression,
) -> anyhow::Result<cache::oci::Descriptor> {
    use cache::oci;
    if *pushed == image.manifest_digest {
        return Ok(stored.clone());
    }
    let mut manifest = image.manifest.clone();
    manifest.layers = image
        .config
        .rootfs
        .diff_ids
        .iter()
        .map(|d| {
            let desc = store.compressed_layer(d, compression)?;
            let media_type = match desc.media_type.as_str() {
                oci::MEDIA_TYPE_DOCKER_LAYER_GZIP => oci::MEDIA_TYPE_LAYER_GZIP,
                m => m,
            };
            Ok(oci::Descriptor::new(media_type, desc.digest, desc.size))
        })
        .collect::<Result<_, cache::store::StoreError>>()
        .context("--metadata-file: reading the pushed layers' descriptors")?;
    let bytes = oci::to_canonical_json(&manifest).context("--metadata-file: the manifest")?;
    anyhow::ensure!(
        oci::Digest::of(&bytes) == *pushed,
        "--metadata-file: cannot describe the pushed manifest {pushed}"
    );
    Ok(oci::Descriptor::new(
        oci::MEDIA_TYPE_MANIFEST,
        pushed.clone(),
        bytes.len() as u64,
    ))
}

/// `.dockerignore` of a build: `<Dockerfile>.dockerignore` beside the Dockerfile wins over
/// the context's `.dockerignore` (BuildKit's rule).
fn read_dockerignore(dockerfile: &Path, context: &Path) -> anyhow::Result<String> {
    let mut specific = dockerfile.as_os_str().to_owned();
    specific.push(".dockerignore");
    for p in [PathBuf::from(specific), context.join(".dockerignore")] {
        match std::fs::read_to_string(&p) {
            Ok(s) => {
                context::Ignore::validate(&p, &s)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }
    Ok(String::new())
}

/// `--label` values as buildx reads them: `K=V`, `K` alone is an empty value, the last wins.
fn parse_labels(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in args {
        let (k, v) = a.split_once('=').unwrap_or((a, ""));
        anyhow::ensure!(!k.trim().is_empty(), "--label {a:?}: the key is empty");
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
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

/// The solver's stage labels for `--no-cache-filter` names (BuildKit matches stage names,
/// case-insensitively). A single-stage build's steps carry no label (`[2/3] RUN ...`): `""`.
fn no_cache_stages(df: &frontend::Dockerfile, filter: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for f in filter.iter().map(|f| f.trim().to_ascii_lowercase()) {
        let stage = df.stages.iter().find(|s| s.name.as_deref() == Some(&f));
        match stage {
            Some(_) if df.stages.len() == 1 => out.push(String::new()),
            Some(_) => out.push(f),
            None if f.is_empty() => {}
            None => {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: --no-cache-filter {f}: no stage of that name"
                );
            }
        }
    }
    out
}

/// Runs `kiln build`; the exit status is not 0 only for a `--call check` that found
/// something (buildx's status code).
pub fn build(a: BuildArgs) -> anyhow::Result<std::process::ExitCode> {
    let call = call::parse(&a.call).context("--call")?;
    let quiet = a.quiet || a.progress == Progress::Quiet;
    let mode = match a.progress {
        Progress::Show(m) if !quiet => Some(m),
        _ => None,
    };
    // As buildx: a failed build must not leave the previous build's id behind.
    for f in [&a.iidfile, &a.metadata_file].into_iter().flatten() {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", f.display()));
            }
            _ => {}
        }
    }
    // Flags are checked before stdin is read.
    let labels = parse_labels(&a.labels)?;
    let attest_req = attest::parse(
        a.outputs.provenance.as_deref(),
        a.outputs.sbom.as_deref(),
        &a.outputs.attest,
    )?;
    // `--push` with attestations or annotations is buildx's `-o type=registry`; alone it
    // keeps kiln's push of each tag.
    let push_as_output =
        a.push && (attest_req != attest::Requested::default() || !a.outputs.annotation.is_empty());
    let outputs = output::parse(&a.outputs, &a.tags, push_as_output)?;
    let started = executor::container::time::now_rfc3339();
    let mut cache_to = a
        .cache_to
        .iter()
        .map(|s| crate::cacheopts::parse_cache_to(s).context("--cache-to"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cache_from = a
        .cache_from
        .iter()
        .map(|s| crate::cacheopts::parse_cache_from(s).context("--cache-from"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let input = input::read_input(&a.context, a.file.as_deref())?;
    let (context, dockerfile_name, bytes) = (
        input.context.clone(),
        input.dockerfile_name.clone(),
        &input.dockerfile,
    );
    // Bytes that are not UTF-8 are fine in comments (docker ignores them there).
    let text = frontend::decode(bytes)
        .map_err(|e| anyhow::anyhow!("{}", e.with_file_name(&dockerfile_name)))?;
    let dockerignore = read_dockerignore(&input.dockerfile_path, &context)?;
    for t in &a.tags {
        cache::reference::Reference::parse(t).with_context(|| format!("invalid tag {t:?}"))?;
    }

    let mut opts = frontend::BuildOptions {
        dockerfile_name: dockerfile_name.clone(),
        target: a.target.clone(),
        build_args: parse_build_args(&a.build_args)?,
        platform: cache::oci::Platform::host(),
        build_platform: cache::oci::Platform::host(),
        named_contexts: Default::default(),
    };
    let platforms = platforms::parse(&a.platforms)?;
    if a.check || call.method == call::Method::Check {
        // The file name buildx shows: `-f` as given, else CONTEXT/Dockerfile.
        let shown = match &a.file {
            Some(f) if f.as_os_str() == "-" => "stdin".to_owned(),
            Some(f) => f.display().to_string(),
            None => context::go_clean(&format!("{}/Dockerfile", a.context.display())),
        };
        let opts = frontend::BuildOptions {
            dockerfile_name: shown,
            ..opts
        };
        return crate::check::run(&text, &opts, &context, &dockerignore, call);
    }
    let mut allow = runopts::parse_allow(&a.allow)?;
    // buildx grants network.host itself for `--network host`.
    allow.network_host |= a.network == "host";
    let run_security = runopts::apply(
        crate::security::parse(&a.security_opt)?,
        &a.add_hosts,
        a.shm_size.as_deref(),
        &a.ulimits,
    )?;
    let df = frontend::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}", e.with_file_name(&dockerfile_name)))?;
    if call.method != call::Method::Build {
        let out = match call.method {
            call::Method::Targets if call.json => call::targets_json(&df, &text),
            call::Method::Targets => call::targets_text(&df, &text),
            _ => outline::text(
                &df,
                &text,
                opts.target.as_deref(),
                &opts.build_args,
                call.json,
            )?,
        };
        // buildx prints result.json with a newline after it, the text as it is.
        let nl = if call.json { "\n" } else { "" };
        use std::io::Write as _;
        write!(std::io::stdout().lock(), "{out}{nl}")?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let store = crate::open_store()?;
    opts.named_contexts = named::resolve(&a.build_contexts, &store, &opts.platform)?;
    // Each platform's bases are collected again below.
    frontend::base_images(&df, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    if a.push && a.tags.is_empty() {
        bail!("--push needs a name to push to: add -t REGISTRY/REPOSITORY:TAG");
    }
    // buildx: `--build-arg BUILDKIT_INLINE_CACHE=1` (Go's true spellings) is
    // `--cache-to type=inline`.
    if opts
        .build_args
        .get("BUILDKIT_INLINE_CACHE")
        .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
        && !cache_to.contains(&crate::cacheopts::CacheTo::Inline)
    {
        cache_to.push(crate::cacheopts::CacheTo::Inline);
    }
    let mut reg_cfg = crate::registry::RegistryConfig::from_env(&a.insecure);
    reg_cfg.progress = matches!(mode, Some(m) if m != Mode::Rawjson);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Private agents for key files live until the build ends.
    let (ssh, _agents) = ssh_agents(&a.ssh)?;
    let created = dates::rule(&opts.build_args, &context)?;
    let mut sbom_opts = None;
    let mut last = None;
    // Held until the image is tagged, so that a prune cannot take an untagged result.
    let lock = store.lock_shared().context("locking the store")?;
    // Left by killed builds: their processes are gone, so nothing can be using them.
    if let Err(e) = store.clean_stale_tmp() {
        tracing::warn!(error = %e, "stale temp entries not removed");
    }
    let imported = match cache_from.is_empty() || a.no_cache {
        true => None,
        false => Some(rt.block_on(crate::cacheopts::import(&cache_from, &reg_cfg, quiet))?),
    };
    // One solve per platform, in order; steps of build-platform stages are the same in
    // each (same keys), so they run once and the later platforms find them cached.
    let multi = platforms.len() > 1;
    // Keys built so far in this build: under --no-cache too, a later platform reuses them.
    let session = Arc::default();
    let mut renderer = mode.map(Renderer::new);
    let mut vertex_offset = 0;
    let mut built = Vec::new();
    for platform in platforms
        .iter()
        .cloned()
        .chain(platforms.is_empty().then(cache::oci::Platform::host))
    {
        let opts = frontend::BuildOptions {
            platform: platform.clone(),
            ..opts.clone()
        };
        let bases = rt.block_on(async {
            let _lock = store.lock_shared().context("locking the store")?;
            let mut refs = frontend::base_images(&df, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut bases = std::collections::BTreeMap::new();
            // ONBUILD triggers of the bases can name more images: resolve until none is new.
            while !refs.is_empty() {
                bases.extend(
                    crate::bases::resolve(
                        &store,
                        &refs,
                        &dockerfile_name,
                        &opts.platform,
                        a.pull,
                        &reg_cfg,
                    )
                    .await?,
                );
                refs = frontend::base_images_with(&df, &opts, &bases)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .into_iter()
                    .filter(|r| !bases.contains_key(&r.key()))
                    .collect();
            }
            anyhow::Ok(bases)
        })?;
        let mut graph = frontend::lower(&df, &opts, &bases).map_err(|e| anyhow::anyhow!("{e}"))?;
        runopts::check_entitlements(&graph, allow, &dockerfile_name)?;
        if multi {
            platforms::label_nodes(&mut graph);
        }
        let solve_opts = solver::SolveOptions {
            context: context.clone(),
            dockerignore: dockerignore.clone(),
            jobs: a
                .jobs
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            no_cache: a.no_cache,
            no_cache_stages: no_cache_stages(&df, &a.no_cache_filter),
            kiln_exe: std::env::current_exe().context("locating the kiln binary")?,
            dockerfile_name: dockerfile_name.clone(),
            secrets: crate::check::secrets(&a.secrets)?,
            network: match a.network.as_str() {
                "host" => graph::NetworkMode::Host,
                // A rootless session on the host network has no bridge: RUN steps on the
                // default network use the host's.
                "none" => graph::NetworkMode::None,
                _ if executor::container::runtime::host_network() => graph::NetworkMode::Host,
                _ => graph::NetworkMode::Default,
            },
            ssh: ssh.clone(),
            security: run_security.clone(),
            // SOURCE_DATE_EPOCH dates what steps make; without it, 0.
            epoch: solver::ops::SolveOptions::epoch_of(&created),
            created: created.clone(),
            // RUN steps on the default network join the bridge (pooled namespaces).
            bridge: match a.network.as_str() {
                "host" | "none" => None,
                _ if executor::container::runtime::host_network() => None,
                // Rootless without a network helper: nothing to bridge to.
                _ if !executor::container::runtime::has_uplink() => None,
                _ => Some(crate::netrun::build_network()?),
            },
        };
        sbom_opts = Some(solve_opts.clone());
        let solved = rt.block_on(async {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<solver::progress::Event>();
            // One renderer for every platform's solve, the vertices of each numbered after the
            // previous ones, so that a multi-platform build numbers its steps once.
            let mut shown = renderer.take();
            let offset = vertex_offset;
            vertex_offset += graph.nodes.len();
            let render = async move {
                let mut misses = Vec::new();
                // The live view redraws on a tick too, so a silent step's timer keeps running.
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    let ev = tokio::select! {
                        ev = rx.recv() => ev,
                        _ = tick.tick() => {
                            if let Some(r) = &mut shown {
                                let _ = r.tick();
                            }
                            continue;
                        }
                    };
                    let Some(ev) = ev else { break };
                    if let solver::progress::EventKind::CacheMiss { reason } = &ev.kind {
                        misses.push(format!("{}: {reason}", ev.name));
                    }
                    // A closed stderr must not stop the build.
                    if let Some(r) = &mut shown {
                        let mut ev = ev;
                        ev.vertex += offset;
                        let _ = r.event(&ev);
                    }
                }
                (misses, shown)
            };
            let mut solver =
                solver::Solver::new(store.clone(), solve_opts).with_session(Arc::clone(&session));
            if let Some(i) = &imported {
                solver = solver.with_cache_from(Arc::clone(i));
            }
            let (solved, (misses, used)) = tokio::join!(solver.solve_steps(&graph, tx), render);
            renderer = used;
            if a.explain {
                use std::io::Write as _;
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "cache misses: {}", misses.len());
                for m in &misses {
                    let _ = writeln!(err, "  {m}");
                }
            }
            match solved {
                Ok(s) => anyhow::Ok(s),
                // Plain progress streamed the failed step's output already: the error says what
                // failed, without those lines again.
                Err(e) => {
                    let e = anyhow::Error::new(e);
                    let exit = e.chain().find_map(|c| match c.downcast_ref() {
                        Some(solver::SolveError::Exit { at, code, .. }) => Some((at, *code)),
                        _ => None,
                    });
                    match exit {
                        Some((at, code)) if mode.map(Mode::resolve) == Some(Mode::Plain) => {
                            Err(anyhow::anyhow!("{at}: exit code {code}"))
                        }
                        _ => Err(e),
                    }
                }
            }
        })?;
        built.push((platform, solved));
        last = Some((opts, bases, graph));
    }
    // The last platform's lowering, for the attestations of a one-platform build.
    let (opts, bases, graph) = last.expect("one platform was built");
    let sbom_opts = sbom_opts.expect("one platform was built");
    let inline = cache_to.contains(&crate::cacheopts::CacheTo::Inline);
    if multi {
        let push = a.push && !push_as_output;
        // One cache for every platform's records (BuildKit's multi-platform export).
        let solved: Vec<_> = built.iter().map(|(_, s)| s.clone()).collect();
        let images = platforms::finish(
            &store, &a, built, &labels, inline, &rt, &reg_cfg, quiet, push,
        )?;
        crate::cacheopts::report_fetched(imported.as_deref(), quiet);
        rt.block_on(crate::cacheopts::export(
            &store,
            &cache_to,
            &solved,
            imported.as_deref(),
            &reg_cfg,
            quiet,
        ))?;
        // The -o outputs, --load and attestations get every platform's image.
        let facts = attest::Facts::of_build(
            &opts,
            &input.dockerfile,
            parse_labels(&a.labels)?,
            &bases,
            &graph,
            &build_ref()?,
            started,
        );
        let (images, built_for): (Vec<_>, Vec<_>) =
            images.into_iter().map(|p| (p.image, p.platform)).unzip();
        rt.block_on(output::run_all(
            &store,
            &images,
            &built_for,
            &reg_cfg,
            &outputs,
            &attest_req,
            facts,
            sbom_opts,
            quiet,
        ))?;
        drop(lock);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let (_, mut solved) = built.pop().expect("one platform was built");
    if !labels.is_empty() {
        let mut config = solved.image.config.clone();
        config.config.labels.extend(labels);
        solved.image = store
            .write_image(&config)
            .context("writing the image config with --label labels")?;
    }
    let image = if inline {
        crate::cacheopts::attach_inline(&store, &solved)?
    } else {
        solved.image.clone()
    };
    crate::cacheopts::report_fetched(imported.as_deref(), quiet);
    for t in &a.tags {
        store
            .tag(t, &image.manifest_digest)
            .with_context(|| format!("tagging {t}"))?;
    }
    use std::io::Write as _;
    if !quiet {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "writing image {} done", image.manifest_digest);
        for t in &a.tags {
            let _ = writeln!(err, "naming to {t} done");
        }
    }
    let mut pushed = None;
    if a.push && !push_as_output {
        for t in &a.tags {
            let digest = rt.block_on(crate::registry::push(&store, t, None, &reg_cfg))?;
            pushed.get_or_insert(digest.clone());
            if !quiet {
                let _ = writeln!(std::io::stderr(), "pushing {t} done: {digest}");
                // stdout may carry an output (`-o -`): the digest is on stderr then.
                if !outputs.iter().any(output::Output::to_stdout) {
                    writeln!(std::io::stdout().lock(), "{digest}")?;
                }
            }
        }
    }
    rt.block_on(crate::cacheopts::export(
        &store,
        &cache_to,
        std::slice::from_ref(&solved),
        imported.as_deref(),
        &reg_cfg,
        quiet,
    ))?;
    let build_ref = build_ref()?;
    let facts = attest::Facts::of_build(
        &opts,
        &input.dockerfile,
        parse_labels(&a.labels)?,
        &bases,
        &graph,
        &build_ref,
        started,
    );
    let images = std::slice::from_ref(&image);
    let exported = rt.block_on(output::run_all(
        &store,
        images,
        &[],
        &reg_cfg,
        &outputs,
        &attest_req,
        facts,
        sbom_opts,
        quiet,
    ))?;
    if let Some(f) = &a.iidfile {
        std::fs::write(f, image.manifest_digest.to_string())
            .with_context(|| format!("--iidfile {}", f.display()))?;
    }
    if let Some(f) = &a.metadata_file {
        let manifest_size = std::fs::metadata(store.blob_path(&image.manifest_digest))
            .with_context(|| format!("reading the size of manifest {}", image.manifest_digest))?
            .len();
        let stored = cache::oci::Descriptor::new(
            image
                .manifest
                .media_type
                .as_deref()
                .unwrap_or(cache::oci::MEDIA_TYPE_MANIFEST),
            image.manifest_digest.clone(),
            manifest_size,
        );
        // As buildx with --push: the digest the registry has.
        let manifest = match &pushed {
            // As buildx: the result the (last) image output wrote.
            None if exported.is_some() => exported.clone().expect("checked"),
            Some(p) => {
                let compression = reg_cfg.options()?.compression;
                pushed_descriptor(&store, &image, &stored, p, compression)?
            }
            None => stored,
        };
        let doc = metadata(&image.config_digest, &manifest, &a.tags, &build_ref);
        let mut text = serde_json::to_string_pretty(&doc)?;
        text.push('\n');
        std::fs::write(f, text).with_context(|| format!("--metadata-file {}", f.display()))?;
    }
    if quiet && !outputs.iter().any(output::Output::to_stdout) {
        writeln!(std::io::stdout().lock(), "{}", image.manifest_digest)?;
    }
    drop(lock);
    Ok(std::process::ExitCode::SUCCESS)
}

/// A private `ssh-agent -D` holding `--ssh ID=KEY` keys in its own directory; killed and the
/// directory removed when dropped.
struct PrivateAgent {
    child: std::process::Child,
    dir: PathBuf,
}

impl Drop for PrivateAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Parses `--ssh` values into agent sockets (as `docker buildx build --ssh`): `default` is
/// `$SSH_AUTH_SOCK`; `ID=PATH,...` takes a socket as it is and loads key files into a private
/// agent.
fn ssh_agents(args: &[String]) -> anyhow::Result<(solver::mounts::SshAgents, Vec<PrivateAgent>)> {
    use std::os::unix::fs::FileTypeExt as _;
    let mut out = BTreeMap::new();
    let mut agents = Vec::new();
    for a in args {
        let (id, paths) = match a.split_once('=') {
            Some((id, p)) => (id.to_owned(), p.split(',').map(PathBuf::from).collect()),
            None => (a.clone(), Vec::new()),
        };
        anyhow::ensure!(!id.is_empty(), "--ssh {a:?}: the id is empty");
        let sock = match paths.as_slice() {
            [] => PathBuf::from(std::env::var_os("SSH_AUTH_SOCK").ok_or_else(|| {
                anyhow::anyhow!("--ssh {id}: $SSH_AUTH_SOCK is not set; give --ssh {id}=SOCKET")
            })?),
            [p] if std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket()) => p.clone(),
            keys => {
                let agent = private_agent(&id, keys)?;
                let sock = agent.dir.join("agent.sock");
                agents.push(agent);
                sock
            }
        };
        out.insert(id, sock);
    }
    Ok((solver::mounts::SshAgents(out), agents))
}

/// Starts `ssh-agent -D -a SOCK` and adds `keys` to it.
fn private_agent(id: &str, keys: &[PathBuf]) -> anyhow::Result<PrivateAgent> {
    for k in keys {
        anyhow::ensure!(
            k.is_file(),
            "--ssh {id}: {} is neither a socket nor a key file",
            k.display()
        );
    }
    let safe: String = id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let dir = std::env::temp_dir().join(format!("kiln-ssh-{}-{safe}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("chmod {}", dir.display()))?;
    let sock = dir.join("agent.sock");
    let child = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting ssh-agent (openssh-client) for --ssh key files")?;
    let agent = PrivateAgent { child, dir };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    // The socket file appears at bind(), before listen(): wait until a connection succeeds.
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "--ssh {id}: ssh-agent did not listen on {}",
            sock.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = std::process::Command::new("ssh-add")
        .args(keys)
        .env("SSH_AUTH_SOCK", &sock)
        .env("SSH_ASKPASS_REQUIRE", "never")
        .stdin(std::process::Stdio::null())
        .output()
        .context("running ssh-add")?;
    anyhow::ensure!(
        out.status.success(),
        "--ssh {id}: ssh-add failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(agent)
}
#[cfg(test)]
mod tests {
    #[test]
    fn no_cache_filter_names_become_stage_labels() {
        let multi = frontend::parse("FROM busybox AS Base\nRUN true\nFROM base\nRUN true\n")
            .expect("parses");
        assert_eq!(
            super::no_cache_stages(&multi, &["BASE".into(), "nope".into()]),
            ["base"]
        );
        // A single-stage build's steps carry no label: `[2/2] RUN true`.
        let single = frontend::parse("FROM busybox AS app\nRUN true\n").expect("parses");
        assert_eq!(super::no_cache_stages(&single, &["app".into()]), [""]);
    }
}

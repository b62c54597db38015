//! `kiln build -o/--output`, `--load` and `--annotation`: buildx's output syntax, parsed
//! before the build, and the exports run after it (through `cache::export`).
//!
//! Syntax as buildx: `-o type=T,key=value,...` (CSV: a field holding a comma is quoted,
//! `"name=a,b"`), `-o DIR` (= `type=local,dest=DIR`), `-o -` (= `type=tar,dest=-`); several
//! `-o` at once. `type=registry` is `type=image,push=true`; `--load` is `type=docker` without
//! `dest` (loaded into the docker daemon); names default to the `-t` tags.

use anyhow::{Context as _, bail};
use cache::export::{Annotation, Export, ExportOptions, LayerCompression, Level};
use cache::oci::Platform;
use cache::reference::Reference;
use std::path::PathBuf;

/// The output flags of `kiln build`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OutputFlags {
    /// Output destination: `type=local,dest=DIR`, `type=tar,dest=FILE|-`,
    /// `type=oci,dest=FILE|DIR[,tar=false]`, `type=docker[,dest=FILE][,name=N]`,
    /// `type=image,name=N[,push=true]`, `type=registry[,name=N]`, `DIR` or `-`; with
    /// `compression=gzip|zstd|uncompressed`, `compression-level=N`, `force-compression=true`,
    /// `oci-mediatypes=true|false`, `rewrite-timestamp=true`; may be repeated.
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub output: Vec<String>,
    /// Load the result into the local docker daemon (`type=docker`).
    #[arg(long)]
    pub load: bool,
    /// Add an annotation: `[TYPE[,TYPE]][[PLATFORM]]:KEY=VALUE` with TYPE `manifest` (the
    /// default), `index`, `manifest-descriptor` or `index-descriptor`; may be repeated.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotation: Vec<String>,
    /// Provenance attestation: `true`, `false`, `mode=min|max` (as `--attest type=provenance`).
    #[arg(long, value_name = "mode=min|max")]
    pub provenance: Option<String>,
    /// SBOM attestation: `true`, `false` or `generator=IMAGE` (as `--attest type=sbom`).
    #[arg(long, value_name = "generator=IMAGE")]
    pub sbom: Option<String>,
    /// Attestation: `type=provenance[,mode=min|max]` or `type=sbom[,generator=IMAGE]`.
    #[arg(long, value_name = "type=provenance|sbom,...")]
    pub attest: Vec<String>,
}

/// Where an export goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// Standard output (`dest=-`).
    Stdout,
    /// A file or directory.
    Path(PathBuf),
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Stdout => f.write_str("-"),
            Dest::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One parsed `-o`.
#[derive(Debug, Clone)]
pub enum Output {
    /// `type=local,dest=DIR`: the root filesystem unpacked.
    Local(PathBuf, super::fsout::FsOpts),
    /// `type=tar,dest=FILE|-`: the root filesystem as a tar.
    Tar(Dest, super::fsout::FsOpts),
    /// `type=oci|docker`: an OCI layout (tar or directory), with docker-archive's
    /// `manifest.json` for docker; `dest: None` for docker loads into the daemon.
    Layout {
        /// `type=docker`.
        docker: bool,
        /// Where; `None`: `docker load`.
        dest: Option<Dest>,
        /// `tar=false`: a directory.
        dir: bool,
        /// Names.
        names: Vec<Reference>,
        /// Layers and media types.
        opts: ExportOptions,
    },
    /// `type=image|registry`: named in the kiln store, pushed with `push=true`.
    Image {
        /// Names.
        names: Vec<Reference>,
        /// Push them.
        push: bool,
        /// Layers and media types.
        opts: ExportOptions,
    },
}

/// Splits one `-o` value as Go's csv reader does (fields separated by commas; a field in
/// double quotes may hold commas, `""` is a quote).
fn csv_fields(s: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) if cur.is_empty() => quoted = true,
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            ('"', true) => quoted = false,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    anyhow::ensure!(!quoted, "{s:?}: unterminated quote");
    out.push(cur);
    Ok(out)
}

fn parse_bool(key: &str, v: &str) -> anyhow::Result<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" | "" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => bail!("{key}={v}: expected true or false"),
    }
}

/// A platform qualifier as written in `[linux/amd64]` or `[linux/arm64/v8]`.
fn parse_platform(s: &str) -> anyhow::Result<Platform> {
    let mut parts = s.split('/');
    let (Some(os), Some(arch)) = (parts.next(), parts.next()) else {
        bail!("platform {s:?}: expected OS/ARCH[/VARIANT]");
    };
    Ok(Platform {
        os: os.to_owned(),
        architecture: arch.to_owned(),
        variant: parts.next().map(str::to_owned),
        os_version: None,
    })
}

/// Parses one `--annotation`: `[TYPES][[PLATFORM]]:KEY=VALUE`, or `KEY=VALUE` (manifest).
pub fn parse_annotation(s: &str) -> anyhow::Result<Vec<Annotation>> {
    let (k, value) = s
        .split_once('=')
        .with_context(|| format!("--annotation {s:?}: expected KEY=VALUE"))?;
    // A prefix ends at the first `:` that comes before a `[...]` qualifier closes or is
    // alone: keys may hold `:` only after a known type prefix.
    let (levels, platform, key) = match k.split_once(':') {
        Some((prefix, key)) if prefix_is_types(prefix) => {
            let (types, platform) = match prefix.split_once('[') {
                Some((t, rest)) => {
                    let p = rest.strip_suffix(']').with_context(|| {
                        format!("--annotation {s:?}: unterminated platform qualifier")
                    })?;
                    (t, Some(parse_platform(p)?))
                }
                None => (prefix, None),
            };
            let mut levels = Vec::new();
            for t in types.split(',') {
                levels.push(match t {
                    "" | "manifest" => Level::Manifest,
                    "index" => Level::Index,
                    "manifest-descriptor" => Level::ManifestDescriptor,
                    "index-descriptor" => Level::IndexDescriptor,
                    _ => bail!(
                        "--annotation {s:?}: unknown type {t:?} (manifest, index, \
                         manifest-descriptor or index-descriptor)"
                    ),
                });
            }
            (levels, platform, key)
        }
        _ => (vec![Level::Manifest], None, k),
    };
    anyhow::ensure!(!key.is_empty(), "--annotation {s:?}: the key is empty");
    if platform.is_some()
        && levels
            .iter()
            .any(|l| matches!(l, Level::Index | Level::IndexDescriptor))
    {
        bail!("--annotation {s:?}: a platform qualifier applies to manifests only");
    }
    Ok(levels
        .into_iter()
        .map(|level| Annotation {
            level,
            platform: platform.clone(),
            key: key.to_owned(),
            value: value.to_owned(),
        })
        .collect())
}

/// True when `p` (before the first `:`) is a list of annotation types, maybe qualified.
fn prefix_is_types(p: &str) -> bool {
    let types = p.split('[').next().unwrap_or(p);
    !types.is_empty()
        && types.split(',').all(|t| {
            matches!(
                t,
                "manifest" | "index" | "manifest-descriptor" | "index-descriptor"
            )
        })
}

/// The `annotation[-TYPE][[PLATFORM]].KEY=VALUE` attributes of an output, as BuildKit's
/// exporters take them.
fn attr_annotation(key: &str, value: &str) -> anyhow::Result<Option<Vec<Annotation>>> {
    let Some(rest) = key.strip_prefix("annotation") else {
        return Ok(None);
    };
    let (head, k) = match rest.find('.') {
        Some(i) if !rest[..i].contains(']') || rest[..i].ends_with(']') => {
            (&rest[..i], &rest[i + 1..])
        }
        _ => return Ok(None),
    };
    let (types, platform) = match head.split_once('[') {
        Some((t, p)) => (t, Some(p.trim_end_matches(']'))),
        None => (head, None),
    };
    let types = types.strip_prefix('-').unwrap_or(types);
    let prefix = match platform {
        Some(p) => format!("{}[{p}]", if types.is_empty() { "manifest" } else { types }),
        None if types.is_empty() => "manifest".to_owned(),
        None => types.to_owned(),
    };
    parse_annotation(&format!("{prefix}:{k}={value}")).map(Some)
}

/// Parses the `-o` values, `--load` and (with `push`) `--push` into outputs, with `tags` as
/// the default names and `annotations` from `--annotation`.
///
/// Fails on a malformed value, an unknown type, or a missing destination.
pub fn parse(flags: &OutputFlags, tags: &[String], push: bool) -> anyhow::Result<Vec<Output>> {
    let mut annotations = Vec::new();
    for a in &flags.annotation {
        annotations.extend(parse_annotation(a)?);
    }
    let mut specs = flags.output.clone();
    if flags.load {
        specs.push("type=docker".to_owned());
    }
    if push {
        specs.push("type=registry".to_owned());
    }
    let mut out = Vec::new();
    for spec in &specs {
        out.push(parse_one(spec, tags, &annotations).with_context(|| format!("--output {spec}"))?);
    }
    if out.iter().filter(|o| o.to_stdout()).count() > 1 {
        bail!("only one output can write to stdout");
    }
    if !annotations.is_empty()
        && !out
            .iter()
            .any(|o| matches!(o, Output::Layout { .. } | Output::Image { .. }))
    {
        // As buildx, annotations go to image outputs; the kiln store gets none.
        bail!("--annotation needs an image output (-o type=image|registry|oci|docker)");
    }
    Ok(out)
}

fn parse_one(spec: &str, tags: &[String], annotations: &[Annotation]) -> anyhow::Result<Output> {
    let fields = csv_fields(spec)?;
    if fields.len() == 1 && !fields[0].contains('=') {
        return Ok(match fields[0].as_str() {
            "-" => Output::Tar(Dest::Stdout, Default::default()),
            "" => bail!("empty output"),
            dir => Output::Local(PathBuf::from(dir), Default::default()),
        });
    }
    let mut attrs = std::collections::BTreeMap::new();
    let mut annotations = annotations.to_vec();
    for f in &fields {
        let (k, v) = f
            .split_once('=')
            .with_context(|| format!("{f:?}: expected KEY=VALUE"))?;
        match attr_annotation(k, v)? {
            Some(a) => annotations.extend(a),
            None => {
                attrs.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    let kind = attrs
        .remove("type")
        .context("type is required for output")?;
    let dest = attrs.remove("dest").map(|d| match d.as_str() {
        "-" => Dest::Stdout,
        _ => Dest::Path(PathBuf::from(d)),
    });
    let docker = kind == "docker";
    let mut opts = ExportOptions {
        compression: LayerCompression::Compressed(cache::compress::Compression::default()),
        force_compression: false,
        // buildx: OCI types except for the docker exporter.
        oci_mediatypes: !docker,
        annotations,
        rewrite_timestamp: false,
    };
    let mut level = None;
    let mut codec = Some(cache::compress::Codec::Gzip);
    let mut names: Vec<String> = Vec::new();
    let mut push = kind == "registry";
    let mut tar = true;
    let mut fs_opts = super::fsout::FsOpts::default();
    for (k, v) in &attrs {
        match k.as_str() {
            "platform-split" if matches!(kind.as_str(), "local" | "tar") => {
                fs_opts.split = Some(parse_bool(k, v)?)
            }
            "attestation-prefix" => fs_opts.prefix = v.clone(),
            "compression" => {
                codec = match v.as_str() {
                    "gzip" => Some(cache::compress::Codec::Gzip),
                    "zstd" => Some(cache::compress::Codec::Zstd),
                    "uncompressed" => None,
                    _ => bail!("compression={v}: expected gzip, zstd or uncompressed"),
                }
            }
            "compression-level" => {
                level = Some(
                    v.parse::<i32>()
                        .ok()
                        .with_context(|| format!("compression-level={v}: not a number"))?,
                )
            }
            "force-compression" => opts.force_compression = parse_bool(k, v)?,
            "oci-mediatypes" => opts.oci_mediatypes = parse_bool(k, v)?,
            "rewrite-timestamp" => opts.rewrite_timestamp = parse_bool(k, v)?,
            "name" => names.extend(v.split(',').filter(|n| !n.is_empty()).map(str::to_owned)),
            "push" => push = parse_bool(k, v)?,
            "tar" => tar = parse_bool(k, v)?,
            // Accepted and without effect here, as for a builder with its own store.
            "unpack" | "store" | "dangling-name-prefix" | "name-canonical" | "buildinfo" => {}
            _ => bail!("unknown attribute {k:?} for type={kind}"),
        }
    }
    opts.compression = match codec {
        None => LayerCompression::Uncompressed,
        Some(codec) => {
            let level = level.unwrap_or(match codec {
                cache::compress::Codec::Gzip => 6,
                cache::compress::Codec::Zstd => 3,
            });
            let ok = match codec {
                cache::compress::Codec::Gzip => (0..=9).contains(&level),
                cache::compress::Codec::Zstd => (1..=22).contains(&level),
            };
            anyhow::ensure!(
                ok,
                "compression-level={level} is out of range for {}",
                codec.name()
            );
            LayerCompression::Compressed(cache::compress::Compression { codec, level })
        }
    };
    if codec == Some(cache::compress::Codec::Zstd) && docker {
        bail!("type=docker cannot hold zstd layers (docker load reads gzip)");
    }
    if names.is_empty() {
        names = tags.to_vec();
    }
    let names = names
        .iter()
        .map(|n| Reference::parse(n).with_context(|| format!("invalid name {n:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(match kind.as_str() {
        "local" => match dest {
            Some(Dest::Path(p)) => Output::Local(p, fs_opts),
            Some(Dest::Stdout) => bail!("type=local needs a directory, not -"),
            None => bail!("type=local needs dest=DIR"),
        },
        // As buildx: tar and oci without `dest` go to stdout, unless it is a terminal.
        "tar" => Output::Tar(stdout_dest(&kind, dest)?, fs_opts),
        "oci" | "docker" => {
            let dest = match kind.as_str() {
                "oci" => Some(stdout_dest(&kind, dest)?),
                _ => dest,
            };
            if !tar && !matches!(dest, Some(Dest::Path(_))) {
                bail!("tar=false needs dest=DIR");
            }
            Output::Layout {
                docker,
                dest,
                dir: !tar,
                names,
                opts,
            }
        }
        "image" | "registry" => {
            anyhow::ensure!(!names.is_empty(), "type={kind} needs name=NAME or -t NAME");
            Output::Image { names, push, opts }
        }
        _ => bail!("unknown type {kind:?} (local, tar, oci, docker, image or registry)"),
    })
}

/// `dest`, or stdout when it is missing; refused when that is a terminal (buildx's words).
fn stdout_dest(kind: &str, dest: Option<Dest>) -> anyhow::Result<Dest> {
    use std::io::IsTerminal as _;
    let dest = dest.unwrap_or(Dest::Stdout);
    if dest == Dest::Stdout && std::io::stdout().is_terminal() {
        bail!("dest file is required for {kind} exporter. refusing to write to console");
    }
    Ok(dest)
}

/// What the exports need of the build.
pub struct Context<'a> {
    /// The store.
    pub store: &'a cache::store::Store,
    /// The per-platform images of the result.
    pub images: &'a [cache::image::Image],
    /// The platform each of `images` was built for (empty: their configs say).
    pub platforms: &'a [cache::oci::Platform],
    /// Registry settings for pushes.
    pub reg: &'a crate::registry::RegistryConfig,
    /// Attestations to attach: per image, `(predicate type, statement)`; computed per
    /// export from the manifest digest.
    pub attest: Option<&'a super::attest::Attest>,
    /// Print progress lines on stderr.
    pub quiet: bool,
    /// `SOURCE_DATE_EPOCH` (environment or build arg), for `rewrite-timestamp`.
    pub epoch: Option<i64>,
}

impl Output {
    /// True when this output writes to stdout.
    pub fn to_stdout(&self) -> bool {
        matches!(
            self,
            Output::Tar(Dest::Stdout, _)
                | Output::Layout {
                    dest: Some(Dest::Stdout),
                    ..
                }
        )
    }
}

/// Makes the manifests (and attestations, and index) of an image-shaped export.
fn prepare(cx: &Context<'_>, opts: &ExportOptions, names: &[Reference]) -> anyhow::Result<Export> {
    let rewritten;
    let images = match (opts.rewrite_timestamp, cx.epoch) {
        (true, Some(epoch)) => {
            rewritten = cx
                .images
                .iter()
                .map(|i| cache::export::rewrite::rewrite_timestamps(cx.store, i, epoch))
                .collect::<Result<Vec<_>, _>>()
                .context("rewrite-timestamp")?;
            &rewritten[..]
        }
        (true, None) => {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "warning: rewrite-timestamp=true without SOURCE_DATE_EPOCH: dates kept"
            );
            cx.images
        }
        (false, _) => cx.images,
    };
    let mut export = Export::prepare(cx.store, images, opts).context("preparing the image")?;
    if let Some(attest) = cx.attest {
        for i in 0..export.images.len() {
            let statements = attest.statements(&export.images[i], names)?;
            if !statements.is_empty() {
                export
                    .attach(cx.store, i, &statements)
                    .context("attaching attestations")?;
            }
        }
    }
    export.finish(cx.store, false)?;
    Ok(export)
}

/// `SOURCE_DATE_EPOCH` from the environment, else from the build args.
fn source_date_epoch(build_args: &std::collections::BTreeMap<String, String>) -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .or_else(|| build_args.get("SOURCE_DATE_EPOCH").cloned())
        .and_then(|s| s.trim().parse::<i64>().ok())
}

/// After the build: runs the SBOM scan when asked (and an image output will carry it), then
/// every output with the attestations `requested`. Returns what [`run`] returns.
#[allow(clippy::too_many_arguments)]
pub async fn run_all(
    store: &cache::store::Store,
    images: &[cache::image::Image],
    platforms: &[cache::oci::Platform],
    reg: &crate::registry::RegistryConfig,
    outputs: &[Output],
    requested: &super::attest::Requested,
    facts: super::attest::Facts,
    solve_opts: solver::SolveOptions,
    quiet: bool,
) -> anyhow::Result<Option<cache::oci::Descriptor>> {
    use std::io::Write as _;
    let epoch = source_date_epoch(&facts.build_args);
    let scan_context = super::sbom::scan_context(
        &facts.dockerfile,
        &facts.build_args,
        facts.target.as_deref(),
    );
    let mut attest =
        (*requested != super::attest::Requested::default()).then(|| super::attest::Attest {
            requested: requested.clone(),
            facts,
            sboms: Default::default(),
        });
    if let (Some(a), Some(generator)) = (&mut attest, &requested.sbom)
        && !outputs.is_empty()
    {
        if !quiet {
            let _ = writeln!(std::io::stderr(), "scanning with {generator}");
        }
        a.sboms =
            super::sbom::scan_all(store, solve_opts, reg, generator, images, scan_context).await?;
    }
    let cx = Context {
        store,
        images,
        platforms,
        reg,
        attest: attest.as_ref(),
        quiet,
        epoch,
    };
    run(&cx, outputs).await
}

/// Runs every output; returns the descriptor of the last image-shaped one (for
/// `--metadata-file`), if any.
pub async fn run(
    cx: &Context<'_>,
    outputs: &[Output],
) -> anyhow::Result<Option<cache::oci::Descriptor>> {
    use std::io::Write as _;
    let say = |s: String| {
        if !cx.quiet {
            let _ = writeln!(std::io::stderr().lock(), "{s}");
        }
    };
    let mut root = None;
    for o in outputs {
        match o {
            Output::Local(dir, fs) => {
                super::fsout::write_local(cx, dir, fs)
                    .with_context(|| format!("--output type=local,dest={}", dir.display()))?;
                say(format!("copying files to {} done", dir.display()));
            }
            Output::Tar(dest, fs) => {
                super::fsout::write_tar(cx, dest, fs)
                    .with_context(|| format!("--output type=tar,dest={dest}"))?;
                say(format!("sending tarball to {dest} done"));
            }
            Output::Layout {
                docker,
                dest,
                dir,
                names,
                opts,
            } => {
                if *docker && cx.images.len() > 1 {
                    // docker load takes one image; buildx's docker exporter refuses too.
                    bail!(
                        "type=docker cannot hold a multi-platform result: use type=oci, or \
                         build one --platform"
                    );
                }
                let export = prepare(cx, opts, names)?;
                let kind = if *docker { "docker" } else { "oci" };
                match dest {
                    Some(Dest::Path(p)) if *dir => {
                        cache::export::layout::write_dir(cx.store, &export, names, p)
                            .with_context(|| format!("--output type={kind},dest={}", p.display()))?
                    }
                    Some(dest) => write_to(dest, |w| {
                        cache::export::layout::write_tar(
                            cx.store,
                            &export,
                            names,
                            *docker,
                            w,
                            &dest.to_string(),
                        )
                        .map_err(Into::into)
                    })
                    .with_context(|| format!("--output type={kind},dest={dest}"))?,
                    None => super::load::load(cx.store, &export, names).context("--load")?,
                }
                say(format!(
                    "exporting {kind} image {} to {} done",
                    export.root().digest,
                    dest.as_ref()
                        .map_or("docker".to_owned(), ToString::to_string)
                ));
                root = Some(export.root().clone());
            }
            Output::Image { names, push, opts } => {
                let export = prepare(cx, opts, names)?;
                for n in names {
                    // The kiln store keeps its own form of the image under the name.
                    cx.store
                        .tag(&n.to_string(), &cx.images[0].manifest_digest)
                        .with_context(|| format!("tagging {n}"))?;
                }
                if *push {
                    let ropts = cx.reg.options()?;
                    for n in names {
                        let digest = cache::export::push::push(cx.store, &export, n, &ropts)
                            .await
                            .with_context(|| format!("pushing {n}"))?;
                        say(format!("pushing {n} done: {digest}"));
                    }
                    crate::registry::finish_progress(cx.reg);
                }
                root = Some(export.root().clone());
            }
        }
    }
    Ok(root)
}

/// `os_arch[_variant]`: a platform's subdirectory in a multi-platform local or tar output.
pub fn platform_dir(p: &cache::oci::Platform) -> String {
    let mut s = format!("{}_{}", p.os, p.architecture);
    if let Some(v) = &p.variant {
        s.push('_');
        s.push_str(v);
    }
    s
}

/// Runs `write` on the destination: stdout, or a file written next to it and renamed into
/// place when complete.
pub(super) fn write_to(
    dest: &Dest,
    write: impl FnOnce(&mut dyn std::io::Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    match dest {
        Dest::Stdout => {
            let mut out = std::io::stdout().lock();
            write(&mut out)?;
            std::io::Write::flush(&mut out).context("flushing stdout")
        }
        Dest::Path(p) => {
            let mut tmp = p.as_os_str().to_owned();
            tmp.push(format!(".tmp-{}", std::process::id()));
            let tmp = PathBuf::from(tmp);
            let r = (|| {
                let mut f = std::fs::File::create(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                write(&mut f)?;
                f.sync_all()
                    .with_context(|| format!("syncing {}", tmp.display()))?;
                std::fs::rename(&tmp, p).with_context(|| format!("renaming to {}", p.display()))
            })();
            if r.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(o: &[&str]) -> OutputFlags {
        OutputFlags {
            output: o.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn shorthands_are_buildx_s() {
        let out = parse(&flags(&["out", "-"]), &[], false).expect("parses");
        assert!(matches!(&out[0], Output::Local(p, _) if p == &PathBuf::from("out")));
        assert!(matches!(&out[1], Output::Tar(Dest::Stdout, _)));
    }

    #[test]
    fn registry_is_image_with_push_and_names_default_to_tags() {
        let out = parse(&flags(&["type=registry"]), &["r:5000/a:1".into()], false).expect("parses");
        let Output::Image { names, push, opts } = &out[0] else {
            panic!("{out:?}")
        };
        assert!(*push);
        assert_eq!(names[0].to_string(), "r:5000/a:1");
        assert!(opts.oci_mediatypes);
        let out = parse(
            &flags(&[r#"type=image,"name=a:1,b:2",push=false"#]),
            &[],
            false,
        )
        .expect("csv");
        let Output::Image { names, push, .. } = &out[0] else {
            panic!()
        };
        assert!(!*push);
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn docker_defaults_to_docker_media_types_and_compression_options_parse() {
        let out = parse(
            &flags(&["type=docker,dest=x.tar,compression=uncompressed"]),
            &[],
            false,
        )
        .expect("parses");
        let Output::Layout {
            docker: true, opts, ..
        } = &out[0]
        else {
            panic!()
        };
        assert!(!opts.oci_mediatypes);
        assert_eq!(opts.compression, LayerCompression::Uncompressed);
        for bad in [
            "dest=x",
            "type=oci,dest=x,compression=lz4",
            "type=oci,dest=x,compression=gzip,compression-level=12",
            "type=image",
            "type=nope,dest=x",
        ] {
            assert!(parse(&flags(&[bad]), &[], false).is_err(), "{bad}");
        }
    }

    #[test]
    fn annotations_take_types_and_platforms() {
        let a = parse_annotation("index,manifest:org.opencontainers.image.title=x").expect("ok");
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].level, Level::Index);
        assert_eq!(a[1].key, "org.opencontainers.image.title");
        let a = parse_annotation("manifest[linux/arm64/v8]:k=v").expect("ok");
        assert_eq!(
            a[0].platform.as_ref().map(|p| p.to_string()).as_deref(),
            Some("linux/arm64/v8")
        );
        // A key with a colon and no type prefix is a manifest annotation named so.
        let a = parse_annotation("com.example:x=1").expect("ok");
        assert_eq!(
            (a[0].level, a[0].key.as_str()),
            (Level::Manifest, "com.example:x")
        );
        assert!(parse_annotation("index[linux/amd64]:k=v").is_err());
        assert!(parse_annotation("novalue").is_err());
        let a = attr_annotation("annotation-index.k", "v")
            .expect("ok")
            .expect("some");
        assert_eq!(a[0].level, Level::Index);
        let a = attr_annotation("annotation[linux/amd64].k", "v")
            .expect("ok")
            .expect("some");
        assert_eq!(a[0].level, Level::Manifest);
        assert!(a[0].platform.is_some());
    }
}

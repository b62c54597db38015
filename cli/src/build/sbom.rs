//! `--sbom=generator=IMAGE`: BuildKit's SBOM scanner protocol
//! (moby/buildkit docs/attestations/sbom-protocol.md), run as one more kiln build step.
//!
//! The scan is a generated Dockerfile built with the same solver and sandbox as RUN:
//! `FROM <generator>`, the protocol's environment (`BUILDKIT_SCAN_SOURCE=/run/src/core/sbom`,
//! `BUILDKIT_SCAN_DESTINATION=/run/out`, and `BUILDKIT_SCAN_SOURCE_EXTRAS=/run/src/extras`
//! when there is an extra), and a RUN of the generator's entrypoint and command with the
//! built image's root filesystem bind-mounted read-only at `/run/src/core/sbom` and, when
//! `BUILDKIT_SBOM_SCAN_CONTEXT` asks for it ([`scan_context`]), the build context at
//! `/run/src/extras/sbom-context`: BuildKit's paths, whose last parts scanners name their
//! files after (`sbom.spdx.json`, `sbom-context.spdx.json`, as BuildKit v0.24's local output
//! shows them). Every `/run/out/*.spdx.json` the step writes is one SBOM: an SPDX document,
//! or an in-toto statement whose predicate is one; kiln wraps each in a statement about the
//! image (predicate type `https://spdx.dev/Document`). The step is cached like any other,
//! so an unchanged image is not scanned again.

use anyhow::{Context as _, bail};

/// The in-toto predicate type of an SPDX SBOM.
pub const PREDICATE_SPDX: &str = "https://spdx.dev/Document";

const SOURCE: &str = "/run/src/core/sbom";
const EXTRAS: &str = "/run/src/extras";
const DEST: &str = "/run/out";

/// The generated Dockerfile of a scan of `target` (a name in the store) with `generator`,
/// whose config is `gcfg`.
fn dockerfile(
    generator: &str,
    target: &str,
    gcfg: &cache::oci::ImageConfig,
    scan_context: bool,
) -> anyhow::Result<String> {
    let argv: Vec<String> = gcfg
        .config
        .entrypoint
        .iter()
        .flatten()
        .chain(gcfg.config.cmd.iter().flatten())
        .cloned()
        .collect();
    if argv.is_empty() {
        bail!("SBOM generator {generator}: the image has neither ENTRYPOINT nor CMD");
    }
    let workdir = match gcfg.config.working_dir.as_str() {
        "" => "/",
        w => w,
    };
    // The context is an extra only when asked for, and EXTRAS is set only with an extra.
    let (extras_env, extras_mount) = match scan_context {
        true => (
            format!(" BUILDKIT_SCAN_SOURCE_EXTRAS={EXTRAS}"),
            format!(" --mount=type=bind,target={EXTRAS}/sbom-context"),
        ),
        false => (String::new(), String::new()),
    };
    Ok(format!(
        "FROM {generator}\n\
         ENV BUILDKIT_SCAN_SOURCE={SOURCE}{extras_env} BUILDKIT_SCAN_DESTINATION={DEST}\n\
         WORKDIR {DEST}\n\
         WORKDIR {workdir}\n\
         RUN --mount=type=bind,from={target},target={SOURCE}{extras_mount} {}\n",
        serde_json::to_string(&argv)?
    ))
}

/// Runs `generator` over each of `images` (one per platform) and returns the SBOMs by
/// platform (`linux/amd64`).
///
/// Fails as [`scan`].
pub async fn scan_all(
    store: &cache::store::Store,
    opts: solver::SolveOptions,
    reg: &crate::registry::RegistryConfig,
    generator: &str,
    images: &[cache::image::Image],
    scan_context: bool,
) -> anyhow::Result<std::collections::BTreeMap<String, Vec<(String, serde_json::Value)>>> {
    let mut out = std::collections::BTreeMap::new();
    for image in images {
        let platform = cache::export::platform_of(image).to_string();
        out.insert(
            platform,
            scan(store, opts.clone(), reg, generator, image, scan_context).await?,
        );
    }
    Ok(out)
}

/// Whether the build context is scanned too, as BuildKit decides it: the value of
/// `BUILDKIT_SBOM_SCAN_CONTEXT` as a global ARG, else as an ARG of the target stage (a
/// `--build-arg` sets either; a bare `--build-arg` of an undeclared name does not), true
/// when it is a true boolean or names the target stage in a comma-separated list.
pub fn scan_context(
    dockerfile: &[u8],
    build_args: &std::collections::BTreeMap<String, String>,
    target: Option<&str>,
) -> bool {
    const NAME: &str = "BUILDKIT_SBOM_SCAN_CONTEXT";
    let Ok(text) = frontend::decode(dockerfile) else {
        return false;
    };
    let Ok(df) = frontend::parse(&text) else {
        return false;
    };
    let stage = match target {
        Some(t) => df
            .stages
            .iter()
            .find(|s| s.name.as_deref() == Some(t.to_ascii_lowercase().as_str())),
        None => df.stages.last(),
    };
    let Some(stage) = stage else {
        return false;
    };
    let stage_name = stage.name.clone().unwrap_or_default();
    let enabled = |v: &str| match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
        "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
        list => list.split(',').any(|s| s == stage_name),
    };
    let value_of = |instrs: &[frontend::Instruction]| {
        let mut v = None;
        for i in instrs {
            if let frontend::Command::Arg(defs) = &i.command {
                for d in defs.iter().filter(|d| d.name == NAME) {
                    v = build_args.get(NAME).cloned().or(d.default.clone()).or(v);
                }
            }
        }
        v
    };
    let mut on = value_of(&df.meta_args).is_some_and(|v| enabled(&v));
    if let Some(v) = value_of(&stage.instructions) {
        on = enabled(&v);
    }
    on
}

/// Runs `generator` over `image` (and the context in `opts`) and returns the SBOM
/// predicates it wrote, by file name.
///
/// Fails when the generator cannot be resolved, its run fails, or it writes no SBOM.
pub async fn scan(
    store: &cache::store::Store,
    opts: solver::SolveOptions,
    reg: &crate::registry::RegistryConfig,
    generator: &str,
    image: &cache::image::Image,
    scan_context: bool,
) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    // The generator runs natively (BuildKit runs it on the build platform), whatever
    // platform the image it reads is for.
    let platform = cache::oci::Platform::host();
    // The built image is a `from=` of the scan's mount: named in the store while it runs.
    let target = format!("kiln-sbom-target:{}", &image.manifest_digest.hex()[..12]);
    store
        .tag(&target, &image.manifest_digest)
        .context("naming the image for the SBOM scan")?;
    let result = run_scan(
        store,
        opts,
        reg,
        generator,
        &target,
        &platform,
        scan_context,
    )
    .await;
    let _ = store.untag(&target);
    result
}

async fn run_scan(
    store: &cache::store::Store,
    mut opts: solver::SolveOptions,
    reg: &crate::registry::RegistryConfig,
    generator: &str,
    target: &str,
    platform: &cache::oci::Platform,
    scan_context: bool,
) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    let name = format!("SBOM generator {generator}");
    let mut fopts = frontend::BuildOptions::new(platform.clone());
    fopts.dockerfile_name = name.clone();
    // The generator's own config decides the command: resolve it first.
    let probe = frontend::parse(&format!("FROM {generator}\n"))
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let refs = frontend::base_images(&probe, &fopts).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut bases = crate::bases::resolve(store, &refs, &name, platform, false, reg).await?;
    let gcfg = bases
        .values()
        .next()
        .with_context(|| format!("{name}: not found"))?
        .config
        .clone();
    let text = dockerfile(generator, target, &gcfg, scan_context)?;
    let df = frontend::parse(&text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let refs = frontend::base_images(&df, &fopts).map_err(|e| anyhow::anyhow!("{e}"))?;
    bases.extend(crate::bases::resolve(store, &refs, &name, platform, false, reg).await?);
    let graph = frontend::lower(&df, &fopts, &bases).map_err(|e| anyhow::anyhow!("{e}"))?;
    opts.dockerfile_name = name.clone();
    opts.no_cache_stages = Vec::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<solver::progress::Event>();
    let drain = async move { while rx.recv().await.is_some() {} };
    let solver = solver::Solver::new(store.clone(), opts);
    let (solved, ()) = tokio::join!(solver.solve_steps(&graph, tx), drain);
    let solved = solved.with_context(|| format!("{name}: the scan failed"))?;
    let last = solved
        .image
        .config
        .rootfs
        .diff_ids
        .last()
        .with_context(|| format!("{name}: wrote nothing to {DEST}"))?;
    let mut out = Vec::new();
    let files = cache::export::rootfs::files_in(store, last, DEST.trim_start_matches('/'))
        .with_context(|| format!("{name}: reading what the scan wrote"))?;
    for (file, bytes) in files.into_iter().filter(|(f, _)| f.ends_with(".spdx.json")) {
        let doc: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{name}: {DEST}/{file} is not JSON"))?;
        out.push((file, predicate(doc)));
    }
    if out.is_empty() {
        bail!("{name}: wrote no {DEST}/*.spdx.json");
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The SPDX document of a scanner's file: the predicate of an in-toto statement, or the file.
fn predicate(doc: serde_json::Value) -> serde_json::Value {
    match (doc.get("_type"), doc.get("predicate")) {
        (Some(_), Some(p)) => p.clone(),
        _ => doc,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_scan_runs_the_generator_s_command_with_the_protocol_mounts() {
        let mut gcfg = cache::oci::ImageConfig::empty(&cache::oci::Platform::host());
        gcfg.config.entrypoint = Some(vec!["/bin/sh".into(), "/scan.sh".into()]);
        let text =
            super::dockerfile("scanner:1", "kiln-sbom-target:abc", &gcfg, false).expect("ok");
        assert!(!text.contains("EXTRAS"), "{text}");
        let text = super::dockerfile("scanner:1", "kiln-sbom-target:abc", &gcfg, true).expect("ok");
        assert!(
            text.contains("BUILDKIT_SCAN_SOURCE_EXTRAS=/run/src/extras ")
                && text.contains("target=/run/src/extras/sbom-context "),
            "{text}"
        );
        assert!(
            text.contains("BUILDKIT_SCAN_SOURCE=/run/src/core/sbom "),
            "{text}"
        );
        assert!(
            text.contains("from=kiln-sbom-target:abc,target=/run/src/core/sbom "),
            "{text}"
        );
        assert!(text.ends_with("[\"/bin/sh\",\"/scan.sh\"]\n"), "{text}");
        gcfg.config.entrypoint = None;
        assert!(super::dockerfile("scanner:1", "t", &gcfg, false).is_err());
        // BuildKit's rule for scanning the context.
        let args = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let on = |df: &str, kv: &[(&str, &str)], t: Option<&str>| {
            super::scan_context(df.as_bytes(), &args(kv), t)
        };
        assert!(!on("FROM a\n", &[], None));
        assert!(!on(
            "FROM a\n",
            &[("BUILDKIT_SBOM_SCAN_CONTEXT", "true")],
            None
        ));
        assert!(on(
            "ARG BUILDKIT_SBOM_SCAN_CONTEXT=true\nFROM a\n",
            &[],
            None
        ));
        assert!(!on(
            "ARG BUILDKIT_SBOM_SCAN_CONTEXT=true\nFROM a\n",
            &[("BUILDKIT_SBOM_SCAN_CONTEXT", "false")],
            None
        ));
        assert!(on(
            "ARG BUILDKIT_SBOM_SCAN_CONTEXT\nFROM a\n",
            &[("BUILDKIT_SBOM_SCAN_CONTEXT", "1")],
            None
        ));
        let staged = "FROM a AS one\nARG BUILDKIT_SBOM_SCAN_CONTEXT=one,two\nFROM a AS three\n";
        assert!(on(staged, &[], Some("one")));
        assert!(!on(staged, &[], None));
        let stmt = serde_json::json!({"_type": "x", "predicate": {"spdxVersion": "SPDX-2.3"}});
        assert_eq!(super::predicate(stmt)["spdxVersion"], "SPDX-2.3");
    }
}

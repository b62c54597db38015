//! `kiln build --platform A,B`: the platforms to build, the per-platform progress names, and
//! the OCI index that holds the results (written to the store, pushed after its manifests).

use anyhow::Context as _;
use cache::oci::{self, Descriptor, Digest, ImageIndex, Platform};
use cache::store::Store;
use std::collections::BTreeMap;

/// One built platform: what the outputs of a multi-platform build are made of.
#[derive(Debug, Clone)]
pub struct PlatformImage {
    /// The platform it was built for.
    pub platform: Platform,
    /// The image (a manifest in the store).
    pub image: cache::image::Image,
}

/// `--platform` values (comma-separated, repeatable) in order, without repeats; empty when
/// none was given (the host's, as without the flag).
///
/// Fails on a value that is not `os/arch[/variant]`.
pub fn parse(args: &[String]) -> anyhow::Result<Vec<Platform>> {
    let mut out: Vec<Platform> = Vec::new();
    for a in args.iter().flat_map(|a| a.split(',')) {
        let a = a.trim();
        if a.is_empty() {
            continue;
        }
        let p = if a == "local" {
            Platform::host()
        } else {
            crate::registry::parse_platform(&a.to_ascii_lowercase())
                .with_context(|| format!("--platform {a}"))?
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// BuildKit's progress names in a multi-platform build: `[linux/arm64 build 2/3] RUN ...`,
/// each step named with the platform it builds for.
pub fn label_nodes(graph: &mut graph::BuildGraph) {
    for n in &mut graph.nodes {
        if let (Some(p), Some(rest)) = (&n.platform, n.name.strip_prefix('[')) {
            n.name = format!("[{p} {rest}");
        }
    }
}

/// The index of `images` (in the order built), as buildx writes it: one OCI manifest
/// descriptor per platform with its `platform`.
fn index_bytes(entries: Vec<Descriptor>) -> anyhow::Result<Vec<u8>> {
    let index = ImageIndex::oci(entries);
    oci::to_canonical_json(&index).context("serialising the image index")
}

/// The descriptor of a stored image's manifest, with its platform.
fn stored_descriptor(store: &Store, p: &PlatformImage) -> anyhow::Result<Descriptor> {
    let digest = &p.image.manifest_digest;
    let size = std::fs::metadata(store.blob_path(digest))
        .with_context(|| format!("reading the size of manifest {digest}"))?
        .len();
    let media_type = p
        .image
        .manifest
        .media_type
        .as_deref()
        .unwrap_or(oci::MEDIA_TYPE_MANIFEST);
    let mut d = Descriptor::new(media_type, digest.clone(), size);
    d.platform = Some(p.platform.clone());
    Ok(d)
}

/// Writes the index of `images` into the store and returns its descriptor (what `-t` names
/// point at; `kiln run --platform` and `kiln inspect` pick from it).
///
/// Fails when a manifest is missing or the store cannot be written.
pub fn write_index(store: &Store, images: &[PlatformImage]) -> anyhow::Result<Descriptor> {
    let entries = images
        .iter()
        .map(|p| stored_descriptor(store, p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bytes = index_bytes(entries)?;
    let digest = store.put_blob(&bytes).context("writing the image index")?;
    Ok(Descriptor::new(
        oci::MEDIA_TYPE_INDEX,
        digest,
        bytes.len() as u64,
    ))
}

/// The platforms of a stored index that kiln built and can push whole: every entry a
/// manifest in the store in kiln's own form. `None` for a manifest, an index with entries
/// missing (a pulled index holds only the pulled platform's), or a pulled index (pushed as
/// before: its bytes are the registry's, never re-serialised).
pub fn stored_index(store: &Store, top: &Digest) -> Option<Vec<PlatformImage>> {
    let bytes = store.read_blob(top).ok()?;
    let index: ImageIndex = serde_json::from_slice(&bytes).ok()?;
    if index.manifests.is_empty() {
        return None;
    }
    index
        .manifests
        .iter()
        .map(|d| {
            let image = store.image(&d.digest).ok()?;
            let platform = d.platform.clone()?;
            Store::is_local_form(&image).then_some(PlatformImage { platform, image })
        })
        .collect()
}

/// Pushes every platform's manifest to `dest`'s repository by digest, then the index that
/// lists them under `dest`'s tag; returns the pushed index's descriptor. kiln's own manifests go out
/// with compressed layers, so the pushed index lists the pushed digests.
///
/// Fails as a push does.
pub async fn push(
    store: &Store,
    images: &[PlatformImage],
    dest: &str,
    cfg: &crate::registry::RegistryConfig,
) -> anyhow::Result<Descriptor> {
    let r = cache::reference::Reference::parse(dest)?;
    let by_digest = cache::reference::Reference {
        tag: None,
        digest: None,
        ..r.clone()
    };
    let opts = cfg.options()?;
    let mut entries = Vec::new();
    for p in images {
        let pushed = cache::registry::push(store, &p.image, &by_digest, &opts)
            .await
            .with_context(|| format!("pushing the {} image to {dest}", p.platform))?;
        let stored = stored_descriptor(store, p)?;
        let mut d = super::pushed_descriptor(store, &p.image, &stored, &pushed, opts.compression)?;
        d.platform = Some(p.platform.clone());
        entries.push(d);
    }
    let bytes = index_bytes(entries)?;
    let digest = cache::registry::push_index(&r, &bytes, &opts).await?;
    Ok(Descriptor::new(
        oci::MEDIA_TYPE_INDEX,
        digest,
        bytes.len() as u64,
    ))
}

/// The end of a multi-platform build: `--label`s on each image, with `inline` each
/// platform's records in its own image config (as BuildKit's inline cache of several
/// platforms), the index written and tagged, pushed to the `-t` names with `push_tags`, and `--iidfile`, `--metadata-file` and
/// `-q` naming the index. Returns the images (for the `-o` outputs).
///
/// Fails when the store cannot be written or a push fails.
#[allow(clippy::too_many_arguments)]
pub fn finish(
    store: &Store,
    a: &super::BuildArgs,
    built: Vec<(Platform, solver::remote::Solved)>,
    labels: &BTreeMap<String, String>,
    inline: bool,
    rt: &tokio::runtime::Runtime,
    reg_cfg: &crate::registry::RegistryConfig,
    quiet: bool,
    push_tags: bool,
) -> anyhow::Result<Vec<PlatformImage>> {
    use std::io::Write as _;
    let mut images = Vec::new();
    for (platform, mut solved) in built {
        if !labels.is_empty() {
            let mut config = solved.image.config.clone();
            config.config.labels.extend(labels.clone());
            solved.image = store
                .write_image(&config)
                .context("writing the image config with --label labels")?;
        }
        let image = match inline {
            true => crate::cacheopts::attach_inline(store, &solved)?,
            false => solved.image,
        };
        images.push(PlatformImage { platform, image });
    }
    let index = write_index(store, &images)?;
    for t in &a.tags {
        store
            .tag(t, &index.digest)
            .with_context(|| format!("tagging {t}"))?;
    }
    if !quiet {
        let mut err = std::io::stderr().lock();
        for p in &images {
            let _ = writeln!(
                err,
                "writing image {} ({}) done",
                p.image.manifest_digest, p.platform
            );
        }
        let _ = writeln!(err, "writing image index {} done", index.digest);
        for t in &a.tags {
            let _ = writeln!(err, "naming to {t} done");
        }
    }
    let mut described = index.clone();
    if push_tags {
        for t in &a.tags {
            described = rt.block_on(push(store, &images, t, reg_cfg))?;
            let digest = &described.digest;
            if !quiet {
                let _ = writeln!(std::io::stderr(), "pushing {t} done: {digest}");
                writeln!(std::io::stdout().lock(), "{digest}")?;
            }
        }
    }
    if let Some(f) = &a.iidfile {
        std::fs::write(f, index.digest.to_string())
            .with_context(|| format!("--iidfile {}", f.display()))?;
    }
    if let Some(f) = &a.metadata_file {
        // As buildx for several platforms: the index's digest and descriptor, no config.
        let doc = serde_json::json!({
            "buildx.build.ref": super::build_ref()?,
            "containerimage.descriptor": {
                "mediaType": described.media_type,
                "digest": described.digest.to_string(),
                "size": described.size,
            },
            "containerimage.digest": described.digest.to_string(),
            "image.name": a.tags.join(","),
        });
        let mut text = serde_json::to_string_pretty(&doc)?;
        text.push('\n');
        std::fs::write(f, text).with_context(|| format!("--metadata-file {}", f.display()))?;
    }
    if quiet {
        writeln!(std::io::stdout().lock(), "{}", index.digest)?;
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    #[test]
    fn platforms_are_split_normalised_and_deduplicated() {
        let p = super::parse(&["linux/amd64,linux/ARM64".into(), "linux/amd64".into()])
            .expect("parses");
        let names: Vec<String> = p.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["linux/amd64", "linux/arm64"]);
        assert!(super::parse(&["amd64".into()]).is_err());
    }
}

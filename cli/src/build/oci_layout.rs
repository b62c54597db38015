//! `--build-context NAME=oci-layout://DIR[@sha256:DIGEST|:TAG]`: the image of an OCI layout
//! directory, imported into the store as it is. Every blob is copied byte for byte and checked
//! against its digest (the manifest and config are never re-serialised), and each layer is
//! unpacked into its snapshot with its decompression checked against the config's diff_id
//! (`Store::unpack_layer`, as `kiln load` and pulls end up).

use anyhow::{Context as _, bail, ensure};
use cache::oci::{Digest, ImageConfig, ImageIndex, ImageManifest, Platform};
use cache::store::Store;
use std::path::{Path, PathBuf};

/// Imports the layout image `spec` names (`DIR@sha256:...`, `DIR:TAG`, or `DIR` with one
/// image); returns the digest of its manifest (or index) in the store.
///
/// Fails when the layout, the reference or a blob is missing or does not verify.
pub(super) fn import(store: &Store, spec: &str, platform: &Platform) -> anyhow::Result<String> {
    let (dir, pick) = split(spec);
    let index_path = dir.join("index.json");
    let index: ImageIndex = serde_json::from_slice(
        &std::fs::read(&index_path).with_context(|| format!("reading {}", index_path.display()))?,
    )
    .with_context(|| format!("parsing {}", index_path.display()))?;
    let top = match &pick {
        Pick::Digest(d) => d.clone(),
        Pick::Tag(t) => index
            .manifests
            .iter()
            .find(|m| {
                m.annotations
                    .get("org.opencontainers.image.ref.name")
                    .is_some_and(|n| n == t)
            })
            .map(|m| m.digest.clone())
            .with_context(|| format!("no image tagged {t:?} in {}", index_path.display()))?,
        Pick::Only => match index.manifests.as_slice() {
            [one] => one.digest.clone(),
            _ => bail!(
                "{} lists {} images: name one with @sha256:DIGEST or :TAG",
                index_path.display(),
                index.manifests.len()
            ),
        },
    };
    let _lock = store.lock_shared().context("locking the store")?;
    let mut digest = top.clone();
    // An index: its entry for the build's platform.
    for _ in 0..4 {
        let bytes = ingest(store, &dir, &digest)?;
        let Ok(inner) = serde_json::from_slice::<ImageIndex>(&bytes) else {
            break;
        };
        if inner.manifests.is_empty() {
            break;
        }
        let entry = inner
            .manifests
            .iter()
            .filter(|d| !d.is_attestation())
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == platform.os && p.architecture == platform.architecture)
            })
            .with_context(|| format!("index {digest} has no image for {}", platform.os))?;
        digest = entry.digest.clone();
    }
    let manifest: ImageManifest = serde_json::from_slice(&store.read_blob(&digest)?)
        .with_context(|| format!("manifest {digest}"))?;
    let config: ImageConfig =
        serde_json::from_slice(&ingest(store, &dir, &manifest.config.digest)?)
            .with_context(|| format!("config {}", manifest.config.digest))?;
    ensure!(
        manifest.layers.len() == config.rootfs.diff_ids.len(),
        "manifest {digest}: {} layers but {} diff_ids in its config",
        manifest.layers.len(),
        config.rootfs.diff_ids.len()
    );
    for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        ingest(store, &dir, &layer.digest)?;
        let blob = store.blob_path(&layer.digest);
        let f =
            std::fs::File::open(&blob).with_context(|| format!("opening {}", blob.display()))?;
        store
            .unpack_layer(std::io::BufReader::new(f), Some(diff_id))
            .with_context(|| format!("unpacking layer {} ({diff_id})", layer.digest))?;
    }
    Ok(top.to_string())
}

enum Pick {
    Digest(Digest),
    Tag(String),
    Only,
}

/// `DIR@sha256:HEX`, `DIR:TAG` (a `:` after the last `/`), or `DIR`.
fn split(spec: &str) -> (PathBuf, Pick) {
    if let Some((dir, d)) = spec.rsplit_once('@')
        && let Ok(d) = d.parse::<Digest>()
    {
        return (PathBuf::from(dir), Pick::Digest(d));
    }
    let last = spec.rfind('/').map_or(0, |i| i + 1);
    match spec[last..].rfind(':') {
        Some(i) if !Path::new(spec).is_dir() => (
            PathBuf::from(&spec[..last + i]),
            Pick::Tag(spec[last + i + 1..].to_owned()),
        ),
        _ => (PathBuf::from(spec), Pick::Only),
    }
}

/// Copies blob `d` of the layout into the store (verified); returns its bytes when it is
/// small enough to be a manifest, an index or a config.
fn ingest(store: &Store, dir: &Path, d: &Digest) -> anyhow::Result<Vec<u8>> {
    let path = dir.join("blobs").join(d.algorithm()).join(d.hex());
    if !store.has_blob(d) {
        let f =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        store
            .ingest_blob(f, Some(d))
            .with_context(|| format!("importing {}", path.display()))?;
    }
    let meta = std::fs::metadata(store.blob_path(d))?;
    if meta.len() > 4 << 20 {
        return Ok(Vec::new());
    }
    Ok(store.read_blob(d)?)
}

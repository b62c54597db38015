//! Images in the store: config and manifest blobs, and name -> manifest refs under `images/`.
//!
//! An image is its manifest blob. Images kiln builds get a manifest and config that kiln
//! writes ([`Store::write_image`]: an OCI manifest listing the uncompressed layers, whose
//! digests are the diff_ids). Pulled and loaded images keep the manifest, config and index
//! blobs exactly as the registry served them (docker media types, `null`s, unknown fields
//! and all), so that their digests stay valid references and pushing them back gives the same
//! digests. Either way the layers are found by the config's `rootfs.diff_ids`.
//!
//! A ref is one file per normalised reference (`docker.io/library/busybox:latest`), its name
//! percent-encoded, holding the manifest digest. One file per ref makes `tag` a single atomic
//! rename, so concurrent builds tagging different names never lose each other's refs.

use crate::oci::{
    Descriptor, Digest, ImageConfig, ImageManifest, MEDIA_TYPE_CONFIG, MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_MANIFEST, to_canonical_json,
};
use crate::reference::Reference;
use crate::snapshot::CommitOptions;
use crate::store::{Store, StoreError, io_err};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::PathBuf;

type Result<T> = std::result::Result<T, StoreError>;

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Digest of the manifest blob (the image ID kiln shows).
    pub manifest_digest: Digest,
    /// The manifest: kiln's (layers are the uncompressed tars) or the registry's as served
    /// (layers are the compressed blobs). Layers are found by `config.rootfs.diff_ids`.
    pub manifest: ImageManifest,
    /// Digest of the config blob.
    pub config_digest: Digest,
    /// The config.
    pub config: ImageConfig,
}

fn encode_ref(r: &str) -> String {
    let mut out = String::with_capacity(r.len() + 8);
    for c in r.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            ':' => out.push_str("%3A"),
            '@' => out.push_str("%40"),
            c => out.push(c),
        }
    }
    out
}

fn decode_ref(s: &str) -> String {
    s.replace("%2F", "/")
        .replace("%3A", ":")
        .replace("%40", "@")
        .replace("%25", "%")
}

impl Store {
    fn parse_ref(name: &str) -> Result<Reference> {
        Reference::parse(name).map_err(|source| StoreError::Reference {
            name: name.to_owned(),
            source,
        })
    }

    fn ref_path(&self, r: &Reference) -> PathBuf {
        self.dir(kroot::Dir::Images)
            .join(encode_ref(&r.to_string()))
    }

    /// Writes `config` (its `rootfs.diff_ids` set by the caller) and an OCI manifest listing
    /// the uncompressed layer blobs. The image is not tagged.
    ///
    /// Fails when a layer is missing or on I/O errors.
    pub fn write_image(&self, config: &ImageConfig) -> Result<Image> {
        let mut layers = Vec::with_capacity(config.rootfs.diff_ids.len());
        for d in &config.rootfs.diff_ids {
            if !self.has_layer(d) {
                return Err(StoreError::LayerMissing { diff_id: d.clone() });
            }
            let size = self.layer_size(d)?;
            layers.push(Descriptor::new(MEDIA_TYPE_LAYER_TAR, d.clone(), size));
        }
        let config_json = to_canonical_json(config).map_err(|source| StoreError::Json {
            path: PathBuf::from("<image config>"),
            source,
        })?;
        let config_digest = self.put_blob(&config_json)?;
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_MANIFEST.to_owned()),
            config: Descriptor::new(
                MEDIA_TYPE_CONFIG,
                config_digest.clone(),
                config_json.len() as u64,
            ),
            layers,
            annotations: BTreeMap::new(),
            extra: Default::default(),
        };
        let manifest_json = to_canonical_json(&manifest).map_err(|source| StoreError::Json {
            path: PathBuf::from("<image manifest>"),
            source,
        })?;
        let manifest_digest = self.put_blob(&manifest_json)?;
        Ok(Image {
            manifest_digest,
            manifest,
            config_digest,
            config: config.clone(),
        })
    }

    /// True when `image` is in the form [`Store::write_image`] writes (kiln built it): an OCI
    /// manifest listing uncompressed layers by diff_id, serialised as kiln serialises it.
    /// Push compresses those layers; any other image (pulled, loaded) is pushed exactly as
    /// stored.
    pub fn is_local_form(image: &Image) -> bool {
        let m = &image.manifest;
        // Bytes first: a foreign manifest that parses to the same shape (`"layers":null`,
        // other key order or spacing) is not kiln's.
        to_canonical_json(m).is_ok_and(|b| Digest::of(&b) == image.manifest_digest)
            && m.media_type.as_deref() == Some(MEDIA_TYPE_MANIFEST)
            && m.config.media_type == MEDIA_TYPE_CONFIG
            && m.annotations.is_empty()
            && m.extra.is_empty()
            && m.layers.len() == image.config.rootfs.diff_ids.len()
            && m.layers
                .iter()
                .zip(&image.config.rootfs.diff_ids)
                .all(|(l, d)| l.media_type == MEDIA_TYPE_LAYER_TAR && l.digest == *d)
    }

    /// Loads the image whose manifest blob is `manifest`. When `manifest` is an index (or a
    /// manifest list) pulled with an image, the entry of this machine's platform that is in
    /// the store is loaded (the first stored entry when none matches).
    ///
    /// Fails when the manifest or config blob is missing, corrupt or not valid JSON.
    pub fn image(&self, manifest: &Digest) -> Result<Image> {
        self.image_at(manifest, 0, &crate::oci::Platform::host())
    }

    /// Like [`Store::image`], choosing `platform`'s entry (os and architecture, then the
    /// variant when the entry has one) when `manifest` is an index.
    ///
    /// Fails as [`Store::image`] does.
    pub fn image_for(&self, manifest: &Digest, platform: &crate::oci::Platform) -> Result<Image> {
        self.image_at(manifest, 0, platform)
    }

    /// [`Store::resolve`] for `platform` (see [`Store::image_for`]).
    ///
    /// Fails as [`Store::resolve`] does.
    pub fn resolve_for(
        &self,
        name: &str,
        platform: &crate::oci::Platform,
    ) -> Result<Option<Image>> {
        // The name's top-level digest (an index or a manifest), then the platform's entry.
        match self.resolve_top(name)? {
            Some(d) => self.image_for(&d, platform).map(Some),
            None => Ok(None),
        }
    }

    fn image_at(
        &self,
        manifest: &Digest,
        depth: usize,
        host: &crate::oci::Platform,
    ) -> Result<Image> {
        let bytes = self.read_blob(manifest)?;
        if depth < 4
            && let Ok(index) = serde_json::from_slice::<crate::oci::ImageIndex>(&bytes)
            && !index.manifests.is_empty()
        {
            let stored = || {
                index
                    .manifests
                    .iter()
                    .filter(|d| !d.is_attestation() && self.has_blob(&d.digest))
            };
            let entry = stored()
                .find(|d| {
                    d.platform.as_ref().is_some_and(|p| {
                        p.os == host.os
                            && p.architecture == host.architecture
                            && (host.variant.is_none()
                                || p.variant.is_none()
                                || p.variant == host.variant)
                    })
                })
                .or_else(|| stored().next());
            if let Some(entry) = entry {
                return self.image_at(&entry.digest, depth + 1, host);
            }
        }
        let m: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
                path: self.blob_path(manifest),
                source,
            })?;
        let cfg_bytes = self.read_blob(&m.config.digest)?;
        let config: ImageConfig =
            serde_json::from_slice(&cfg_bytes).map_err(|source| StoreError::Json {
                path: self.blob_path(&m.config.digest),
                source,
            })?;
        Ok(Image {
            manifest_digest: manifest.clone(),
            config_digest: m.config.digest.clone(),
            manifest: m,
            config,
        })
    }

    /// Finds an image by name (normalised: `busybox` == `docker.io/library/busybox:latest`),
    /// by full digest (`sha256:...`), or by an unambiguous prefix of a tagged image's manifest
    /// digest (`3f2a`, `sha256:3f2a`). `Ok(None)` when nothing matches.
    ///
    /// Fails when a prefix is ambiguous or the image's blobs are unreadable.
    pub fn resolve(&self, name: &str) -> Result<Option<Image>> {
        match self.resolve_top(name)? {
            Some(d) => self.image(&d).map(Some),
            None => Ok(None),
        }
    }

    /// The digest `name` points at (an index or a manifest), as [`Store::resolve`] finds it.
    ///
    /// Fails as [`Store::resolve`] does.
    pub fn resolve_top(&self, name: &str) -> Result<Option<Digest>> {
        if let Ok(d) = name.parse::<Digest>() {
            return if self.has_blob(&d) {
                Ok(Some(d))
            } else {
                Ok(None)
            };
        }
        if let Ok(r) = Reference::parse(name) {
            if let Some(d) = &r.digest {
                return if self.has_blob(d) {
                    Ok(Some(d.clone()))
                } else {
                    Ok(None)
                };
            }
            if let Some(d) = self.read_ref(&r)? {
                return Ok(Some(d));
            }
        }
        let prefix = name.strip_prefix("sha256:").unwrap_or(name);
        if prefix.is_empty()
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Ok(None);
        }
        let mut matches: Vec<Digest> = self
            .list_images()?
            .into_iter()
            .map(|(_, d)| d)
            .filter(|d| d.hex().starts_with(prefix))
            .collect();
        matches.sort();
        matches.dedup();
        match matches.len() {
            0 => Ok(None),
            1 => Ok(Some(matches[0].clone())),
            _ => Err(StoreError::AmbiguousId {
                prefix: name.to_owned(),
                matches,
            }),
        }
    }

    fn read_ref(&self, r: &Reference) -> Result<Option<Digest>> {
        let p = self.ref_path(r);
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &p)(e)),
        };
        let d = text
            .trim()
            .parse::<Digest>()
            .map_err(|e| StoreError::Json {
                path: p.clone(),
                source: serde::de::Error::custom(e),
            })?;
        Ok(Some(d))
    }

    /// Points `name` at the image `manifest` (replacing any previous target).
    ///
    /// Fails when `name` is not a valid reference, the manifest is not in the store, or on
    /// I/O errors.
    pub fn tag(&self, name: &str, manifest: &Digest) -> Result<()> {
        let r = Self::parse_ref(name)?;
        if !self.has_blob(manifest) {
            return Err(StoreError::BlobMissing {
                digest: manifest.clone(),
            });
        }
        // A rebuild that changed nothing re-tags the same image: skip the write (and its fsync).
        if self.read_ref(&r).ok().flatten().as_ref() == Some(manifest) {
            return Ok(());
        }
        self.write_atomic(&self.ref_path(&r), format!("{manifest}\n").as_bytes())
    }

    /// Removes the name `name`. Returns false when it did not exist.
    ///
    /// Fails when `name` is not a valid reference or on I/O errors.
    pub fn untag(&self, name: &str) -> Result<bool> {
        let r = Self::parse_ref(name)?;
        let p = self.ref_path(&r);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", &p)(e)),
        }
    }

    /// All names and the manifests they point at, sorted by name.
    ///
    /// Fails on I/O errors reading `images/`.
    pub fn list_images(&self) -> Result<Vec<(Reference, Digest)>> {
        let dir = self.dir(kroot::Dir::Images);
        let mut out = Vec::new();
        for ent in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
            let ent = ent.map_err(io_err("read directory", &dir))?;
            let Some(name) = ent.file_name().to_str().map(decode_ref) else {
                continue;
            };
            let Ok(r) = Reference::parse(&name) else {
                continue;
            };
            if let Some(d) = self.read_ref(&r)? {
                out.push((r, d));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Imports a root filesystem tarball (plain, gzip or zstd) as a one-layer image, like
    /// `docker import`. The tree is unpacked safely and re-written with the layer writer, so
    /// the layer is deterministic. `config.rootfs.diff_ids` is replaced. The image is not tagged.
    ///
    /// Fails on a malformed or hostile tarball or on I/O errors.
    pub fn import_rootfs(&self, r: impl Read, config: ImageConfig) -> Result<Image> {
        let tmp = self.temp_dir("import")?;
        let root = crate::snapshot::new_root(&tmp)?;
        let (reader, _) = crate::snapshot::decompress(r).map_err(|source| StoreError::Unpack {
            source: crate::layer::apply::ApplyError::Read { source },
        })?;
        crate::layer::apply::apply_layer(reader, &root)
            .map_err(|source| StoreError::Unpack { source })?;
        let layer = self.commit_layer(&root, &CommitOptions::default())?;
        let mut config = config;
        config.rootfs.diff_ids = layer.into_iter().map(|l| l.diff_id).collect();
        self.write_image(&config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_round_trip_through_file_names() {
        for r in [
            "docker.io/library/busybox:latest",
            "localhost:5000/a/b:v1%x",
            "x/y@sha256:ab",
        ] {
            let e = encode_ref(r);
            assert!(!e.contains('/') && !e.contains(':'), "{e}");
            assert_eq!(decode_ref(&e), r);
        }
    }
}

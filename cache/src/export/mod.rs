//! Build outputs (`kiln build -o`): the manifests, index and blobs of a result as they leave
//! the machine, and the writers that put them somewhere.
//!
//! [`Export::prepare`] takes the per-platform images of a build (one for a single-platform
//! build, several for a multi-platform one) and makes, in the store, one manifest per image
//! (layers compressed as asked, the config blob as stored: configs are never re-serialised),
//! with the annotations of each level applied. [`Export::attach`] adds an attestation manifest
//! (in-toto statements as layers) for one image, the way BuildKit attaches them, and
//! [`Export::finish`] writes the index when there is more than one manifest (or when asked).
//! The writers then read only the store: [`layout`] (OCI layout as a directory or tar, with
//! docker-archive's `manifest.json` for `type=docker`), [`rootfs`] (`type=local`,
//! `type=tar`) and [`push`] (`type=image,push=true`, `type=registry`).

pub mod layout;
pub mod push;
pub mod rewrite;
pub mod rootfs;

use crate::compress::Compression;
use crate::image::Image;
use crate::oci::{self, Descriptor, Digest, ImageIndex, ImageManifest, Platform};
use crate::store::{Store, StoreError};
use std::collections::BTreeMap;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading or writing the store failed (a layer, a blob).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the destination failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The destination path (`-` for stdout).
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A layer could not be read as a tar while flattening it.
    #[error("layer {diff_id}: reading entry")]
    Layer {
        /// The layer.
        diff_id: Digest,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The flattened root filesystem could not be unpacked into the destination.
    #[error("unpacking the image into {path}")]
    Unpack {
        /// The destination directory.
        path: String,
        /// The cause.
        #[source]
        source: crate::layer::apply::ApplyError,
    },
    /// Index annotations were asked for a result without an index (BuildKit's rule).
    #[error("index annotations need an index: this export has a single manifest")]
    IndexAnnotations,
    /// zstd layers have no Docker media type.
    #[error("compression=zstd needs oci-mediatypes=true")]
    ZstdDocker,
    /// Pushing failed (boxed: the push error is large).
    #[error(transparent)]
    Push(Box<crate::registry::PushError>),
}

impl From<crate::registry::PushError> for ExportError {
    fn from(e: crate::registry::PushError) -> ExportError {
        ExportError::Push(Box::new(e))
    }
}

type Result<T> = std::result::Result<T, ExportError>;

/// Where an annotation goes (buildx's `--annotation TYPE:` prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `manifest:` (the default): the image manifest's `annotations`.
    Manifest,
    /// `index:`: the image index's `annotations`.
    Index,
    /// `manifest-descriptor:`: the manifest's descriptor in the index.
    ManifestDescriptor,
    /// `index-descriptor:`: the index's descriptor in an OCI layout's `index.json`.
    IndexDescriptor,
}

/// One `--annotation`: a level, an optional `[platform]` qualifier, the key and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// Where it goes.
    pub level: Level,
    /// Only for manifests of this platform (manifest levels).
    pub platform: Option<Platform>,
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// The annotations of `level` that apply to `platform` (those without a qualifier always do).
pub fn annotations_for(
    all: &[Annotation],
    level: Level,
    platform: Option<&Platform>,
) -> BTreeMap<String, String> {
    all.iter()
        .filter(|a| a.level == level)
        .filter(|a| match (&a.platform, platform) {
            (None, _) => true,
            (Some(q), Some(p)) => {
                q.os == p.os
                    && q.architecture == p.architecture
                    && (q.variant.is_none() || q.variant == p.variant)
            }
            (Some(_), None) => false,
        })
        .map(|a| (a.key.clone(), a.value.clone()))
        .collect()
}

/// How layers leave the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    /// `compression=uncompressed`: the layer tars themselves.
    Uncompressed,
    /// `compression=gzip|zstd[,compression-level=N]`.
    Compressed(Compression),
}

/// Options of an image-shaped export (`type=oci|docker|image|registry`).
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Layer compression.
    pub compression: LayerCompression,
    /// `force-compression=true`: compress even layers already stored compressed otherwise
    /// (a pulled base's gzip blobs are kept by default, as BuildKit keeps them).
    pub force_compression: bool,
    /// `oci-mediatypes=true` (OCI) or false (Docker schema2 types).
    pub oci_mediatypes: bool,
    /// `--annotation` values.
    pub annotations: Vec<Annotation>,
    /// `rewrite-timestamp=true`: clamp the layers' file dates at the build's epoch (see
    /// [`rewrite`]); the caller applies it with the epoch it knows.
    pub rewrite_timestamp: bool,
}

/// One prepared image manifest.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The image it was made from.
    pub image: Image,
    /// Its descriptor, as it appears in the index (platform, manifest-descriptor annotations).
    pub descriptor: Descriptor,
    /// Its layer descriptors (base first).
    pub layers: Vec<Descriptor>,
}

/// A result ready to be written: every blob is in the store.
#[derive(Debug, Clone)]
pub struct Export {
    /// The image manifests, one per platform.
    pub images: Vec<Prepared>,
    /// Attestation manifests' descriptors, as they appear in the index.
    pub attestations: Vec<Descriptor>,
    /// Every blob the result references besides the manifests and the index
    /// (layers, configs, attestation layers).
    pub blobs: BTreeMap<Digest, Descriptor>,
    /// The index, when [`Export::finish`] made one.
    pub index: Option<Descriptor>,
    /// Options it was made with.
    pub opts: ExportOptions,
}

/// The media types of one flavour (`oci-mediatypes`).
struct Types {
    manifest: &'static str,
    index: &'static str,
    config: &'static str,
}

fn types(oci_types: bool) -> Types {
    match oci_types {
        true => Types {
            manifest: oci::MEDIA_TYPE_MANIFEST,
            index: oci::MEDIA_TYPE_INDEX,
            config: oci::MEDIA_TYPE_CONFIG,
        },
        false => Types {
            manifest: oci::MEDIA_TYPE_DOCKER_MANIFEST,
            index: oci::MEDIA_TYPE_DOCKER_MANIFEST_LIST,
            config: oci::MEDIA_TYPE_DOCKER_CONFIG,
        },
    }
}

/// The layer media type for a blob of `media_type` in the flavour asked.
fn layer_type(media_type: &str, oci_types: bool) -> &str {
    use oci::*;
    match (media_type, oci_types) {
        (MEDIA_TYPE_DOCKER_LAYER_GZIP, true) => MEDIA_TYPE_LAYER_GZIP,
        (MEDIA_TYPE_DOCKER_LAYER_TAR, true) => MEDIA_TYPE_LAYER_TAR,
        (MEDIA_TYPE_LAYER_GZIP, false) => MEDIA_TYPE_DOCKER_LAYER_GZIP,
        (MEDIA_TYPE_LAYER_TAR, false) => MEDIA_TYPE_DOCKER_LAYER_TAR,
        (m, _) => m,
    }
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    oci::to_canonical_json(v).expect("manifests and indexes always serialise to JSON")
}

/// The platform of an image, from its config.
pub fn platform_of(image: &Image) -> Platform {
    Platform {
        architecture: image.config.architecture.clone(),
        os: image.config.os.clone(),
        variant: image.config.variant.clone(),
        os_version: None,
    }
}

impl Export {
    /// Makes the manifests of `images` (one per platform) in `store`, with layers as `opts`
    /// asks.
    ///
    /// Fails when a layer cannot be read or compressed, or on zstd with Docker media types.
    pub fn prepare(store: &Store, images: &[Image], opts: &ExportOptions) -> Result<Export> {
        let t = types(opts.oci_mediatypes);
        if !opts.oci_mediatypes
            && matches!(opts.compression, LayerCompression::Compressed(c) if c.codec == crate::compress::Codec::Zstd)
        {
            return Err(ExportError::ZstdDocker);
        }
        let mut blobs = BTreeMap::new();
        let mut prepared = Vec::new();
        for image in images {
            let mut layers = Vec::new();
            for d in &image.config.rootfs.diff_ids {
                // A fresh descriptor: the stored one may carry a pulled layer's annotations.
                let stored = layer(store, d, opts)?;
                let desc = Descriptor::new(
                    layer_type(&stored.media_type, opts.oci_mediatypes),
                    stored.digest,
                    stored.size,
                );
                blobs.insert(desc.digest.clone(), desc.clone());
                layers.push(desc);
            }
            let config = Descriptor::new(
                t.config,
                image.config_digest.clone(),
                image.manifest.config.size,
            );
            blobs.insert(config.digest.clone(), config.clone());
            let platform = platform_of(image);
            let manifest = ImageManifest {
                schema_version: 2,
                media_type: Some(t.manifest.to_owned()),
                config,
                layers: layers.clone(),
                annotations: annotations_for(&opts.annotations, Level::Manifest, Some(&platform)),
                extra: Default::default(),
            };
            let bytes = json(&manifest);
            let digest = store.put_blob(&bytes)?;
            let mut descriptor = Descriptor::new(t.manifest, digest, bytes.len() as u64);
            descriptor.annotations = annotations_for(
                &opts.annotations,
                Level::ManifestDescriptor,
                Some(&platform),
            );
            descriptor.platform = Some(platform);
            prepared.push(Prepared {
                image: image.clone(),
                descriptor,
                layers,
            });
        }
        Ok(Export {
            images: prepared,
            attestations: Vec::new(),
            blobs,
            index: None,
            opts: opts.clone(),
        })
    }

    /// Attaches in-toto statements (`(predicate type, statement JSON)`) to image `i` as
    /// BuildKit does: an attestation manifest (platform `unknown/unknown`, config an empty
    /// image config, one `application/vnd.in-toto+json` layer per statement) whose index
    /// descriptor carries `vnd.docker.reference.type: attestation-manifest` and
    /// `vnd.docker.reference.digest: <the image manifest's digest>`.
    ///
    /// Fails on store errors.
    pub fn attach(
        &mut self,
        store: &Store,
        i: usize,
        statements: &[(String, Vec<u8>)],
    ) -> Result<()> {
        let subject = self.images[i].descriptor.digest.clone();
        let mut layers = Vec::new();
        for (predicate, bytes) in statements {
            let digest = store.put_blob(bytes)?;
            let mut d = Descriptor::new(MEDIA_TYPE_IN_TOTO, digest, bytes.len() as u64);
            d.annotations
                .insert("in-toto.io/predicate-type".into(), predicate.clone());
            self.blobs.insert(d.digest.clone(), d.clone());
            layers.push(d);
        }
        let unknown = Platform {
            architecture: "unknown".into(),
            os: "unknown".into(),
            variant: None,
            os_version: None,
        };
        // BuildKit's attestation config: an image config of platform unknown/unknown whose
        // rootfs lists the statements' digests.
        let config_bytes = json(&serde_json::json!({
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>(),
            },
        }));
        let config = Descriptor::new(
            oci::MEDIA_TYPE_CONFIG,
            store.put_blob(&config_bytes)?,
            config_bytes.len() as u64,
        );
        self.blobs.insert(config.digest.clone(), config.clone());
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(oci::MEDIA_TYPE_MANIFEST.to_owned()),
            config,
            layers,
            annotations: BTreeMap::new(),
            extra: Default::default(),
        };
        let bytes = json(&manifest);
        let mut d = Descriptor::new(
            oci::MEDIA_TYPE_MANIFEST,
            store.put_blob(&bytes)?,
            bytes.len() as u64,
        );
        d.annotations.insert(
            oci::ANNOTATION_REFERENCE_TYPE.into(),
            "attestation-manifest".into(),
        );
        d.annotations
            .insert(ANNOTATION_REFERENCE_DIGEST.into(), subject.to_string());
        d.platform = Some(unknown);
        self.attestations.push(d);
        Ok(())
    }

    /// Writes the index when the result has more than one manifest (several platforms, or
    /// attestations) or `force_index`, with the `index:` annotations.
    ///
    /// Fails when `index:` annotations are asked without an index, or on store errors.
    pub fn finish(&mut self, store: &Store, force_index: bool) -> Result<()> {
        let annotations = annotations_for(&self.opts.annotations, Level::Index, None);
        let manifests: Vec<Descriptor> = self
            .images
            .iter()
            .map(|p| p.descriptor.clone())
            .chain(self.attestations.iter().cloned())
            .collect();
        if manifests.len() < 2 && !force_index {
            if !annotations.is_empty() {
                return Err(ExportError::IndexAnnotations);
            }
            return Ok(());
        }
        // Attestations need OCI types (BuildKit writes an OCI index for them).
        let t = types(self.opts.oci_mediatypes || !self.attestations.is_empty());
        let index = ImageIndex {
            schema_version: 2,
            media_type: Some(t.index.to_owned()),
            manifests,
            annotations,
            extra: Default::default(),
        };
        let bytes = json(&index);
        self.index = Some(Descriptor::new(
            t.index,
            store.put_blob(&bytes)?,
            bytes.len() as u64,
        ));
        Ok(())
    }

    /// The descriptor the result is known by: the index, or the single manifest.
    pub fn root(&self) -> &Descriptor {
        self.index
            .as_ref()
            .unwrap_or_else(|| &self.images[0].descriptor)
    }

    /// Every manifest blob (images, attestations) and the index, with their descriptors.
    pub fn manifests(&self) -> impl Iterator<Item = &Descriptor> {
        self.images
            .iter()
            .map(|p| &p.descriptor)
            .chain(&self.attestations)
            .chain(&self.index)
    }
}

/// `application/vnd.in-toto+json`: an attestation layer.
pub const MEDIA_TYPE_IN_TOTO: &str = "application/vnd.in-toto+json";
/// The annotation naming the manifest an attestation manifest is about.
pub const ANNOTATION_REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";

/// The blob of layer `d` as `opts` asks.
fn layer(store: &Store, d: &Digest, opts: &ExportOptions) -> Result<Descriptor> {
    if !opts.force_compression
        && let Some(src) = store.layer_source(d)
    {
        // Stored compressed (pulled): kept as it is, whatever the codec asked.
        return Ok(src.blob);
    }
    match opts.compression {
        LayerCompression::Compressed(c) => Ok(store.compressed_layer(d, c)?),
        LayerCompression::Uncompressed => {
            let path = store.layer_blob(d)?;
            let size = std::fs::metadata(&path)
                .map_err(|source| ExportError::Io {
                    op: "stat",
                    path: path.display().to_string(),
                    source,
                })?
                .len();
            Ok(Descriptor::new(oci::MEDIA_TYPE_LAYER_TAR, d.clone(), size))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_qualified_annotations_apply_to_their_platform_only() {
        let p = |s: &str| {
            let mut it = s.split('/');
            Platform {
                os: it.next().unwrap_or_default().into(),
                architecture: it.next().unwrap_or_default().into(),
                variant: it.next().map(Into::into),
                os_version: None,
            }
        };
        let a = |level, platform: Option<&str>, key: &str| Annotation {
            level,
            platform: platform.map(p),
            key: key.into(),
            value: "v".into(),
        };
        let all = [
            a(Level::Manifest, None, "all"),
            a(Level::Manifest, Some("linux/arm64"), "arm"),
            a(Level::Manifest, Some("linux/arm64/v8"), "arm-v8"),
            a(Level::Index, None, "idx"),
        ];
        let keys = |platform: &str| -> Vec<String> {
            annotations_for(&all, Level::Manifest, Some(&p(platform)))
                .into_keys()
                .collect()
        };
        assert_eq!(keys("linux/amd64"), ["all"]);
        assert_eq!(keys("linux/arm64/v8"), ["all", "arm", "arm-v8"]);
        assert_eq!(
            annotations_for(&all, Level::Index, None)
                .into_keys()
                .collect::<Vec<_>>(),
            ["idx"]
        );
    }
}

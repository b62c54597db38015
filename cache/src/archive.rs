//! `save`: one tar holding an OCI image layout and a docker-archive `manifest.json`.
//!
//! Layout of the archive (the shape docker 25+ writes, which older docker, skopeo and umoci
//! all read):
//! - `oci-layout`, `index.json` (one manifest per image, annotated with
//!   `io.containerd.image.name` = full name and `org.opencontainers.image.ref.name` = tag);
//! - `blobs/sha256/<hex>`: configs, manifests and gzip layers (from [`Store::compressed_layer`]);
//! - `manifest.json` (docker-archive: `Config`, `RepoTags`, `Layers` pointing into `blobs/`)
//!   and the legacy `repositories` file.
//!
//! Entries are written in a fixed order with fixed metadata, so the same images give the same
//! bytes.

use crate::compress::Compression;
use crate::image::Image;
use crate::oci::{
    Descriptor, Digest, ImageIndex, ImageManifest, MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_ZSTD, MEDIA_TYPE_MANIFEST,
    to_canonical_json,
};
use crate::reference::Reference;
use crate::store::{Store, StoreError, io_err};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};

type Result<T> = std::result::Result<T, StoreError>;

/// One entry of docker-archive's `manifest.json`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

enum Blob {
    File(Digest),
    Bytes(Vec<u8>),
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    to_canonical_json(v).map_err(|source| StoreError::Json {
        path: "<saved archive>".into(),
        source,
    })
}

/// The OCI media type of a layer blob whose type may be Docker's.
fn oci_layer_type(media_type: &str) -> &str {
    match media_type {
        crate::oci::MEDIA_TYPE_DOCKER_LAYER_GZIP => MEDIA_TYPE_LAYER_GZIP,
        crate::oci::MEDIA_TYPE_DOCKER_LAYER_TAR => MEDIA_TYPE_LAYER_TAR,
        m => m,
    }
}

/// True when `img` is stored as served with OCI media types throughout (no Docker types,
/// which umoci refuses in an OCI layout), and is not kiln's uncompressed form.
fn is_oci_as_stored(img: &Image) -> bool {
    !Store::is_local_form(img)
        && img
            .manifest
            .media_type
            .as_deref()
            .unwrap_or(MEDIA_TYPE_MANIFEST)
            == MEDIA_TYPE_MANIFEST
        && img.manifest.config.media_type == MEDIA_TYPE_CONFIG
        && img.manifest.layers.iter().all(|l| {
            matches!(
                l.media_type.as_str(),
                MEDIA_TYPE_LAYER_GZIP | MEDIA_TYPE_LAYER_ZSTD | MEDIA_TYPE_LAYER_TAR
            )
        })
}

impl Store {
    /// True when every layer blob `img`'s manifest lists is in the store.
    fn has_layer_blobs(&self, img: &Image) -> bool {
        img.manifest.layers.iter().all(|l| self.has_blob(&l.digest))
    }

    /// The layers (gzip) and the OCI manifest of `img` as saved, its blobs added to `blobs`.
    fn manifest_blobs(
        &self,
        img: &Image,
        blobs: &mut BTreeMap<Digest, Blob>,
    ) -> Result<(Vec<Descriptor>, Digest, Vec<u8>)> {
        // Layers are gzip blobs: a pulled image's own (the store remembers the blob it was
        // pulled as), else compressed once and memoized.
        let mut layers = Vec::with_capacity(img.config.rootfs.diff_ids.len());
        for d in &img.config.rootfs.diff_ids {
            let mut desc = self.compressed_layer(d, Compression::default())?;
            desc.media_type = oci_layer_type(&desc.media_type).to_owned();
            blobs.insert(desc.digest.clone(), Blob::File(desc.digest.clone()));
            layers.push(desc);
        }
        let (mdigest, mbytes) = if is_oci_as_stored(img) && self.has_layer_blobs(img) {
            // An OCI image kept as served (pulled, loaded) is saved byte for byte: its
            // digest stays the registry's.
            for l in &img.manifest.layers {
                blobs.insert(l.digest.clone(), Blob::File(l.digest.clone()));
            }
            (
                img.manifest_digest.clone(),
                self.read_blob(&img.manifest_digest)?,
            )
        } else {
            // kiln's own form (uncompressed layers), or a Docker-typed image: the OCI
            // layout gets an OCI manifest with OCI media types (umoci refuses Docker
            // types there); the config keeps its bytes.
            let manifest = ImageManifest {
                schema_version: 2,
                media_type: Some(MEDIA_TYPE_MANIFEST.to_owned()),
                config: Descriptor::new(
                    MEDIA_TYPE_CONFIG,
                    img.config_digest.clone(),
                    img.manifest.config.size,
                ),
                layers: layers.clone(),
                annotations: BTreeMap::new(),
                extra: Default::default(),
            };
            let mbytes = json(&manifest)?;
            (Digest::of(&mbytes), mbytes)
        };
        Ok((layers, mdigest, mbytes))
    }

    /// The (platform, manifest) entries of the index `digest` when it is one whose every
    /// manifest is stored with a platform in kiln's own form (a multi-platform image kiln
    /// built); else None.
    fn stored_platforms(
        &self,
        digest: &Digest,
    ) -> Result<Option<Vec<(crate::oci::Platform, Digest)>>> {
        let Ok(index) = serde_json::from_slice::<ImageIndex>(&self.read_blob(digest)?) else {
            return Ok(None);
        };
        if index.manifests.is_empty() {
            return Ok(None);
        }
        Ok(index
            .manifests
            .iter()
            .map(|d| match (&d.platform, self.has_blob(&d.digest)) {
                // Only kiln's own images: a pulled index keeps the registry's bytes.
                (Some(_), true)
                    if !self.image(&d.digest).is_ok_and(|i| Self::is_local_form(&i)) =>
                {
                    None
                }
                (Some(p), true) if d.media_type == MEDIA_TYPE_MANIFEST => {
                    Some((p.clone(), d.digest.clone()))
                }
                _ => None,
            })
            .collect())
    }

    /// Writes a tar holding an OCI layout (oci-layout, index.json, blobs/) and a docker-archive
    /// manifest.json for `images` (name, manifest digest), with gzip layers. Accepted by
    /// `docker load`, `skopeo inspect oci-archive:` and umoci.
    ///
    /// Fails when a name is invalid, an image or layer is missing, or on I/O errors.
    pub fn save(&self, images: &[(String, Digest)], out: impl Write) -> Result<()> {
        let mut blobs: BTreeMap<Digest, Blob> = BTreeMap::new();
        let mut index = Vec::new();
        let mut docker = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (name, digest) in images {
            let r = Reference::parse(name).map_err(|source| StoreError::Reference {
                name: name.clone(),
                source,
            })?;
            let img = self.image(digest)?;
            let (layers, mdigest, mbytes) = self.manifest_blobs(&img, &mut blobs)?;
            // A multi-platform image kiln built (an index whose every manifest is stored)
            // keeps its index; docker-archive's manifest.json lists the host's image.
            let mut desc = match self.stored_platforms(digest)? {
                Some(entries) => {
                    let mut manifests = Vec::new();
                    for (platform, d) in entries {
                        let i = self.image(&d)?;
                        let (_, md, mb) = self.manifest_blobs(&i, &mut blobs)?;
                        let mut m =
                            Descriptor::new(MEDIA_TYPE_MANIFEST, md.clone(), mb.len() as u64);
                        m.platform = Some(platform);
                        blobs.insert(i.config_digest.clone(), Blob::File(i.config_digest.clone()));
                        blobs.insert(md, Blob::Bytes(mb));
                        manifests.push(m);
                    }
                    let index = ImageIndex::oci(manifests);
                    let ibytes = json(&index)?;
                    let idigest = Digest::of(&ibytes);
                    let d = Descriptor::new(MEDIA_TYPE_INDEX, idigest.clone(), ibytes.len() as u64);
                    blobs.insert(idigest, Blob::Bytes(ibytes));
                    d
                }
                None => Descriptor::new(MEDIA_TYPE_MANIFEST, mdigest.clone(), mbytes.len() as u64),
            };
            desc.annotations
                .insert("io.containerd.image.name".into(), r.to_string());
            if let Some(tag) = &r.tag {
                desc.annotations
                    .insert("org.opencontainers.image.ref.name".into(), tag.clone());
            }
            index.push(desc);
            blobs.insert(
                img.config_digest.clone(),
                Blob::File(img.config_digest.clone()),
            );
            blobs.insert(mdigest, Blob::Bytes(mbytes));
            let mut repo_tags = Vec::new();
            if r.tag.is_some() && r.digest.is_none() {
                repo_tags.push(r.familiar());
                let short = Reference {
                    tag: None,
                    digest: None,
                    ..r.clone()
                }
                .familiar();
                repositories.entry(short).or_default().insert(
                    r.tag.clone().unwrap_or_default(),
                    img.config_digest.hex().to_owned(),
                );
            }
            docker.push(DockerArchiveEntry {
                config: blob_name(&img.config_digest),
                repo_tags,
                layers: layers.iter().map(|l| blob_name(&l.digest)).collect(),
            });
        }
        let index = ImageIndex::oci(index);
        let mut w = ArchiveWriter {
            b: tar::Builder::new(io::BufWriter::with_capacity(1 << 20, out)),
        };
        let save = |source| StoreError::Save { source };
        w.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(save)?;
        w.dir("blobs/").map_err(save)?;
        w.dir("blobs/sha256/").map_err(save)?;
        for (d, blob) in &blobs {
            match blob {
                Blob::Bytes(b) => w.file(&blob_name(d), b).map_err(save)?,
                Blob::File(d) => {
                    let p = self.blob_path(d);
                    let f = File::open(&p).map_err(io_err("open", &p))?;
                    let len = f.metadata().map_err(io_err("stat", &p))?.len();
                    w.stream(&blob_name(d), len, f).map_err(save)?;
                }
            }
        }
        w.file("index.json", &json(&index)?).map_err(save)?;
        w.file("manifest.json", &json(&docker)?).map_err(save)?;
        w.file("repositories", &json(&repositories)?)
            .map_err(save)?;
        let mut inner = w.b.into_inner().map_err(save)?;
        inner.flush().map_err(save)?;
        Ok(())
    }
}

/// A tar writer of fixed-metadata entries (root-owned, mtime 0), shared with `export`.
pub(crate) struct ArchiveWriter<W: Write> {
    pub(crate) b: tar::Builder<W>,
}

impl<W: Write> ArchiveWriter<W> {
    fn header(name: &str, size: u64, kind: tar::EntryType, mode: u32) -> io::Result<tar::Header> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name)?;
        h.set_size(size);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        Ok(h)
    }
    pub(crate) fn dir(&mut self, name: &str) -> io::Result<()> {
        let h = Self::header(name, 0, tar::EntryType::Directory, 0o755)?;
        self.b.append(&h, io::empty())
    }
    pub(crate) fn file(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let h = Self::header(name, data.len() as u64, tar::EntryType::Regular, 0o644)?;
        self.b.append(&h, data)
    }
    pub(crate) fn stream(&mut self, name: &str, size: u64, r: impl io::Read) -> io::Result<()> {
        let h = Self::header(name, size, tar::EntryType::Regular, 0o644)?;
        self.b.append(&h, r)
    }
}

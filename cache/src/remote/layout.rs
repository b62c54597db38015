//! OCI image layout directories (`type=local`): `oci-layout`, `index.json` and
//! `blobs/sha256/<hex>`, as the OCI image-layout spec describes and skopeo (`oci:DIR`) reads.
//! The cache manifest is listed in `index.json` with the ref name [`REF_NAME`].

use super::{RemoteError, Result};
use crate::oci::{self, Descriptor, Digest, ImageIndex};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The `org.opencontainers.image.ref.name` of the cache manifest in `index.json`.
pub const REF_NAME: &str = "kiln-cache";
const REF_ANNOTATION: &str = "org.opencontainers.image.ref.name";

fn io_err(dir: &Path, op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RemoteError {
    let (location, path) = (dir.display().to_string(), path.to_path_buf());
    move |source| RemoteError::Io {
        location,
        op,
        path,
        source,
    }
}

/// `DIR/blobs/sha256/<hex>`.
pub fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join(d.algorithm()).join(d.hex())
}

/// True when the layout has the blob.
pub fn has_blob(dir: &Path, d: &Digest) -> bool {
    blob_path(dir, d).is_file()
}

/// Copies the file `src` into the layout as blob `d` ([`kroot::write_atomic_with`]).
///
/// Fails on I/O errors.
pub fn put_blob(dir: &Path, d: &Digest, src: &Path) -> Result<()> {
    let dest = blob_path(dir, d);
    let parent = dest.parent().expect("blob paths have a parent");
    fs::create_dir_all(parent).map_err(io_err(dir, "create", parent))?;
    kroot::write_atomic_with(&dest, 0o644, |f| {
        io::copy(&mut fs::File::open(src)?, f).map(drop)
    })
    .map_err(io_err(dir, "copy into", &dest))
}

/// Writes `oci-layout` and points `index.json`'s [`REF_NAME`] entry at `manifest` (other
/// entries are kept).
///
/// Fails on I/O errors or an unreadable existing `index.json`.
pub fn set_manifest(dir: &Path, manifest: Descriptor) -> Result<()> {
    let layout = dir.join("oci-layout");
    write_atomic(dir, &layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index_path = dir.join("index.json");
    let mut index = match read_index(dir)? {
        Some(i) => i,
        None => ImageIndex::oci(Vec::new()),
    };
    index
        .manifests
        .retain(|m| m.annotations.get(REF_ANNOTATION).map(String::as_str) != Some(REF_NAME));
    let mut manifest = manifest;
    manifest
        .annotations
        .insert(REF_ANNOTATION.to_owned(), REF_NAME.to_owned());
    index.manifests.push(manifest);
    let bytes = oci::to_canonical_json(&index).expect("indexes always serialise to JSON");
    write_atomic(dir, &index_path, &bytes)
}

/// `index.json`, if the directory has one.
///
/// Fails on I/O errors or invalid JSON.
pub fn read_index(dir: &Path) -> Result<Option<ImageIndex>> {
    let p = dir.join("index.json");
    let bytes = match fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(dir, "read", &p)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| RemoteError::Invalid {
            location: dir.display().to_string(),
            what: "index.json",
            source,
        })
}

/// The cache manifest's descriptor: the [`REF_NAME`] entry, else the only entry.
///
/// Fails when there is no `index.json` or no such entry, or on I/O errors.
pub fn manifest(dir: &Path) -> Result<Descriptor> {
    let location = dir.display().to_string();
    let index = read_index(dir)?.ok_or_else(|| RemoteError::Io {
        location: location.clone(),
        op: "read",
        path: dir.join("index.json"),
        source: io::Error::from(io::ErrorKind::NotFound),
    })?;
    let named = index
        .manifests
        .iter()
        .find(|m| m.annotations.get(REF_ANNOTATION).map(String::as_str) == Some(REF_NAME));
    match (named, index.manifests.as_slice()) {
        (Some(m), _) | (None, [m]) => Ok(m.clone()),
        _ => Err(RemoteError::NotACache {
            location,
            what: "index.json",
            media_type: format!("no manifest named {REF_NAME}"),
        }),
    }
}

/// Reads a small blob and checks its digest.
///
/// Fails when it is missing, unreadable or does not match.
pub fn read_blob(dir: &Path, d: &Digest) -> Result<Vec<u8>> {
    let p = blob_path(dir, d);
    let bytes = fs::read(&p).map_err(io_err(dir, "read", &p))?;
    let actual = Digest::of(&bytes);
    if actual != *d {
        return Err(RemoteError::DigestMismatch {
            location: dir.display().to_string(),
            expected: d.clone(),
            actual,
        });
    }
    Ok(bytes)
}

fn write_atomic(dir: &Path, dest: &Path, data: &[u8]) -> Result<()> {
    kroot::write_atomic(dest, data).map_err(io_err(dir, "write", dest))
}

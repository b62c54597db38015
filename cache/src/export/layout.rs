//! `type=oci` and `type=docker`: the result as an OCI image layout, in a directory
//! (`tar=false`) or a tar; `type=docker` adds docker-archive's `manifest.json` and
//! `repositories` so that `docker load` reads it.
//!
//! `index.json` lists the result's root (the index, or the single manifest) with
//! `io.containerd.image.name` / `org.opencontainers.image.ref.name` for the first name, and the
//! `index-descriptor:` annotations. Entries are written in a fixed order with fixed metadata.

use super::{Export, ExportError, Level, Result, annotations_for};
use crate::archive::ArchiveWriter;
use crate::oci::{Digest, ImageIndex};
use crate::reference::Reference;
use crate::store::Store;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// The `index.json` of the layout: the root descriptor, named after `name` when given.
fn layout_index(export: &Export, name: Option<&Reference>) -> Vec<u8> {
    let mut root = export.root().clone();
    if let Some(r) = name {
        root.annotations
            .insert("io.containerd.image.name".into(), r.to_string());
        if let Some(tag) = &r.tag {
            root.annotations
                .insert("org.opencontainers.image.ref.name".into(), tag.clone());
        }
    }
    root.annotations.extend(annotations_for(
        &export.opts.annotations,
        Level::IndexDescriptor,
        None,
    ));
    let index = ImageIndex::oci(vec![root]);
    super::json(&index)
}

/// Every blob of the layout, sorted by digest: layers, configs, manifests, index.
fn all_blobs(export: &Export) -> BTreeMap<Digest, u64> {
    export
        .blobs
        .values()
        .chain(export.manifests())
        .map(|d| (d.digest.clone(), d.size))
        .collect()
}

/// One entry of docker-archive's `manifest.json`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Writes the layout as a tar to `out`; with `docker`, also `manifest.json` and
/// `repositories` for the first image (docker loads one platform), tagged with `names`.
///
/// Fails on store or write errors; `dest` names the destination in errors.
pub fn write_tar(
    store: &Store,
    export: &Export,
    names: &[Reference],
    docker: bool,
    out: impl Write,
    dest: &str,
) -> Result<()> {
    let werr = |source| ExportError::Io {
        op: "write",
        path: dest.to_owned(),
        source,
    };
    let mut w = ArchiveWriter {
        b: tar::Builder::new(io::BufWriter::with_capacity(1 << 20, out)),
    };
    w.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(werr)?;
    w.dir("blobs/").map_err(werr)?;
    w.dir("blobs/sha256/").map_err(werr)?;
    for (d, size) in all_blobs(export) {
        let p = store.blob_path(&d);
        let f = File::open(&p).map_err(|source| ExportError::Io {
            op: "open",
            path: p.display().to_string(),
            source,
        })?;
        w.stream(&blob_name(&d), size, f).map_err(werr)?;
    }
    w.file("index.json", &layout_index(export, names.first()))
        .map_err(werr)?;
    if docker {
        let first = &export.images[0];
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut repo_tags = Vec::new();
        for r in names.iter().filter(|r| r.digest.is_none()) {
            let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
            let tagged = Reference {
                tag: Some(tag.clone()),
                ..r.clone()
            };
            repo_tags.push(tagged.familiar());
            let short = Reference {
                tag: None,
                digest: None,
                ..r.clone()
            }
            .familiar();
            repositories
                .entry(short)
                .or_default()
                .insert(tag, first.image.config_digest.hex().to_owned());
        }
        let entries = [DockerArchiveEntry {
            config: blob_name(&first.image.config_digest),
            repo_tags,
            layers: first.layers.iter().map(|l| blob_name(&l.digest)).collect(),
        }];
        w.file("manifest.json", &super::json(&entries))
            .map_err(werr)?;
        w.file("repositories", &super::json(&repositories))
            .map_err(werr)?;
    }
    let mut inner = w.b.into_inner().map_err(werr)?;
    inner.flush().map_err(werr)?;
    Ok(())
}

/// Writes the layout into the directory `dir` (created if missing): blobs it lacks, then
/// `oci-layout` and `index.json`, each written to a temp file and renamed into place.
///
/// Fails on store or write errors.
pub fn write_dir(store: &Store, export: &Export, names: &[Reference], dir: &Path) -> Result<()> {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
    for (d, size) in all_blobs(export) {
        let dest = blobs.join(d.hex());
        if std::fs::metadata(&dest).is_ok_and(|m| m.len() == size) {
            continue;
        }
        let src = store.blob_path(&d);
        let mut from = File::open(&src).map_err(io_err("open", &src))?;
        write_atomic(&dest, |f| io::copy(&mut from, f).map(drop))?;
    }
    write_atomic(&dir.join("oci-layout"), |f| {
        f.write_all(br#"{"imageLayoutVersion":"1.0.0"}"#)
    })?;
    let index = layout_index(export, names.first());
    write_atomic(&dir.join("index.json"), |f| f.write_all(&index))
}

fn io_err(op: &'static str, p: &Path) -> impl FnOnce(io::Error) -> ExportError {
    let path = p.display().to_string();
    move |source| ExportError::Io { op, path, source }
}

/// Writes `dest` through `fill` into `dest.tmp-<pid>`, fsyncs, and renames it into place.
pub(crate) fn write_atomic(
    dest: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<()> {
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let r = (|| {
        let mut f = File::create(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(io_err("write", dest))
}

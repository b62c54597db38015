//! `rewrite-timestamp=true`: every layer's file dates clamped at the build's epoch
//! (`SOURCE_DATE_EPOCH`), as BuildKit's exporters do. A layer with no later date is kept as
//! it is; a changed one becomes a new layer tar (new diff_id), and the image a new config
//! listing it (the config's other fields, and unknown ones, kept).

use super::{ExportError, Result};
use crate::image::Image;
use crate::oci::{self, Descriptor, Digest, ImageManifest};
use crate::store::{HashWriter, Store};
use std::collections::BTreeMap;
use std::io::{self, Write};

/// `image` with every mtime (and PAX atime/ctime) later than `epoch` set to `epoch`.
///
/// Fails when a layer cannot be read or the new one written.
pub fn rewrite_timestamps(store: &Store, image: &Image, epoch: i64) -> Result<Image> {
    let mut config = image.config.clone();
    let mut changed = false;
    for d in config.rootfs.diff_ids.iter_mut() {
        if let Some(new) = rewrite_layer(store, d, epoch)? {
            *d = new;
            changed = true;
        }
    }
    if !changed {
        return Ok(image.clone());
    }
    let config_bytes = super::json(&config);
    let config_digest = store.put_blob(&config_bytes)?;
    let layers = config
        .rootfs
        .diff_ids
        .iter()
        .map(|d| {
            let size = std::fs::metadata(store.blob_path(d))
                .map(|m| m.len())
                .or_else(|_| store.layer_source(d).map(|s| s.size).ok_or(()))
                .unwrap_or(0);
            Descriptor::new(oci::MEDIA_TYPE_LAYER_TAR, d.clone(), size)
        })
        .collect();
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_MANIFEST.to_owned()),
        config: Descriptor::new(
            oci::MEDIA_TYPE_CONFIG,
            config_digest.clone(),
            config_bytes.len() as u64,
        ),
        layers,
        annotations: BTreeMap::new(),
        extra: Default::default(),
    };
    let manifest_digest = store.put_blob(&super::json(&manifest))?;
    Ok(Image {
        manifest_digest,
        manifest,
        config_digest,
        config,
    })
}

/// A PAX time value (`1700000000.123`) later than `epoch`.
fn later(v: &[u8], epoch: i64) -> bool {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .is_some_and(|t| t > epoch as f64)
}

/// Writes the layer `diff_id` with dates clamped; `None` when no date needed it.
fn rewrite_layer(store: &Store, diff_id: &Digest, epoch: i64) -> Result<Option<Digest>> {
    let lerr = |source| ExportError::Layer {
        diff_id: diff_id.clone(),
        source,
    };
    let tmp = store.temp_file("rewrite")?;
    let mut b = tar::Builder::new(HashWriter::new(io::BufWriter::with_capacity(
        1 << 20,
        &tmp.file,
    )));
    b.follow_symlinks(false);
    let mut changed = false;
    let mut archive = tar::Archive::new(store.open_layer(diff_id)?);
    for entry in archive.entries().map_err(lerr)? {
        let mut entry = entry.map_err(lerr)?;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(lerr)? {
            for e in exts {
                let e = e.map_err(lerr)?;
                let key = e.key().map_err(|e| lerr(io::Error::other(e)))?.to_owned();
                if matches!(key.as_str(), "path" | "linkpath") {
                    continue;
                }
                let mut value = e.value_bytes().to_vec();
                if matches!(key.as_str(), "mtime" | "atime" | "ctime") && later(&value, epoch) {
                    value = epoch.to_string().into_bytes();
                    changed = true;
                }
                pax.push((key, value));
            }
        }
        let mut h = entry.header().clone();
        if h.mtime().map_err(lerr)? > epoch.max(0) as u64 {
            h.set_mtime(epoch.max(0) as u64);
            changed = true;
        }
        let path = entry.path().map_err(lerr)?.into_owned();
        let link = entry.link_name().map_err(lerr)?.map(|l| l.into_owned());
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(lerr)?;
        }
        let kind = h.entry_type();
        match link {
            Some(target) if kind.is_symlink() || kind.is_hard_link() => {
                b.append_link(&mut h, &path, &target).map_err(lerr)?
            }
            _ => b.append_data(&mut h, &path, &mut entry).map_err(lerr)?,
        }
    }
    let mut w = b.into_inner().map_err(lerr)?;
    w.flush().map_err(lerr)?;
    let (digest, _) = w.finish();
    if !changed {
        return Ok(None);
    }
    if !store.has_blob(&digest) {
        store.persist_blob(tmp, &digest)?;
    }
    Ok(Some(digest))
}

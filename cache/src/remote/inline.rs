//! `--cache-to type=inline`: the cache config, without its own layer list, embedded in the
//! image config under [`INLINE_KEY`]. Record layer indices point at the image's own layers, so
//! only records whose chain is a prefix of the image's layers can be inline (mode=min).

use super::export::ExportRecord;
use super::format::{CacheConfig, CacheRecordEntry, INLINE_KEY, VERSION};
use crate::image::Image;
use crate::oci::{self, Descriptor};
use crate::store::{Store, StoreError};
use std::path::PathBuf;

/// Writes a copy of `image` whose config carries the records of `records` that describe a
/// prefix of its layers, and returns it (not tagged). The config struct is unchanged; only
/// the stored config blob (and so the manifest and its digest) differ.
///
/// Fails on store errors.
pub fn attach(store: &Store, image: &Image, records: &[ExportRecord]) -> Result<Image, StoreError> {
    let layers = &image.config.rootfs.diff_ids;
    let mut cfg = CacheConfig {
        version: VERSION.to_owned(),
        ..Default::default()
    };
    for r in records {
        if let Some(t) = r.created {
            cfg.dates.insert(r.key.clone(), t);
            continue;
        }
        if r.chain.len() <= layers.len() && r.chain[..] == layers[..r.chain.len()] {
            cfg.records.push(CacheRecordEntry {
                key: r.key.clone(),
                parent: r.parent.clone(),
                layers: (0..r.chain.len()).collect(),
            });
        }
    }
    let json_err = |what: &str| {
        let path = PathBuf::from(what);
        move |source| StoreError::Json { path, source }
    };
    let mut value = serde_json::to_value(&image.config).map_err(json_err("<image config>"))?;
    let inline = serde_json::to_value(&cfg).map_err(json_err("<inline cache>"))?;
    if let serde_json::Value::Object(map) = &mut value {
        map.insert(INLINE_KEY.to_owned(), inline);
    }
    let config_bytes = oci::to_canonical_json(&value).map_err(json_err("<image config>"))?;
    let config_digest = store.put_blob(&config_bytes)?;
    let mut manifest = image.manifest.clone();
    manifest.config = Descriptor::new(
        oci::MEDIA_TYPE_CONFIG,
        config_digest.clone(),
        config_bytes.len() as u64,
    );
    let manifest_bytes = oci::to_canonical_json(&manifest).map_err(json_err("<image manifest>"))?;
    let manifest_digest = store.put_blob(&manifest_bytes)?;
    Ok(Image {
        manifest_digest,
        manifest,
        config_digest,
        config: image.config.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Digest, ImageConfig, Platform};

    #[test]
    fn only_records_on_the_image_layers_go_inline() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let chain = super::super::tests::two_layers(&store);
        let mut config = ImageConfig::empty(&Platform::host());
        config.rootfs.diff_ids = chain.clone();
        let image = store.write_image(&config).unwrap();
        let rec = |k: &[u8], c: Vec<Digest>| ExportRecord {
            key: Digest::of(k),
            parent: None,
            chain: c,
            created: None,
        };
        let records = [
            rec(b"first", chain[..1].to_vec()),
            rec(b"second", chain.clone()),
            rec(b"other stage", vec![chain[1].clone()]),
        ];
        let inline = attach(&store, &image, &records).unwrap();
        assert_ne!(inline.manifest_digest, image.manifest_digest);
        assert_eq!(inline.config, image.config);
        let stored: serde_json::Value =
            serde_json::from_slice(&store.read_blob(&inline.config_digest).unwrap()).unwrap();
        let cache: CacheConfig = serde_json::from_value(stored[INLINE_KEY].clone()).unwrap();
        let keys: Vec<_> = cache.records.iter().map(|r| r.key.clone()).collect();
        assert_eq!(keys, vec![Digest::of(b"first"), Digest::of(b"second")]);
        assert_eq!(cache.records[1].layers, vec![0, 1]);
        // The stored image loads as a normal image (the inline cache is a field it keeps but
        // does not model).
        let loaded = store.image(&inline.manifest_digest).unwrap().config;
        assert!(loaded.extra.contains_key(INLINE_KEY));
        assert_eq!(loaded.without_extra(), config);
    }
}

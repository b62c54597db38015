//! `--cache-to type=inline`: the cache config, without its own layer list, embedded in the
//! image config under [`INLINE_KEY`]. Record layer indices point at the image's own layers, so
//! only records whose chain is a prefix of the image's layers can be inline (mode=min). A
//! multi-platform image carries one per platform's config; an import of its index reads them
//! all ([`read_index`]).

use super::RemoteError;
use super::export::ExportRecord;
use super::format::{CacheConfig, CacheRecordEntry, INLINE_KEY, VERSION};
use crate::image::Image;
use crate::oci::{self, Descriptor, Digest};
use crate::registry::client::Client;
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

/// The index `body` is (an OCI image index or a Docker manifest list, by its `mediaType` or
/// else the registry's Content-Type), or None for a manifest.
pub(super) fn index_of(
    location: &str,
    body: &[u8],
    content_type: &str,
) -> super::Result<Option<oci::ImageIndex>> {
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
    }
    let is_index =
        |t: &str| t == oci::MEDIA_TYPE_INDEX || t == oci::MEDIA_TYPE_DOCKER_MANIFEST_LIST;
    let kind: Kind = serde_json::from_slice(body).map_err(|source| RemoteError::Invalid {
        location: location.to_owned(),
        what: "manifest",
        source,
    })?;
    if !kind
        .media_type
        .as_deref()
        .map_or(is_index(content_type), is_index)
    {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|source| RemoteError::Invalid {
            location: location.to_owned(),
            what: "image index",
            source,
        })
}

/// The inline caches of every platform of a multi-platform image (`--cache-to type=inline`
/// with several `--platform`s writes each platform's records into its own image config), read
/// as one cache, as BuildKit's importer reads every manifest of an index. Attestation
/// manifests are not read; images without an inline cache are passed over.
///
/// Fails when no entry has an inline cache, or on a registry, digest or parse error.
pub(super) async fn read_index(
    client: &Client,
    repo: &str,
    location: &str,
    index: &oci::ImageIndex,
) -> super::Result<CacheConfig> {
    let client_err = |source| RemoteError::Client {
        location: location.to_owned(),
        source: Box::new(source),
    };
    let mut merged: Option<CacheConfig> = None;
    for d in &index.manifests {
        let image = d.media_type == oci::MEDIA_TYPE_MANIFEST
            || d.media_type == oci::MEDIA_TYPE_DOCKER_MANIFEST;
        if !image || d.is_attestation() {
            continue;
        }
        let (body, _) = client
            .get_manifest(repo, &d.digest.to_string())
            .await
            .map_err(client_err)?;
        let actual = Digest::of(&body);
        if actual != d.digest {
            return Err(RemoteError::DigestMismatch {
                location: location.to_owned(),
                expected: d.digest.clone(),
                actual,
            });
        }
        let manifest = super::import::parse_manifest(location, &body)?;
        let config_bytes = super::import::get_small_blob(client, repo, &manifest.config.digest)
            .await
            .map_err(client_err)?;
        match super::import::parse_fetched_config(location.to_owned(), &manifest, &config_bytes) {
            Ok(c) => match &mut merged {
                Some(m) => m.merge(c),
                None => merged = Some(c),
            },
            Err(RemoteError::NotACache { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    merged.ok_or_else(|| RemoteError::NotACache {
        location: location.to_owned(),
        what: "the image index (no platform's image has an inline cache)",
        media_type: index
            .media_type
            .clone()
            .unwrap_or_else(|| oci::MEDIA_TYPE_INDEX.to_owned()),
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

//! The remote cache format (version `kiln.cache.v1`).
//!
//! A cache is an OCI image manifest (`application/vnd.oci.image.manifest.v1+json`) with
//! `artifactType` [`ARTIFACT_TYPE`]. Its config blob has media type [`MEDIA_TYPE_CACHE_CONFIG`]
//! and holds a [`CacheConfig`]; its `layers` list every blob the config names (compressed
//! layers, then cache mount chunks), so that a registry keeps them alive and a copy tool
//! (`skopeo copy`) carries them along. The config:
//!
//! ```json
//! {
//!   "version": "kiln.cache.v1",
//!   "layers": [{"mediaType": "...tar+gzip", "digest": "sha256:..", "size": 123,
//!               "diffID": "sha256:.."}],
//!   "records": [{"key": "sha256:..", "parent": "sha256:..", "layers": [0, 1]}],
//!   "mounts": [{"id": "go-build", "mode": 493, "uid": 0, "gid": 0,
//!               "chunks": [{"mediaType": "application/vnd.kiln.cache.mount.chunk.v1.tar",
//!                           "digest": "sha256:..", "size": 10240}]}]
//! }
//! ```
//!
//! A record's `layers` index `layers` and give the step's whole filesystem, base first (a
//! cache hit needs nothing else); `parent` is the key of the step it ran on (absent on a base
//! image). Keys are the solver's cache keys (`kiln.exec.v1`...), so they mean the same on every
//! machine. An inline cache (`type=inline`) is the same object under the image config's
//! [`INLINE_KEY`] field, without `layers`: record indices then point at the image's own layers.

use crate::oci::{Descriptor, Digest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `version` of this format.
pub const VERSION: &str = "kiln.cache.v1";
/// The manifest's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.kiln.cache.v1";
/// The config blob's media type.
pub const MEDIA_TYPE_CACHE_CONFIG: &str = "application/vnd.kiln.cache.config.v1+json";
/// A cache mount chunk: an uncompressed tar of some entries of the mount directory.
pub const MEDIA_TYPE_MOUNT_CHUNK: &str = "application/vnd.kiln.cache.mount.chunk.v1.tar";
/// The image config field that holds an inline cache.
pub const INLINE_KEY: &str = "kiln.cache.v1";

/// The cache config blob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// Always [`VERSION`].
    pub version: String,
    /// The layers, compressed, each with its diff_id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<CacheLayer>,
    /// Cache key -> layers.
    #[serde(default)]
    pub records: Vec<CacheRecordEntry>,
    /// Cache mount contents (`mounts=true`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountEntry>,
    /// Image dates by [`crate::records::created_key`] (seconds since 1970): a runner that
    /// imports the cache dates an image of the same content the same way.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dates: BTreeMap<Digest, i64>,
}

/// One layer blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLayer {
    /// Media type of the compressed blob.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Digest of the uncompressed tar.
    #[serde(rename = "diffID")]
    pub diff_id: Digest,
}

impl CacheLayer {
    /// The blob's descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(&self.media_type, self.digest.clone(), self.size)
    }
}

/// One cache record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecordEntry {
    /// The step's cache key.
    pub key: Digest,
    /// The key of the step it ran on, if that was not a base image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Digest>,
    /// Indices into [`CacheConfig::layers`]: the step's filesystem, base first.
    pub layers: Vec<usize>,
}

/// One cache mount's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    /// The `RUN --mount=type=cache,id=` id.
    pub id: String,
    /// Mode of the mount directory.
    pub mode: u32,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// The chunks, in order (each a tar; applied in order they rebuild the directory).
    pub chunks: Vec<Descriptor>,
}

/// The artifact manifest (an OCI image manifest with `artifactType`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheManifest {
    /// 2.
    pub schema_version: u32,
    /// [`crate::oci::MEDIA_TYPE_MANIFEST`].
    pub media_type: String,
    /// [`ARTIFACT_TYPE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob ([`MEDIA_TYPE_CACHE_CONFIG`]), or an image config for inline caches.
    pub config: Descriptor,
    /// Every blob.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

impl CacheConfig {
    /// The chain of diff_ids of `rec` (None when an index is out of range).
    pub fn chain(&self, rec: &CacheRecordEntry) -> Option<Vec<Digest>> {
        rec.layers
            .iter()
            .map(|&i| self.layers.get(i).map(|l| l.diff_id.clone()))
            .collect()
    }

    /// Adds `other`'s layers, records, mounts and dates (the inline caches of the platforms
    /// of one image index, read as one cache, as BuildKit reads every manifest's): its layers
    /// go after ours and its records' indices move with them; a key, mount id or date
    /// already here keeps ours.
    pub fn merge(&mut self, other: CacheConfig) {
        let offset = self.layers.len();
        self.layers.extend(other.layers);
        for mut r in other.records {
            if self.records.iter().any(|mine| mine.key == r.key) {
                continue;
            }
            r.layers.iter_mut().for_each(|i| *i += offset);
            self.records.push(r);
        }
        for m in other.mounts {
            if !self.mounts.iter().any(|mine| mine.id == m.id) {
                self.mounts.push(m);
            }
        }
        for (k, t) in other.dates {
            self.dates.entry(k).or_insert(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_json_uses_documented_field_names() {
        let d = Digest::of(b"blob");
        let cfg = CacheConfig {
            version: VERSION.to_owned(),
            layers: vec![CacheLayer {
                media_type: crate::oci::MEDIA_TYPE_LAYER_GZIP.to_owned(),
                digest: d.clone(),
                size: 4,
                diff_id: Digest::of(b"tar"),
            }],
            records: vec![CacheRecordEntry {
                key: Digest::of(b"k"),
                parent: None,
                layers: vec![0],
            }],
            mounts: vec![],
            dates: BTreeMap::from([(Digest::of(b"image"), 1_700_000_000)]),
        };
        let json = String::from_utf8(serde_json::to_vec(&cfg).unwrap()).unwrap();
        assert!(json.starts_with(r#"{"version":"kiln.cache.v1","layers":[{"mediaType":"#));
        assert!(json.contains(r#""diffID":"sha256:"#), "{json}");
        assert!(json.contains(r#""layers":[0]"#), "{json}");
        assert!(json.contains(r#""dates":{"sha256:"#), "{json}");
        assert!(
            !json.contains("parent") && !json.contains("mounts"),
            "{json}"
        );
        let back: CacheConfig = serde_json::from_slice(json.as_bytes()).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(back.chain(&back.records[0]), Some(vec![Digest::of(b"tar")]));
    }

    #[test]
    fn merged_configs_keep_each_records_chain() {
        let layer = |name: &[u8]| CacheLayer {
            media_type: crate::oci::MEDIA_TYPE_LAYER_GZIP.to_owned(),
            digest: Digest::of(name),
            size: 1,
            diff_id: Digest::of(&[name, b".tar"].concat()),
        };
        let rec = |key: &[u8], layers: Vec<usize>| CacheRecordEntry {
            key: Digest::of(key),
            parent: None,
            layers,
        };
        let amd = CacheConfig {
            version: VERSION.to_owned(),
            layers: vec![layer(b"base-amd64"), layer(b"run-amd64")],
            records: vec![rec(b"run amd64", vec![0, 1]), rec(b"shared", vec![0])],
            dates: BTreeMap::from([(Digest::of(b"amd64 image"), 1)]),
            ..Default::default()
        };
        let arm = CacheConfig {
            version: VERSION.to_owned(),
            layers: vec![layer(b"base-arm64"), layer(b"run-arm64")],
            records: vec![rec(b"run arm64", vec![0, 1]), rec(b"shared", vec![1])],
            dates: BTreeMap::from([(Digest::of(b"arm64 image"), 2)]),
            ..Default::default()
        };
        let mut all = amd.clone();
        all.merge(arm);
        let chain_of = |key: &[u8]| {
            let r = all.records.iter().find(|r| r.key == Digest::of(key));
            all.chain(r.expect("the record is there"))
        };
        assert_eq!(chain_of(b"run amd64"), amd.chain(&amd.records[0]));
        assert_eq!(
            chain_of(b"run arm64"),
            Some(vec![
                Digest::of(b"base-arm64.tar"),
                Digest::of(b"run-arm64.tar")
            ])
        );
        assert_eq!(
            chain_of(b"shared"),
            Some(vec![Digest::of(b"base-amd64.tar")]),
            "the first config's record of a key wins"
        );
        assert_eq!(all.records.len(), 3);
        assert_eq!(all.dates.len(), 2);
    }

    #[test]
    fn out_of_range_record_has_no_chain() {
        let cfg = CacheConfig {
            version: VERSION.to_owned(),
            records: vec![CacheRecordEntry {
                key: Digest::of(b"k"),
                parent: None,
                layers: vec![3],
            }],
            ..Default::default()
        };
        assert_eq!(cfg.chain(&cfg.records[0]), None);
    }
}

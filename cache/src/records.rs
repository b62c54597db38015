//! Build cache records: cache key -> the node's result, one JSON file per key under
//! `cachekeys/<hex>`, written atomically by the solver after the layers it names exist.

use crate::oci::Digest;
use crate::store::{Store, StoreError, io_err};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Read};

type Result<T> = std::result::Result<T, StoreError>;

/// What a cache key resolved to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The node's full chain of diff_ids, base first.
    pub layers: Vec<Digest>,
}

/// An image date (`dates/<key>`): the date of the first build of an image's content
/// ([`created_key`]), or where a built image's date came from ([`created_note_key`]), kept
/// outside the image so that its digest does not depend on it. [`crate::gc`] removes it once
/// one of its layers is gone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDate {
    /// The `created` time, seconds since 1970.
    pub created: i64,
    /// Where it came from (notes only), as `kiln inspect` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The image's layers (diff_ids).
    pub layers: Vec<Digest>,
}

/// The key of the record that keeps the date of the first build of an image's content:
/// `config` is the image config serialized with its dates at the placeholder.
pub fn created_key(config: &[u8]) -> Digest {
    let mut b = b"kiln.created.v1\n".to_vec();
    b.extend_from_slice(config);
    Digest::of(&b)
}

/// The key of the note that says where an image's `created` came from: its date and layers
/// (unchanged by `--label` and inline-cache rewrites of the config).
pub fn created_note_key(created: &str, diff_ids: &[Digest]) -> Digest {
    let mut b = format!("kiln.created-from.v1\n{created}\n");
    for d in diff_ids {
        b.push_str(&format!("{d}\n"));
    }
    Digest::of(b.as_bytes())
}

impl Store {
    /// The image date stored under `key` ([`created_key`], [`created_note_key`]), if any.
    ///
    /// Fails on I/O errors or a file that does not parse.
    pub fn date_get(&self, key: &Digest) -> Result<Option<ImageDate>> {
        let p = self.dir(kroot::Dir::Dates).join(key.hex());
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| StoreError::Json { path: p, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &p)(e)),
        }
    }

    /// Stores `date` under `key` (atomically).
    ///
    /// Fails on I/O errors.
    pub fn date_put(&self, key: &Digest, date: &ImageDate) -> Result<()> {
        let dir = self.dir(kroot::Dir::Dates);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let bytes = serde_json::to_vec(date).map_err(|source| StoreError::Json {
            path: dir.clone(),
            source,
        })?;
        self.write_atomic(&dir.join(key.hex()), &bytes)
    }

    /// The record stored for `key`, if any. The caller checks that its layers still exist
    /// ([`Store::has_layer`]) before trusting it. A found record is marked used: its mtime
    /// becomes now (one `futimens`; [`crate::gc`] prunes by it).
    ///
    /// Fails on I/O errors or a record that does not parse.
    pub fn cache_get(&self, key: &Digest) -> Result<Option<CacheRecord>> {
        let p = self.dir(kroot::Dir::CacheKeys).join(key.hex());
        // Writable to set the mtime; a store we may only read still answers lookups.
        let opened = fs::File::options()
            .read(true)
            .write(true)
            .open(&p)
            .or_else(|e| match e.kind() {
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                    fs::File::open(&p)
                }
                _ => Err(e),
            });
        let mut f = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open", &p)(e)),
        };
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(io_err("read", &p))?;
        // Last use is a hint for prune: a failure to record it must not fail the lookup.
        let _ = f.set_modified(std::time::SystemTime::now());
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Json { path: p, source })
    }

    /// Stores `rec` for `key` atomically (replacing any previous record).
    ///
    /// Fails on I/O errors.
    pub fn cache_put(&self, key: &Digest, rec: &CacheRecord) -> Result<()> {
        let p = self.dir(kroot::Dir::CacheKeys).join(key.hex());
        let bytes = serde_json::to_vec(rec).map_err(|source| StoreError::Json {
            path: p.clone(),
            source,
        })?;
        self.write_atomic(&p, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = Digest::of(b"key");
        assert_eq!(store.cache_get(&key).unwrap(), None);
        let rec = CacheRecord {
            layers: vec![Digest::of(b"a"), Digest::of(b"b")],
        };
        store.cache_put(&key, &rec).unwrap();
        assert_eq!(store.cache_get(&key).unwrap(), Some(rec));
    }

    #[test]
    fn image_dates_round_trip_and_their_keys_depend_on_what_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = created_key(b"{}");
        assert_eq!(store.date_get(&key).unwrap(), None);
        let date = ImageDate {
            created: 1_700_000_000,
            from: Some("SOURCE_DATE_EPOCH=1700000000 (build arg)".into()),
            layers: vec![Digest::of(b"a")],
        };
        store.date_put(&key, &date).unwrap();
        assert_eq!(store.date_get(&key).unwrap(), Some(date));
        assert_ne!(created_key(b"{}"), created_key(b"{ }"));
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let one = std::slice::from_ref(&a);
        assert_ne!(created_note_key("x", one), created_note_key("y", one));
        assert_ne!(
            created_note_key("x", one),
            created_note_key("x", &[a.clone(), b])
        );
    }

    #[test]
    fn a_lookup_marks_the_record_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = Digest::of(b"key");
        store.cache_put(&key, &CacheRecord::default()).unwrap();
        let p = store.dir(kroot::Dir::CacheKeys).join(key.hex());
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        store.cache_get(&key).unwrap().unwrap();
        let used = fs::metadata(&p).unwrap().modified().unwrap();
        assert!(used > old + std::time::Duration::from_secs(3000));
    }
}

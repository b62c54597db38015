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

impl Store {
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

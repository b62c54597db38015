//! Build cache records: cache key -> the node's result, one JSON file per key under
//! `cachekeys/<hex>`, written atomically by the solver after the layers it names exist.

use crate::oci::Digest;
use crate::store::{Store, StoreError, io_err};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;

type Result<T> = std::result::Result<T, StoreError>;

/// What a cache key resolved to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The node's full chain of diff_ids, base first.
    pub layers: Vec<Digest>,
}

impl Store {
    /// The record stored for `key`, if any. The caller checks that its layers still exist
    /// ([`Store::has_layer`]) before trusting it.
    ///
    /// Fails on I/O errors or a record that does not parse.
    pub fn cache_get(&self, key: &Digest) -> Result<Option<CacheRecord>> {
        let p = self.path("cachekeys").join(key.hex());
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &p)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Json { path: p, source })
    }

    /// Stores `rec` for `key` atomically (replacing any previous record).
    ///
    /// Fails on I/O errors.
    pub fn cache_put(&self, key: &Digest, rec: &CacheRecord) -> Result<()> {
        let p = self.path("cachekeys").join(key.hex());
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
}

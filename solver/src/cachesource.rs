//! Where the solver finds a step's result by its cache key: the local store's records
//! ([`LocalCache`]) and the caches imported with `--cache-from` (`cache::remote::import::Imported`,
//! implemented in [`crate::remote`]).
//!
//! The solve loop asks its sources in order (local first) "who has this key" without knowing
//! which one answers. A hit's layers may not be in the store yet (a remote record's are
//! downloaded only when something reads them): before a step reads its inputs, and before the
//! final image is written, every source is asked to [`CacheSource::fetch`] the layers it holds.

use crate::remote::SolvedStep;
use cache::oci::Digest;
use cache::remote::RemoteError;
use cache::store::{Store, StoreError};
use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// Why a cache source failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheSourceError {
    /// The local store could not be read.
    #[error("reading the local cache")]
    Store(#[source] StoreError),
    /// An imported cache's layer or mount could not be fetched.
    #[error("fetching from a remote cache")]
    Remote(#[source] RemoteError),
}

/// The future of [`CacheSource::fetch`] and [`CacheSource::restore_mounts`].
pub type Fetch<'a> = Pin<Box<dyn Future<Output = Result<(), CacheSourceError>> + Send + 'a>>;

/// A store of cache records: key to layer chain.
pub trait CacheSource: fmt::Debug + Send + Sync {
    /// The layer chain (base first) recorded under `key`, when this source has it.
    ///
    /// Fails when the source cannot be read.
    fn lookup(&self, key: &Digest) -> Result<Option<Vec<Digest>>, CacheSourceError>;

    /// Makes the layers among `layers` that this source holds present in `store` (nothing to
    /// do for the local store).
    ///
    /// Fails when a layer cannot be fetched.
    fn fetch<'a>(&'a self, store: &'a Store, layers: &'a [Digest]) -> Fetch<'a>;

    /// Restores the contents of the cache mounts `ids` that this source holds and that are
    /// absent from `store`.
    ///
    /// Fails when a mount cannot be fetched.
    fn restore_mounts<'a>(&'a self, store: &'a Store, ids: &'a [String]) -> Fetch<'a>;

    /// After a build: keeps in `store` what this source gave it, so that the next build hits
    /// without it. Best effort.
    fn keep(&self, store: &Store, steps: &[SolvedStep]);

    /// The image date this source keeps under `key` ([`cache::records::created_key`]).
    fn created(&self, key: &Digest) -> Option<i64> {
        let _ = key;
        None
    }
}

/// The local store's cache records: a record is a hit only while all its layers are present.
#[derive(Debug, Clone)]
pub struct LocalCache {
    store: Store,
}

impl LocalCache {
    /// The records of `store`.
    pub fn new(store: Store) -> LocalCache {
        LocalCache { store }
    }
}

impl CacheSource for LocalCache {
    fn lookup(&self, key: &Digest) -> Result<Option<Vec<Digest>>, CacheSourceError> {
        let rec = self.store.cache_get(key).map_err(CacheSourceError::Store)?;
        Ok(rec
            .filter(|r| r.layers.iter().all(|d| self.store.has_layer(d)))
            .map(|r| r.layers))
    }

    fn created(&self, key: &Digest) -> Option<i64> {
        Some(self.store.date_get(key).ok().flatten()?.created)
    }

    fn fetch<'a>(&'a self, _store: &'a Store, _layers: &'a [Digest]) -> Fetch<'a> {
        Box::pin(async { Ok(()) })
    }

    fn restore_mounts<'a>(&'a self, _store: &'a Store, _ids: &'a [String]) -> Fetch<'a> {
        Box::pin(async { Ok(()) })
    }

    fn keep(&self, _store: &Store, _steps: &[SolvedStep]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache::records::CacheRecord;
    use cache::snapshot::CommitOptions;

    fn key(s: &str) -> Digest {
        format!("sha256:{}", s.repeat(64))
            .parse()
            .expect("a digest")
    }

    #[test]
    fn a_local_record_is_a_hit_only_while_all_its_layers_are_present() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path().join("root")).expect("store");
        let upper = tmp.path().join("upper");
        std::fs::create_dir(&upper).expect("upper");
        std::fs::write(upper.join("f"), "x").expect("file");
        let layer = store
            .commit_layer(
                &upper,
                &CommitOptions {
                    clamp_mtime: Some(0),
                },
            )
            .expect("commit")
            .expect("a non-empty layer");
        let (present, absent) = (vec![layer.diff_id.clone()], vec![layer.diff_id, key("b")]);
        store
            .cache_put(
                &key("1"),
                &CacheRecord {
                    layers: present.clone(),
                },
            )
            .expect("record");
        store
            .cache_put(&key("2"), &CacheRecord { layers: absent })
            .expect("record");
        let local = LocalCache::new(store);
        assert_eq!(local.lookup(&key("1")).expect("lookup"), Some(present));
        assert_eq!(
            local.lookup(&key("2")).expect("lookup"),
            None,
            "a layer is gone"
        );
        assert_eq!(local.lookup(&key("3")).expect("lookup"), None, "no record");
    }
}

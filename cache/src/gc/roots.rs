//! What the tenants of `KILN_ROOT` (the crates that keep state there beside the store: the
//! solver's cache mounts and `--explain` records, cli's containers) tell prune, so that `cache`
//! never reads their files: each implements [`GcRoots`] and the caller of
//! [`Store::prune`](crate::store::Store::prune) passes them in.

use crate::oci::Digest;
use crate::store::StoreError;
use std::path::PathBuf;
use std::time::SystemTime;

/// A build cache entry that a tenant keeps outside the store (a `RUN --mount=type=cache`
/// directory). Prune treats it as it treats a cache record: it goes when `--filter until` and
/// `--keep-storage` say so, least recently used first, unless a build holds its lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantEntry {
    /// The name prune reports (the directory's name).
    pub id: String,
    /// The directory, removed as a whole (renamed into `tmp/` first).
    pub path: PathBuf,
    /// Its last use.
    pub last_used: SystemTime,
    /// Bytes it holds.
    pub bytes: u64,
    /// A flock file that a build holds (shared or exclusive) while it uses the entry: prune
    /// skips the entry while the lock is held and removes the file with the entry.
    pub lock: Option<PathBuf>,
}

/// One tenant's part in garbage collection. Every method has a default that reports nothing,
/// so a tenant implements only what it keeps.
pub trait GcRoots: std::fmt::Debug {
    /// Layers (diff_ids) the tenant's state uses outside a build (a container's overlay):
    /// prune keeps their snapshots, tar blobs and compressed copies.
    ///
    /// Fails when the tenant's state cannot be read; prune then removes nothing.
    fn layers(&self) -> Result<Vec<Digest>, StoreError> {
        Ok(Vec::new())
    }

    /// The tenant's build cache entries that prune may remove.
    ///
    /// Fails when the tenant's state cannot be read; prune then removes nothing.
    fn cache_entries(&self) -> Result<Vec<TenantEntry>, StoreError> {
        Ok(Vec::new())
    }

    /// Runs after the sweep: removes the tenant's own files that describe nothing any more.
    /// Returns the bytes freed.
    ///
    /// Fails on I/O errors.
    fn sweep(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
}

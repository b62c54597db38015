//! Disk usage of a store, by kind (`kiln system df`): images (tags), blobs, layer snapshots,
//! build cache records, cache mounts and leftover temp space.
//!
//! Sizes are apparent sizes of regular files, each inode counted once (snapshots share inodes
//! through hard links). Symlinks are not followed.

use crate::store::{Store, StoreError};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

type Result<T> = std::result::Result<T, StoreError>;

/// A number of entries and the bytes they take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// Entries (top-level names in the kind's directory).
    pub count: u64,
    /// Bytes of the regular files below them.
    pub bytes: u64,
}

/// Disk usage of a store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tagged names (bytes: the tag files).
    pub images: Count,
    /// Content-addressed blobs (layer tars, configs, manifests).
    pub blobs: Count,
    /// Extracted layer snapshots.
    pub snapshots: Count,
    /// Build cache records.
    pub cache_records: Count,
    /// `RUN --mount=type=cache` directories.
    pub cache_mounts: Count,
    /// Temp space (builds in progress or killed builds' leftovers).
    pub tmp: Count,
}

impl Store {
    /// Walks the store and sums each kind.
    ///
    /// Fails when a directory of the store cannot be read.
    pub fn disk_usage(&self) -> Result<Usage> {
        let mut seen = HashSet::new();
        let mut kind = |d: kroot::Dir| -> Result<Count> {
            let dir = self.dir(d);
            let mut c = Count::default();
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(c),
                Err(source) => {
                    return Err(StoreError::Io {
                        op: "read",
                        path: dir,
                        source,
                    });
                }
            };
            for e in rd.flatten() {
                c.count += 1;
                c.bytes += tree_bytes(&e.path(), &mut seen);
            }
            Ok(c)
        };
        Ok(Usage {
            images: kind(kroot::Dir::Images)?,
            blobs: kind(kroot::Dir::Blobs)?,
            snapshots: kind(kroot::Dir::Snapshots)?,
            cache_records: kind(kroot::Dir::CacheKeys)?,
            cache_mounts: kind(kroot::Dir::CacheMounts)?,
            tmp: kind(kroot::Dir::Tmp)?,
        })
    }
}

/// Bytes of the regular files at or below `path`, each inode once (unreadable parts skipped:
/// a concurrent build may remove its temp files while we walk).
pub(crate) fn tree_bytes(path: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if md.is_file() && seen.insert((md.dev(), md.ino())) {
            total += md.len();
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_each_kind_and_hard_links_once() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = Store::open(d.path().join("root")).expect("store");
        let empty = store.disk_usage().expect("usage");
        assert_eq!(empty.blobs, Count::default());
        let digest = store.put_blob(b"hello blob").expect("blob");
        let snap = store.root().join("snapshots/abc");
        std::fs::create_dir_all(snap.join("dir")).expect("mkdir");
        std::fs::write(snap.join("dir/f"), [0u8; 100]).expect("write");
        std::fs::hard_link(snap.join("dir/f"), snap.join("g")).expect("link");
        std::os::unix::fs::symlink("/etc/passwd", snap.join("l")).expect("symlink");
        std::fs::create_dir_all(store.root().join("cachemounts/m1")).expect("mkdir");
        std::fs::write(store.root().join("cachemounts/m1/x"), [1u8; 7]).expect("write");
        let u = store.disk_usage().expect("usage");
        assert_eq!(
            u.blobs,
            Count {
                count: 1,
                bytes: 10
            },
            "{digest}"
        );
        assert_eq!(
            u.snapshots,
            Count {
                count: 1,
                bytes: 100
            }
        );
        assert_eq!(u.cache_mounts, Count { count: 1, bytes: 7 });
        assert_eq!(u.images.count, 0);
    }
}

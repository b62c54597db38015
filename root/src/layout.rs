//! The directories of `KILN_ROOT`. Every crate gets a path under the root from [`Dir`], never
//! from a string literal, so this file is the whole list of what the root holds.
//!
//! Versioning rule (as uv's cache buckets): a directory's name is the version of what it holds.
//! Today's names carry no suffix; they are version 1. When the format of a directory's entries
//! changes in a way an older kiln would misread, its variant gets a new name with a version
//! suffix (`cachekeys` becomes `cachekeys-v2`), so old and new kilns sharing a root never read
//! each other's entries; the old directory is then listed in [`Dir::RETIRED`] and removed by
//! `kiln prune`. A format change that the entries themselves tag (the stat cache's
//! `kiln.statcache.v2` header, the cache key tags `kiln.exec.v1`) needs no new name.

use std::path::{Path, PathBuf};

/// The flock file in the root: shared during builds, exclusive for GC.
pub const LOCK_FILE: &str = "lock";

/// One directory of `KILN_ROOT`, with the crate that owns its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Temp files and directories (same filesystem as the rest, so a rename is atomic); names
    /// carry their creator's pid (cache::store).
    Tmp,
    /// The content store: `<hex>` of every blob, sha256 only (cache::store).
    Blobs,
    /// Extracted layers by diff_id hex, usable as overlay lowerdirs (cache::snapshot).
    Snapshots,
    /// Name -> manifest digest refs (cache::image).
    Images,
    /// Build cache records by key hex (cache::records, written by the solver).
    CacheKeys,
    /// diff_id -> compressed blob memos (cache::compress).
    Compressed,
    /// Layers kept only compressed (pulled): source blob and tar size (cache::compress).
    Layers,
    /// `kiln run` container state, one directory per container (cli, executor::container).
    Containers,
    /// `RUN --mount=type=cache` directories and their `.lock` files (solver::mounts).
    CacheMounts,
    /// Push/pull hints: the repository a blob was last seen in, per registry
    /// (cache::registry::record).
    RegistryBlobs,
    /// The registry digests of an image from its last pull or push (cache::registry::record).
    RepoDigests,
    /// Context file digests by stat, one file per context (context::statcache).
    StatCache,
    /// `--explain` step records per context and Dockerfile (solver::explain).
    Explain,
    /// Per-file details of a COPY's sources by content digest (solver::explain).
    ExplainFiles,
    /// Image dates by the key of their dated-less config: the first build's `created` and
    /// where it came from (cache::records::ImageDate, written by the solver: solver::ops::solve).
    Dates,
    /// Container names: `<name>` is a symlink to the id of the container holding it, made
    /// under a flock (`.lock`) so that two `kiln run --name N` never both get `N`
    /// (executor::container::name).
    Names,
    /// `kiln volume`s and `kiln run -v NAME:/path` volumes: `<name>/_data` (what is mounted)
    /// and `<name>/meta.json` (creation date, labels) (executor::volume).
    Volumes,
}

impl Dir {
    /// Every directory.
    pub const ALL: [Dir; 17] = [
        Dir::Tmp,
        Dir::Blobs,
        Dir::Snapshots,
        Dir::Images,
        Dir::CacheKeys,
        Dir::Compressed,
        Dir::Layers,
        Dir::Containers,
        Dir::CacheMounts,
        Dir::RegistryBlobs,
        Dir::RepoDigests,
        Dir::StatCache,
        Dir::Explain,
        Dir::ExplainFiles,
        Dir::Dates,
        Dir::Names,
        Dir::Volumes,
    ];

    /// The directories `cache::Store::open` creates; the others appear on first use.
    pub const CREATED_AT_OPEN: [Dir; 6] = [
        Dir::Tmp,
        Dir::Blobs,
        Dir::Snapshots,
        Dir::Images,
        Dir::CacheKeys,
        Dir::Compressed,
    ];

    /// Names of directories an older kiln used and this one no longer reads (see the module's
    /// versioning rule). Empty: no directory has changed format yet.
    pub const RETIRED: [&'static str; 0] = [];

    /// The directory's path relative to the root.
    pub const fn name(self) -> &'static str {
        match self {
            Dir::Tmp => "tmp",
            Dir::Blobs => "blobs/sha256",
            Dir::Snapshots => "snapshots",
            Dir::Images => "images",
            Dir::CacheKeys => "cachekeys",
            Dir::Compressed => "compressed",
            Dir::Layers => "layers",
            Dir::Containers => "containers",
            Dir::CacheMounts => "cachemounts",
            Dir::RegistryBlobs => "registry/blobs",
            Dir::RepoDigests => "registry/repodigests",
            Dir::StatCache => "statcache",
            Dir::Explain => "explain",
            Dir::ExplainFiles => "explain/files",
            Dir::Dates => "dates",
            Dir::Names => "names",
            Dir::Volumes => "volumes",
        }
    }

    /// The directory under `root` (a `KILN_ROOT`).
    pub fn path(self, root: &Path) -> PathBuf {
        root.join(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_relative_and_listed_once() {
        let mut names: Vec<&str> = Dir::ALL.iter().map(|d| d.name()).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "two directories share a name");
        for name in names {
            assert!(!name.starts_with('/') && !name.contains(".."), "{name}");
            assert_ne!(name, LOCK_FILE);
        }
        for d in Dir::CREATED_AT_OPEN {
            assert!(Dir::ALL.contains(&d));
        }
    }

    /// Renaming a directory orphans every existing root's entries: it must follow the
    /// versioning rule (new name, old one in RETIRED), which this pin makes a deliberate edit.
    #[test]
    fn names_are_pinned() {
        let names: Vec<&str> = Dir::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(
            names.join(" "),
            "tmp blobs/sha256 snapshots images cachekeys compressed layers containers \
             cachemounts registry/blobs registry/repodigests statcache explain explain/files dates names volumes"
        );
    }
}

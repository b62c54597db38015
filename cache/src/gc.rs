//! Garbage collection and `kiln prune`: build cache records, cache mounts, and the blobs and
//! snapshots that nothing kept refers to any more; stale temp space.
//!
//! Mark and sweep. The roots are:
//! - tagged images (`images/`): their manifests (or indexes), configs and layers;
//! - the layers each tenant reports ([`GcRoots::layers`]: cli's containers, whose overlays
//!   use snapshots);
//! - the build cache records that the prune keeps: their layer chains;
//! - unless [`PruneOptions::all`]: every image manifest in the store, tagged or not (an untagged
//!   build result is an image the user can still run by ID), found by reading the small JSON
//!   blobs;
//! - the compressed copies (`compressed/` memos) of every layer kept, and the compressed blob a
//!   pulled layer is kept as instead of its tar (`layers/<diffid>`, see [`crate::compress`]).
//!
//! Everything else under `blobs/`, `snapshots/`, `compressed/` and `layers/` is removed; then
//! each tenant sweeps its own files ([`GcRoots::sweep`]: the solver's `--explain` details). A
//! snapshot is first renamed into `tmp/` and then deleted, so a crash never leaves a half-deleted
//! snapshot that [`Store::has_layer`] would trust; the snapshot goes before its blob for the same
//! reason.
//!
//! Concurrency: the caller holds [`Store::lock_exclusive`]. Builds, pulls and pushes hold
//! [`Store::lock_shared`] for as long as they use the store, so while GC runs nothing is in
//! flight and nothing a build holds can be deleted. (The one process that uses snapshots without
//! the lock is a running container; its tenant reports its snapshots as roots.)
//!
//! Build cache entries: the store's records and the entries tenants report
//! ([`GcRoots::cache_entries`]: the solver's cache mounts). A record's mtime is its last use
//! ([`Store::cache_get`] touches it on every lookup); a tenant says when its entries were last
//! used. `until` and `keep_storage` go by it.
//!
//! Temp space: names made by [`Store::temp_dir`] carry the creating process's pid; an entry
//! whose process is gone is garbage ([`Store::clean_stale_tmp`], safe under a shared lock too).

mod roots;

pub use roots::{GcRoots, TenantEntry};

use crate::oci::Digest;
use crate::records::CacheRecord;
use crate::store::{Store, StoreError, io_err};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

type Result<T> = std::result::Result<T, StoreError>;

/// Blobs larger than this are never image manifests or indexes (they are a few KiB).
const MAX_MANIFEST: u64 = 4 << 20;

/// Temp entries whose owner cannot be told from their name are removed after this long.
const UNNAMED_TMP_AGE: Duration = Duration::from_secs(24 * 3600);

/// What `kiln prune` removes.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Also remove images no name points at (untagged build results) and what only they hold.
    pub all: bool,
    /// Keep the most recently used build cache (records and cache mounts) up to this many
    /// bytes: the least recently used entries go first until the rest fits.
    pub keep_storage: Option<u64>,
    /// Only remove build cache entries unused for at least this long.
    pub until: Option<Duration>,
    /// The current time (a parameter so that tests can move the clock).
    pub now: SystemTime,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            all: false,
            keep_storage: None,
            until: None,
            now: SystemTime::now(),
        }
    }
}

/// The kind of a build cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A build cache record (`cachekeys/<key>`).
    Record,
    /// A `RUN --mount=type=cache` directory (`cachemounts/<id>`).
    CacheMount,
}

/// One build cache entry that a prune removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Record or cache mount.
    pub kind: EntryKind,
    /// The cache key (hex) or the cache mount's directory name.
    pub id: String,
}

/// What a prune did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Build cache entries removed, least recently used first.
    pub removed: Vec<Removed>,
    /// Blobs removed.
    pub blobs: u64,
    /// Snapshots removed.
    pub snapshots: u64,
    /// Stale temp entries removed.
    pub tmp: u64,
    /// Bytes freed (apparent sizes of the regular files removed, each inode once).
    pub reclaimed: u64,
}

/// A build cache entry as found on disk.
#[derive(Debug)]
struct Entry {
    kind: EntryKind,
    id: String,
    path: PathBuf,
    last_used: SystemTime,
    /// Layers (hex) a record holds; empty for a cache mount.
    layers: Vec<String>,
    /// Bytes of the entry itself (record file, cache mount tree).
    own_bytes: u64,
    /// A tenant entry's lock file (see [`TenantEntry::lock`]).
    lock: Option<PathBuf>,
}

/// Keep-sets of the mark phase (digest hex).
#[derive(Debug, Default)]
struct Marks {
    blobs: HashSet<String>,
    snapshots: HashSet<String>,
}

impl Marks {
    fn layer(&mut self, hex: &str) {
        self.blobs.insert(hex.to_owned());
        self.snapshots.insert(hex.to_owned());
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(rd.flatten().collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("read directory", dir)(e)),
    }
}

fn mtime(md: &fs::Metadata) -> SystemTime {
    md.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Lazily unmounts every mount point at or below `dir` in this mount namespace, deepest
/// first (mount points from `/proc/self/mountinfo`, whose octal escapes are decoded).
fn unmount_below(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Err(e) = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH) {
            tracing::warn!(path = %p.display(), error = %e, "unmounting a stale temp mount");
        }
    }
}

/// Decodes mountinfo's `\ooo` escapes (space, tab, newline, backslash).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            // Three octal digits above \377 are not an escape mountinfo writes.
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Store {
    /// Removes build cache entries chosen by `opts` (the store's records and the `tenants'`
    /// entries), then every blob, snapshot and compressed copy that no root (see the module
    /// docs) refers to, then lets each tenant sweep, then removes stale temp entries.
    ///
    /// The caller must hold [`Store::lock_exclusive`]. Fails on I/O errors; what was removed
    /// before the error stays removed (each removal is atomic on its own).
    pub fn prune(&self, opts: &PruneOptions, tenants: &[&dyn GcRoots]) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        let mut seen = HashSet::new();
        let mut roots = Marks::default();
        self.mark_images(&mut roots, opts.all)?;
        let mut entries = self.records()?;
        for t in tenants {
            for l in t.layers()? {
                roots.layer(l.hex());
            }
            entries.extend(t.cache_entries()?.into_iter().map(|e| Entry {
                kind: EntryKind::CacheMount,
                id: e.id,
                path: e.path,
                last_used: e.last_used,
                layers: Vec::new(),
                own_bytes: e.bytes,
                lock: e.lock,
            }));
        }
        entries.sort_by_key(|e| e.last_used);
        let remove = choose(&entries, &roots, opts, |hex| self.layer_bytes(hex));

        let mut marks = roots;
        for (i, e) in entries.iter().enumerate() {
            if remove.contains(&i) {
                continue;
            }
            for l in &e.layers {
                marks.layer(l);
            }
        }
        for (i, e) in entries.iter().enumerate() {
            if !remove.contains(&i) {
                continue;
            }
            let freed = match e.kind {
                EntryKind::Record => remove_file(&e.path, &mut seen)?,
                EntryKind::CacheMount => match self.remove_tenant_entry(e, &mut seen)? {
                    Some(n) => n,
                    // Held by a build after all (a lock taken outside the store lock): kept.
                    None => continue,
                },
            };
            report.reclaimed += freed;
            report.removed.push(Removed {
                kind: e.kind,
                id: e.id.clone(),
            });
        }

        report.reclaimed += self.sweep_memos(&mut marks, &mut seen)?;
        report.reclaimed += self.sweep_layer_sources(&mut marks, &mut seen)?;
        let dir = self.dir(kroot::Dir::Snapshots);
        for ent in read_dir(&dir)? {
            let name = ent.file_name().to_string_lossy().into_owned();
            if !marks.snapshots.contains(&name) {
                report.reclaimed += self.remove_tree(&ent.path(), &mut seen)?;
                report.snapshots += 1;
            }
        }
        let dir = self.dir(kroot::Dir::Blobs);
        for ent in read_dir(&dir)? {
            let name = ent.file_name().to_string_lossy().into_owned();
            if !marks.blobs.contains(&name) {
                report.reclaimed += remove_file(&ent.path(), &mut seen)?;
                report.blobs += 1;
            }
        }
        for t in tenants {
            report.reclaimed += t.sweep()?;
        }
        // Directories an older kiln used under names this one no longer reads.
        for name in kroot::Dir::RETIRED {
            report.reclaimed += self.remove_tree(&self.root().join(name), &mut seen)?;
        }
        report.reclaimed += self.sweep_dates(&mut seen)?;
        let (n, bytes) = self.clean_tmp(true, opts.now, &mut seen)?;
        report.tmp = n;
        report.reclaimed += bytes;
        tracing::debug!(?report, "prune done");
        Ok(report)
    }

    /// Removes temp entries whose creating process is gone (safe while other builds run: a
    /// live process's entries are never touched). Returns how many were removed.
    ///
    /// Fails when `tmp/` cannot be read.
    pub fn clean_stale_tmp(&self) -> Result<u64> {
        let mut seen = HashSet::new();
        Ok(self.clean_tmp(false, SystemTime::now(), &mut seen)?.0)
    }

    /// Removes `tmp/` entries whose owner pid is dead; with `exclusive` (GC holds the exclusive
    /// lock) also entries without a pid in their name that are older than a day.
    fn clean_tmp(
        &self,
        exclusive: bool,
        now: SystemTime,
        seen: &mut HashSet<(u64, u64)>,
    ) -> Result<(u64, u64)> {
        let (mut n, mut bytes) = (0, 0);
        let me = std::process::id();
        for ent in read_dir(&self.dir(kroot::Dir::Tmp))? {
            let name = ent.file_name().to_string_lossy().into_owned();
            let stale = match tmp_owner(&name) {
                Some(pid) => pid != me && !Path::new(&format!("/proc/{pid}")).exists(),
                None => {
                    exclusive
                        && ent.metadata().is_ok_and(|md| {
                            now.duration_since(mtime(&md))
                                .is_ok_and(|age| age >= UNNAMED_TMP_AGE)
                        })
                }
            };
            if stale {
                let p = ent.path();
                // A build killed while it had something mounted here (a cache mount being
                // seeded from an overlay) left the mount behind: detach it first, so that
                // neither the mount nor what it shows outlives the cleanup.
                unmount_below(&p);
                let b = crate::usage::tree_bytes(&p, seen);
                let res = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                match res {
                    Ok(()) => {
                        n += 1;
                        bytes += b;
                    }
                    // Another cleaner got there first.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", &p)(e)),
                }
            }
        }
        Ok((n, bytes))
    }

    /// Marks what images hold: tagged ones always, untagged manifests too unless `all`.
    fn mark_images(&self, marks: &mut Marks, all: bool) -> Result<()> {
        let mut todo: Vec<String> = Vec::new();
        for (_, d) in self.list_images()? {
            todo.push(d.hex().to_owned());
        }
        if !all {
            for ent in read_dir(&self.dir(kroot::Dir::Blobs))? {
                let small = ent.metadata().is_ok_and(|m| m.len() <= MAX_MANIFEST);
                if small
                    && self
                        .small_json(&ent.path())
                        .is_some_and(|v| is_manifest(&v))
                {
                    todo.push(ent.file_name().to_string_lossy().into_owned());
                }
            }
        }
        while let Some(hex) = todo.pop() {
            if !marks.blobs.insert(hex.clone()) {
                continue;
            }
            let Some(v) = self.small_json(&self.dir(kroot::Dir::Blobs).join(&hex)) else {
                continue;
            };
            let digest_hex = |d: &serde_json::Value| {
                d.get("digest")
                    .and_then(|d| d.as_str())
                    .and_then(|d| d.parse::<Digest>().ok())
                    .map(|d| d.hex().to_owned())
            };
            if let Some(c) = v.get("config").and_then(digest_hex) {
                // A pulled image's manifest lists compressed blobs; its layers (snapshots and
                // tars, by diff_id) are named by the config.
                let diff_ids = self
                    .small_json(&self.dir(kroot::Dir::Blobs).join(&c))
                    .and_then(|cfg| cfg.pointer("/rootfs/diff_ids").cloned());
                for d in diff_ids
                    .as_ref()
                    .and_then(|d| d.as_array())
                    .into_iter()
                    .flatten()
                {
                    if let Some(h) = d.as_str().and_then(|d| d.parse::<Digest>().ok()) {
                        marks.layer(h.hex());
                    }
                }
                marks.blobs.insert(c);
            }
            for l in v
                .get("layers")
                .and_then(|l| l.as_array())
                .into_iter()
                .flatten()
            {
                if let Some(h) = digest_hex(l) {
                    marks.layer(&h);
                }
            }
            for m in v
                .get("manifests")
                .and_then(|l| l.as_array())
                .into_iter()
                .flatten()
            {
                todo.extend(digest_hex(m));
            }
        }
        Ok(())
    }

    /// A blob parsed as JSON when it looks like JSON (first byte `{`), else None.
    fn small_json(&self, path: &Path) -> Option<serde_json::Value> {
        let mut f = fs::File::open(path).ok()?;
        let mut first = [0u8; 1];
        f.read_exact(&mut first).ok()?;
        if first[0] != b'{' {
            return None;
        }
        let mut buf = vec![b'{'];
        f.take(MAX_MANIFEST).read_to_end(&mut buf).ok()?;
        serde_json::from_slice(&buf).ok()
    }

    /// Every build cache record with its last use (an unreadable record holds nothing).
    fn records(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for ent in read_dir(&self.dir(kroot::Dir::CacheKeys))? {
            let Ok(md) = ent.metadata() else { continue };
            let rec: CacheRecord = fs::read(ent.path())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            out.push(Entry {
                kind: EntryKind::Record,
                id: ent.file_name().to_string_lossy().into_owned(),
                path: ent.path(),
                last_used: mtime(&md),
                layers: rec.layers.iter().map(|d| d.hex().to_owned()).collect(),
                own_bytes: md.len(),
                lock: None,
            });
        }
        Ok(out)
    }

    /// Bytes of a layer: its tar blob (or the compressed blob it is kept as) and its snapshot.
    fn layer_bytes(&self, hex: &str) -> u64 {
        let mut seen = HashSet::new();
        let tar = self.dir(kroot::Dir::Blobs).join(hex);
        let blob = match fs::symlink_metadata(&tar) {
            Ok(_) => tar,
            Err(_) => format!("sha256:{hex}")
                .parse::<Digest>()
                .ok()
                .and_then(|d| self.layer_source(&d))
                .map_or(tar, |src| self.blob_path(&src.blob.digest)),
        };
        crate::usage::tree_bytes(&blob, &mut seen)
            + crate::usage::tree_bytes(&self.dir(kroot::Dir::Snapshots).join(hex), &mut seen)
    }

    /// Removes the memos of layers not kept and marks the compressed blobs of those kept.
    fn sweep_memos(&self, marks: &mut Marks, seen: &mut HashSet<(u64, u64)>) -> Result<u64> {
        let mut bytes = 0;
        for ent in read_dir(&self.dir(kroot::Dir::Compressed))? {
            let name = ent.file_name().to_string_lossy().into_owned();
            let diff_id = name.split('-').next().unwrap_or("");
            let target = fs::read(ent.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<crate::oci::Descriptor>(&b).ok());
            match target {
                Some(desc) if marks.blobs.contains(diff_id) => {
                    marks.blobs.insert(desc.digest.hex().to_owned());
                }
                _ => bytes += remove_file(&ent.path(), seen)?,
            }
        }
        Ok(bytes)
    }

    /// Keeps the compressed blob of every kept layer that is stored only compressed (pulled);
    /// removes the `layers/` records of layers not kept.
    fn sweep_layer_sources(
        &self,
        marks: &mut Marks,
        seen: &mut HashSet<(u64, u64)>,
    ) -> Result<u64> {
        let mut bytes = 0;
        for ent in read_dir(&self.dir(kroot::Dir::Layers))? {
            let name = ent.file_name().to_string_lossy().into_owned();
            let source = fs::read(ent.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<crate::compress::LayerSource>(&b).ok());
            match source {
                Some(src) if marks.snapshots.contains(&name) => {
                    marks.blobs.insert(src.blob.digest.hex().to_owned());
                }
                _ => bytes += remove_file(&ent.path(), seen)?,
            }
        }
        Ok(bytes)
    }

    /// Removes the image dates (`dates/<key>`, [`crate::records::ImageDate`]) of which a layer
    /// is gone: no build can make that image from this store's cache any more.
    fn sweep_dates(&self, seen: &mut HashSet<(u64, u64)>) -> Result<u64> {
        let mut bytes = 0;
        for ent in read_dir(&self.dir(kroot::Dir::Dates))? {
            let kept = fs::read(ent.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<crate::records::ImageDate>(&b).ok())
                .is_some_and(|d| d.layers.iter().all(|l| self.has_layer(l)));
            if !kept {
                bytes += remove_file(&ent.path(), seen)?;
            }
        }
        Ok(bytes)
    }

    /// Moves `path` into `tmp/` (atomic: it is gone from its old place at once), then deletes
    /// it. Returns the bytes freed.
    fn remove_tree(&self, path: &Path, seen: &mut HashSet<(u64, u64)>) -> Result<u64> {
        let bytes = crate::usage::tree_bytes(path, seen);
        let dead = self.temp_dir("gc")?;
        let dest = dead.path().join("x");
        match fs::rename(path, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err("rename into tmp/", path)(e)),
        }
        fs::remove_dir_all(dead.path()).map_err(io_err("remove", dead.path()))?;
        Ok(bytes)
    }

    /// Removes a tenant's entry unless a build holds its lock. `None` when it is in use.
    fn remove_tenant_entry(
        &self,
        e: &Entry,
        seen: &mut HashSet<(u64, u64)>,
    ) -> Result<Option<u64>> {
        let lock = match &e.lock {
            None => None,
            Some(p) => match fs::File::open(p) {
                Ok(f) => Some((f, p)),
                Err(err) if err.kind() == io::ErrorKind::NotFound => None,
                Err(err) => return Err(io_err("open", p)(err)),
            },
        };
        if let Some((l, p)) = &lock {
            match l.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => return Ok(None),
                Err(fs::TryLockError::Error(err)) => return Err(io_err("lock", p)(err)),
            }
        }
        let bytes = self.remove_tree(&e.path, seen)?;
        if let Some((_, p)) = &lock {
            // Unlinked while we hold it: no build waits on it (they hold the store lock).
            let _ = fs::remove_file(p);
        }
        Ok(Some(bytes))
    }
}

/// Indexes of `entries` (sorted least recently used first) to remove.
fn choose(
    entries: &[Entry],
    roots: &Marks,
    opts: &PruneOptions,
    layer_bytes: impl Fn(&str) -> u64,
) -> HashSet<usize> {
    let old_enough = |e: &Entry| match opts.until {
        None => true,
        Some(d) => opts
            .now
            .duration_since(e.last_used)
            .is_ok_and(|age| age >= d),
    };
    let candidates = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| old_enough(e))
        .map(|(i, _)| i);
    let Some(keep) = opts.keep_storage else {
        return candidates.collect();
    };
    // Bytes the build cache holds: each entry's own bytes plus every layer that only records
    // hold (images keep theirs anyway), counted once however many records share it.
    let mut refs: HashMap<&str, usize> = HashMap::new();
    for e in entries {
        for l in &e.layers {
            if !roots.snapshots.contains(l) {
                *refs.entry(l.as_str()).or_default() += 1;
            }
        }
    }
    let sizes: HashMap<&str, u64> = refs.keys().map(|l| (*l, layer_bytes(l))).collect();
    let mut total: u64 =
        entries.iter().map(|e| e.own_bytes).sum::<u64>() + sizes.values().sum::<u64>();
    // Least recently used first; of entries last used at the same moment (the steps of one
    // build), the one holding the most bytes first, so that the limit is met by removing as
    // few as it can (and the order does not depend on the records' names).
    let mut order: Vec<usize> = candidates.collect();
    order.sort_by_cached_key(|&i| {
        let e = &entries[i];
        let held = e.own_bytes
            + e.layers
                .iter()
                .filter_map(|l| sizes.get(l.as_str()))
                .sum::<u64>();
        (e.last_used, std::cmp::Reverse(held), e.id.clone())
    });
    let mut out = HashSet::new();
    for i in order {
        if total <= keep {
            break;
        }
        let e = &entries[i];
        total = total.saturating_sub(e.own_bytes);
        for l in &e.layers {
            if let Some(r) = refs.get_mut(l.as_str()) {
                *r -= 1;
                if *r == 0 {
                    total = total.saturating_sub(sizes[l.as_str()]);
                }
            }
        }
        out.insert(i);
    }
    out
}

/// An image manifest or index (not a config, not a cache record).
fn is_manifest(v: &serde_json::Value) -> bool {
    let descs = |k: &str| v.get(k).is_some_and(serde_json::Value::is_array);
    // Go tools write `"layers":null` for an image without layers.
    let layers = descs("layers") || v.get("layers").is_some_and(serde_json::Value::is_null);
    (layers && v.get("config").is_some_and(serde_json::Value::is_object)) || descs("manifests")
}

/// The pid in a temp entry name made by [`Store::temp_dir`]: `<prefix>-<pid>-<n>-<nanos>`.
fn tmp_owner(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(4, '-');
    let nanos = parts.next()?;
    let n = parts.next()?;
    let pid = parts.next()?;
    parts.next()?;
    u64::from_str_radix(nanos, 16).ok()?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

fn remove_file(path: &Path, seen: &mut HashSet<(u64, u64)>) -> Result<u64> {
    let bytes = match fs::symlink_metadata(path) {
        Ok(md) if seen.insert((md.dev(), md.ino())) => md.len(),
        Ok(_) => 0,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    match fs::remove_file(path) {
        Ok(()) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{ImageConfig, Platform};
    use crate::snapshot::CommitOptions;

    /// A store with busybox-less content: a tagged image of one layer, an untagged image of
    /// two layers (the first shared), and a record whose only layer no image holds.
    struct World {
        _dir: tempfile::TempDir,
        store: Store,
        shared: Digest,
        dangling_top: Digest,
        cache_only: Digest,
        dangling_manifest: Digest,
        record: Digest,
    }

    fn layer(store: &Store, name: &str, data: &[u8]) -> Digest {
        let upper = store.temp_dir("upper").expect("temp").into_path();
        fs::write(upper.join(name), data).expect("write");
        store
            .commit_layer(&upper, &CommitOptions::default())
            .expect("commit")
            .expect("a layer")
            .diff_id
    }

    fn image(store: &Store, layers: &[&Digest]) -> Digest {
        let mut c = ImageConfig::empty(&Platform::host());
        c.rootfs.diff_ids = layers.iter().map(|d| (*d).clone()).collect();
        store.write_image(&c).expect("image").manifest_digest
    }

    fn world() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("root")).expect("store");
        let shared = layer(&store, "a", b"shared");
        let dangling_top = layer(&store, "b", b"dangling");
        let cache_only = layer(&store, "c", b"intermediate stage");
        let tagged = image(&store, &[&shared]);
        store.tag("app:1", &tagged).expect("tag");
        let dangling_manifest = image(&store, &[&shared, &dangling_top]);
        let record = Digest::of(b"key");
        store
            .cache_put(
                &record,
                &CacheRecord {
                    layers: vec![shared.clone(), cache_only.clone()],
                },
            )
            .expect("record");
        World {
            _dir: dir,
            store,
            shared,
            dangling_top,
            cache_only,
            dangling_manifest,
            record,
        }
    }

    #[test]
    fn prune_removes_records_and_what_only_they_hold() {
        let w = world();
        let r = w.store.prune(&PruneOptions::default(), &[]).expect("prune");
        assert_eq!(r.removed.len(), 1);
        assert_eq!(r.removed[0].id, w.record.hex());
        assert!(w.store.cache_get(&w.record).expect("get").is_none());
        assert!(!w.store.has_layer(&w.cache_only), "only the record held it");
        assert!(w.store.has_layer(&w.shared), "a tagged image holds it");
        assert!(w.store.has_layer(&w.dangling_top), "untagged images stay");
        assert!(w.store.image(&w.dangling_manifest).is_ok());
        assert!(r.reclaimed > 0);
        assert_eq!(r.snapshots, 1);
        // Nothing left over in tmp/.
        assert_eq!(
            fs::read_dir(w.store.dir(kroot::Dir::Tmp))
                .expect("tmp")
                .count(),
            0
        );
        // A second prune finds nothing.
        let again = w.store.prune(&PruneOptions::default(), &[]).expect("prune");
        assert_eq!(
            (again.removed.len(), again.blobs, again.reclaimed),
            (0, 0, 0)
        );
    }

    #[test]
    fn prune_all_removes_untagged_images_but_not_tagged_ones() {
        let w = world();
        let r = w
            .store
            .prune(
                &PruneOptions {
                    all: true,
                    ..Default::default()
                },
                &[],
            )
            .expect("prune");
        assert!(!w.store.has_blob(&w.dangling_manifest));
        assert!(!w.store.has_layer(&w.dangling_top));
        assert!(!w.store.has_layer(&w.cache_only));
        let tagged = w.store.resolve("app:1").expect("resolve").expect("tagged");
        assert!(w.store.has_layer(&w.shared));
        assert!(w.store.has_blob(&tagged.config_digest));
        assert_eq!(r.snapshots, 2);
    }

    #[test]
    fn until_keeps_recently_used_records() {
        let w = world();
        let later = |secs| PruneOptions {
            until: Some(Duration::from_secs(3600)),
            now: SystemTime::now() + Duration::from_secs(secs),
            ..Default::default()
        };
        let r = w.store.prune(&later(60), &[]).expect("prune");
        assert!(r.removed.is_empty(), "used a minute ago");
        assert!(w.store.has_layer(&w.cache_only));
        let r = w.store.prune(&later(7200), &[]).expect("prune");
        assert_eq!(r.removed.len(), 1, "unused for two hours");
        assert!(!w.store.has_layer(&w.cache_only));
    }

    #[test]
    fn keep_storage_drops_least_recently_used_first() {
        let w = world();
        let newer = Digest::of(b"newer");
        let other = layer(&w.store, "d", &[7u8; 4096]);
        w.store
            .cache_put(
                &newer,
                &CacheRecord {
                    layers: vec![w.shared.clone(), other.clone()],
                },
            )
            .expect("record");
        // Make the first record the older one.
        let old = SystemTime::now() - Duration::from_secs(600);
        fs::File::options()
            .write(true)
            .open(w.store.dir(kroot::Dir::CacheKeys).join(w.record.hex()))
            .expect("open")
            .set_modified(old)
            .expect("mtime");
        let r = w
            .store
            .prune(
                &PruneOptions {
                    keep_storage: Some(w.store.layer_bytes(other.hex()) + 1024),
                    ..Default::default()
                },
                &[],
            )
            .expect("prune");
        assert_eq!(r.removed.len(), 1);
        assert_eq!(r.removed[0].id, w.record.hex(), "the older one goes");
        assert!(w.store.cache_get(&newer).expect("get").is_some());
        assert!(w.store.has_layer(&other));
        assert!(!w.store.has_layer(&w.cache_only));
    }

    /// A tenant that reports what it is given and counts its sweeps.
    #[derive(Debug, Default)]
    struct Tenant {
        layers: Vec<Digest>,
        entries: Vec<TenantEntry>,
        swept: std::cell::Cell<u32>,
    }

    impl GcRoots for Tenant {
        fn layers(&self) -> Result<Vec<Digest>> {
            Ok(self.layers.clone())
        }
        fn cache_entries(&self) -> Result<Vec<TenantEntry>> {
            Ok(self.entries.clone())
        }
        fn sweep(&self) -> Result<u64> {
            self.swept.set(self.swept.get() + 1);
            Ok(0)
        }
    }

    #[test]
    fn tenant_entries_go_unless_locked_and_compressed_copies_follow_their_layer() {
        let w = world();
        let mounts = w.store.root().join("mounts");
        let mut tenant = Tenant::default();
        for m in ["free", "held", "unlocked"] {
            fs::create_dir_all(mounts.join(m)).expect("mkdir");
            fs::write(mounts.join(m).join("pkg"), b"downloaded").expect("write");
            let lock = (m != "unlocked").then(|| mounts.join(format!("{m}.lock")));
            if let Some(l) = &lock {
                fs::write(l, b"").expect("lock file");
            }
            tenant.entries.push(TenantEntry {
                id: m.to_owned(),
                path: mounts.join(m),
                last_used: SystemTime::UNIX_EPOCH,
                bytes: 10,
                lock,
            });
        }
        let held = fs::File::open(mounts.join("held.lock")).expect("open");
        held.lock_shared().expect("lock");
        let gz = crate::compress::Compression {
            codec: crate::compress::Codec::Gzip,
            level: 1,
        };
        let kept = w.store.compressed_layer(&w.shared, gz).expect("gzip");
        let gone = w.store.compressed_layer(&w.cache_only, gz).expect("gzip");
        let r = w
            .store
            .prune(&PruneOptions::default(), &[&tenant])
            .expect("prune");
        assert!(!mounts.join("free").exists());
        assert!(!mounts.join("free.lock").exists());
        assert!(!mounts.join("unlocked").exists());
        assert!(mounts.join("held/pkg").exists(), "in use: kept");
        let mut removed: Vec<&str> = r
            .removed
            .iter()
            .filter(|e| e.kind == EntryKind::CacheMount)
            .map(|e| e.id.as_str())
            .collect();
        removed.sort_unstable();
        assert_eq!(removed, ["free", "unlocked"]);
        assert_eq!(
            tenant.swept.get(),
            1,
            "the tenant sweeps once, after the sweep"
        );
        assert!(w.store.has_blob(&kept.digest));
        assert!(!w.store.has_blob(&gone.digest));
        assert_eq!(
            fs::read_dir(w.store.dir(kroot::Dir::Compressed))
                .expect("dir")
                .count(),
            1
        );
    }

    #[test]
    fn a_layer_kept_only_compressed_keeps_its_blob() {
        let w = world();
        let gz = crate::compress::Compression {
            codec: crate::compress::Codec::Gzip,
            level: 1,
        };
        // As a pull leaves them: the compressed blob and `layers/<diffid>`, no tar blob.
        let mut sources = Vec::new();
        for l in [&w.shared, &w.cache_only] {
            let desc = w.store.compressed_layer(l, gz).expect("gzip");
            let size = fs::metadata(w.store.blob_path(l)).expect("tar").len();
            w.store.record_layer_source(l, &desc, size).expect("source");
            fs::remove_file(w.store.blob_path(l)).expect("drop the tar");
            fs::remove_dir_all(w.store.dir(kroot::Dir::Compressed)).expect("no memo");
            fs::create_dir(w.store.dir(kroot::Dir::Compressed)).expect("mkdir");
            assert!(w.store.has_layer(l));
            sources.push(desc.digest);
        }
        w.store
            .prune(
                &PruneOptions {
                    all: true,
                    ..Default::default()
                },
                &[],
            )
            .expect("prune");
        assert!(
            w.store.has_layer(&w.shared),
            "the tagged image's pulled layer"
        );
        assert!(w.store.has_blob(&sources[0]));
        assert!(!w.store.has_layer(&w.cache_only));
        assert!(!w.store.has_blob(&sources[1]));
        assert_eq!(
            fs::read_dir(w.store.dir(kroot::Dir::Layers))
                .expect("dir")
                .count(),
            1
        );
        let tagged = w.store.resolve("app:1").expect("resolve").expect("tagged");
        let mut tar = Vec::new();
        w.store
            .open_layer(&tagged.config.rootfs.diff_ids[0])
            .expect("open")
            .read_to_end(&mut tar)
            .expect("read");
        assert_eq!(Digest::of(&tar), w.shared);
    }

    #[test]
    fn a_tenants_layers_keep_their_snapshots_and_blobs() {
        let w = world();
        let tenant = Tenant {
            layers: vec![w.cache_only.clone()],
            ..Tenant::default()
        };
        let opts = PruneOptions {
            all: true,
            ..Default::default()
        };
        w.store.prune(&opts, &[&tenant]).expect("prune");
        assert!(w.store.has_layer(&w.cache_only), "the tenant's layer stays");
        assert!(w.store.has_blob(&w.cache_only), "and so does its tar blob");
        assert!(
            !w.store.has_layer(&w.dangling_top),
            "what nobody names goes"
        );
        // Without the tenant, the layer only the pruned record held goes.
        w.store.prune(&opts, &[]).expect("prune");
        assert!(!w.store.has_layer(&w.cache_only));
        assert!(!w.store.has_blob(&w.cache_only));
    }

    #[test]
    fn stale_tmp_entries_of_dead_processes_are_removed() {
        let w = world();
        let mine = w.store.temp_dir("step-").expect("temp");
        // A pid that cannot exist (above pid_max's ceiling of 2^22).
        let dead = w.store.dir(kroot::Dir::Tmp).join("step--99999999-0-1f");
        fs::create_dir(&dead).expect("mkdir");
        fs::write(dead.join("f"), b"left by a killed build").expect("write");
        let unnamed = w.store.dir(kroot::Dir::Tmp).join("something");
        fs::write(&unnamed, b"?").expect("write");
        assert_eq!(w.store.clean_stale_tmp().expect("clean"), 1);
        assert!(!dead.exists());
        assert!(mine.path().exists(), "a live process's entry stays");
        assert!(unnamed.exists(), "unnamed entries wait for GC and a day");
        assert_eq!(tmp_owner("step--1234-5-abc"), Some(1234));
        assert_eq!(tmp_owner("gc-77-0-0"), Some(77));
        assert_eq!(tmp_owner("something"), None);
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(
            super::unescape_mountinfo(r"/tmp/a\040b\134c\011"),
            "/tmp/a b\\c\t"
        );
        assert_eq!(super::unescape_mountinfo(r"/x\04"), r"/x\04");
    }
}

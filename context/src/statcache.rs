//! A stat cache for build-context hashing, as git's index does it: the content digest of a file
//! is reused while its `(size, mtime, ctime, inode, device, mode)` are unchanged, so a warm
//! rebuild reads no unchanged file.
//!
//! One cache file per context directory, `KILN_ROOT/statcache/<sha256 of the context path>`,
//! written atomically (`kroot::write_atomic`). The racy-git rule applies: an entry whose mtime or
//! ctime is not older than the moment the cache file was written may have been changed within
//! the same timestamp tick after it was hashed, so it is hashed again (and stays racy until a
//! later save finds it older).
//!
//! Saving keeps only the entries looked up since [`StatCache::open`], so files removed from the
//! context drop out on the next build. Nothing is written when every lookup reused an entry
//! and none went unused: a warm rebuild only reads the file.
//!
//! File format (`kiln.statcache.v2`): the tag line, then per entry: path length (u32 LE), path
//! bytes, size (u64), mtime_ns (i128), ctime_ns (i128), inode (u64), device (u64), mode (u32),
//! the raw 32-byte SHA-256. A file that fails to parse is treated as empty (a `v1` file too:
//! it is rewritten as `v2` by the next build).
//!
//! Loading keeps the file's bytes and indexes them by a 64-bit hash of the path (no per-entry
//! allocation); a lookup compares the stored path bytes, so a hash collision can only cost a
//! re-hash of the file, never a wrong digest.

use std::collections::HashMap;
use std::fs;
use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

/// A raw SHA-256 hash, as the cache file stores it (callers wrap it in their digest type:
/// this crate is a leaf and does not depend on `cache::oci::Digest`).
pub type Sha256Hash = [u8; 32];

const TAG: &[u8] = b"kiln.statcache.v2\n";

/// Bytes of an entry after its path: size, mtime, ctime, inode, device, mode, digest.
const FIXED: usize = 8 + 16 + 16 + 8 + 8 + 4 + 32;

/// Errors of the stat cache.
#[derive(Debug, thiserror::Error)]
pub enum StatCacheError {
    /// Writing the cache file failed.
    #[error("writing stat cache {path}")]
    Write {
        /// The cache file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, StatCacheError>;

/// What must be unchanged for a cached digest to be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatKey {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i128,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
}

impl StatKey {
    /// The key of a file's metadata (from `stat`, not `lstat`, for a followed link).
    pub fn of(meta: &fs::Metadata) -> StatKey {
        StatKey {
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
            mode: meta.mode(),
        }
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.size.to_le_bytes());
        buf.extend_from_slice(&self.mtime_ns.to_le_bytes());
        buf.extend_from_slice(&self.ctime_ns.to_le_bytes());
        buf.extend_from_slice(&self.ino.to_le_bytes());
        buf.extend_from_slice(&self.dev.to_le_bytes());
        buf.extend_from_slice(&self.mode.to_le_bytes());
    }

    fn decode(b: &[u8]) -> StatKey {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let i128_at = |i: usize| i128::from_le_bytes(b[i..i + 16].try_into().expect("16 bytes"));
        StatKey {
            size: u64_at(0),
            mtime_ns: i128_at(8),
            ctime_ns: i128_at(24),
            ino: u64_at(40),
            dev: u64_at(48),
            mode: u32::from_le_bytes(b[56..60].try_into().expect("4 bytes")),
        }
    }
}

/// Where an entry of the loaded file is: its path at `path..key`, then [`FIXED`] bytes.
#[derive(Debug, Clone, Copy)]
struct Slot {
    path: usize,
    key: usize,
}

/// A freshly hashed entry, kept for the next save.
type Fresh = (PathBuf, StatKey, [u8; 32]);

/// Cached digests of one context directory's files.
#[derive(Debug)]
pub struct StatCache {
    file: PathBuf,
    /// mtime of the cache file when loaded; entries not older than this are racy.
    written_ns: Option<i128>,
    /// The loaded file.
    bytes: Vec<u8>,
    slots: Vec<Slot>,
    /// Path hash -> slot (the first of any colliding paths; the others are simply misses).
    index: HashMap<u64, usize, BuildHasherDefault<IdentityHasher>>,
    used: Vec<AtomicBool>,
    fresh: Mutex<Vec<Fresh>>,
    hashed: AtomicU64,
    reused: AtomicU64,
}

/// The path hashes are SipHash already: the index map uses them as they are.
#[derive(Debug, Default)]
struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

fn path_hash(path: &[u8]) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(path)
}

impl StatCache {
    /// The cache file for `context` under `kiln_root`.
    pub fn file_for(kiln_root: &Path, context: &Path) -> PathBuf {
        let abs = fs::canonicalize(context).unwrap_or_else(|_| context.to_path_buf());
        kroot::Dir::StatCache
            .path(kiln_root)
            .join(hex::encode(Sha256::digest(abs.as_os_str().as_bytes())))
    }

    /// Loads `file`; a missing or unreadable file gives an empty cache.
    pub fn open(file: PathBuf) -> StatCache {
        let (written_ns, bytes) = match (fs::read(&file), fs::metadata(&file)) {
            (Ok(bytes), Ok(meta)) => (Some(StatKey::of(&meta).mtime_ns), bytes),
            _ => (None, Vec::new()),
        };
        let slots = index(&bytes).unwrap_or_default();
        let mut map = HashMap::with_capacity_and_hasher(slots.len(), Default::default());
        for (i, s) in slots.iter().enumerate() {
            map.entry(path_hash(&bytes[s.path..s.key])).or_insert(i);
        }
        StatCache {
            file,
            written_ns,
            used: slots.iter().map(|_| AtomicBool::new(false)).collect(),
            bytes,
            slots,
            index: map,
            fresh: Mutex::new(Vec::new()),
            hashed: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    /// The cached entry of `path`: its slot number, stat key and digest.
    fn cached(&self, path: &[u8]) -> Option<(usize, StatKey, [u8; 32])> {
        let i = *self.index.get(&path_hash(path))?;
        let s = self.slots[i];
        if &self.bytes[s.path..s.key] != path {
            return None;
        }
        let fixed = &self.bytes[s.key..s.key + FIXED];
        let digest = fixed[FIXED - 32..].try_into().expect("32 bytes");
        Some((i, StatKey::decode(fixed), digest))
    }

    /// The digest of `path` whose current metadata is `key`: the cached one when `key` matches
    /// and the entry is not racy, otherwise `hash(path)` (counted in [`StatCache::hashed`]).
    ///
    /// Fails when `hash` fails.
    pub fn digest(
        &self,
        path: &Path,
        key: StatKey,
        hash: impl FnOnce(&Path) -> io::Result<Sha256Hash>,
    ) -> io::Result<Sha256Hash> {
        let hit = self
            .cached(path.as_os_str().as_bytes())
            .filter(|(_, k, _)| {
                *k == key
                    && self
                        .written_ns
                        .is_some_and(|w| k.mtime_ns < w && k.ctime_ns < w)
            });
        if let Some((i, _, raw)) = hit {
            self.used[i].store(true, Ordering::Relaxed);
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(raw);
        }
        self.hashed.fetch_add(1, Ordering::Relaxed);
        let raw = hash(path)?;
        self.fresh
            .lock()
            .expect("stat cache lock is not poisoned: no code panics while holding it")
            .push((path.to_path_buf(), key, raw));
        Ok(raw)
    }

    /// How many files were hashed (read) since opening.
    pub fn hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    /// How many digests were reused without reading the file.
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// Writes the entries looked up since opening, atomically. Nothing is written when nothing
    /// was hashed and every loaded entry was reused (the file would not change).
    ///
    /// Fails when the directory or file cannot be written.
    pub fn save(&self) -> Result<()> {
        let fresh = self
            .fresh
            .lock()
            .expect("stat cache lock is not poisoned: no code panics while holding it");
        let used = self
            .used
            .iter()
            .filter(|u| u.load(Ordering::Relaxed))
            .count();
        if fresh.is_empty() && used == self.slots.len() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(TAG.len() + (used + fresh.len()) * (FIXED + 64));
        buf.extend_from_slice(TAG);
        for (s, u) in self.slots.iter().zip(&self.used) {
            if u.load(Ordering::Relaxed) {
                let len = u32::try_from(s.key - s.path).expect("paths were read from a u32 length");
                buf.extend_from_slice(&len.to_le_bytes());
                buf.extend_from_slice(&self.bytes[s.path..s.key + FIXED]);
            }
        }
        for (path, k, raw) in fresh.iter() {
            let p = path.as_os_str().as_bytes();
            let Ok(len) = u32::try_from(p.len()) else {
                continue;
            };
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(p);
            k.encode(&mut buf);
            buf.extend_from_slice(raw);
        }
        let err = |source| StatCacheError::Write {
            path: self.file.clone(),
            source,
        };
        kroot::write_atomic(&self.file, &buf).map_err(err)
    }
}

/// The entries of a cache file (`None` when it is not a whole `v2` file).
fn index(bytes: &[u8]) -> Option<Vec<Slot>> {
    let mut at = TAG.len();
    if !bytes.starts_with(TAG) {
        return None;
    }
    let mut out = Vec::new();
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        let path = at + 4;
        let key = path.checked_add(len)?;
        let end = key.checked_add(FIXED)?;
        if end > bytes.len() {
            return None;
        }
        out.push(Slot { path, key });
        at = end;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn hash(p: &Path) -> io::Result<Sha256Hash> {
        Ok(sha(&fs::read(p)?))
    }

    fn sha(data: &[u8]) -> Sha256Hash {
        Sha256::digest(data).into()
    }

    /// Digest of `f` through a freshly opened cache, then saved; returns (digest, hashed?).
    fn look(cache_file: &Path, f: &Path) -> (Sha256Hash, bool) {
        let c = StatCache::open(cache_file.to_path_buf());
        let key = StatKey::of(&fs::metadata(f).expect("stat"));
        let d = c.digest(f, key, hash).expect("digest");
        c.save().expect("save");
        (d, c.hashed() == 1)
    }

    /// Sets a file's mtime (and, as a side effect, ctime to now).
    fn set_mtime(f: &Path, t: std::time::SystemTime) {
        fs::File::options()
            .write(true)
            .open(f)
            .expect("open")
            .set_modified(t)
            .expect("set mtime");
    }

    fn past() -> std::time::SystemTime {
        std::time::SystemTime::now() - std::time::Duration::from_secs(3600)
    }

    /// Writes a file and makes its times old, so that it is not racy after the next save.
    fn old_file(f: &Path, data: &[u8]) {
        fs::write(f, data).expect("write");
        set_mtime(f, past());
    }

    /// Waits until the clock has moved past the file's ctime (timestamps are ticks of the
    /// kernel clock), so that a save after this makes the entry non-racy.
    fn settle(f: &Path) {
        let c = StatKey::of(&fs::metadata(f).expect("stat")).ctime_ns;
        let probe = f.with_extension("probe");
        loop {
            fs::write(&probe, b"").expect("probe");
            if StatKey::of(&fs::metadata(&probe).expect("stat")).mtime_ns > c {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    #[test]
    fn unchanged_file_is_not_reread() {
        let d = tempfile::tempdir().expect("tempdir");
        let (cf, f) = (d.path().join("cache"), d.path().join("a.txt"));
        old_file(&f, b"hello");
        settle(&f);
        let (d1, h1) = look(&cf, &f);
        assert!(h1, "first lookup hashes");
        let (d2, h2) = look(&cf, &f);
        assert!(!h2, "second lookup reuses the cached digest");
        assert_eq!(d1, d2);
        // The cache file survives reopening many times and stays valid.
        let c = StatCache::open(cf.clone());
        assert_eq!(c.slots.len(), 1);
    }

    #[test]
    fn same_size_edit_in_the_same_second_is_detected() {
        let d = tempfile::tempdir().expect("tempdir");
        let (cf, f) = (d.path().join("cache"), d.path().join("a.txt"));
        fs::write(&f, b"aaaa").expect("write");
        // Hash and save immediately: the file's mtime is not older than the cache file's.
        let (d1, _) = look(&cf, &f);
        // Same size, and force the very same mtime (a racy edit inside one timestamp tick).
        let before = fs::metadata(&f).expect("stat").modified().expect("mtime");
        fs::write(&f, b"bbbb").expect("write");
        set_mtime(&f, before);
        let (d2, h2) = look(&cf, &f);
        assert!(h2, "racy entry is hashed again");
        assert_ne!(d1, d2, "content change found");
        assert_eq!(d2, sha(b"bbbb"));
    }

    #[test]
    fn racy_entry_with_identical_stat_is_rehashed() {
        // Even when every stat field is identical (ctime too), a racy entry is re-read.
        let d = tempfile::tempdir().expect("tempdir");
        let (cf, f) = (d.path().join("cache"), d.path().join("a.txt"));
        fs::write(&f, b"x").expect("write");
        let c = StatCache::open(cf.clone());
        let key = StatKey::of(&fs::metadata(&f).expect("stat"));
        c.digest(&f, key, hash).expect("digest");
        c.save().expect("save");
        // Pretend the cache file was written in the same tick as the file.
        let cache = fs::File::options().write(true).open(&cf).expect("open");
        cache
            .set_modified(fs::metadata(&f).expect("stat").modified().expect("mtime"))
            .expect("set");
        let c = StatCache::open(cf);
        c.digest(&f, key, hash).expect("digest");
        assert_eq!(c.hashed(), 1);
        assert_eq!(c.reused(), 0);
    }

    #[test]
    fn mode_change_is_detected() {
        let d = tempfile::tempdir().expect("tempdir");
        let (cf, f) = (d.path().join("cache"), d.path().join("a.sh"));
        old_file(&f, b"#!/bin/sh\n");
        settle(&f);
        let k1 = StatKey::of(&fs::metadata(&f).expect("stat"));
        look(&cf, &f);
        fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).expect("chmod");
        let k2 = StatKey::of(&fs::metadata(&f).expect("stat"));
        assert_ne!(k1.mode, k2.mode);
        let (_, h) = look(&cf, &f);
        assert!(h, "mode change misses the cache");
    }

    #[test]
    fn replaced_inode_is_detected() {
        let d = tempfile::tempdir().expect("tempdir");
        let (cf, f) = (d.path().join("cache"), d.path().join("a.txt"));
        old_file(&f, b"one");
        settle(&f);
        let t = fs::metadata(&f).expect("stat").modified().expect("mtime");
        let (d1, _) = look(&cf, &f);
        // Replace by rename with a same-size file carrying the same mtime: only inode/ctime differ.
        let g = d.path().join("new");
        fs::write(&g, b"two").expect("write");
        set_mtime(&g, t);
        fs::rename(&g, &f).expect("rename");
        let (d2, h) = look(&cf, &f);
        assert!(h, "new inode misses the cache");
        assert_eq!(d2, sha(b"two"));
        assert_ne!(d1, d2);
    }

    #[test]
    fn unseen_entries_are_dropped_and_garbage_is_ignored() {
        let d = tempfile::tempdir().expect("tempdir");
        let cf = d.path().join("cache");
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        old_file(&a, b"a");
        old_file(&b, b"b");
        look(&cf, &a);
        look(&cf, &b);
        assert_eq!(
            StatCache::open(cf.clone()).slots.len(),
            1,
            "only b was seen last"
        );
        fs::write(&cf, b"kiln.statcache.v2\n\x05\x00").expect("write");
        assert!(StatCache::open(cf.clone()).slots.is_empty());
        fs::write(&cf, b"kiln.statcache.v1\n").expect("write");
        assert!(StatCache::open(cf).slots.is_empty());
    }

    #[test]
    fn file_for_depends_on_the_context_path() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = StatCache::file_for(Path::new("/r"), d.path());
        let b = StatCache::file_for(Path::new("/r"), &d.path().join("."));
        assert_eq!(a, b, "same directory, same file");
        assert_ne!(a, StatCache::file_for(Path::new("/r"), Path::new("/")));
        assert!(a.starts_with("/r/statcache"));
    }
}

//! The content store under `KILN_ROOT`: blobs, locks, temp space, and the entry point to layers,
//! images, cache records and export (implemented in the sibling modules as `impl Store` blocks).
//!
//! Integrity rules (ARCHITECTURE.md): every file is written to `tmp/`, fsynced and renamed into
//! place; a blob's digest is checked before the rename makes it visible; two processes writing
//! the same blob each use their own temp file, so the last rename wins with identical bytes.

use crate::oci::{Digest, Hasher};
use crate::reference::ReferenceError;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::compress::{Codec, Compression};
pub use crate::image::Image;
pub use crate::records::CacheRecord;
pub use crate::snapshot::{CommitOptions, Layer};

/// Errors of every [`Store`] operation. Each variant names the path or digest at fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done (`create`, `rename`, `read`...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Content did not hash to the digest it was expected to have.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the caller or the store expected.
        expected: Digest,
        /// The digest of the bytes actually received.
        actual: Digest,
    },
    /// A blob is not in the store.
    #[error("blob {digest} not found in the store")]
    BlobMissing {
        /// The missing blob.
        digest: Digest,
    },
    /// A layer (blob and snapshot) is not in the store.
    #[error("layer {diff_id} not found in the store")]
    LayerMissing {
        /// The layer's diff_id.
        diff_id: Digest,
    },
    /// A stored JSON document (manifest, config, ref, record) does not parse.
    #[error("invalid JSON in {}", path.display())]
    Json {
        /// The file holding it.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// Turning a directory into a layer tar failed.
    #[error("committing layer from {}", dir.display())]
    Commit {
        /// The directory being committed.
        dir: PathBuf,
        /// What went wrong.
        #[source]
        source: crate::layer::writer::WriteError,
    },
    /// Unpacking a layer tar failed (also: a hostile entry was rejected).
    #[error("unpacking layer")]
    Unpack {
        /// What went wrong.
        #[source]
        source: crate::layer::apply::ApplyError,
    },
    /// An image name is not a valid reference.
    #[error("invalid image name `{name}`")]
    Reference {
        /// The name given.
        name: String,
        /// Why it is invalid.
        #[source]
        source: ReferenceError,
    },
    /// An image ID prefix matches more than one image.
    #[error("image ID prefix `{prefix}` is ambiguous: matches {} images", matches.len())]
    AmbiguousId {
        /// The prefix given.
        prefix: String,
        /// The manifest digests it matches.
        matches: Vec<Digest>,
    },
    /// Compressing a layer failed.
    #[error("compressing layer {diff_id}")]
    Compress {
        /// The layer.
        diff_id: Digest,
        /// The I/O or codec error.
        #[source]
        source: io::Error,
    },
    /// Writing the saved image archive failed.
    #[error("writing image archive")]
    Save {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// Builds a `map_err` closure for an I/O error on `path`.
pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// The on-disk store rooted at `KILN_ROOT`. Cheap to clone; `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{n}-{nanos:x}", std::process::id())
}

impl Store {
    /// Opens the store at `root`, creating its directory layout when missing.
    ///
    /// Fails when a directory cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for d in kroot::Dir::CREATED_AT_OPEN {
            let p = d.path(&root);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        Ok(Store {
            inner: Arc::new(Inner { root }),
        })
    }

    /// The `KILN_ROOT` directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The directory `d` of this root (see [`kroot::Dir`] for what each holds).
    pub fn dir(&self, d: kroot::Dir) -> PathBuf {
        d.path(&self.inner.root)
    }

    /// Takes a shared lock on `KILN_ROOT/lock` (held by builds). Blocks while GC holds it.
    ///
    /// Fails when the lock file cannot be opened or locked.
    pub fn lock_shared(&self) -> Result<RootLock> {
        self.lock(rustix::fs::FlockOperation::LockShared)
    }

    /// Takes an exclusive lock on `KILN_ROOT/lock` (held by GC). Blocks while builds run.
    ///
    /// Fails when the lock file cannot be opened or locked.
    pub fn lock_exclusive(&self) -> Result<RootLock> {
        self.lock(rustix::fs::FlockOperation::LockExclusive)
    }

    /// Takes the exclusive lock if no build holds the shared one; `None` when it would block.
    ///
    /// Fails when the lock file cannot be opened or locked.
    pub fn try_lock_exclusive(&self) -> Result<Option<RootLock>> {
        match self.lock(rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(l) => Ok(Some(l)),
            Err(StoreError::Io {
                op: "lock", source, ..
            }) if source.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn lock(&self, op: rustix::fs::FlockOperation) -> Result<RootLock> {
        let path = self.root().join(kroot::LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err("open", &path))?;
        rustix::fs::flock(&file, op).map_err(|e| StoreError::Io {
            op: "lock",
            path,
            source: e.into(),
        })?;
        Ok(RootLock { _file: file })
    }

    /// Creates a fresh directory under `KILN_ROOT/tmp` (same filesystem as the store, so it can
    /// be renamed into place). It is removed on drop unless [`TempDir::into_path`] consumes it.
    ///
    /// Fails when the directory cannot be created.
    pub fn temp_dir(&self, prefix: &str) -> Result<TempDir> {
        loop {
            let path = self
                .dir(kroot::Dir::Tmp)
                .join(format!("{prefix}-{}", unique_suffix()));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path: Some(path) }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create", &path)(e)),
            }
        }
    }

    pub(crate) fn temp_file(&self, prefix: &str) -> Result<TempFile> {
        loop {
            let path = self
                .dir(kroot::Dir::Tmp)
                .join(format!("{prefix}-{}", unique_suffix()));
            match OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        file,
                        path: Some(path),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create", &path)(e)),
            }
        }
    }

    /// The path a blob has (or would have) in the store.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir(kroot::Dir::Blobs).join(d.hex())
    }

    /// True when the blob is in the store.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Stores `data` as a blob and returns its digest. Idempotent.
    ///
    /// Fails on I/O errors writing the blob.
    pub fn put_blob(&self, data: &[u8]) -> Result<Digest> {
        let digest = Digest::of(data);
        if self.has_blob(&digest) {
            return Ok(digest);
        }
        let mut tmp = self.temp_file("blob")?;
        tmp.file
            .write_all(data)
            .map_err(io_err("write", tmp.path()))?;
        self.persist_blob(tmp, &digest)?;
        Ok(digest)
    }

    /// Streams `r` into the store, hashing as it goes. When `expected` is given and the content
    /// does not match, nothing becomes visible. Returns the digest and size.
    ///
    /// Fails on read or write errors, or on a digest mismatch.
    pub fn ingest_blob(&self, r: impl Read, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let tmp = self.temp_file("ingest")?;
        let path = tmp.path().to_path_buf();
        let mut w = io::BufWriter::with_capacity(1 << 20, HashWriter::new(&tmp.file));
        let mut r = r;
        io::copy(&mut r, &mut w).map_err(io_err("ingest into", &path))?;
        let hw = w
            .into_inner()
            .map_err(|e| io_err("write", &path)(e.into_error()))?;
        let (digest, size) = hw.finish();
        if let Some(exp) = expected
            && *exp != digest
        {
            return Err(StoreError::DigestMismatch {
                expected: exp.clone(),
                actual: digest,
            });
        }
        self.persist_blob(tmp, &digest)?;
        Ok((digest, size))
    }

    /// fsyncs `tmp` and renames it to the blob path of `digest` (which the caller has verified).
    pub(crate) fn persist_blob(&self, tmp: TempFile, digest: &Digest) -> Result<()> {
        let dest = self.blob_path(digest);
        tmp.persist(&dest)
    }

    /// Reads a whole blob, verifying its digest.
    ///
    /// Fails when the blob is missing or its content does not match its name.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(d);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::BlobMissing { digest: d.clone() });
            }
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let actual = Digest::of(&data);
        if actual != *d {
            return Err(StoreError::DigestMismatch {
                expected: d.clone(),
                actual,
            });
        }
        Ok(data)
    }

    /// Writes `data` to `dest` atomically: [`kroot::write_atomic`]'s steps, with the temp file
    /// under `tmp/` rather than beside `dest`, so that the store's directories (`images/`,
    /// `cachekeys/`, listed by readers) never show a temp and gc removes a killed writer's.
    pub(crate) fn write_atomic(&self, dest: &Path, data: &[u8]) -> Result<()> {
        let mut tmp = self.temp_file("write")?;
        tmp.file
            .write_all(data)
            .map_err(io_err("write", tmp.path()))?;
        tmp.persist(dest)
    }
}

/// A held flock on `KILN_ROOT/lock`; released on drop.
#[derive(Debug)]
pub struct RootLock {
    _file: File,
}

/// A directory under `KILN_ROOT/tmp`, removed on drop unless consumed.
#[derive(Debug)]
pub struct TempDir {
    path: Option<PathBuf>,
}

impl TempDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        self.path
            .as_deref()
            .expect("TempDir path is only taken by into_path, which consumes it")
    }

    /// Keeps the directory: it is no longer removed on drop.
    pub fn into_path(mut self) -> PathBuf {
        self.path
            .take()
            .expect("TempDir path is only taken by into_path, which consumes it")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            // Best effort: anything left behind is garbage under tmp/ that nothing trusts.
            let _ = fs::remove_dir_all(&p);
        }
    }
}

/// A file under `KILN_ROOT/tmp`, removed on drop unless persisted.
#[derive(Debug)]
pub(crate) struct TempFile {
    pub(crate) file: File,
    path: Option<PathBuf>,
}

impl TempFile {
    pub(crate) fn path(&self) -> &Path {
        self.path
            .as_deref()
            .expect("TempFile path is only taken by persist, which consumes it")
    }

    /// fsync, rename onto `dest`, fsync `dest`'s directory ([`kroot::commit`]).
    pub(crate) fn persist(mut self, dest: &Path) -> Result<()> {
        let path = self
            .path
            .take()
            .expect("TempFile path is only taken by persist");
        let res = kroot::commit(&self.file, &path, dest).map_err(io_err("commit into", dest));
        if res.is_err() {
            let _ = fs::remove_file(&path);
        }
        res
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = fs::remove_file(&p);
        }
    }
}

/// Size of the buffers [`HashingFile`] writes and hashes.
const HASH_BUF: usize = 1 << 20;

/// Writes to a file through a 1 MiB buffer while a helper thread hashes the same bytes, so
/// SHA-256 overlaps with the write syscalls (on this hardware they cost about the same).
pub(crate) struct HashingFile<'a> {
    file: &'a File,
    buf: Vec<u8>,
    n: u64,
    to_hasher: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    hasher: Option<std::thread::JoinHandle<Digest>>,
}

impl<'a> HashingFile<'a> {
    pub(crate) fn new(file: &'a File) -> HashingFile<'a> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let (spare_tx, spare) = std::sync::mpsc::channel();
        let hasher = std::thread::spawn(move || {
            let mut h = Hasher::new();
            for b in rx {
                h.update(&b);
                // The writer may be gone already; a lost spare buffer is fine.
                let _ = spare_tx.send(b);
            }
            h.finish()
        });
        HashingFile {
            file,
            buf: Vec::with_capacity(HASH_BUF),
            n: 0,
            to_hasher: Some(tx),
            spare,
            hasher: Some(hasher),
        }
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut file = self.file;
        file.write_all(&self.buf)?;
        let mut next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(HASH_BUF));
        next.clear();
        let full = std::mem::replace(&mut self.buf, next);
        self.to_hasher
            .as_ref()
            .expect("the hasher channel is only dropped by finish")
            .send(full)
            .map_err(|_| io::Error::other("hasher thread stopped"))
    }

    /// Writes what is buffered and returns the digest and size of everything written.
    pub(crate) fn finish(mut self) -> io::Result<(Digest, u64)> {
        self.flush_buf()?;
        drop(self.to_hasher.take());
        let digest = self
            .hasher
            .take()
            .expect("the hasher thread is only joined by finish")
            .join()
            .map_err(|_| io::Error::other("hasher thread panicked"))?;
        Ok((digest, self.n))
    }
}

impl Write for HashingFile<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (HASH_BUF - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.n += n as u64;
        if self.buf.len() == HASH_BUF {
            self.flush_buf()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()
    }
}

impl Drop for HashingFile<'_> {
    fn drop(&mut self) {
        drop(self.to_hasher.take());
        if let Some(h) = self.hasher.take() {
            let _ = h.join();
        }
    }
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashWriter<W> {
    inner: W,
    hasher: Hasher,
    n: u64,
}

impl<W: Write> HashWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Hasher::new(),
            n: 0,
        }
    }
    pub(crate) fn finish(self) -> (Digest, u64) {
        (self.hasher.finish(), self.n)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Store>();
    }

    #[test]
    fn blobs_are_verified_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = store.put_blob(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert_eq!(store.put_blob(b"hello").unwrap(), d);
        assert_eq!(store.read_blob(&d).unwrap(), b"hello");
        let (d2, n) = store.ingest_blob(&b"hello"[..], Some(&d)).unwrap();
        assert_eq!((d2, n), (d.clone(), 5));
        let wrong = Digest::of(b"other");
        let err = store.ingest_blob(&b"hello!"[..], Some(&wrong)).unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(!store.has_blob(&Digest::of(b"hello!")));
        // Nothing is left in tmp/.
        assert_eq!(fs::read_dir(store.dir(kroot::Dir::Tmp)).unwrap().count(), 0);
    }

    #[test]
    fn corrupted_blob_is_detected_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = store.put_blob(b"data").unwrap();
        fs::write(store.blob_path(&d), b"evil").unwrap();
        assert!(matches!(
            store.read_blob(&d),
            Err(StoreError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn temp_dir_is_removed_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = store.temp_dir("x").unwrap();
        let p = t.path().to_path_buf();
        fs::write(p.join("f"), b"1").unwrap();
        drop(t);
        assert!(!p.exists());
        let kept = store.temp_dir("y").unwrap().into_path();
        assert!(kept.is_dir());
    }

    #[test]
    fn shared_locks_coexist_and_exclusive_waits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.lock_shared().unwrap();
        let b = store.lock_shared().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = store.clone();
        let h = std::thread::spawn(move || {
            let _x = s2.lock_exclusive().unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(100))
                .is_err()
        );
        drop(a);
        drop(b);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        h.join().unwrap();
    }
}

//! Pulling one layer: download, verify and unpack in one pass.
//!
//! The response body is read once and fanned out to two threads:
//! - the blob thread hashes and writes the compressed bytes to a temp file, starting
//!   writeback as it goes, and renames it into the store only when it matches the layer
//!   digest ([`ingest`]);
//! - the inflate thread decompresses (gzip through [`Gunzip`], fed the network chunks
//!   directly; zstd and plain through the store's readers) into recycled 1 MiB buffers for
//!   the unpack thread, which hashes the tar as it applies it into a new directory under
//!   `tmp/` and checks the diff_id at the end.
//!
//! The uncompressed tar is not written: the stored compressed blob is recorded as the
//! layer's source ([`Store::record_layer_source`]), from which the tar can be rebuilt byte for
//! byte and verified when something needs it. Writing (and fsyncing) the tar as well doubled
//! the bytes a pull sends to disk. Only when both verdicts are good is the source recorded
//! and the snapshot renamed into place; the diff_id comes from the config, which was verified
//! against the manifest, so the snapshot is trusted on its own.

use super::client::{Client, ClientError};
use super::{Progress, RegistryOptions, record};
use crate::compress::gunzip::Gunzip;
use crate::compress::{Codec, Compression};
use crate::layer::apply;
use crate::oci::{self, Descriptor, Digest, Hasher};
use crate::store::{Store, StoreError, TempDir};
use futures_util::StreamExt as _;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use super::pull::PullError;
use crate::remote::object::{ObjectClient, ObjectError};

type Result<T> = std::result::Result<T, PullError>;

/// Size of the decompressed chunks passed from [`inflate`] to the unpacker.
const PLAIN_CHUNK: usize = 1 << 20;
/// Decompressed chunks in flight between the inflate and unpack threads.
const PLAIN_QUEUE: usize = 8;
/// Network chunks are passed on in batches of about this many bytes: one wake-up of the
/// consumer threads per batch instead of per (often 16 KiB) chunk.
const NET_BATCH: usize = 1 << 20;
/// Batches in flight to each of the blob and inflate threads.
const NET_QUEUE: usize = 8;

/// A batch of network chunks, in order.
type Batch = Vec<bytes::Bytes>;

/// Where the compressed blob of a layer comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LayerSource<'a> {
    /// Repository `repo` of `client`'s registry.
    Registry {
        /// The client (pull scope on `repo`).
        client: &'a Client,
        /// The repository.
        repo: &'a str,
    },
    /// A file that should hold the blob (one of an OCI layout's), trusted no more than a
    /// download.
    File(&'a Path),
    /// Object `key` of an object store cache (`type=s3`, `type=azblob`): streamed through the
    /// same pipeline as a registry blob.
    Object {
        /// The store's client.
        client: &'a ObjectClient,
        /// The blob's key.
        key: &'a str,
    },
}

/// Downloads one layer into the store (unless it is there) and reports progress.
pub(super) async fn fetch_layer(
    store: &Store,
    client: &Client,
    repo: &str,
    desc: &Descriptor,
    diff_id: &Digest,
    name: &str,
    opts: &RegistryOptions,
) -> Result<()> {
    let source = LayerSource::Registry { client, repo };
    fetch(store, source, desc, diff_id, name, opts, true).await
}

/// Makes layer `diff_id` (compressed as blob `desc`) present in the store, from `source`,
/// and reports progress. The blob is stored only when it matches `desc`'s digest and the
/// snapshot installed only when its tar also matches `diff_id`; `name` (the image or cache
/// being read) is for errors.
///
/// Fails on download, read, verification and store errors; transient registry errors are
/// retried first.
pub(crate) async fn fetch_layer_from(
    store: &Store,
    source: LayerSource<'_>,
    desc: &Descriptor,
    diff_id: &Digest,
    name: &str,
    opts: &RegistryOptions,
) -> Result<()> {
    fetch(store, source, desc, diff_id, name, opts, false).await
}

/// [`fetch_layer_from`]; with `need_blob`, a layer already in the store is fetched anyway
/// when its blob `desc` is not: a pulled image keeps its manifest as served, so it must be
/// able to push and save the very blobs that manifest names (an uncompressed layer's blob is
/// its tar, which the store rebuilds from the snapshot's source when needed).
async fn fetch(
    store: &Store,
    source: LayerSource<'_>,
    desc: &Descriptor,
    diff_id: &Digest,
    name: &str,
    opts: &RegistryOptions,
    need_blob: bool,
) -> Result<()> {
    let digest = &desc.digest;
    if store.has_layer(diff_id) && (!need_blob || store.has_blob(digest) || digest == diff_id) {
        opts.report(Progress::Local {
            digest: digest.clone(),
        });
        return Ok(());
    }
    if store.has_blob(digest) {
        // Downloaded before (a pull that failed later): unpack the verified blob.
        let path = store.blob_path(digest);
        let f = std::fs::File::open(&path).map_err(|source| PullError::Open { path, source })?;
        let (store2, want, d) = (store.clone(), diff_id.clone(), desc.clone());
        crate::blocking::unblock(move || -> std::result::Result<(), StoreError> {
            let plain =
                crate::compress::open_compressed(f).map_err(|source| StoreError::Unpack {
                    source: apply::ApplyError::Read { source },
                })?;
            let unpacked = unpack_verified(&store2, plain, &want)?;
            commit(&store2, &d, &want, unpacked)
        })
        .await
        .map_err(|source| PullError::Blob {
            reference: name.to_owned(),
            digest: digest.clone(),
            source,
        })?;
    } else {
        match source {
            LayerSource::Registry { client, repo } => {
                client
                    .retry(|| download_and_unpack(store, client, repo, desc, diff_id, name, opts))
                    .await??;
            }
            LayerSource::Object { client, key } => {
                download_object(store, client, key, desc, diff_id, name, opts).await?;
            }
            LayerSource::File(path) => {
                let read_err = |source| PullError::Blob {
                    reference: name.to_owned(),
                    digest: digest.clone(),
                    source: StoreError::Io {
                        op: "read",
                        path: path.to_path_buf(),
                        source,
                    },
                };
                let f = tokio::fs::File::open(path)
                    .await
                    .map_err(|source| PullError::Open {
                        path: path.to_path_buf(),
                        source,
                    })?;
                let chunks = tokio_util::io::ReaderStream::with_capacity(f, NET_BATCH);
                unpack_stream(store, desc, diff_id, name, opts, chunks)
                    .await
                    .map_err(read_err)??;
            }
        }
    }
    if let LayerSource::Registry { client, repo } = source {
        record::remember(store.root(), client.registry(), digest, repo);
    }
    remember_compressed(store, desc, diff_id, opts);
    opts.report(Progress::Unpacked {
        digest: digest.clone(),
    });
    Ok(())
}

/// Keeps the registry's compressed blob as the store's compressed form of the layer, so that
/// pushing an image built on this one sends (or mounts) the same blob instead of compressing
/// the layer again into a blob with another digest. A gzip blob stands in for the push
/// compression when that is gzip, whatever level the original was made with.
fn remember_compressed(store: &Store, desc: &Descriptor, diff_id: &Digest, opts: &RegistryOptions) {
    let codec = match desc.media_type.as_str() {
        oci::MEDIA_TYPE_LAYER_GZIP | oci::MEDIA_TYPE_DOCKER_LAYER_GZIP => Codec::Gzip,
        oci::MEDIA_TYPE_LAYER_ZSTD => Codec::Zstd,
        _ => return,
    };
    let c = if opts.compression.codec == codec {
        opts.compression
    } else {
        match codec {
            Codec::Gzip => Compression::default(),
            Codec::Zstd => Compression { codec, level: 3 },
        }
    };
    let d = Descriptor::new(&desc.media_type, desc.digest.clone(), desc.size);
    if let Err(error) = store.remember_compressed(diff_id, c, &d) {
        tracing::debug!(%diff_id, %error, "cannot remember the compressed layer");
    }
}

/// A layer applied into a directory under `tmp/` and verified, not yet visible.
struct Unpacked {
    /// Owns the directory; removed on drop unless the snapshot was renamed out of it.
    _tmp: TempDir,
    root: PathBuf,
    size: u64,
}

/// Applies the tar stream `r` into a new directory under `tmp/`, hashing every byte of the
/// stream (the end-of-archive blocks and padding too: the diff_id covers the whole stream).
///
/// Fails on a hostile or malformed tar, on I/O errors, and when the stream does not hash to
/// `diff_id`.
fn unpack_verified(
    store: &Store,
    r: impl Read,
    diff_id: &Digest,
) -> std::result::Result<Unpacked, StoreError> {
    let tmp = store.temp_dir("pull")?;
    let root = crate::snapshot::new_root(&tmp)?;
    let mut r = HashReader {
        inner: r,
        hasher: Hasher::new(),
        n: 0,
    };
    apply::apply_layer(&mut r, &root).map_err(|source| StoreError::Unpack { source })?;
    io::copy(&mut r, &mut io::sink()).map_err(|source| StoreError::Unpack {
        source: apply::ApplyError::Read { source },
    })?;
    let size = r.n;
    let actual = r.hasher.finish();
    if actual != *diff_id {
        return Err(StoreError::DigestMismatch {
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(Unpacked {
        _tmp: tmp,
        root,
        size,
    })
}

/// Makes a verified layer visible: records the stored blob `desc` as the source of its tar
/// (unless the blob is the tar itself), then renames the snapshot into place.
fn commit(
    store: &Store,
    desc: &Descriptor,
    diff_id: &Digest,
    unpacked: Unpacked,
) -> std::result::Result<(), StoreError> {
    if desc.digest != *diff_id {
        store.record_layer_source(diff_id, desc, unpacked.size)?;
    }
    store.install_snapshot(&unpacked.root, diff_id)
}

/// One download attempt. The outer error is a transient network error (retried); the inner
/// one is final.
async fn download_and_unpack(
    store: &Store,
    client: &Client,
    repo: &str,
    desc: &Descriptor,
    diff_id: &Digest,
    name: &str,
    opts: &RegistryOptions,
) -> std::result::Result<Result<()>, ClientError> {
    let digest = &desc.digest;
    let resp = client.get_blob(repo, digest).await?;
    unpack_stream(store, desc, diff_id, name, opts, resp.bytes_stream())
        .await
        .map_err(|source| client.network(&format!("GET blob {digest}"), source))
}

/// Streams object `key` through [`unpack_stream`]. A request that fails transiently is
/// retried by the object client; a body cut short restarts the download, up to
/// [`OBJECT_ATTEMPTS`] times.
async fn download_object(
    store: &Store,
    client: &ObjectClient,
    key: &str,
    desc: &Descriptor,
    diff_id: &Digest,
    name: &str,
    opts: &RegistryOptions,
) -> Result<()> {
    let object_err = |source| PullError::Object {
        reference: name.to_owned(),
        source: Box::new(source),
    };
    let mut attempt = 0u32;
    loop {
        let resp = client.get(key).await.map_err(object_err)?.ok_or_else(|| {
            object_err(ObjectError::Status {
                op: "GET",
                key: key.to_owned(),
                status: 404,
                code: Some("not found".to_owned()),
            })
        })?;
        match unpack_stream(store, desc, diff_id, name, opts, resp.bytes_stream()).await {
            Ok(verdict) => return verdict,
            Err(source) => {
                let e = ObjectError::Network {
                    op: "GET",
                    key: key.to_owned(),
                    source,
                };
                if attempt + 1 >= OBJECT_ATTEMPTS || !e.is_transient() {
                    return Err(object_err(e));
                }
                tracing::debug!(key, error = %e, attempt, "object download cut short; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200) * 2u32.pow(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// Downloads of one object layer before a cut stream is final.
const OBJECT_ATTEMPTS: u32 = 4;

/// Runs the bytes of blob `desc` from `chunks` through the pipeline: stored as the blob when
/// they match its digest, inflated and unpacked, and committed as layer `diff_id` when the
/// tar matches too. The outer error is the stream's own (nothing is committed then); the
/// inner one is a verdict.
async fn unpack_stream<E>(
    store: &Store,
    desc: &Descriptor,
    diff_id: &Digest,
    name: &str,
    opts: &RegistryOptions,
    chunks: impl futures_util::Stream<Item = std::result::Result<bytes::Bytes, E>>,
) -> std::result::Result<Result<()>, E> {
    let digest = &desc.digest;
    let (tx_blob, rx_blob) = tokio::sync::mpsc::channel::<Batch>(NET_QUEUE);
    let (tx_tree, rx_tree) = tokio::sync::mpsc::channel::<Batch>(NET_QUEUE);
    let (s1, d) = (store.clone(), digest.clone());
    let ingest = crate::blocking::unblock(move || ingest(&s1, rx_blob, &d));
    // Decompression runs on its own thread, so that it overlaps with hashing and writing the
    // files in the unpacker instead of adding to them. Buffers go back for reuse: fresh 1 MiB
    // allocations are fresh pages, and faulting them in showed up in profiles.
    let (tx_plain, rx_plain) = mpsc::sync_channel::<io::Result<Vec<u8>>>(PLAIN_QUEUE);
    let (tx_spare, rx_spare) = mpsc::channel::<Vec<u8>>();
    let inflate = crate::blocking::unblock(move || inflate(rx_tree, &tx_plain, &rx_spare));
    let (s2, want) = (store.clone(), diff_id.clone());
    let unpack = crate::blocking::unblock(move || {
        unpack_verified(&s2, ChunkReader::new(rx_plain, tx_spare), &want)
    });

    let mut stream = std::pin::pin!(chunks);
    let (mut done, mut net_error, mut too_long) = (0u64, None, false);
    let mut tree = Some(tx_tree);
    let (mut batch, mut batched): (Batch, usize) = (Vec::new(), 0);
    loop {
        let chunk = match stream.next().await {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                net_error = Some(e);
                break;
            }
            None => None,
        };
        let end = chunk.is_none();
        if let Some(c) = chunk {
            let before = done;
            done += c.len() as u64;
            if done > desc.size {
                // Never more than announced: stop reading instead of filling the disk.
                too_long = true;
                break;
            }
            if let Some(p) = &opts.progress
                && (done >> 20 != before >> 20 || done == desc.size)
            {
                p(&Progress::Download {
                    digest: digest.clone(),
                    done,
                    total: desc.size,
                });
            }
            batched += c.len();
            batch.push(c);
            if batched < NET_BATCH {
                continue;
            }
        }
        if !batch.is_empty() {
            let full = std::mem::take(&mut batch);
            batched = 0;
            // The blob always gets the whole stream, so that its verdict is about the blob.
            // A closed channel means that consumer stopped (failed, or the unpacker needs no
            // more); its result is looked at below.
            if let Some(t) = &tree
                && t.send(full.clone()).await.is_err()
            {
                tree = None;
            }
            if tx_blob.send(full).await.is_err() {
                break;
            }
        }
        if end {
            break;
        }
    }
    // On a network error or an overlong body the consumers see an early end; their verdicts
    // are then ignored and nothing is committed.
    drop((tx_blob, tree));
    let blob_err = |source| PullError::Blob {
        reference: name.to_owned(),
        digest: digest.clone(),
        source,
    };
    let ingested = ingest.await;
    let unpacked = unpack.await;
    // Its errors reached the unpacker as read errors.
    inflate.await;
    if let Some(e) = net_error {
        return Err(e);
    }
    if too_long {
        return Ok(Err(PullError::Size {
            reference: name.to_owned(),
            digest: digest.clone(),
            expected: desc.size,
            actual: done,
        }));
    }
    let unpacked = match (ingested, unpacked) {
        (Ok((_, size)), Ok(_)) if size != desc.size => {
            return Ok(Err(PullError::Size {
                reference: name.to_owned(),
                digest: digest.clone(),
                expected: desc.size,
                actual: size,
            }));
        }
        (Ok(_), Ok(u)) => u,
        // A blob that does not match its digest is the root cause of any unpack failure.
        (Err(e), _) => return Ok(Err(blob_err(e))),
        (Ok(_), Err(u)) => return Ok(Err(blob_err(u))),
    };
    let (s3, d, want) = (store.clone(), desc.clone(), diff_id.clone());
    Ok(
        crate::blocking::unblock(move || commit(&s3, &d, &want, unpacked))
            .await
            .map_err(blob_err),
    )
}

/// Bytes of blob written between two hints to the kernel to start writing them back.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Stores the batches from `rx` as the blob `digest`: hashed, written, verified, fsynced and
/// renamed into place (as [`Store::ingest_blob`] does). Every [`WRITEBACK_STEP`] bytes the
/// kernel is told to start writing the part just written (`fadvise(DONTNEED)` starts
/// writeback of dirty pages), so that the fsync at the end waits for the last few MiB
/// instead of the whole blob, which competes for the disk with the snapshot's files.
///
/// Fails on write errors and when the content does not match `digest`.
fn ingest(
    store: &Store,
    mut rx: tokio::sync::mpsc::Receiver<Batch>,
    digest: &Digest,
) -> std::result::Result<(Digest, u64), StoreError> {
    use std::io::Write as _;
    let tmp = store.temp_file("pull")?;
    let path = tmp.path().to_path_buf();
    let write_err = |source| StoreError::Io {
        op: "write",
        path: path.clone(),
        source,
    };
    let mut hasher = Hasher::new();
    let (mut n, mut hinted) = (0u64, 0u64);
    while let Some(batch) = rx.blocking_recv() {
        for b in &batch {
            hasher.update(b);
            n += b.len() as u64;
        }
        // One writev per batch rather than one write per network chunk.
        let mut slices: Vec<io::IoSlice<'_>> = batch.iter().map(|b| io::IoSlice::new(b)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match (&tmp.file).write_vectored(rest) {
                Ok(0) => return Err(write_err(io::ErrorKind::WriteZero.into())),
                Ok(k) => io::IoSlice::advance_slices(&mut rest, k),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(write_err(e)),
            }
        }
        if n - hinted >= WRITEBACK_STEP {
            // Only a hint: an error changes nothing about the data.
            let _ = rustix::fs::fadvise(
                &tmp.file,
                hinted,
                std::num::NonZeroU64::new(n - hinted),
                rustix::fs::Advice::DontNeed,
            );
            hinted = n;
        }
    }
    let actual = hasher.finish();
    if actual != *digest {
        return Err(StoreError::DigestMismatch {
            expected: digest.clone(),
            actual,
        });
    }
    store.persist_blob(tmp, digest)?;
    Ok((actual, n))
}

/// A fresh or recycled output buffer with [`PLAIN_CHUNK`] bytes of room.
fn next_buffer(spare: &mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
    match spare.try_recv() {
        Ok(mut b) => {
            b.clear();
            b.reserve_exact(PLAIN_CHUNK);
            b
        }
        Err(_) => Vec::with_capacity(PLAIN_CHUNK),
    }
}

/// Decompresses the chunks from `rx` into chunks on `tx`: gzip (by its magic bytes) through
/// [`Gunzip`] straight from the network buffers, anything else through the store's
/// reader-based decoders. A read or decompression error is sent on as the last item; a
/// closed channel (the unpacker stopped) ends it quietly.
fn inflate(
    mut rx: tokio::sync::mpsc::Receiver<Batch>,
    tx: &mpsc::SyncSender<io::Result<Vec<u8>>>,
    spare: &mpsc::Receiver<Vec<u8>>,
) {
    // Look at the first bytes (they may come in pieces) to pick the decoder.
    let mut head: Vec<bytes::Bytes> = Vec::new();
    let mut have = 0;
    while have < 4 {
        match rx.blocking_recv() {
            Some(batch) => {
                have += batch.iter().map(bytes::Bytes::len).sum::<usize>();
                head.extend(batch);
            }
            None => break,
        }
    }
    let magic: Vec<u8> = head
        .iter()
        .flat_map(|b| b.iter().copied())
        .take(4)
        .collect();
    if !magic.starts_with(&[0x1f, 0x8b]) {
        let mut r = ChannelReader::new(rx);
        r.pending = head.into();
        inflate_reader(r, tx, spare);
        return;
    }
    let mut gz = Gunzip::new();
    let mut out = next_buffer(spare);
    let mut pending = std::collections::VecDeque::from(head);
    loop {
        let chunk = match pending.pop_front() {
            Some(c) => c,
            None => match rx.blocking_recv() {
                Some(batch) => {
                    pending.extend(batch);
                    continue;
                }
                None => break,
            },
        };
        let mut input = &chunk[..];
        while !input.is_empty() {
            match gz.feed(input, &mut out) {
                Ok(used) => input = &input[used..],
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
            if out.len() == out.capacity() {
                let full = std::mem::replace(&mut out, next_buffer(spare));
                if tx.send(Ok(full)).is_err() {
                    return;
                }
            }
        }
    }
    if let Err(e) = gz.finish() {
        let _ = tx.send(Err(e));
        return;
    }
    if !out.is_empty() {
        let _ = tx.send(Ok(out));
    }
}

/// The reader-based path of [`inflate`]: zstd or plain (detected by
/// [`crate::snapshot::decompress`]).
fn inflate_reader(
    r: ChannelReader,
    tx: &mpsc::SyncSender<io::Result<Vec<u8>>>,
    spare: &mpsc::Receiver<Vec<u8>>,
) {
    let mut r = match crate::snapshot::decompress(r) {
        Ok((r, _)) => r,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    loop {
        let mut buf = next_buffer(spare);
        if let Err(e) = (&mut r).take(PLAIN_CHUNK as u64).read_to_end(&mut buf) {
            let _ = tx.send(Err(e));
            return;
        }
        if buf.is_empty() {
            return;
        }
        if tx.send(Ok(buf)).is_err() {
            return;
        }
    }
}

/// Hashes and counts what is read through it.
struct HashReader<R> {
    inner: R,
    hasher: Hasher,
    n: u64,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// A blocking reader over the chunks of [`inflate`]; consumed buffers go back on `spare`.
struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    spare: mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    fn new(rx: mpsc::Receiver<io::Result<Vec<u8>>>, spare: mpsc::Sender<Vec<u8>>) -> ChunkReader {
        ChunkReader {
            rx,
            spare,
            current: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    let used = std::mem::replace(&mut self.current, chunk?);
                    // The inflater may be gone; then the buffer is simply freed.
                    let _ = self.spare.send(used);
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A blocking reader over chunks sent from async code.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Batch>,
    current: bytes::Bytes,
    /// Chunks to read before the next batch from `rx`.
    pending: std::collections::VecDeque<bytes::Bytes>,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Batch>) -> ChannelReader {
        ChannelReader {
            rx,
            current: bytes::Bytes::new(),
            pending: std::collections::VecDeque::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.pending.pop_front() {
                Some(b) => self.current = b,
                None => match self.rx.blocking_recv() {
                    Some(batch) => self.pending.extend(batch),
                    None => return Ok(0),
                },
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `input` through [`inflate`] on a thread and reads it back through [`ChunkReader`].
    fn inflate_all(input: Vec<u8>) -> io::Result<Vec<u8>> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (tx_plain, rx_plain) = mpsc::sync_channel(2);
        let (tx_spare, rx_spare) = mpsc::channel();
        let worker = std::thread::spawn(move || inflate(rx, &tx_plain, &rx_spare));
        for batch in input.chunks(3000) {
            let pieces = batch
                .chunks(1000)
                .map(bytes::Bytes::copy_from_slice)
                .collect();
            tx.blocking_send(pieces).expect("inflate reads to the end");
        }
        drop(tx);
        let mut out = Vec::new();
        let r = ChunkReader::new(rx_plain, tx_spare).read_to_end(&mut out);
        worker.join().expect("inflate does not panic");
        r.map(|_| out)
    }

    #[test]
    fn inflate_passes_plain_gzip_and_zstd_through_and_reports_corruption() {
        use std::io::Write as _;
        let plain: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(inflate_all(plain.clone()).unwrap(), plain);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(inflate_all(gz.clone()).unwrap(), plain);
        let mut bad = gz.clone();
        let mid = bad.len() / 2;
        bad[mid..mid + 64].fill(0xff);
        assert!(inflate_all(bad).is_err());
        assert!(inflate_all(gz[..gz.len() - 100].to_vec()).is_err());
        let zst = zstd::encode_all(&plain[..], 3).unwrap();
        assert_eq!(inflate_all(zst).unwrap(), plain);
        assert_eq!(inflate_all(b"ab".to_vec()).unwrap(), b"ab");
    }

    /// eStargz layers are gzip (their media type says so): one member per file chunk, the
    /// TOC, and a footer member with an `SG` extra field and no data. They read as plain gzip.
    #[test]
    fn inflate_reads_an_estargz_shaped_stream_as_gzip() {
        use std::io::Write as _;
        let tar: Vec<u8> = (0..200_000u32).map(|i| (i % 97) as u8).collect();
        let mut blob = Vec::new();
        for piece in tar.chunks(70_000) {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(piece).unwrap();
            blob.extend(gz.finish().unwrap());
        }
        let mut extra = b"SG".to_vec();
        extra.extend((22u16).to_le_bytes());
        extra.extend(b"00000000000493e0STARGZ");
        let footer = flate2::GzBuilder::new()
            .extra(extra)
            .write(Vec::new(), flate2::Compression::default())
            .finish()
            .unwrap();
        blob.extend(footer);
        assert_eq!(inflate_all(blob).unwrap(), tar);
    }
}

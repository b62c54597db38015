//! Compressed copies of layers for leaving the machine (save, push, cache export).
//!
//! The result is memoized per (diff_id, codec, level) in `compressed/<hex>-<codec>-<level>`
//! (a descriptor pointing at the compressed blob), so a layer is never compressed twice: the
//! compressed digest is part of pushed manifests and of remote caches.
//!
//! gzip runs on all cores: the tar is cut into fixed 1 MiB chunks, each compressed as an
//! independent gzip member (mtime 0, no name) in parallel with rayon, and the members are
//! concatenated in order. A multi-member stream is valid gzip (RFC 1952) and Go's and
//! docker's readers accept it. The output does not depend on the number of threads.
//! zstd uses zstdmt, whose output is the same for any worker count >= 1.
//!
//! A layer may also be kept only compressed: a pull stores the registry's blob and the
//! snapshot, and a record `layers/<diffid-hex>` (see [`LayerSource`]) says which stored blob
//! decompresses to the layer's tar, so the tar (the blob named by the diff_id) need not be
//! written. [`Store::open_layer`] reads the tar either way, verified against the diff_id, and
//! [`Store::layer_blob`] writes it out for callers that need a file.

pub(crate) mod gunzip;

use crate::oci::{Descriptor, Digest, Hasher, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_ZSTD};
use crate::store::{HashWriter, Store, StoreError, io_err};
use rayon::prelude::*;
use std::fs::{self, File};
use std::io::{self, Read, Write};

type Result<T> = std::result::Result<T, StoreError>;

/// A compression codec for layers leaving the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// gzip (`application/vnd.oci.image.layer.v1.tar+gzip`), what every registry and tool reads.
    Gzip,
    /// zstd (`application/vnd.oci.image.layer.v1.tar+zstd`): faster and smaller.
    Zstd,
}

impl Codec {
    /// `gzip` or `zstd`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }
}

/// Codec and level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Compression {
    /// The codec.
    pub codec: Codec,
    /// The level (gzip 0-9, zstd 1-22).
    pub level: i32,
}

impl Default for Compression {
    /// gzip level 6, the level docker and BuildKit use.
    fn default() -> Self {
        Compression {
            codec: Codec::Gzip,
            level: 6,
        }
    }
}

/// Bytes of input per independent gzip member.
const GZIP_CHUNK: usize = 1 << 20;

impl Store {
    /// The descriptor of the layer `diff_id` compressed with `c`, compressing it on first use
    /// and returning the memoized blob afterwards.
    ///
    /// Fails when the layer blob is missing or on I/O errors.
    pub fn compressed_layer(&self, diff_id: &Digest, c: Compression) -> Result<Descriptor> {
        let memo = self.memo_path(diff_id, c);
        if let Ok(bytes) = fs::read(&memo)
            && let Ok(desc) = serde_json::from_slice::<Descriptor>(&bytes)
            && self.has_blob(&desc.digest)
        {
            return Ok(desc);
        }
        // A layer kept only compressed is decompressed on the fly; its reader fails at the
        // end if the tar does not match the diff_id, before anything is persisted.
        let src = self.open_layer(diff_id)?;
        let tmp = self.temp_file("compress")?;
        let mut out = HashWriter::new(io::BufWriter::with_capacity(1 << 20, &tmp.file));
        let err = |source| StoreError::Compress {
            diff_id: diff_id.clone(),
            source,
        };
        match c.codec {
            Codec::Gzip => gzip_parallel(src, &mut out, c.level).map_err(err)?,
            Codec::Zstd => zstd_mt(src, &mut out, c.level).map_err(err)?,
        }
        out.flush().map_err(io_err("write", tmp.path()))?;
        let (digest, size) = out.finish();
        let media_type = match c.codec {
            Codec::Gzip => MEDIA_TYPE_LAYER_GZIP,
            Codec::Zstd => MEDIA_TYPE_LAYER_ZSTD,
        };
        self.persist_blob(tmp, &digest)?;
        let desc = Descriptor::new(media_type, digest, size);
        let json = serde_json::to_vec(&desc).map_err(|source| StoreError::Json {
            path: memo.clone(),
            source,
        })?;
        self.write_atomic(&memo, &json)?;
        Ok(desc)
    }
}

impl Store {
    /// Records `desc` (a blob already in the store, e.g. the compressed layer a registry served
    /// on pull) as the compressed form of `diff_id` for `c`, so that a later push reuses it
    /// instead of compressing again (and the registry already has it).
    ///
    /// Fails when the blob is missing or on I/O errors.
    pub fn remember_compressed(
        &self,
        diff_id: &Digest,
        c: Compression,
        desc: &Descriptor,
    ) -> Result<()> {
        if !self.has_blob(&desc.digest) {
            return Err(StoreError::BlobMissing {
                digest: desc.digest.clone(),
            });
        }
        let memo = self.memo_path(diff_id, c);
        let json = serde_json::to_vec(desc).map_err(|source| StoreError::Json {
            path: memo.clone(),
            source,
        })?;
        self.write_atomic(&memo, &json)
    }

    fn memo_path(&self, diff_id: &Digest, c: Compression) -> std::path::PathBuf {
        self.dir(kroot::Dir::Compressed).join(format!(
            "{}-{}-{}",
            diff_id.hex(),
            c.codec.name(),
            c.level
        ))
    }
}

/// Where the tar of a layer kept only compressed comes from: `layers/<diffid-hex>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerSource {
    /// The stored blob (gzip, zstd) that decompresses to the layer's tar.
    pub blob: Descriptor,
    /// Size of the tar in bytes.
    pub size: u64,
}

impl Store {
    fn source_path(&self, diff_id: &Digest) -> std::path::PathBuf {
        self.dir(kroot::Dir::Layers).join(diff_id.hex())
    }

    /// Records that the tar of `diff_id` is the decompression of `blob` (already in the store
    /// and verified by the caller to decompress to exactly `diff_id`), `size` bytes long.
    ///
    /// Fails when the blob is missing or on I/O errors.
    pub fn record_layer_source(
        &self,
        diff_id: &Digest,
        blob: &Descriptor,
        size: u64,
    ) -> Result<()> {
        if !self.has_blob(&blob.digest) {
            return Err(StoreError::BlobMissing {
                digest: blob.digest.clone(),
            });
        }
        let path = self.source_path(diff_id);
        let src = LayerSource {
            blob: blob.clone(),
            size,
        };
        let json = serde_json::to_vec(&src).map_err(|source| StoreError::Json {
            path: path.clone(),
            source,
        })?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        self.write_atomic(&path, &json)
    }

    /// The recorded source of `diff_id`'s tar, when there is one and its blob is stored.
    pub fn layer_source(&self, diff_id: &Digest) -> Option<LayerSource> {
        let bytes = fs::read(self.source_path(diff_id)).ok()?;
        let src: LayerSource = serde_json::from_slice(&bytes).ok()?;
        self.has_blob(&src.blob.digest).then_some(src)
    }

    /// The layer's tar: its blob, or the decompression of its recorded source. The second
    /// kind is verified while it is read: the reader fails at the end when the bytes do not
    /// hash to `diff_id` (the stored tar blob was verified when it was written).
    ///
    /// Fails when the layer has neither, or on I/O errors opening it.
    pub fn open_layer(&self, diff_id: &Digest) -> Result<Box<dyn Read + Send>> {
        let path = self.blob_path(diff_id);
        match File::open(&path) {
            Ok(f) => return Ok(Box::new(io::BufReader::with_capacity(1 << 20, f))),
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("open", &path)(e)),
            Err(_) => {}
        }
        let Some(src) = self.layer_source(diff_id) else {
            return Err(StoreError::LayerMissing {
                diff_id: diff_id.clone(),
            });
        };
        let path = self.blob_path(&src.blob.digest);
        let f = File::open(&path).map_err(io_err("open", &path))?;
        let plain = open_compressed(f).map_err(io_err("read", &path))?;
        Ok(Box::new(VerifyReader {
            inner: plain,
            hasher: Some(Hasher::new()),
            n: 0,
            want: diff_id.clone(),
            size: src.size,
            bad: None,
        }))
    }

    /// The path of the layer's tar blob, writing it from its compressed source first when the
    /// layer is kept only compressed.
    ///
    /// Fails when the layer is missing, its source does not decompress to `diff_id`, or on
    /// I/O errors.
    pub fn layer_blob(&self, diff_id: &Digest) -> Result<std::path::PathBuf> {
        if !self.has_blob(diff_id) {
            let r = self.open_layer(diff_id)?;
            self.ingest_blob(r, Some(diff_id))?;
        }
        Ok(self.blob_path(diff_id))
    }
}

/// The decompressed stream of a stored layer blob: gzip through [`gunzip::GunzipReader`] (the
/// decoder a pull used, so the bytes are the ones that were verified), zstd or plain.
pub(crate) fn open_compressed(f: File) -> io::Result<Box<dyn Read + Send>> {
    let mut r = io::BufReader::with_capacity(1 << 20, f);
    let magic = io::BufRead::fill_buf(&mut r)?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(gunzip::GunzipReader::new(r)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

/// Hashes what it reads; at the end, fails unless it was `size` bytes with digest `want`.
struct VerifyReader {
    inner: Box<dyn Read + Send>,
    hasher: Option<Hasher>,
    n: u64,
    want: Digest,
    size: u64,
    /// The digest found when it was not the wanted one.
    bad: Option<Digest>,
}

impl Read for VerifyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            if let Some(h) = &mut self.hasher {
                h.update(&buf[..n]);
            }
            self.n += n as u64;
            return Ok(n);
        }
        if let Some(h) = self.hasher.take() {
            let got = h.finish();
            if got != self.want || self.n != self.size {
                self.bad = Some(got);
            }
        }
        match &self.bad {
            // Sticky, so that a caller reading on after the error cannot take it for an end.
            Some(got) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "layer {} decompresses to {got} ({} bytes)",
                    self.want, self.n
                ),
            )),
            None => Ok(0),
        }
    }
}

fn read_chunk(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    r.take(GZIP_CHUNK as u64).read_to_end(buf)?;
    Ok(())
}

fn gzip_member(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new().mtime(0).write(
        Vec::with_capacity(data.len() / 2 + 64),
        flate2::Compression::new(level),
    );
    enc.write_all(data)?;
    enc.finish()
}

/// pigz-style gzip: independent members compressed in parallel, written in order.
pub(crate) fn gzip_parallel(
    mut src: impl Read,
    out: &mut impl Write,
    level: i32,
) -> io::Result<()> {
    let level = level.clamp(0, 9) as u32;
    let batch = rayon::current_num_threads().max(1) * 2;
    let mut chunks: Vec<Vec<u8>> = (0..batch).map(|_| Vec::with_capacity(GZIP_CHUNK)).collect();
    let mut wrote_any = false;
    loop {
        let mut filled = 0;
        for c in chunks.iter_mut() {
            read_chunk(&mut src, c)?;
            if c.is_empty() {
                break;
            }
            filled += 1;
            if c.len() < GZIP_CHUNK {
                break;
            }
        }
        if filled == 0 {
            break;
        }
        let members: Vec<io::Result<Vec<u8>>> = chunks[..filled]
            .par_iter()
            .map(|c| gzip_member(c, level))
            .collect();
        for m in members {
            out.write_all(&m?)?;
            wrote_any = true;
        }
        if chunks[filled - 1].len() < GZIP_CHUNK {
            break;
        }
    }
    if !wrote_any {
        // An empty input still needs one (empty) member to be a gzip stream.
        out.write_all(&gzip_member(&[], level)?)?;
    }
    Ok(())
}

fn zstd_mt(mut src: impl Read, out: &mut impl Write, level: i32) -> io::Result<()> {
    let mut enc = zstd::stream::write::Encoder::new(out, level)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    // Always >= 1 worker: zstdmt output is then independent of the worker count.
    enc.multithread(workers.max(1))?;
    io::copy(&mut src, &mut enc)?;
    enc.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_gzip_is_a_valid_multi_member_stream() {
        let data: Vec<u8> = (0..(GZIP_CHUNK * 3 + 123))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut out = Vec::new();
        gzip_parallel(&data[..], &mut out, 6).unwrap();
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // Deterministic.
        let mut again = Vec::new();
        gzip_parallel(&data[..], &mut again, 6).unwrap();
        assert_eq!(out, again);
        // Empty input is still gzip.
        let mut empty = Vec::new();
        gzip_parallel(&[][..], &mut empty, 6).unwrap();
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&empty[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }
}

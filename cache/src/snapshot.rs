//! Layers in the store: the uncompressed tar blob (its digest is the diff_id) plus the
//! extracted snapshot directory `snapshots/<hex>` in overlayfs format.
//!
//! A snapshot is built under `tmp/` and renamed into `snapshots/` only after its blob is
//! stored, so a crash leaves garbage under `tmp/` and never a half-made snapshot. When two
//! processes make the same layer, the first rename wins and the other copy is dropped.

use crate::layer::{apply, writer};
use crate::oci::Digest;
use crate::store::{HashingFile, Store, StoreError, io_err};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, StoreError>;

/// A layer in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Digest of the uncompressed tar (also its blob digest).
    pub diff_id: Digest,
    /// Size of the uncompressed tar in bytes.
    pub size: u64,
}

/// Options of [`Store::commit_layer`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOptions {
    /// SOURCE_DATE_EPOCH-style clamp: later mtimes are lowered to it, in the tar and on disk.
    pub clamp_mtime: Option<i64>,
}

/// Compression of a layer stream, recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    Plain,
    Gzip,
    Zstd,
}

/// Wraps `r` in the decoder its first bytes call for.
pub(crate) fn decompress<'a>(
    mut r: impl Read + 'a,
) -> io::Result<(Box<dyn Read + 'a>, StreamKind)> {
    // Pipes may deliver the magic in pieces: read up to 4 bytes, then put them back in front.
    let mut magic = [0u8; 4];
    let mut have = 0;
    while have < magic.len() {
        match r.read(&mut magic[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let r = BufReader::with_capacity(1 << 20, io::Cursor::new(magic[..have].to_vec()).chain(r));
    Ok(wrap(r, &magic[..have]))
}

fn wrap<'a>(r: impl BufRead + 'a, magic: &[u8]) -> (Box<dyn Read + 'a>, StreamKind) {
    if magic.starts_with(&[0x1f, 0x8b]) {
        (
            Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            StreamKind::Gzip,
        )
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        match zstd::stream::read::Decoder::with_buffer(r) {
            Ok(d) => (Box::new(d), StreamKind::Zstd),
            // Decoder creation fails only on allocation failure of the context.
            Err(e) => (Box::new(ErrReader(Some(e))), StreamKind::Zstd),
        }
    } else {
        (Box::new(r), StreamKind::Plain)
    }
}

struct ErrReader(Option<io::Error>);
impl Read for ErrReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(self
            .0
            .take()
            .unwrap_or_else(|| io::Error::other("zstd decoder unavailable")))
    }
}

/// Reads from `inner`, copying every byte into `sink`.
struct Tee<R, W> {
    inner: R,
    sink: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sink.write_all(&buf[..n])?;
        Ok(n)
    }
}

impl Store {
    /// `KILN_ROOT/snapshots/<hex>`: the extracted layer, usable as an overlay lower dir.
    pub fn snapshot_path(&self, diff_id: &Digest) -> PathBuf {
        self.dir(kroot::Dir::Snapshots).join(diff_id.hex())
    }

    /// True when the layer's snapshot directory and its tar are present: the tar blob, or a
    /// compressed blob recorded as its source ([`Store::layer_source`], kept by pulls).
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        (self.has_blob(diff_id) || self.layer_source(diff_id).is_some())
            && self.snapshot_path(diff_id).is_dir()
    }

    /// Size of the layer's tar, stored or kept compressed.
    pub(crate) fn layer_size(&self, diff_id: &Digest) -> Result<u64> {
        let p = self.blob_path(diff_id);
        match fs::metadata(&p) {
            Ok(m) => Ok(m.len()),
            Err(e) => match self.layer_source(diff_id) {
                Some(src) => Ok(src.size),
                None => Err(io_err("stat", &p)(e)),
            },
        }
    }

    /// Turns an overlay upper dir into a layer: deterministic tar (sorted, `.wh.` whiteouts),
    /// blob stored, dir renamed into `snapshots/`. `Ok(None)` when the dir holds no change
    /// (the dir is then left in place). On `Ok(Some)` the dir has been moved (or, when the
    /// same layer already existed, removed). `upper` should live under `KILN_ROOT/tmp`; on
    /// another filesystem the snapshot is re-extracted from the tar instead of renamed.
    ///
    /// Fails on I/O errors; nothing becomes visible then.
    pub fn commit_layer(&self, upper: &Path, opts: &CommitOptions) -> Result<Option<Layer>> {
        let tmp = self.temp_file("layer")?;
        let tmp_path = tmp.path().to_path_buf();
        let (diff_id, size) = {
            let out = HashingFile::new(&tmp.file);
            let (out, entries) =
                writer::write_layer(upper, opts.clamp_mtime, out).map_err(|source| {
                    StoreError::Commit {
                        dir: upper.to_path_buf(),
                        source,
                    }
                })?;
            if entries == 0 {
                return Ok(None);
            }
            out.finish().map_err(io_err("write", &tmp_path))?
        };
        self.persist_blob(tmp, &diff_id)?;
        let dest = self.snapshot_path(&diff_id);
        match rename_noreplace(upper, &dest) {
            Ok(()) => {}
            Err(e) if is_exists(&e) => {
                fs::remove_dir_all(upper).map_err(io_err("remove duplicate snapshot", upper))?;
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let blob = fs::File::open(self.blob_path(&diff_id))
                    .map_err(io_err("open", &self.blob_path(&diff_id)))?;
                self.unpack_into_snapshot(blob, &diff_id)?;
                fs::remove_dir_all(upper).map_err(io_err("remove committed dir", upper))?;
            }
            Err(e) => return Err(io_err("rename into", &dest)(e)),
        }
        Ok(Some(Layer { diff_id, size }))
    }

    /// Extracts an uncompressed tar we already trust (its blob is stored) as the snapshot of
    /// `diff_id`.
    fn unpack_into_snapshot(&self, r: impl Read, diff_id: &Digest) -> Result<()> {
        let tmp = self.temp_dir("snapshot")?;
        let root = new_root(&tmp)?;
        apply::apply_layer(r, &root).map_err(|source| StoreError::Unpack { source })?;
        self.install_snapshot(&root, diff_id)
    }

    /// Renames `dir` to `snapshots/<diff_id>` unless that exists already.
    pub(crate) fn install_snapshot(&self, dir: &Path, diff_id: &Digest) -> Result<()> {
        let dest = self.snapshot_path(diff_id);
        match rename_noreplace(dir, &dest) {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(io_err("rename into", &dest)(e)),
        }
    }

    /// Safely unpacks a layer tar stream (plain, gzip or zstd, detected by magic bytes) into a
    /// new snapshot, storing the uncompressed tar as a blob. With `expected_diff_id`, an
    /// existing layer is reused without reading `r`, and a mismatch stores nothing.
    ///
    /// Fails on a malformed or hostile tar (see [`crate::layer::apply`]), on a diff_id
    /// mismatch and on I/O errors; nothing becomes visible in any of these cases.
    pub fn unpack_layer(&self, r: impl Read, expected_diff_id: Option<&Digest>) -> Result<Layer> {
        if let Some(d) = expected_diff_id
            && self.has_layer(d)
        {
            return Ok(Layer {
                diff_id: d.clone(),
                size: self.layer_size(d)?,
            });
        }
        let tmp = self.temp_dir("unpack")?;
        let root = new_root(&tmp)?;
        let blob = self.temp_file("unpack")?;
        let blob_path = blob.path().to_path_buf();
        let (reader, _) = decompress(r).map_err(|source| StoreError::Unpack {
            source: apply::ApplyError::Read { source },
        })?;
        let (diff_id, size) = {
            let mut tee = Tee {
                inner: reader,
                sink: HashingFile::new(&blob.file),
            };
            apply::apply_layer(&mut tee, &root).map_err(|source| StoreError::Unpack { source })?;
            // Hash the end-of-archive blocks and any padding too: the diff_id covers the stream.
            io::copy(&mut tee, &mut io::sink()).map_err(|source| StoreError::Unpack {
                source: apply::ApplyError::Read { source },
            })?;
            tee.sink.finish().map_err(io_err("write", &blob_path))?
        };
        if let Some(exp) = expected_diff_id
            && *exp != diff_id
        {
            return Err(StoreError::DigestMismatch {
                expected: exp.clone(),
                actual: diff_id,
            });
        }
        self.persist_blob(blob, &diff_id)?;
        self.install_snapshot(&root, &diff_id)?;
        Ok(Layer { diff_id, size })
    }
}

/// Creates `<tmp>/root` with the usual rootfs mode (a `./` tar entry may change it).
pub(crate) fn new_root(tmp: &crate::store::TempDir) -> Result<PathBuf> {
    let root = tmp.path().join("root");
    fs::create_dir(&root).map_err(io_err("create", &root))?;
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
        .map_err(io_err("chmod", &root))?;
    Ok(root)
}

/// Renames the directory `from` to `to` unless `to` exists. Filesystems without
/// `RENAME_NOREPLACE` (FUSE ones such as bindfs refuse the flag with EINVAL) get a plain
/// rename: a directory never replaces a non-empty one (EEXIST/ENOTEMPTY, as with the flag),
/// and `to` is content-addressed, so replacing an empty one changes nothing.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Err(rustix::io::Errno::INVAL) if fs::symlink_metadata(from).is_ok_and(|m| m.is_dir()) => {
            fs::rename(from, to)
        }
        r => r.map_err(io::Error::from),
    }
}

fn is_exists(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY))
}

//! Cache mount directories as content-addressed chunks.
//!
//! The directory is walked in sorted order (a directory before its children) and cut into
//! groups of entries; each group becomes a deterministic tar (entries in walk order, mode,
//! owner, mtime in whole seconds and 0 for directories, no atime/ctime), stored as a blob. A group ends after an
//! entry whose path hashes to 0 mod [`CUT_EVERY`] (so cuts depend on the entries themselves,
//! and adding or removing a file changes only its own chunk and not every chunk after it), or
//! once it holds [`CUT_BYTES`]. An unchanged directory gives the same chunks, which the
//! destination already has: nothing is uploaded.
//!
//! Restoring applies the chunks in order with [`crate::layer::apply`] (safe against hostile
//! tars) into a fresh directory under `tmp/`, which is then renamed into place.

use crate::oci::{Descriptor, Digest};
use crate::remote::format::MEDIA_TYPE_MOUNT_CHUNK;
use crate::store::{HashWriter, Store, StoreError, io_err};
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Average number of entries per chunk (cut when `hash(path) % CUT_EVERY == 0`).
pub const CUT_EVERY: u32 = 64;
/// A chunk also ends once its files reach this many bytes.
pub const CUT_BYTES: u64 = 32 << 20;

type Result<T> = std::result::Result<T, StoreError>;

/// A cache mount directory cut into chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    /// Mode bits of the directory.
    pub mode: u32,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// The chunk blobs (in the store), in order.
    pub chunks: Vec<Descriptor>,
}

struct Entry {
    rel: PathBuf,
    meta: fs::Metadata,
}

/// Walks `dir`: every entry under it (not `dir` itself), sorted, parents first. Sockets and
/// devices are left out (a cache holds files).
fn walk(dir: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&abs)
            .map_err(io_err("read dir", &abs))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(io_err("read dir", &abs))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let r = rel.join(&name);
            let p = dir.join(&r);
            let meta = fs::symlink_metadata(&p).map_err(io_err("stat", &p))?;
            let ft = meta.file_type();
            if !(ft.is_dir() || ft.is_file() || ft.is_symlink()) {
                continue;
            }
            if ft.is_dir() {
                subdirs.push(r.clone());
            }
            out.push(Entry { rel: r, meta });
        }
        stack.extend(subdirs);
    }
    // Component-wise path order: stable, and a directory sorts before its children.
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn cuts_after(rel: &Path) -> bool {
    let d = Digest::of(rel.as_os_str().as_encoded_bytes());
    let b = d.hex().as_bytes();
    let v = u32::from_str_radix(std::str::from_utf8(&b[..8]).unwrap_or("1"), 16).unwrap_or(1);
    v.is_multiple_of(CUT_EVERY)
}

/// Cuts `dir` into chunk blobs in `store` (see the module docs).
///
/// Fails on I/O errors.
pub fn chunk_dir(store: &Store, dir: &Path) -> Result<Chunked> {
    let top = fs::metadata(dir).map_err(io_err("stat", dir))?;
    let entries = walk(dir)?;
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, e) in entries.iter().enumerate() {
        if e.meta.is_file() {
            bytes += e.meta.len();
        }
        if cuts_after(&e.rel) || bytes >= CUT_BYTES || i + 1 == entries.len() {
            chunks.push(write_chunk(store, dir, &entries[start..=i])?);
            start = i + 1;
            bytes = 0;
        }
    }
    Ok(Chunked {
        mode: top.permissions().mode() & 0o7777,
        uid: top.uid(),
        gid: top.gid(),
        chunks,
    })
}

fn write_chunk(store: &Store, dir: &Path, entries: &[Entry]) -> Result<Descriptor> {
    let tmp = store.temp_file("mountchunk")?;
    let tmp_path = tmp.path().to_path_buf();
    let out = HashWriter::new(io::BufWriter::with_capacity(1 << 20, &tmp.file));
    let mut b = tar::Builder::new(out);
    for e in entries {
        let p = dir.join(&e.rel);
        let ft = e.meta.file_type();
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.meta.permissions().mode() & 0o7777);
        h.set_uid(u64::from(e.meta.uid()));
        h.set_gid(u64::from(e.meta.gid()));
        h.set_mtime(u64::try_from(e.meta.mtime()).unwrap_or(0));
        let res = if ft.is_dir() {
            // A directory's mtime moves whenever an entry is added; left in, it would change
            // the directory's chunk with every new file (and a restore, which adds entries
            // chunk by chunk, could not reproduce it).
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, &e.rel, io::empty())
        } else if ft.is_symlink() {
            let target = fs::read_link(&p).map_err(io_err("readlink", &p))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, &e.rel, &target)
        } else {
            let f = fs::File::open(&p).map_err(io_err("open", &p))?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(e.meta.len());
            b.append_data(
                &mut h,
                &e.rel,
                io::BufReader::new(f).take_exact(e.meta.len()),
            )
        };
        res.map_err(io_err("write chunk entry", &p))?;
    }
    let mut out = b.into_inner().map_err(io_err("finish chunk", &tmp_path))?;
    out.flush().map_err(io_err("write", &tmp_path))?;
    let (digest, size) = out.finish();
    store.persist_blob(tmp, &digest)?;
    Ok(Descriptor::new(MEDIA_TYPE_MOUNT_CHUNK, digest, size))
}

/// A reader that yields exactly `n` bytes: a file that shrank while it was read is padded with
/// zeros (the tar header already announced its size), one that grew is cut.
trait TakeExact: io::Read + Sized {
    fn take_exact(self, n: u64) -> ExactReader<Self> {
        ExactReader {
            inner: self,
            left: n,
        }
    }
}
impl<R: io::Read> TakeExact for R {}

struct ExactReader<R> {
    inner: R,
    left: u64,
}

impl<R: io::Read> io::Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = match self.inner.read(&mut buf[..max])? {
            0 => {
                buf[..max].fill(0);
                max
            }
            n => n,
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// Rebuilds a cache mount directory at `dest` from chunk blobs in `store`: applied in order
/// into a new directory under `tmp/`, then renamed to `dest`. `dest` must be absent or an
/// empty directory (which is replaced). Returns false, touching nothing, when `dest` exists
/// and is not empty (the local contents win).
///
/// Fails when a chunk is missing or hostile, or on I/O errors.
pub fn restore(store: &Store, chunked: &Chunked, dest: &Path) -> Result<bool> {
    if !is_absent_or_empty(dest)? {
        return Ok(false);
    }
    let tmp = store.temp_dir("mountrestore-")?;
    let root = tmp.path().join("dir");
    fs::create_dir(&root).map_err(io_err("create", &root))?;
    for c in &chunked.chunks {
        let p = store.blob_path(&c.digest);
        let f = fs::File::open(&p).map_err(io_err("open", &p))?;
        crate::layer::apply::apply_layer(io::BufReader::with_capacity(1 << 20, f), &root)
            .map_err(|source| StoreError::Unpack { source })?;
    }
    std::os::unix::fs::chown(&root, Some(chunked.uid), Some(chunked.gid))
        .map_err(io_err("chown", &root))?;
    fs::set_permissions(&root, fs::Permissions::from_mode(chunked.mode & 0o7777))
        .map_err(io_err("chmod", &root))?;
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    // An empty directory (created by an earlier RUN that used the mount and wrote nothing) is
    // replaced; if someone fills it meanwhile, the rename fails and their contents stay.
    match fs::remove_dir(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(_) => return Ok(false),
    }
    match fs::rename(&root, dest) {
        Ok(()) => Ok(true),
        Err(e)
            if e.kind() == io::ErrorKind::AlreadyExists
                || e.kind() == io::ErrorKind::DirectoryNotEmpty =>
        {
            Ok(false)
        }
        Err(e) => Err(io_err("rename", dest)(e)),
    }
}

/// True when `p` does not exist or is an empty directory.
///
/// Fails on I/O errors other than absence.
pub fn is_absent_or_empty(p: &Path) -> Result<bool> {
    match fs::read_dir(p) {
        Ok(mut rd) => Ok(rd.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io_err("read dir", p)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(dir: &Path, n: usize) {
        fs::create_dir_all(dir.join("pkgs/sub")).unwrap();
        for i in 0..n {
            fs::write(
                dir.join(format!("pkgs/p{i:04}.deb")),
                format!("package {i}"),
            )
            .unwrap();
        }
        fs::write(dir.join("pkgs/sub/index"), "idx").unwrap();
        std::os::unix::fs::symlink("pkgs/sub/index", dir.join("latest")).unwrap();
    }

    #[test]
    fn unchanged_dir_gives_the_same_chunks_and_restores_identically() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("root")).unwrap();
        let src = t.path().join("src");
        fill(&src, 300);
        let a = chunk_dir(&store, &src).unwrap();
        let b = chunk_dir(&store, &src).unwrap();
        assert_eq!(a, b);
        assert!(a.chunks.len() > 1, "300 files make several chunks");

        let dest = t.path().join("restored");
        assert!(restore(&store, &a, &dest).unwrap());
        assert_eq!(
            fs::read_to_string(dest.join("pkgs/p0123.deb")).unwrap(),
            "package 123"
        );
        assert_eq!(
            fs::read_link(dest.join("latest")).unwrap(),
            Path::new("pkgs/sub/index")
        );
        assert_eq!(chunk_dir(&store, &dest).unwrap().chunks, a.chunks);
        // A non-empty destination is left alone.
        assert!(!restore(&store, &a, &dest).unwrap());
    }

    #[test]
    fn one_new_file_changes_few_chunks() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("root")).unwrap();
        let src = t.path().join("src");
        fill(&src, 600);
        let before = chunk_dir(&store, &src).unwrap();
        fs::write(src.join("pkgs/p0300x.deb"), "new").unwrap();
        let after = chunk_dir(&store, &src).unwrap();
        let old: std::collections::BTreeSet<_> = before.chunks.iter().map(|c| &c.digest).collect();
        let changed = after
            .chunks
            .iter()
            .filter(|c| !old.contains(&c.digest))
            .count();
        assert_eq!(changed, 1, "{} chunks in all", after.chunks.len());
    }
}

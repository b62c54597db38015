//! Directory (overlayfs upper format) -> deterministic layer tar.
//!
//! Entries come in depth-first order with the children of each directory sorted by name bytes
//! (parents before children, as Go's `filepath.Walk`). Headers are ustar with PAX records only
//! where needed (long names, large ids, xattrs), numeric uid/gid, empty uname/gname, mtime in
//! whole seconds and no atime/ctime, so the same tree always gives the same bytes.
//!
//! Overlay whiteouts (0:0 character devices) become `.wh.<name>` entries and opaque
//! directories (`trusted.overlay.opaque=y` or `user.overlay.opaque=y`) get a
//! `<dir>/.wh..wh..opq` entry, as the OCI image spec's layer changesets define.

use super::{OPAQUE_MARKER, WHITEOUT_PREFIX, is_overlay_xattr};
use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tar::{Builder, EntryType, Header};

/// Why a directory could not be written as a layer.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A filesystem or output error.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The upper dir uses an overlay feature whose on-disk form is not the file's content
    /// (`metacopy` copies only metadata up, `redirect_dir` records renames in an xattr).
    /// kiln mounts with both off; meeting one means the dir came from elsewhere.
    #[error("{} carries overlay xattr `{xattr}`: mount overlays with metacopy=off,redirect_dir=off", path.display())]
    OverlayFeature {
        /// The file or directory.
        path: PathBuf,
        /// The xattr found.
        xattr: String,
    },
    /// A file's size changed while it was being copied into the tar.
    #[error("{} changed size while being committed", path.display())]
    FileChanged {
        /// The file.
        path: PathBuf,
    },
}

type Result<T> = std::result::Result<T, WriteError>;

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WriteError {
    let path = path.to_path_buf();
    move |source| WriteError::Io { op, path, source }
}

/// Writes the layer tar of `dir` to `out` and returns `out` with the number of entries written
/// (0 means the directory holds no change; the tar then holds only its end marker).
///
/// With `clamp_mtime`, every mtime later than it is lowered to it, in the tar and on disk, so
/// that the snapshot and the tar agree.
///
/// Fails on any I/O error, or when a file changes size while being read.
pub fn write_layer<W: Write>(dir: &Path, clamp_mtime: Option<i64>, out: W) -> Result<(W, u64)> {
    let mut w = LayerWriter {
        builder: Builder::new(out),
        clamp: clamp_mtime,
        links: HashMap::new(),
        entries: 0,
        xattr_buf: vec![0u8; 4096],
        copy_buf: Vec::new(),
    };
    let mut stack = children(dir, b"")?;
    stack.reverse();
    while let Some(item) = stack.pop() {
        let is_dir = item.meta.is_dir();
        w.emit(&item)?;
        if is_dir {
            let mut kids = children(&item.abs, &item.rel)?;
            kids.reverse();
            stack.extend(kids);
        }
    }
    w.builder.finish().map_err(io_err("finish tar for", dir))?;
    let out = w
        .builder
        .into_inner()
        .map_err(io_err("finish tar for", dir))?;
    Ok((out, w.entries))
}

struct Item {
    abs: PathBuf,
    rel: Vec<u8>,
    meta: Metadata,
}

fn children(abs: &Path, rel: &[u8]) -> Result<Vec<Item>> {
    let mut out = Vec::new();
    for ent in fs::read_dir(abs).map_err(io_err("read directory", abs))? {
        let ent = ent.map_err(io_err("read directory", abs))?;
        let path = ent.path();
        // DirEntry::metadata does not follow symlinks.
        let meta = ent.metadata().map_err(io_err("stat", &path))?;
        let name = ent.file_name();
        let mut r = Vec::with_capacity(rel.len() + 1 + name.len());
        if !rel.is_empty() {
            r.extend_from_slice(rel);
            r.push(b'/');
        }
        r.extend_from_slice(name.as_bytes());
        out.push(Item {
            abs: path,
            rel: r,
            meta,
        });
    }
    out.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

struct LayerWriter<W: Write> {
    builder: Builder<W>,
    clamp: Option<i64>,
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
    xattr_buf: Vec<u8>,
    /// Read buffer for file contents, allocated on first use.
    copy_buf: Vec<u8>,
}

/// PAX records for one entry, written sorted by key.
type Pax = Vec<(String, Vec<u8>)>;

/// Xattr (name, value) pairs.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

impl<W: Write> LayerWriter<W> {
    fn emit(&mut self, item: &Item) -> Result<()> {
        let meta = &item.meta;
        let ft = meta.file_type();
        let mtime = self.clamp_on_disk(item)?;
        if ft.is_socket() {
            // Sockets cannot be stored in a tar; docker skips them too.
            return Ok(());
        }
        if ft.is_char_device() && meta.rdev() == 0 {
            let (parent, base) = split_rel(&item.rel);
            let mut name = parent.to_vec();
            name.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
            name.extend_from_slice(base);
            return self.marker(&item.abs, &name, mtime);
        }
        let mut pax: Pax = Vec::new();
        let (xattrs, opaque) = self.xattrs(item)?;
        for (k, v) in xattrs {
            let mut key = String::from("SCHILY.xattr.");
            key.push_str(&String::from_utf8_lossy(&k));
            pax.push((key, v));
        }
        let mut h = Header::new_ustar();
        h.set_mode(meta.mode() & 0o7777);
        set_id(&mut h, &mut pax, "uid", meta.uid());
        set_id(&mut h, &mut pax, "gid", meta.gid());
        h.set_mtime(mtime.max(0) as u64);
        h.set_size(0);
        let mut name = item.rel.clone();
        let mut data: Option<u64> = None;
        let key = (meta.dev(), meta.ino());
        if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            name.push(b'/');
        } else if meta.nlink() > 1
            && let Some(first) = self.links.get(&key)
        {
            h.set_entry_type(EntryType::Link);
            set_link(&mut h, &mut pax, &first.clone());
        } else {
            if meta.nlink() > 1 {
                self.links.insert(key, item.rel.clone());
            }
            if ft.is_file() {
                h.set_entry_type(EntryType::Regular);
                h.set_size(meta.len());
                if meta.len() > MAX_USTAR_SIZE {
                    // The header then holds base-256; strict readers want the PAX record.
                    pax.push(("size".to_owned(), meta.len().to_string().into_bytes()));
                }
                data = Some(meta.len());
            } else if ft.is_symlink() {
                h.set_entry_type(EntryType::Symlink);
                let target = fs::read_link(&item.abs).map_err(io_err("read link", &item.abs))?;
                set_link(&mut h, &mut pax, target.as_os_str().as_bytes());
            } else if ft.is_char_device() || ft.is_block_device() {
                h.set_entry_type(if ft.is_char_device() {
                    EntryType::Char
                } else {
                    EntryType::Block
                });
                let rdev = meta.rdev();
                h.set_device_major(rustix::fs::major(rdev))
                    .map_err(io_err("encode device", &item.abs))?;
                h.set_device_minor(rustix::fs::minor(rdev))
                    .map_err(io_err("encode device", &item.abs))?;
            } else if ft.is_fifo() {
                h.set_entry_type(EntryType::Fifo);
            }
        }
        set_name(&mut h, &mut pax, &name);
        self.write_header(&item.abs, &h, pax)?;
        if let Some(size) = data {
            self.copy_data(&item.abs, size)?;
        }
        if opaque {
            let mut marker = item.rel.clone();
            marker.push(b'/');
            marker.extend_from_slice(OPAQUE_MARKER.as_bytes());
            self.marker(&item.abs, &marker, mtime)?;
        }
        Ok(())
    }

    /// Lowers the file's mtime to the clamp on disk when needed; returns the tar mtime.
    fn clamp_on_disk(&self, item: &Item) -> Result<i64> {
        let secs = item.meta.mtime();
        let Some(clamp) = self.clamp else {
            return Ok(secs);
        };
        if secs < clamp || (secs == clamp && item.meta.mtime_nsec() == 0) {
            return Ok(secs);
        }
        set_mtime(&item.abs, clamp)?;
        Ok(clamp)
    }

    /// A zero-size marker entry (whiteout or opaque marker).
    fn marker(&mut self, abs: &Path, name: &[u8], mtime: i64) -> Result<()> {
        let mut h = Header::new_ustar();
        let mut pax = Vec::new();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h.set_mtime(mtime.max(0) as u64);
        set_name(&mut h, &mut pax, name);
        self.write_header(abs, &h, pax)
    }

    fn write_header(&mut self, abs: &Path, h: &Header, mut pax: Pax) -> Result<()> {
        let mut h = h.clone();
        h.set_cksum();
        if !pax.is_empty() {
            pax.sort();
            self.builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(io_err("write tar header for", abs))?;
        }
        self.builder
            .get_mut()
            .write_all(h.as_bytes())
            .map_err(io_err("write tar header for", abs))?;
        self.entries += 1;
        Ok(())
    }

    fn copy_data(&mut self, abs: &Path, size: u64) -> Result<()> {
        if self.copy_buf.is_empty() {
            self.copy_buf = vec![0u8; 256 * 1024];
        }
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(abs)
            .map_err(io_err("open", abs))?;
        let out = self.builder.get_mut();
        let copied = io::copy(&mut file.take(size), out).map_err(io_err("copy", abs))?;
        if copied != size {
            return Err(WriteError::FileChanged {
                path: abs.to_path_buf(),
            });
        }
        let pad = (512 - (size % 512)) % 512;
        out.write_all(&[0u8; 512][..pad as usize])
            .map_err(io_err("copy", abs))?;
        Ok(())
    }

    /// The entry's xattrs, sorted, minus overlay ones; and whether it is an opaque directory.
    fn xattrs(&mut self, item: &Item) -> Result<(Xattrs, bool)> {
        let path = &item.abs;
        let list = loop {
            match rustix::fs::llistxattr(path, &mut self.xattr_buf[..]) {
                Ok(n) => break self.xattr_buf[..n].to_vec(),
                Err(rustix::io::Errno::RANGE) => {
                    let n = rustix::fs::llistxattr_query(path)
                        .map_err(|e| io_err("list xattrs of", path)(e.into()))?;
                    self.xattr_buf.resize(n.max(self.xattr_buf.len() * 2), 0);
                }
                Err(rustix::io::Errno::NOTSUP) => return Ok((Vec::new(), false)),
                Err(e) => return Err(io_err("list xattrs of", path)(e.into())),
            }
        };
        let mut out = Vec::new();
        let mut opaque = false;
        for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let value = get_xattr(path, name)?;
            if is_overlay_xattr(name) {
                if name.ends_with(b".overlay.metacopy") || name.ends_with(b".overlay.redirect") {
                    return Err(WriteError::OverlayFeature {
                        path: path.clone(),
                        xattr: String::from_utf8_lossy(name).into_owned(),
                    });
                }
                if item.meta.is_dir() && name.ends_with(b".overlay.opaque") && value == b"y" {
                    opaque = true;
                }
                continue;
            }
            out.push((name.to_vec(), value));
        }
        out.sort();
        Ok((out, opaque))
    }
}

fn get_xattr(path: &Path, name: &[u8]) -> Result<Vec<u8>> {
    let cname = std::ffi::OsStr::from_bytes(name);
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::lgetxattr(path, cname, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => {
                let n = rustix::fs::lgetxattr_query(path, cname)
                    .map_err(|e| io_err("read xattr of", path)(e.into()))?;
                buf.resize(n.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(io_err("read xattr of", path)(e.into())),
        }
    }
}

fn split_rel(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (&rel[..=i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

/// The largest size a ustar octal field holds (8 GiB - 1).
const MAX_USTAR_SIZE: u64 = 0o77777777777;

/// The largest id a ustar octal field holds; larger ids also go in a PAX record.
const MAX_USTAR_ID: u32 = 0o7777777;

fn set_id(h: &mut Header, pax: &mut Pax, key: &str, id: u32) {
    if key == "uid" {
        h.set_uid(u64::from(id));
    } else {
        h.set_gid(u64::from(id));
    }
    if id > MAX_USTAR_ID {
        pax.push((key.to_owned(), id.to_string().into_bytes()));
    }
}

/// Puts `name` in the ustar name (and prefix) fields, or in a PAX `path` record when too long.
fn set_name(h: &mut Header, pax: &mut Pax, name: &[u8]) {
    let u = h
        .as_ustar_mut()
        .expect("layer headers are created as ustar");
    if name.len() <= u.name.len() {
        u.name[..name.len()].copy_from_slice(name);
        return;
    }
    let split = name.iter().enumerate().position(|(i, b)| {
        *b == b'/'
            && i <= u.prefix.len()
            && name.len() - i - 1 <= u.name.len()
            && i + 1 < name.len()
    });
    if let Some(i) = split {
        u.prefix[..i].copy_from_slice(&name[..i]);
        u.name[..name.len() - i - 1].copy_from_slice(&name[i + 1..]);
        return;
    }
    let n = u.name.len();
    u.name.copy_from_slice(&name[..n]);
    pax.push(("path".to_owned(), name.to_vec()));
}

fn set_link(h: &mut Header, pax: &mut Pax, target: &[u8]) {
    let old = h.as_old_mut();
    if target.len() <= old.linkname.len() {
        old.linkname[..target.len()].copy_from_slice(target);
    } else {
        let n = old.linkname.len();
        old.linkname.copy_from_slice(&target[..n]);
        pax.push(("linkpath".to_owned(), target.to_vec()));
    }
}

/// The mtime rule of a RUN layer: what the step dated (every mtime at or after its start) gets
/// the build's epoch, older mtimes stay (a base file copied up for a chmod keeps its date, and
/// so does a file the step dated on purpose with `touch -d`). BuildKit's rewrite-timestamp
/// clamps the same way; the layer then depends on what the step did, not on when it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepMtimes {
    /// mtimes at or after this (seconds since the epoch) are the step's own.
    since: i64,
    /// What they become: SOURCE_DATE_EPOCH, or 0.
    epoch: i64,
}

impl StepMtimes {
    /// The rule of a step starting now. The start is taken a second early: file times come
    /// from the kernel's coarse clock, which lags the clock read here by up to a tick.
    /// `epoch` is the build's (SOURCE_DATE_EPOCH, or 0), which the caller reads.
    pub fn starting_now(epoch: i64) -> StepMtimes {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        StepMtimes::new(now - 1, epoch)
    }

    /// The rule with an explicit start and epoch.
    pub fn new(since: i64, epoch: i64) -> StepMtimes {
        StepMtimes { since, epoch }
    }

    /// Applies the rule on disk to every entry under `dir` (an upper dir; symlinks are not
    /// followed); returns how many entries were restamped.
    ///
    /// Fails on the first entry that cannot be read or restamped, naming it.
    pub fn restamp(&self, dir: &Path) -> std::result::Result<u64, crate::store::StoreError> {
        let wrap = |source| crate::store::StoreError::Commit {
            dir: dir.to_path_buf(),
            source,
        };
        let mut count = 0;
        let mut stack = children(dir, b"").map_err(wrap)?;
        while let Some(item) = stack.pop() {
            if item.meta.is_dir() {
                stack.extend(children(&item.abs, &item.rel).map_err(wrap)?);
            }
            if item.meta.mtime() < self.since {
                continue;
            }
            set_mtime(&item.abs, self.epoch).map_err(wrap)?;
            count += 1;
        }
        Ok(count)
    }
}

/// Sets the mtime of `path` (not following a symlink), leaving its atime.
fn set_mtime(path: &Path, secs: i64) -> Result<()> {
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err("set mtime of", path)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mtime(p: &Path) -> i64 {
        fs::symlink_metadata(p).expect("stat").mtime()
    }

    #[test]
    fn step_mtimes_restamp_only_what_the_step_dated() {
        let d = tempfile::tempdir().expect("tempdir");
        let old = d.path().join("sub/old");
        let new = d.path().join("sub/new");
        let link = d.path().join("link");
        fs::create_dir(d.path().join("sub")).expect("mkdir");
        fs::write(&old, "kept").expect("write");
        fs::write(&new, "made").expect("write");
        std::os::unix::fs::symlink("sub/old", &link).expect("symlink");
        set_mtime(&old, 1_577_934_240).expect("date old");
        let rule = StepMtimes::new(1_600_000_000, 7);
        // new, sub (changed by the writes) and link; old keeps its date.
        assert_eq!(rule.restamp(d.path()).expect("restamp"), 3);
        assert_eq!(mtime(&old), 1_577_934_240);
        assert_eq!(mtime(&new), 7);
        assert_eq!(mtime(&d.path().join("sub")), 7);
        assert_eq!(mtime(&link), 7);
        // The symlink was not followed: its target kept its date.
        assert_eq!(mtime(&old), 1_577_934_240);
        // A second pass finds nothing newer than the start.
        assert_eq!(rule.restamp(d.path()).expect("restamp"), 0);
    }
}

//! The build context: `.dockerignore` matching, the expansion of COPY sources and the stat
//! cache ([`statcache`]) that reuses the digests of unchanged context files.
//!
//! The solver hashes what [`walk_sources`] lists to build cache keys, and the copy engine
//! (`executor::copy`, inside the sandbox) copies exactly that list, so the two can never
//! disagree. No `unsafe`, no mounts: this runs in the multi-threaded kiln process as well as in
//! `__init`. Paths inside the context are resolved by a [`Resolve`] the caller passes in
//! (`executor::fsroot::InRoot`, the one resolver of untrusted paths), so this crate is a leaf
//! (its only workspace dependency is `kroot`, for the stat cache's directory and atomic write).
//!
//! Rules (Docker/BuildKit):
//! - a source is cleaned and made relative to the root: `/x`, `./x` and `../x` all mean `x`
//!   (BuildKit cleans `../` away rather than failing);
//! - the path is resolved inside the root: symlinks (including a top-level source symlink,
//!   which is followed) can never lead outside it;
//! - a wildcard source (`*`, `?`, `[...]`) expands to the sorted matching paths, and may match
//!   nothing; a plain source must exist and not be ignored;
//! - a directory source lists its whole tree (entries under it are not followed), minus
//!   ignored and `--exclude`d paths.
#![deny(missing_docs)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

mod ignore;
pub use ignore::{Ignore, IgnoreError, go_clean};
pub mod statcache;

/// Opens paths inside a directory with every symlink resolved inside it (never above it).
pub trait Resolve: Sync {
    /// Opens `rel` (`O_PATH`) below the directory `root`; `..` and absolute symlinks stay
    /// inside `root`.
    ///
    /// Fails with the OS error (`ENOENT`/`ENOTDIR` when the path does not exist).
    fn resolve_in(&self, root: std::os::fd::BorrowedFd<'_>, rel: &str) -> std::io::Result<OwnedFd>;
}

/// Errors expanding COPY sources.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A plain source does not exist (or is ignored, which makes it absent from the context).
    #[error("file not found in build context: {path}")]
    NotFound {
        /// The source as written.
        path: String,
    },
    /// A wildcard source whose character class is malformed (`x[]a]`, `[a-]`): BuildKit's
    /// `syntax error in pattern` (Go's `filepath.ErrBadPattern`).
    #[error("syntax error in pattern: {pattern}")]
    BadPattern {
        /// The source as written.
        pattern: String,
    },
    /// Reading the context failed.
    #[error("reading {path}")]
    Io {
        /// Host path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, ContextError>;

/// Kind of a source entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (only below a directory source; top-level links are followed).
    Symlink,
    /// FIFO, socket or device node.
    Special,
}

/// One path COPY will read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    /// Absolute host path (top-level symlinks resolved inside the root).
    pub path: PathBuf,
    /// Path relative to the root, as named (`dir/sub/file`).
    pub rel: String,
    /// Kind.
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (files).
    pub size: u64,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Symlink target.
    pub link_target: Option<String>,
    /// Index of the COPY source that produced this entry.
    pub source: usize,
    /// `rel` of the top-level match this entry belongs to (equal to `rel` for the match).
    pub matched: String,
    /// Device (major, minor) of a device node; `(dev, inode)` of a file with several links
    /// is in `inode`.
    pub rdev: u64,
    /// `(st_dev, st_ino)` when the file has more than one hard link, for keeping hard links.
    pub inode: Option<(u64, u64)>,
    /// Status change time in nanoseconds since the epoch (for the solver's stat cache).
    pub ctime_ns: i128,
    /// `st_dev` (for the solver's stat cache).
    pub dev: u64,
    /// `st_ino` (for the solver's stat cache).
    pub ino: u64,
}

/// `filepath.Match` on one path segment: `*`, `?`, `[a-z]`, `[^x]`, `\` escapes.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob_at(&p, &n)
}

fn glob_at(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| glob_at(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && glob_at(&p[1..], &n[1..]),
        Some('[') => {
            let Some(c) = n.first() else { return false };
            match class_match(&p[1..], *c) {
                Some((ok, used)) => ok && glob_at(&p[1 + used..], &n[1..]),
                None => false,
            }
        }
        Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && glob_at(&p[2..], &n[1..]),
        Some(c) => n.first() == Some(c) && glob_at(&p[1..], &n[1..]),
    }
}

/// Matches `c` against a class body (after `[`); returns (matched, chars used incl. `]`), or
/// `None` for a bad class. As Go's `filepath.Match`: only `^` negates (`[!x]` is the set of
/// `!` and `x`), and an unescaped `-` or `]` where a class character is expected (`[]a]`,
/// `[a-]`, `[-a]`, `[]`) or an unclosed class makes the pattern bad, which matches nothing.
fn class_match(p: &[char], c: char) -> Option<(bool, usize)> {
    /// One class character, `\` escapes allowed; `None` when bad or nothing follows it.
    fn class_char(p: &[char], i: usize) -> Option<(char, usize)> {
        let (ch, next) = match p.get(i)? {
            '-' | ']' => return None,
            '\\' => (*p.get(i + 1)?, i + 2),
            ch => (*ch, i + 1),
        };
        (next < p.len()).then_some((ch, next))
    }
    let mut i = 0;
    let negate = p.first() == Some(&'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut ranges = 0;
    loop {
        if p.get(i) == Some(&']') && ranges > 0 {
            return Some((hit != negate, i + 1));
        }
        let (lo, next) = class_char(p, i)?;
        i = next;
        let mut hi = lo;
        if p[i] == '-' {
            (hi, i) = class_char(p, i + 1)?;
        }
        hit |= lo <= c && c <= hi;
        ranges += 1;
    }
}

/// Whether every character class and escape of `pattern` is well formed, as Go's
/// `filepath.Match` requires (a bad one is an error there, whatever the name).
pub fn pattern_is_valid(pattern: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' if i + 1 == p.len() => return false,
            '\\' => i += 2,
            '[' => match class_match(&p[i + 1..], '\0') {
                Some((_, used)) => i += 1 + used,
                None => return false,
            },
            _ => i += 1,
        }
    }
    true
}

/// Whether a source has wildcard characters.
pub fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Cleans a path lexically and makes it relative: `/a/./b/../c/` and `../a/c` give `a/c`;
/// `.` and `/` give `""`.
pub fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    out.join("/")
}

/// Expands COPY sources (wildcards, directories recursively) under `root`, skipping ignored
/// files; errors when a non-wildcard source is missing, ignored or escapes `root`.
///
/// `exclude` are `--exclude` patterns, matched against paths relative to each match (and
/// against the basename of the match itself).
pub fn walk_sources(
    resolver: &dyn Resolve,
    root: &Path,
    sources: &[String],
    ignore: &Ignore,
    exclude: &[String],
) -> Result<Vec<SourceEntry>> {
    walk(resolver, root, sources, ignore, exclude, false)
}

/// [`walk_sources`] with sibling subdirectories listed concurrently on the rayon pool (the
/// same entries in the same order). For the solver's cache keys; the sandbox init, which must
/// stay single-threaded, uses [`walk_sources`].
///
/// Fails as [`walk_sources`] does.
pub fn walk_sources_parallel(
    resolver: &dyn Resolve,
    root: &Path,
    sources: &[String],
    ignore: &Ignore,
    exclude: &[String],
) -> Result<Vec<SourceEntry>> {
    walk(resolver, root, sources, ignore, exclude, true)
}

fn walk(
    resolver: &dyn Resolve,
    root: &Path,
    sources: &[String],
    ignore: &Ignore,
    exclude: &[String],
    parallel: bool,
) -> Result<Vec<SourceEntry>> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(root, e.into()))?;
    let exclude = Ignore::from_lines(exclude.iter().map(String::as_str));
    let walker = Walker {
        resolver,
        root,
        root_fd,
        ignore,
        exclude: &exclude,
        parallel,
    };
    let mut out = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        let rel = clean(source);
        let matches = if has_wildcard(&rel) {
            if !pattern_is_valid(&rel) {
                return Err(ContextError::BadPattern {
                    pattern: source.clone(),
                });
            }
            walker.expand(&rel)?
        } else {
            if walker.ignore.is_ignored(&rel, false) && !rel.is_empty() {
                return Err(ContextError::NotFound {
                    path: source.clone(),
                });
            }
            vec![rel]
        };
        for m in matches {
            let Some(path) = walker.resolve(&m)? else {
                return Err(ContextError::NotFound {
                    path: source.clone(),
                });
            };
            let base = m.rsplit('/').next().unwrap_or("");
            if !base.is_empty() && walker.exclude.is_ignored(base, false) {
                continue;
            }
            let meta = std::fs::metadata(&path).map_err(|e| io_err(&path, e))?;
            let top = entry(
                path.clone(),
                m.clone(),
                &Meta::of_std(&meta),
                None,
                index,
                &m,
            );
            let is_dir = top.kind == EntryKind::Dir;
            out.push(top);
            if is_dir {
                walker.walk_dir(&path, &m, "", (index, &m), &mut out)?;
            }
        }
    }
    Ok(out)
}

fn io_err(path: &Path, source: std::io::Error) -> ContextError {
    ContextError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct Walker<'a> {
    resolver: &'a dyn Resolve,
    root: &'a Path,
    root_fd: OwnedFd,
    ignore: &'a Ignore,
    exclude: &'a Ignore,
    /// List sibling subdirectories concurrently (rayon).
    parallel: bool,
}

/// One listed child of a directory.
struct Child {
    cname: std::ffi::CString,
    rel: String,
    sub: String,
    entry: SourceEntry,
    ignored: bool,
}

impl Walker<'_> {
    /// The host path of `rel` with every symlink resolved inside the root; `None` if missing.
    fn resolve(&self, rel: &str) -> Result<Option<PathBuf>> {
        if rel.is_empty() {
            return Ok(Some(self.root.to_path_buf()));
        }
        let fd = match self
            .resolver
            .resolve_in(std::os::fd::AsFd::as_fd(&self.root_fd), rel)
        {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(None);
            }
            Err(e) => return Err(io_err(self.root, e)),
        };
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        std::fs::read_link(&link)
            .map(Some)
            .map_err(|e| io_err(&self.root.join(rel), e))
    }

    /// Expands a wildcard path segment by segment; sorted, ignored paths left out.
    fn expand(&self, rel: &str) -> Result<Vec<String>> {
        let mut found = vec![String::new()];
        for seg in rel.split('/') {
            let mut next = Vec::new();
            for prefix in found {
                let join = |name: &str| {
                    if prefix.is_empty() {
                        name.to_string()
                    } else {
                        format!("{prefix}/{name}")
                    }
                };
                if !has_wildcard(seg) {
                    next.push(join(seg));
                    continue;
                }
                let Some(dir) = self.resolve(&prefix)? else {
                    continue;
                };
                let Ok(rd) = std::fs::read_dir(&dir) else {
                    continue;
                };
                let mut names: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| glob_match(seg, n))
                    .collect();
                names.sort();
                next.extend(names.iter().map(|n| join(n)));
            }
            found = next;
        }
        let mut out = Vec::new();
        for m in found {
            if !self.ignore.is_ignored(&m, false) && self.resolve(&m)?.is_some() {
                out.push(m);
            }
        }
        Ok(out)
    }

    fn walk_dir(
        &self,
        dir: &Path,
        rel: &str,
        sub: &str,
        matched: (usize, &str),
        out: &mut Vec<SourceEntry>,
    ) -> Result<()> {
        let fd =
            rustix::fs::open(dir, DIR_FLAGS, Mode::empty()).map_err(|e| io_err(dir, e.into()))?;
        self.walk_fd(&fd, dir, rel, sub, matched, out)
    }

    /// Lists the directory open as `fd` (host path `dir`). Every lookup is relative to the
    /// directory's descriptor (`statx`, `openat`, `readlinkat` of one name), so that a big
    /// context costs one short lookup per entry instead of a walk of its whole path.
    fn walk_fd(
        &self,
        fd: &OwnedFd,
        dir: &Path,
        rel: &str,
        sub: &str,
        matched: (usize, &str),
        out: &mut Vec<SourceEntry>,
    ) -> Result<()> {
        let children = self.children(fd, dir, rel, sub, matched)?;
        let dirs = children
            .iter()
            .filter(|c| c.entry.kind == EntryKind::Dir)
            .count();
        // Each subdirectory's entries, listed concurrently when there are several.
        let mut subtrees: Vec<Option<Vec<SourceEntry>>> = if self.parallel && dirs > 1 {
            use rayon::prelude::*;
            children
                .par_iter()
                .map(|c| self.subtree(fd, c, matched).map(Some))
                .collect::<Result<_>>()?
        } else {
            children.iter().map(|_| None).collect()
        };
        for (c, tree) in children.into_iter().zip(subtrees.iter_mut()) {
            if c.entry.kind != EntryKind::Dir {
                out.push(c.entry);
                continue;
            }
            let at = out.len();
            let tree = match tree.take() {
                Some(t) => t,
                None => self.subtree(fd, &c, matched)?,
            };
            out.push(c.entry);
            out.extend(tree);
            // An ignored directory stays only to hold re-included (`!`) entries.
            if c.ignored && out.len() == at + 1 {
                out.pop();
            }
        }
        Ok(())
    }

    /// The entries below child directory `c` of the directory open as `fd` (none for others).
    fn subtree(&self, fd: &OwnedFd, c: &Child, matched: (usize, &str)) -> Result<Vec<SourceEntry>> {
        let mut out = Vec::new();
        if c.entry.kind == EntryKind::Dir {
            let child = rustix::fs::openat(fd, c.cname.as_c_str(), DIR_FLAGS, Mode::empty())
                .map_err(|e| io_err(&c.entry.path, e.into()))?;
            self.walk_fd(&child, &c.entry.path, &c.rel, &c.sub, matched, &mut out)?;
        }
        Ok(out)
    }

    /// The sorted, not ignored children of the directory open as `fd` (host path `dir`). Every
    /// lookup is relative to the directory's descriptor (`statx`, `readlinkat` of one name), so
    /// that a big context costs one short lookup per entry instead of a walk of its whole path.
    fn children(
        &self,
        fd: &OwnedFd,
        dir: &Path,
        rel: &str,
        sub: &str,
        (index, matched): (usize, &str),
    ) -> Result<Vec<Child>> {
        use std::os::unix::ffi::OsStrExt as _;
        let mut names: Vec<std::ffi::CString> = Vec::new();
        let mut rd = rustix::fs::Dir::read_from(fd).map_err(|e| io_err(dir, e.into()))?;
        while let Some(e) = rd.read() {
            let e = e.map_err(|e| io_err(dir, e.into()))?;
            let name = e.file_name();
            if name != c"." && name != c".." {
                names.push(name.to_owned());
            }
        }
        drop(rd);
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for cname in names {
            let name = cname.to_string_lossy().into_owned();
            let child_rel = join_rel(rel, &name);
            let child_sub = join_rel(sub, &name);
            let path = dir.join(std::ffi::OsStr::from_bytes(cname.to_bytes()));
            let meta = rustix::fs::statx(
                fd,
                cname.as_c_str(),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                rustix::fs::StatxFlags::BASIC_STATS,
            )
            .map(|st| Meta::of_statx(&st))
            .map_err(|e| io_err(&path, e.into()))?;
            let is_dir = meta.kind == EntryKind::Dir;
            let ignored = self.ignore.is_ignored(&child_rel, is_dir)
                || self.exclude.is_ignored(&child_sub, is_dir);
            if ignored
                && !(is_dir && (self.ignore.has_exceptions() || self.exclude.has_exceptions()))
            {
                continue;
            }
            let link = if meta.kind == EntryKind::Symlink {
                Some(
                    rustix::fs::readlinkat(fd, cname.as_c_str(), Vec::new())
                        .map_err(|e| io_err(&path, e.into()))?
                        .to_string_lossy()
                        .into_owned(),
                )
            } else {
                None
            };
            let entry = entry(path, child_rel.clone(), &meta, link, index, matched);
            out.push(Child {
                cname,
                rel: child_rel,
                sub: child_sub,
                entry,
                ignored,
            });
        }
        Ok(out)
    }
}

/// How the walker opens directories: for reading entries, never following a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The stat fields an entry keeps, from `std::fs::Metadata` or a `statx`.
#[derive(Debug, Clone, Copy)]
struct Meta {
    kind: EntryKind,
    /// `st_mode` (type and permission bits).
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    dev: u64,
    ino: u64,
    rdev: u64,
    nlink: u64,
}

impl Meta {
    fn kind_of(mode: u32) -> EntryKind {
        match mode & 0o170000 {
            0o040000 => EntryKind::Dir,
            0o100000 => EntryKind::File,
            0o120000 => EntryKind::Symlink,
            _ => EntryKind::Special,
        }
    }

    fn of_std(m: &std::fs::Metadata) -> Meta {
        Meta {
            kind: Meta::kind_of(m.mode()),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            dev: m.dev(),
            ino: m.ino(),
            rdev: m.rdev(),
            nlink: m.nlink(),
        }
    }

    fn of_statx(st: &rustix::fs::Statx) -> Meta {
        let ns = |t: &rustix::fs::StatxTimestamp| {
            i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
        };
        Meta {
            kind: Meta::kind_of(u32::from(st.stx_mode)),
            mode: u32::from(st.stx_mode),
            uid: st.stx_uid,
            gid: st.stx_gid,
            size: st.stx_size,
            mtime_ns: ns(&st.stx_mtime),
            ctime_ns: ns(&st.stx_ctime),
            // The same encoding `stat` uses for `st_dev` (glibc's makedev).
            dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            rdev: rustix::fs::makedev(st.stx_rdev_major, st.stx_rdev_minor),
            nlink: u64::from(st.stx_nlink),
        }
    }
}

/// The paths under `root` that `ignore` hides, each as high up as possible: an ignored
/// directory is listed once, unless `!` exceptions may re-include something below it, in
/// which case its ignored entries are listed one by one. Symlinks are not followed. A
/// context bind mount covers exactly these paths (with overlay whiteouts).
///
/// Fails when a directory cannot be read.
pub fn ignored_paths(root: &Path, ignore: &Ignore) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if !ignore.is_empty() {
        ignored_below(root, "", ignore, &mut out)?;
    }
    Ok(out)
}

fn ignored_below(dir: &Path, rel: &str, ignore: &Ignore, out: &mut Vec<String>) -> Result<()> {
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| io_err(dir, e))?;
    names.sort();
    for name in names {
        let name = name.to_string_lossy().into_owned();
        let child_rel = join_rel(rel, &name);
        let path = dir.join(&name);
        let is_dir = std::fs::symlink_metadata(&path)
            .map_err(|e| io_err(&path, e))?
            .is_dir();
        let ignored = ignore.is_ignored(&child_rel, is_dir);
        if ignored && !(is_dir && ignore.has_exceptions()) {
            out.push(child_rel);
        } else if is_dir {
            ignored_below(&path, &child_rel, ignore, out)?;
        }
    }
    Ok(())
}

fn join_rel(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

fn entry(
    path: PathBuf,
    rel: String,
    meta: &Meta,
    link_target: Option<String>,
    source: usize,
    matched: &str,
) -> SourceEntry {
    let kind = meta.kind;
    SourceEntry {
        path,
        rel,
        kind,
        mode: meta.mode & 0o7777,
        uid: meta.uid,
        gid: meta.gid,
        size: if kind == EntryKind::File {
            meta.size
        } else {
            0
        },
        mtime_ns: meta.mtime_ns,
        link_target,
        source,
        matched: matched.to_string(),
        rdev: meta.rdev,
        inode: (kind == EntryKind::File && meta.nlink > 1).then_some((meta.dev, meta.ino)),
        ctime_ns: meta.ctime_ns,
        dev: meta.dev,
        ino: meta.ino,
    }
}

#[cfg(test)]
mod tests;

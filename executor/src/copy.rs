//! COPY/ADD/WORKDIR, run inside the `__init` process's private mount namespace.
//!
//! The destination overlay (lowers + the new upper dir) is mounted at a staging dir, each
//! `CopyFrom::Layers` source read-only next to it; nothing stays mounted when the process
//! ends. Sources are listed by [`context::walk_sources`], the same function the solver
//! hashes for cache keys, and written through [`root::DestRoot`], which resolves every path
//! inside the destination root.
//!
//! Docker/BuildKit rules implemented here: several sources need a directory destination
//! (ending in `/` or existing); a directory source copies its contents; a file goes into a
//! directory destination under its own name; missing parents are created (owned by the
//! `--chown` user, else root), and so is a new destination of a directory source (0755, or
//! `--chmod`); context files become root-owned unless `--chown`, files from
//! another stage keep their owners; modes and mtimes are kept (`--chmod`, octal or symbolic, sets
//! it for files and directories, setuid/setgid/sticky included); symlinks inside directories are copied as links and
//! hard links stay hard links; ADD extracts local tar archives (plain, gzip, zstd, bzip2, xz;
//! all decoded in-process).

mod archive;
pub mod chmod;
pub mod root;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rustix::fs::FileType;
use rustix::mount::MountPropagationFlags;
use rustix::thread::UnshareFlags;

use crate::init::{InitError, StateDir, mount_overlay, ns_err};
use crate::spec::{CopyFrom, CopySpec, CopyTask};
use crate::sys;
use crate::user::{self, UserError};
use context::{ContextError, EntryKind, Ignore, SourceEntry};
use root::{DestRoot, Meta};

/// Why a COPY/ADD/WORKDIR task failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A context source is missing, ignored or unreadable.
    #[error("COPY failed")]
    Context(#[source] ContextError),
    /// A source is missing from the stage it is copied from.
    #[error("COPY failed: file not found in source stage: {path}")]
    NotInStage {
        /// The source as written.
        path: String,
    },
    /// Several sources and a destination that is not a directory.
    #[error(
        "COPY failed: when using COPY with more than one source file, the destination must be a directory and end with a /: {dest}"
    )]
    DestNotDir {
        /// The destination as written.
        dest: String,
    },
    /// `--chown` (or the WORKDIR owner) did not resolve.
    #[error("COPY failed: --chown={spec}")]
    Chown {
        /// The owner spec.
        spec: String,
        /// Cause.
        #[source]
        source: UserError,
    },
    /// `--chmod` is neither octal nor symbolic.
    #[error(
        "COPY failed: invalid --chmod={spec}: expected an octal mode (0755) or a symbolic one (u+x,go-w)"
    )]
    Chmod {
        /// The mode as written.
        spec: String,
    },
    /// Writing into the destination failed.
    #[error("COPY failed: writing {path}")]
    Write {
        /// Path inside the destination.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading a source failed.
    #[error("COPY failed: reading {path}")]
    Read {
        /// Host path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Extracting an archive failed.
    #[error("ADD failed: extracting {path}")]
    Archive {
        /// Host path of the archive.
        path: PathBuf,
        /// Cause, naming the entry.
        #[source]
        source: archive::ExtractError,
    },
    /// WORKDIR could not be created.
    #[error("WORKDIR failed: creating {path}")]
    Mkdir {
        /// The directory.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, CopyError>;

/// Runs the tasks of `spec` on its root: the `__init` side of [`crate::spec::InitSpec::Copy`].
pub(crate) fn run(spec: &CopySpec) -> std::result::Result<(), InitError> {
    sys::unshare(UnshareFlags::NEWNS).map_err(ns_err("unsharing the mount namespace"))?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(ns_err("making mounts private"))?;
    let state = StateDir::create(&spec.rootfs.work)?;
    let empty = state.path.join("empty");
    let root_path = state.path.join("root");
    let lowers = if spec.rootfs.lowers.is_empty() {
        vec![empty.clone()]
    } else {
        spec.rootfs.lowers.clone()
    };
    let mut mounted = vec![root_path.clone()];
    let result = (|| {
        mount_overlay(
            &lowers,
            Some((&spec.rootfs.upper, &spec.rootfs.work)),
            &root_path,
        )?;
        let dest = DestRoot::open(&root_path).map_err(|e| crate::init::file_err(&root_path)(e))?;
        for (i, task) in spec.tasks.iter().enumerate() {
            match task {
                CopyTask::Mkdir { path, owner } => mkdir(&dest, path, owner)?,
                CopyTask::Copy {
                    from,
                    sources,
                    dest: to,
                    chown,
                    chmod,
                    exclude,
                    parents,
                    unpack_archives,
                } => {
                    let (src_root, ignore, from_context) = match from {
                        CopyFrom::Context { dir, ignore } => (
                            dir.clone(),
                            // The `.dockerignore` lines as read: parsed as the file is.
                            Ignore::parse(&ignore.join("\n")),
                            true,
                        ),
                        CopyFrom::Layers { lowers } => {
                            let mnt = state.path.join(format!("src-{i}"));
                            std::fs::create_dir(&mnt)
                                .map_err(|e| crate::init::file_err(&mnt)(e))?;
                            mounted.push(mnt.clone());
                            // Overlay wants two lowers without an upper dir: pad with the
                            // empty dir (one lower is still merged, so whiteouts stay hidden).
                            let mut l = lowers.clone();
                            if l.len() < 2 {
                                l.push(empty.clone());
                            }
                            mount_overlay(&l, None, &mnt)?;
                            (mnt, Ignore::default(), false)
                        }
                    };
                    let opts = CopyOptions {
                        chown: chown.as_deref(),
                        chmod: chmod.as_deref(),
                        exclude,
                        parents: *parents,
                        unpack_archives: *unpack_archives,
                        from_context,
                    };
                    copy(&dest, &src_root, sources, to, &ignore, &opts)?;
                }
            }
        }
        Ok::<(), InitError>(())
    })();
    for m in mounted.iter().rev() {
        let _ = rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH);
    }
    drop(state);
    result
}

/// Options of one COPY/ADD.
#[derive(Debug, Clone)]
pub struct CopyOptions<'a> {
    /// `--chown`.
    pub chown: Option<&'a str>,
    /// `--chmod`.
    pub chmod: Option<&'a str>,
    /// `--exclude` patterns.
    pub exclude: &'a [String],
    /// `--parents`.
    pub parents: bool,
    /// ADD: extract local archives.
    pub unpack_archives: bool,
    /// Sources come from the build context (root-owned unless `--chown`).
    pub from_context: bool,
}

fn owner_of(dest: &DestRoot, spec: &str) -> Result<(u32, u32)> {
    let passwd = dest.read("etc/passwd");
    let group = dest.read("etc/group");
    user::resolve_owner(spec, passwd.as_deref(), group.as_deref()).map_err(|source| {
        CopyError::Chown {
            spec: spec.to_string(),
            source,
        }
    })
}

fn mkdir(dest: &DestRoot, path: &str, owner: &str) -> Result<()> {
    let owner = owner_of(dest, owner)?;
    dest.mkdir_all(&context::clean(path), owner)
        .map_err(|source| CopyError::Mkdir {
            path: path.to_string(),
            source,
        })?;
    Ok(())
}

/// Parses `--chmod`: octal up to 0o7777, or symbolic.
///
/// Fails on anything else.
pub fn parse_chmod(spec: &str) -> Result<chmod::Chmod> {
    chmod::Chmod::parse(spec).ok_or_else(|| CopyError::Chmod {
        spec: spec.to_string(),
    })
}

/// Where one top-level match goes, relative to the destination root.
///
/// `dest` is the destination as written, `dest_is_dir` whether it exists as a directory,
/// `multi` whether the COPY has several sources or matches, `matched` the match's path
/// relative to its source root.
///
/// Fails when several sources go to a destination that is not a directory.
pub fn place(
    dest: &str,
    dest_is_dir: bool,
    multi: bool,
    matched: &str,
    is_dir: bool,
    parents: bool,
) -> Result<String> {
    let dest_rel = context::clean(dest);
    let into_dir = dest.ends_with('/') || dest_rel.is_empty() || dest_is_dir;
    if multi && !into_dir {
        return Err(CopyError::DestNotDir {
            dest: dest.to_string(),
        });
    }
    let join = |a: &str, b: &str| match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    };
    Ok(if parents {
        join(&dest_rel, matched)
    } else if is_dir {
        dest_rel
    } else if into_dir {
        join(&dest_rel, matched.rsplit('/').next().unwrap_or(matched))
    } else {
        dest_rel
    })
}

/// The part of a match `--parents` keeps: all of it, or what follows a `/./` pivot in the
/// source (`COPY --parents ./a/./b/c /dst/` gives `/dst/b/c`, as in BuildKit).
pub fn parents_path(source: &str, matched: &str) -> String {
    let Some(at) = source.find("/./") else {
        return matched.to_string();
    };
    let pivot = context::clean(&source[..at]);
    if pivot.is_empty() {
        return matched.to_string();
    }
    matched
        .strip_prefix(&pivot)
        .map(|rest| rest.trim_start_matches('/').to_string())
        .unwrap_or_else(|| matched.to_string())
}

fn sub_path(rel: &str, matched: &str) -> String {
    if matched.is_empty() {
        rel.to_string()
    } else {
        rel.strip_prefix(matched)
            .map(|s| s.trim_start_matches('/').to_string())
            .unwrap_or_else(|| rel.to_string())
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

/// Copies `sources` (under `src_root`) to `dest` in the destination root.
///
/// Fails on a missing source, several sources into a non-directory, an unknown `--chown`
/// user, a bad `--chmod`, or an I/O error (each naming the path).
pub fn copy(
    dest: &DestRoot,
    src_root: &Path,
    sources: &[String],
    to: &str,
    ignore: &Ignore,
    opts: &CopyOptions<'_>,
) -> Result<()> {
    let entries = context::walk_sources(
        &crate::fsroot::InRoot,
        src_root,
        sources,
        ignore,
        opts.exclude,
    )
    .map_err(|e| match e {
        ContextError::NotFound { path } if !opts.from_context => CopyError::NotInStage { path },
        e => CopyError::Context(e),
    })?;
    let owner = opts.chown.map(|c| owner_of(dest, c)).transpose()?;
    let chmod = opts.chmod.map(parse_chmod).transpose()?;
    let parents_owner = owner.unwrap_or((0, 0));

    let tops: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].rel == entries[i].matched)
        .collect();
    let multi = sources.len() > 1 || tops.len() > 1;
    let dest_rel = context::clean(to);
    let write_err = |path: &str| {
        let path = path.to_string();
        move |source| CopyError::Write { path, source }
    };
    let dest_is_dir = dest.is_dir(&dest_rel).map_err(write_err(to))?;

    let meta_of = |e: &SourceEntry| Meta {
        uid: owner.map_or(if opts.from_context { 0 } else { e.uid }, |o| o.0),
        gid: owner.map_or(if opts.from_context { 0 } else { e.gid }, |o| o.1),
        mode: match (&chmod, e.kind) {
            (Some(m), EntryKind::File | EntryKind::Dir) => {
                m.apply(e.mode, e.kind == EntryKind::Dir)
            }
            _ => e.mode,
        },
        mtime_ns: e.mtime_ns,
    };
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let mut dir_times: Vec<(String, i128)> = Vec::new();
    // Directories this copy changes without copying them (missing parents it creates, existing
    // ones it adds to): BuildKit stamps them with the build's time, kiln with its epoch.
    let mut stamped: BTreeSet<String> = BTreeSet::new();
    let mut stamp_parents = |out: &str| -> Result<()> {
        let mut dir = out;
        while let Some((parent, _)) = dir.rsplit_once('/') {
            if !stamped.insert(parent.to_string()) {
                break;
            }
            if dest.is_dir(parent).map_err(write_err(parent))? {
                break;
            }
            dir = parent;
        }
        Ok(())
    };
    let mut parent_modes: Vec<(String, u32)> = Vec::new();

    for (t, &start) in tops.iter().enumerate() {
        let end = tops.get(t + 1).copied().unwrap_or(entries.len());
        let top = &entries[start];
        let is_dir = top.kind == EntryKind::Dir;
        let kept = if opts.parents {
            parents_path(&sources[top.source], &top.matched)
        } else {
            top.matched.clone()
        };
        if !is_dir
            && opts.unpack_archives
            && opts.from_context
            && top.kind == EntryKind::File
            && let Some(format) = archive::detect(&top.path).map_err(|source| CopyError::Read {
                path: top.path.clone(),
                source,
            })?
        {
            // An archive is extracted into the destination as a directory, trailing slash or
            // not, so several of them may share one (BuildKit's `ADD *.tar /dest`).
            let into = if opts.parents {
                let target = place(to, dest_is_dir, multi, &kept, is_dir, opts.parents)?;
                let (parent, _) = target.rsplit_once('/').unwrap_or(("", &target));
                parent.to_string()
            } else {
                dest_rel.clone()
            };
            stamp_parents(&format!("{into}/-"))?;
            dest.mkdir_all(&into, parents_owner)
                .map_err(write_err(&into))?;
            archive::extract(dest, &top.path, format, &into, owner, parents_owner).map_err(
                |source| CopyError::Archive {
                    path: top.path.clone(),
                    source,
                },
            )?;
            continue;
        }
        let target = place(to, dest_is_dir, multi, &kept, is_dir, opts.parents)?;
        stamp_parents(&target)?;
        // BuildKit (since fsutil#228, its testCopyChmod): with --chmod, the parents this copy
        // creates take that mode too (`COPY --chmod=770 f /p/sub/f` makes /p/sub 0770). They
        // are set once everything is written.
        if let Some(m) = &chmod
            && let Some((parent, _)) = target.rsplit_once('/')
        {
            for d in dest
                .mkdir_all(parent, parents_owner)
                .map_err(write_err(parent))?
            {
                parent_modes.push((d, m.apply(0o755, true)));
            }
        }
        for e in &entries[start..end] {
            let out = if e.rel == top.rel {
                target.clone()
            } else {
                join(&target, &sub_path(&e.rel, &top.matched))
            };
            stamp_parents(&out)?;
            let mut meta = meta_of(e);
            if e.rel == top.rel && is_dir && !opts.parents {
                // BuildKit (fsutil's prepareTargetDir): a directory copied to a new path
                // creates that path as it creates missing parents, 0755 (or --chmod) and owned
                // by root (or --chown) whoever owned the source; only its contents and its
                // mtime come from the source.
                meta.uid = owner.map_or(0, |o| o.0);
                meta.gid = owner.map_or(0, |o| o.1);
                if chmod.is_none() {
                    meta.mode = 0o755;
                }
            }
            match e.kind {
                EntryKind::Dir => {
                    let created = dest
                        .make_dir(&out, meta, parents_owner)
                        .map_err(write_err(&out))?;
                    if created || e.rel != top.rel {
                        dir_times.push((out, e.mtime_ns));
                    }
                }
                EntryKind::File => {
                    if let Some(first) = e.inode.and_then(|i| links.get(&i)) {
                        dest.hardlink(first, &out, parents_owner)
                            .map_err(write_err(&out))?;
                        continue;
                    }
                    let mut f = std::fs::File::open(&e.path).map_err(|source| CopyError::Read {
                        path: e.path.clone(),
                        source,
                    })?;
                    dest.write_file(&out, &mut f, meta, parents_owner)
                        .map_err(write_err(&out))?;
                    if let Some(i) = e.inode {
                        links.insert(i, out);
                    }
                }
                EntryKind::Symlink => {
                    let target = e.link_target.as_deref().unwrap_or_default();
                    dest.symlink(&out, target, meta, parents_owner)
                        .map_err(write_err(&out))?;
                }
                EntryKind::Special => {
                    let st =
                        std::fs::symlink_metadata(&e.path).map_err(|source| CopyError::Read {
                            path: e.path.clone(),
                            source,
                        })?;
                    let ft = FileType::from_raw_mode(std::os::unix::fs::MetadataExt::mode(&st));
                    if ft == FileType::Socket && opts.from_context {
                        // BuildKit sends a context socket as an empty regular file.
                        dest.write_file(&out, &mut std::io::empty(), meta, parents_owner)
                            .map_err(write_err(&out))?;
                    } else {
                        dest.mknod(&out, ft, e.rdev, meta, parents_owner)
                            .map_err(write_err(&out))?;
                    }
                }
            }
        }
    }
    for (dir, mode) in &parent_modes {
        dest.set_owner_mode(dir, parents_owner.0, parents_owner.1, *mode)
            .map_err(write_err(dir))?;
    }
    let epoch = build_epoch();
    for dir in stamped.iter().filter(|d| !d.is_empty()) {
        dest.set_mtime(dir, epoch).map_err(write_err(dir))?;
    }
    // Children changed their parents' mtimes: restore them deepest first.
    for (dir, mtime) in dir_times.iter().rev() {
        dest.set_mtime(dir, *mtime).map_err(write_err(dir))?;
    }
    Ok(())
}

/// The build's epoch in nanoseconds: `SOURCE_DATE_EPOCH` (whole seconds) when set, else 0.
fn build_epoch() -> i128 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .map_or(0, |s| i128::from(s) * 1_000_000_000)
}

/// Writes a COPY/ADD heredoc source as `dir/name` (mode 0644, mtime at the epoch), the way
/// BuildKit's "preparing inline document" step makes it. The caller then copies it from `dir`
/// with a [`CopyTask::Copy`] whose sources are `[name]`, so every destination rule, `--chown`
/// and `--chmod` apply as for a context file.
///
/// Fails when `name` is not a plain file name or on an I/O error.
pub fn stage_inline(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("heredoc name {name:?} is not a file name"),
        ));
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    std::fs::write(&path, data)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    let f = std::fs::File::options().write(true).open(&path)?;
    f.set_modified(std::time::UNIX_EPOCH)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_into_slash_dest_keeps_its_name() {
        assert_eq!(
            place("/app/", false, false, "src/a.txt", false, false).expect("place"),
            "app/a.txt"
        );
    }

    #[test]
    fn file_to_plain_dest_is_renamed_unless_dest_is_an_existing_dir() {
        assert_eq!(
            place("/app/b.txt", false, false, "a.txt", false, false).expect("place"),
            "app/b.txt"
        );
        assert_eq!(
            place("/app", true, false, "a.txt", false, false).expect("place"),
            "app/a.txt"
        );
    }

    #[test]
    fn directory_source_copies_its_contents_into_dest() {
        assert_eq!(
            place("/app", false, false, "src", true, false).expect("place"),
            "app"
        );
        assert_eq!(
            place("/", false, true, "src", true, false).expect("place"),
            ""
        );
    }

    #[test]
    fn several_sources_need_a_directory_dest() {
        let err = place("/app", false, true, "a", false, false).expect_err("not a dir");
        assert!(
            err.to_string()
                .contains("must be a directory and end with a /: /app")
        );
        assert_eq!(
            place("/app", true, true, "a", false, false).expect("existing dir"),
            "app/a"
        );
    }

    #[test]
    fn parents_keep_the_source_path() {
        assert_eq!(
            place("/dst/", false, true, "x/y/z.txt", false, true).expect("place"),
            "dst/x/y/z.txt"
        );
        assert_eq!(
            place("/dst/", false, true, "x/dir", true, true).expect("place"),
            "dst/x/dir"
        );
    }

    #[test]
    fn chmod_accepts_octal_and_symbolic_and_names_bad_values() {
        assert_eq!(parse_chmod("4755").expect("4755").apply(0, false), 0o4755);
        assert_eq!(parse_chmod("u+x").expect("u+x").apply(0o644, false), 0o744);
        let err = parse_chmod("17777").expect_err("too big");
        assert!(err.to_string().contains("--chmod=17777"));
        assert!(parse_chmod("").is_err());
    }

    #[test]
    fn parents_pivot_drops_what_precedes_it() {
        assert_eq!(parents_path("a/./b/c", "a/b/c"), "b/c");
        assert_eq!(parents_path("./a/./b/*", "a/b/x"), "b/x");
        assert_eq!(parents_path("a/b/c", "a/b/c"), "a/b/c");
        assert_eq!(parents_path("./a/b", "a/b"), "a/b");
    }

    #[test]
    fn inline_files_are_0644_at_the_epoch_and_names_stay_plain() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = stage_inline(dir.path(), "EOF", b"hi\n").expect("staged");
        let md = std::fs::metadata(&p).expect("stat");
        assert_eq!(md.mode() & 0o7777, 0o644);
        assert_eq!(md.mtime(), 0);
        assert_eq!(std::fs::read(&p).expect("read"), b"hi\n");
        for bad in ["", "..", "a/b"] {
            assert!(stage_inline(dir.path(), bad, b"").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn entries_below_a_match_keep_their_relative_path() {
        assert_eq!(sub_path("src/sub/b", "src"), "sub/b");
        assert_eq!(sub_path("a/b", ""), "a/b");
    }
}

//! Cache keys of every needed node, computed before anything runs: context COPY sources are
//! walked and hashed on the host (so a missing or escaping source fails early), then each
//! node's key is made by [`crate::key`].

use super::{COPY_CLAMP_MTIME, SolveError, SolveOptions, location};
use crate::explain;
use crate::graph::{BuildGraph, CopySource, FileAction, Node, NodeId, Op};
use crate::key::{self, SourceMeta};
use cache::oci::Digest;
use cache::statcache::{StatCache, StatKey};
use context::{Ignore, SourceEntry};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Keys of every needed node, the mtime clamp of each file node, why each needed node would
/// miss the cache, and the `--explain` observer that saw them (written after the solve).
pub(super) type Keys = (
    Vec<Option<Digest>>,
    BTreeMap<NodeId, Option<i64>>,
    Vec<Option<String>>,
    explain::Explain,
);

/// Walks and hashes context COPY sources, then computes each needed node's key in order.
pub(super) fn compute_keys(
    graph: &BuildGraph,
    opts: &SolveOptions,
    stats: &StatCache,
    kiln_root: &Path,
) -> Result<Keys, SolveError> {
    let ignore = Ignore::parse(&opts.dockerignore);
    let mut keys: Vec<Option<Digest>> = vec![None; graph.nodes.len()];
    let mut clamps = BTreeMap::new();
    let mut explain = explain::Explain::open(kiln_root, &opts.context, &opts.dockerfile_name);
    let mut reasons: Vec<Option<String>> = vec![None; graph.nodes.len()];
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    for n in graph.reachable() {
        *ids.entry(explain::step_id(&graph.nodes[n].name))
            .or_default() += 1;
    }
    for n in graph.reachable() {
        let node = &graph.nodes[n];
        let mut contents = Vec::new();
        // What `--explain` compares: `contents` plus digests of heredoc files and git commits.
        let mut seen_contents = Vec::new();
        let mut files = Vec::new();
        if let Op::File(f) = &node.op {
            let mut newest: Option<i64> = None;
            for a in &f.actions {
                let content = match a {
                    FileAction::Copy(c) if c.from == CopySource::Context => {
                        let (digest, latest, metas) =
                            hash_context(opts, node, &ignore, stats, &c.sources, &c.exclude)?;
                        explain.saw_files(&digest, &metas);
                        newest = newest.max(latest);
                        files.extend(metas);
                        Some(digest)
                    }
                    _ => None,
                };
                // Heredoc files and git checkouts are keyed by the action itself (the bytes, the
                // resolved commit); `--explain` still names them as changed files.
                let shown = match a {
                    FileAction::Inline(x) => Some(SourceMeta {
                        rel: format!("<<{}", x.name),
                        kind: key::EntryKind::File,
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                        size: x.data.len() as u64,
                        content: Some(Digest::of(&x.data)),
                        link_target: None,
                    }),
                    FileAction::Copy(c) => match &c.from {
                        CopySource::Git(g) => Some(SourceMeta {
                            rel: format!("{} (git)", g.url),
                            kind: key::EntryKind::File,
                            mode: 0,
                            uid: 0,
                            gid: 0,
                            size: 0,
                            content: Some(Digest::of(
                                g.commit.as_deref().unwrap_or_default().as_bytes(),
                            )),
                            link_target: None,
                        }),
                        _ => None,
                    },
                    _ => None,
                };
                let seen = match shown {
                    Some(meta) => {
                        let d = key::content_digest(std::slice::from_ref(&meta));
                        explain.saw_files(&d, std::slice::from_ref(&meta));
                        files.push(meta);
                        Some(d)
                    }
                    None => content.clone(),
                };
                seen_contents.push(seen);
                contents.push(content);
            }
            let newest = newest.map(|t| t.max(0));
            // SOURCE_DATE_EPOCH (or the git HEAD's time) caps every date, as BuildKit's
            // rewrite-timestamp does.
            let clamp = match (newest, opts.clamp_epoch()) {
                (Some(t), Some(e)) => Some(t.min(e)),
                (t, e) => t.or(e).or(COPY_CLAMP_MTIME),
            };
            clamps.insert(n, clamp);
        }
        // A context bind mount's key holds what it shows: the non-ignored files below its
        // source (ignored files are invisible in the mount and must not change the key).
        if let Op::Exec(x) = &node.op {
            for m in &x.mounts {
                let content = match &m.kind {
                    crate::graph::MountKind::Bind {
                        from: CopySource::Context,
                        source,
                    } => {
                        let (digest, _, metas) = hash_context(
                            opts,
                            node,
                            &ignore,
                            stats,
                            std::slice::from_ref(source),
                            &[],
                        )?;
                        explain.saw_files(&digest, &metas);
                        files.extend(metas);
                        Some(digest)
                    }
                    _ => None,
                };
                seen_contents.push(content.clone());
                contents.push(content);
            }
        }
        let k = super::cache_map(node, &keys, &contents);
        // SOURCE_DATE_EPOCH dates what exec and file steps make: it is part of their keys
        // (left out otherwise, so the pinned keys stay as they are).
        let k = match (opts.source_date_epoch(), &node.op) {
            (Some(e), Op::Exec(_) | Op::File(_)) => {
                Digest::of(format!("kiln.epoch.v1\n{k}\n{e}").as_bytes())
            }
            _ => k,
        };
        let now = explain::inputs(node, &k, &keys, &seen_contents);
        let id = explain::step_id(&node.name);
        let id = if ids.get(id).copied().unwrap_or(0) > 1 {
            node.name.clone()
        } else {
            id.to_owned()
        };
        reasons[n] = Some(explain.observe(id, now, &files));
        keys[n] = Some(k);
    }
    Ok((keys, clamps, reasons, explain))
}

/// Walks `sources` in the context (after .dockerignore and `exclude`) and hashes them: their
/// content digest, the newest mtime among them (seconds) and the per-file metadata, whose
/// summary is kept for `--explain`.
pub(super) fn hash_context(
    opts: &SolveOptions,
    node: &Node,
    ignore: &Ignore,
    stats: &StatCache,
    sources: &[String],
    exclude: &[String],
) -> Result<(Digest, Option<i64>, Vec<SourceMeta>), SolveError> {
    let at = || location(opts, node);
    let t = std::time::Instant::now();
    let entries = context::walk_sources_parallel(
        &executor::fsroot::InRoot,
        &opts.context,
        sources,
        ignore,
        exclude,
    )
    .map_err(|source| SolveError::Source { at: at(), source })?;
    let walked = t.elapsed();
    let newest = entries
        .iter()
        .map(|e| i64::try_from(e.mtime_ns.div_euclid(1_000_000_000)).unwrap_or(i64::MAX))
        .max();
    let metas = hash_entries(&entries, stats).map_err(|(path, source)| SolveError::Hash {
        at: at(),
        path,
        source,
    })?;
    let hashed = t.elapsed();
    let digest = key::content_digest(&metas);
    tracing::debug!(
        step = %node.name,
        files = entries.len(),
        walk = ?walked,
        hash = ?(hashed - walked),
        content_digest = ?(t.elapsed() - hashed),
        "context sources hashed"
    );
    Ok((digest, newest, metas))
}

/// Metadata and content hashes of walked entries (files hashed in parallel).
pub(super) fn hash_entries(
    entries: &[SourceEntry],
    stats: &StatCache,
) -> Result<Vec<SourceMeta>, (PathBuf, std::io::Error)> {
    entries
        .par_iter()
        .map(|e| {
            use context::EntryKind as K;
            let kind = match e.kind {
                K::File => key::EntryKind::File,
                K::Dir => key::EntryKind::Dir,
                K::Symlink => key::EntryKind::Symlink,
                _ => key::EntryKind::Other,
            };
            let content = if kind == key::EntryKind::File {
                let stat = StatKey {
                    size: e.size,
                    mtime_ns: e.mtime_ns,
                    ctime_ns: e.ctime_ns,
                    ino: e.ino,
                    dev: e.dev,
                    mode: e.mode,
                };
                Some(
                    stats
                        .digest(&e.path, stat, hash_file)
                        .map_err(|err| (e.path.clone(), err))?,
                )
            } else {
                None
            };
            Ok(SourceMeta {
                rel: e.rel.clone(),
                kind,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                size: e.size,
                content,
                link_target: e.link_target.clone(),
            })
        })
        .collect()
}

pub(super) fn hash_file(path: &Path) -> std::io::Result<Digest> {
    let mut f = std::fs::File::open(path)?;
    let mut h = cache::oci::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

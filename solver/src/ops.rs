//! The real op runner: cache lookups, sandboxed RUN and COPY, layer commits, cache records,
//! and the final image.
//!
//! For each node the target needs ([`crate::sched`] decides the order):
//! - a source resolves to its image's layer chain (or nothing, for scratch);
//! - an exec or file node looks up its key ([`crate::key`]); when the record exists and every
//!   layer in it is still in the store it emits `Cached` and runs nothing;
//! - otherwise it gets a fresh upper/work dir under `KILN_ROOT/tmp`, runs
//!   `kiln __init <spec>` on an overlay of its root's chain (output streamed as `Log` events),
//!   commits the upper dir as a layer and records `key -> chain`.
//!
//! COPY sources from the context are walked and hashed on the host before anything runs, so a
//! missing, ignored or escaping source fails the build before the store is touched.

use crate::explain;
use crate::graph::{
    BuildGraph, CopySource, ExecOp, FileAction, FileOp, NetworkMode, Node, NodeId, Op, SourceOp,
};
use crate::key::{self, SourceMeta};
use crate::progress::{self, EventKind, Stream};
use crate::remote::Solved;
use crate::sched::{self, OpRunner, SchedError};
use cache::image::Image;
use cache::oci::{Digest, History, ImageConfig};
use cache::records::CacheRecord;
use cache::remote::import::Imported;
use cache::snapshot::CommitOptions;
use cache::statcache::{StatCache, StatKey};
use cache::store::{Store, StoreError};
use executor::context::{ContextError, Ignore, SourceEntry};
use executor::spec::{CopyFrom, CopySpec, CopyTask, InitSpec, Network, Rootfs, RunSpec};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;

/// mtime clamp of RUN layers: none; [`cache::layer::writer::StepMtimes`] gives what the RUN
/// dated the build's epoch and keeps older dates, which makes a rebuild byte-identical.
pub const RUN_CLAMP_MTIME: Option<i64> = None;

/// mtime clamp of COPY layers when no context file is copied (COPY --from, WORKDIR): the epoch,
/// as for RUN (files from other stages already carry clamped times).
///
/// When a node copies context files, the clamp is instead the newest mtime among them: copied
/// files keep their own mtimes (as `docker build` does), while directories the copy creates or
/// touches (stamped with the wall clock) drop to that time, so the layer depends only on the
/// context, never on when the build ran.
pub const COPY_CLAMP_MTIME: Option<i64> = Some(0);

/// The `created` time of kiln images and their history: fixed, so builds are reproducible.
pub const CREATED: &str = "1970-01-01T00:00:00Z";

/// Lines of output kept for a failure message.
const TAIL_LINES: usize = 10;

/// What a RUN step holds until its sandbox exits: mount locks and temps, its network lease.
type RunGuards = (crate::mounts::Guards, Option<executor::net::BuildLease>);

/// Options of a build.
#[derive(Debug, Clone)]
pub struct SolveOptions {
    /// The build context directory.
    pub context: PathBuf,
    /// The `.dockerignore` text (empty when there is none).
    pub dockerignore: String,
    /// Maximum number of steps running at once.
    pub jobs: usize,
    /// Run every step, ignoring cache records (still writing new ones).
    pub no_cache: bool,
    /// `--no-cache-filter`: the stage labels (lower-case, as in progress names; `""` for the
    /// stage of a single-stage build) whose steps run again. A step that builds on one of them
    /// runs again too, but only when the re-run changed that step's result (see
    /// [`explain::stage_label`]).
    pub no_cache_stages: Vec<String>,
    /// The kiln binary, re-executed as `kiln __init` for sandboxes.
    pub kiln_exe: PathBuf,
    /// The Dockerfile's name, for messages (`Dockerfile:12: RUN make: exit code 2`).
    pub dockerfile_name: String,
    /// `kiln build --secret`: id to content, for RUN --mount=type=secret (never hashed).
    pub secrets: crate::mounts::Secrets,
    /// `kiln build --network`: the network of RUN steps without `--network`.
    pub network: NetworkMode,
    /// `kiln build --ssh`: agent sockets for RUN --mount=type=ssh (never hashed); the
    /// `default` one also serves ssh git remotes of ADD.
    pub ssh: crate::mounts::SshAgents,
    /// The bridge that default-network RUN steps join (pooled namespaces); None runs them
    /// with loopback only.
    pub bridge: Option<std::sync::Arc<executor::net::BuildNetwork>>,
    /// `kiln build --security-opt`: the seccomp filter of every RUN (not part of cache
    /// keys, as in docker).
    pub security: executor::spec::Security,
}

/// Where a failing step comes from: renders as `Dockerfile:12: RUN make`.
#[derive(Debug, Clone)]
pub struct Location {
    /// The Dockerfile's name.
    pub file: String,
    /// The line, when the node has a span.
    pub line: Option<u32>,
    /// The instruction as written.
    pub instruction: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file, self.instruction),
            None => write!(f, "{}: {}", self.file, self.instruction),
        }
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    /// A RUN exited non-zero.
    #[error("{at}: exit code {code}{}", tail_text(.tail))]
    Exit {
        /// The step.
        at: Location,
        /// Its exit status (128+N for signal N).
        code: i32,
        /// The last lines of its output.
        tail: Vec<String>,
    },
    /// The sandbox reported a failure of its own (setup, COPY).
    #[error("{at}: {message}")]
    Sandbox {
        /// The step.
        at: Location,
        /// The sandbox's message (`kiln: ...` stripped).
        message: String,
    },
    /// A COPY source is missing, ignored or outside the context.
    #[error("{at}")]
    Source {
        /// The step.
        at: Location,
        /// What the walker found.
        #[source]
        source: ContextError,
    },
    /// Hashing a context file failed.
    #[error("{at}: reading {}", .path.display())]
    Hash {
        /// The step.
        at: Location,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The sandbox could not be started.
    #[error("{at}: starting the sandbox {}", .exe.display())]
    Spawn {
        /// The step.
        at: Location,
        /// The kiln binary.
        exe: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The store failed during a step.
    #[error("{at}: store")]
    Store {
        /// The step.
        at: Location,
        /// The store's error.
        #[source]
        source: Box<StoreError>,
    },
    /// The store failed while writing the image.
    #[error("writing the image")]
    Image(#[source] StoreError),
    /// A base image's layer is gone from the store.
    #[error("{at}: base image layer {diff_id} is missing from the store")]
    MissingLayer {
        /// The step.
        at: Location,
        /// The layer.
        diff_id: Digest,
    },
    /// A RUN --mount could not be prepared.
    #[error("{at}: RUN --mount: {source}")]
    Mount {
        /// The step.
        at: Location,
        /// Why.
        #[source]
        source: crate::mounts::MountError,
    },
    /// No network namespace could be prepared for a RUN step.
    #[error("{at}: preparing the bridge network")]
    Network {
        /// The step.
        at: Location,
        /// Why.
        #[source]
        source: Box<executor::net::PoolError>,
    },
    /// ADD of a URL failed.
    #[error("{at}: {source}")]
    Fetch {
        /// The step.
        at: Location,
        /// Why.
        #[source]
        source: Box<crate::fetch::FetchError>,
    },
    /// A RUN needs an ssh agent (`required=true`) that `kiln build --ssh` did not supply.
    #[error(
        "{file}:{line}:{column}: {instruction}: ssh agent {id:?} is required but was not supplied\nhint: kiln build --ssh {id}[=SOCKET] (default: $SSH_AUTH_SOCK)"
    )]
    MissingSsh {
        /// The Dockerfile's name.
        file: String,
        /// Line of the RUN.
        line: u32,
        /// Column of the RUN.
        column: u32,
        /// The instruction as written.
        instruction: String,
        /// The ssh id.
        id: String,
    },
    /// ADD of a git repository failed.
    #[error("{at}: {source}")]
    Git {
        /// The step.
        at: Location,
        /// Why.
        #[source]
        source: Box<crate::git::GitError>,
    },
    /// Writing a COPY/ADD heredoc file to the step's temp dir failed.
    #[error("{at}: writing the inline file {}", .path.display())]
    Inline {
        /// The step.
        at: Location,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A layer or cache mount of an imported remote cache could not be fetched.
    #[error("{at}: remote cache")]
    RemoteCache {
        /// The step.
        at: Location,
        /// Why.
        #[source]
        source: Box<cache::remote::RemoteError>,
    },
    /// Something the graph asks for that this solver cannot do yet.
    #[error("{at}: {what} is not supported yet")]
    Unsupported {
        /// The step.
        at: Location,
        /// What.
        what: &'static str,
    },
    /// A step panicked or the graph is malformed (bugs).
    #[error("internal error")]
    Internal(#[source] SchedError<std::convert::Infallible>),
}

/// `e` and its sources, joined with `: ` (as anyhow's `{:#}` renders them).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn tail_text(tail: &[String]) -> String {
    tail.iter().map(|l| format!("\n{l}")).collect()
}

/// A node's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeResult {
    /// The node's filesystem: diff_ids, base first.
    pub chain: Vec<Digest>,
    /// Whether the node added a layer (false: its changes were empty).
    pub made_layer: bool,
}

/// Runs build graphs on a store.
#[derive(Debug, Clone)]
pub struct Solver {
    store: Store,
    opts: SolveOptions,
    /// `--cache-from`: records beyond the local ones, their layers fetched when needed.
    remote: Option<Arc<Imported>>,
}

impl Solver {
    /// A solver over `store`.
    pub fn new(store: Store, opts: SolveOptions) -> Solver {
        Solver {
            store,
            opts,
            remote: None,
        }
    }

    /// Also looks keys up in `imported` (after the local records; see [`crate::remote`]).
    pub fn with_cache_from(mut self, imported: Arc<Imported>) -> Solver {
        self.remote = Some(imported);
        self
    }

    /// Runs the nodes the target needs and writes the image (not tagged).
    ///
    /// Fails on the first failing step, a missing or escaping COPY source, or a store error.
    pub async fn solve(
        &self,
        graph: &BuildGraph,
        events: progress::Sender,
    ) -> Result<Image, SolveError> {
        self.solve_steps(graph, events).await.map(|s| s.image)
    }

    /// [`Solver::solve`], also returning every step's key and result (for a cache export).
    ///
    /// Fails as [`Solver::solve`] does.
    pub async fn solve_steps(
        &self,
        graph: &BuildGraph,
        events: progress::Sender,
    ) -> Result<Solved, SolveError> {
        let mut graph = graph.clone();
        if let Some((n, id)) = crate::mounts::missing_ssh(&graph, &self.opts.ssh) {
            let node = &graph.nodes[n];
            let span = node.span.unwrap_or_default();
            return Err(SolveError::MissingSsh {
                file: self.opts.dockerfile_name.clone(),
                line: span.line,
                column: span.column,
                instruction: location(&self.opts, node).instruction,
                id,
            });
        }
        crate::fetch::pin_checksums(&self.store, &mut graph)
            .await
            .map_err(|(n, source)| SolveError::Fetch {
                at: location(&self.opts, &graph.nodes[n]),
                source: Box::new(source),
            })?;
        let graph = {
            let (opts, sock) = (self.opts.clone(), self.opts.ssh.default_socket());
            tokio::task::spawn_blocking(move || {
                match crate::git::resolve_all(&mut graph, sock.as_deref()) {
                    Ok(()) => Ok(graph),
                    Err((n, source)) => Err(SolveError::Git {
                        at: location(&opts, &graph.nodes[n]),
                        source: Box::new(source),
                    }),
                }
            })
            .await
            .expect("git resolution does not panic")?
        };
        let graph = Arc::new(graph);
        let (keys, clamps, reasons) = {
            let (g, opts) = (Arc::clone(&graph), self.opts.clone());
            let kiln_root = self.store.root().to_path_buf();
            let stat_file = StatCache::file_for(self.store.root(), &opts.context);
            tokio::task::spawn_blocking(move || {
                let t = std::time::Instant::now();
                let stats = StatCache::open(stat_file);
                let opened = t.elapsed();
                let keys = compute_keys(&g, &opts, &stats, &kiln_root);
                let computed = t.elapsed();
                if let Err(e) = stats.save() {
                    tracing::warn!(error = %e, "stat cache not saved");
                }
                tracing::debug!(
                    stat_cache_open = ?opened,
                    keys = ?(computed - opened),
                    stat_cache_save = ?(t.elapsed() - computed),
                    hashed = stats.hashed(),
                    reused = stats.reused(),
                    "cache keys computed"
                );
                keys
            })
            .await
            .expect("key computation does not panic")?
        };
        let runner = Arc::new(Runner {
            store: self.store.clone(),
            graph: Arc::clone(&graph),
            keys: keys.clone(),
            clamps,
            reasons,
            opts: self.opts.clone(),
            events,
            changed: Mutex::default(),
            remote: self.remote.clone(),
        });
        let t = std::time::Instant::now();
        // A cache hit needs only its root: the stages it copies from are not run (and, when
        // they come from a remote cache, not downloaded).
        // A step under `--no-cache-filter`, or built on one, is never a hit up front: whether it
        // may keep its record is known only after the filtered step re-ran.
        let mut forced = vec![false; graph.nodes.len()];
        for n in graph.reachable() {
            forced[n] = runner.filtered(n).is_some()
                || graph.nodes[n].op.inputs().iter().any(|&i| forced[i]);
        }
        let hits = crate::remote::hits(&graph, |n| {
            if forced[n] {
                return None;
            }
            let key = runner.keys[n].as_ref()?;
            runner.cached(n, key).ok().flatten()
        });
        for &n in &hits.skipped {
            for kind in [EventKind::Started, EventKind::Cached, EventKind::Done] {
                runner.emit(n, kind);
            }
        }
        let prefetch = (self.remote.as_ref())
            .and_then(|r| crate::remote::prefetch(r, &self.store, &graph, &hits));
        let inputs_of = |n| hits.inputs_of(&graph, n);
        let done = sched::schedule_with(&graph, runner, self.opts.jobs, inputs_of)
            .await
            .map_err(|e| match e {
                SchedError::Op(e) => e,
                SchedError::Panicked { node } => {
                    SolveError::Internal(SchedError::Panicked { node })
                }
                SchedError::BadGraph { node, input } => {
                    SolveError::Internal(SchedError::BadGraph { node, input })
                }
            })?;
        tracing::debug!(elapsed = ?t.elapsed(), "steps done");
        let config = final_config(&graph, &done);
        if let Some(p) = prefetch {
            let _ = p.await;
        }
        if let Some(r) = &self.remote {
            r.ensure_layers(&self.store, &config.rootfs.diff_ids)
                .await
                .map_err(|source| SolveError::RemoteCache {
                    at: location(&self.opts, &graph.nodes[graph.target]),
                    source: Box::new(source),
                })?;
        }
        let (steps, cache_mounts) = crate::remote::steps(&graph, &keys, &done, &hits);
        if self.remote.is_some() {
            crate::remote::record_locally(&self.store, &steps);
        }
        let store = self.store.clone();
        let image = tokio::task::spawn_blocking(move || store.write_image(&config))
            .await
            .expect("write_image does not panic")
            .map_err(SolveError::Image)?;
        Ok(Solved {
            image,
            steps,
            cache_mounts,
        })
    }
}

/// The image config of the result: the template's config, whose history is the target's
/// base image's (the frontend copies it), then one entry per template step.
fn final_config(graph: &BuildGraph, done: &BTreeMap<NodeId, Arc<NodeResult>>) -> ImageConfig {
    let mut config = graph.image.config.clone();
    let mut history = std::mem::take(&mut config.history);
    for step in &graph.image.history {
        let made = step
            .layer
            .and_then(|l| done.get(&l))
            .is_some_and(|r| r.made_layer);
        history.push(History {
            created: Some(CREATED.to_owned()),
            created_by: Some(step.created_by.clone()),
            author: None,
            comment: Some("buildkit.dockerfile.v0".to_owned()),
            empty_layer: !made,
        });
    }
    config.history = history;
    config.created = Some(CREATED.to_owned());
    config.rootfs.diff_ids = done
        .get(&graph.target)
        .map(|r| r.chain.clone())
        .unwrap_or_default();
    config
}

fn location(opts: &SolveOptions, node: &Node) -> Location {
    Location {
        file: opts.dockerfile_name.clone(),
        line: node.span.map(|s| s.line),
        instruction: if node.instruction.is_empty() {
            node.name.clone()
        } else {
            node.instruction.clone()
        },
    }
}

/// Keys of every needed node, the mtime clamp of each file node, and why each needed node
/// would miss the cache (see [`explain`]).
type Keys = (
    Vec<Option<Digest>>,
    BTreeMap<NodeId, Option<i64>>,
    Vec<Option<String>>,
);

/// Walks and hashes context COPY sources, then computes each needed node's key in order.
fn compute_keys(
    graph: &BuildGraph,
    opts: &SolveOptions,
    stats: &StatCache,
    kiln_root: &Path,
) -> Result<Keys, SolveError> {
    let ignore = Ignore::parse(&opts.dockerignore);
    let mut keys: Vec<Option<Digest>> = vec![None; graph.nodes.len()];
    let mut clamps = BTreeMap::new();
    let history_file = explain::file_for(kiln_root, &opts.context, &opts.dockerfile_name);
    let history = explain::load(&history_file);
    let files_dir = explain::files_dir(&history_file);
    let mut recorded = history.clone();
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
                        let (digest, latest, metas) = hash_context(
                            opts, node, &ignore, stats, &files_dir, &c.sources, &c.exclude,
                        )?;
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
                        if let Err(e) =
                            explain::remember_files(&files_dir, &d, std::slice::from_ref(&meta))
                        {
                            tracing::warn!(error = %e, "explain details not saved");
                        }
                        files.push(meta);
                        Some(d)
                    }
                    None => content.clone(),
                };
                seen_contents.push(seen);
                contents.push(content);
            }
            clamps.insert(n, newest.map(|t| t.max(0)).or(COPY_CLAMP_MTIME));
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
                            &files_dir,
                            std::slice::from_ref(source),
                            &[],
                        )?;
                        files.extend(metas);
                        Some(digest)
                    }
                    _ => None,
                };
                seen_contents.push(content.clone());
                contents.push(content);
            }
        }
        let k = key::node_key(node, &keys, &contents);
        let now = explain::inputs(node, &k, &keys, &seen_contents);
        let id = explain::step_id(&node.name);
        let id = if ids.get(id).copied().unwrap_or(0) > 1 {
            node.name.clone()
        } else {
            id.to_owned()
        };
        reasons[n] = Some(explain::reason(history.get(&id), &now, &files, &files_dir));
        recorded.insert(id, now);
        keys[n] = Some(k);
    }
    if recorded != history
        && let Err(e) = explain::save(&history_file, &recorded)
    {
        tracing::warn!(error = %e, "explain records not saved");
    }
    Ok((keys, clamps, reasons))
}

/// Walks `sources` in the context (after .dockerignore and `exclude`) and hashes them: their
/// content digest, the newest mtime among them (seconds) and the per-file metadata, whose
/// summary is kept for `--explain`.
fn hash_context(
    opts: &SolveOptions,
    node: &Node,
    ignore: &Ignore,
    stats: &StatCache,
    files_dir: &Path,
    sources: &[String],
    exclude: &[String],
) -> Result<(Digest, Option<i64>, Vec<SourceMeta>), SolveError> {
    let at = || location(opts, node);
    let t = std::time::Instant::now();
    let entries = executor::context::walk_sources_parallel(&opts.context, sources, ignore, exclude)
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
    if let Err(e) = explain::remember_files(files_dir, &digest, &metas) {
        tracing::warn!(error = %e, "explain details not saved");
    }
    Ok((digest, newest, metas))
}

/// Metadata and content hashes of walked entries (files hashed in parallel).
fn hash_entries(
    entries: &[SourceEntry],
    stats: &StatCache,
) -> Result<Vec<SourceMeta>, (PathBuf, std::io::Error)> {
    entries
        .par_iter()
        .map(|e| {
            use executor::context::EntryKind as K;
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

fn hash_file(path: &Path) -> std::io::Result<Digest> {
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

/// The last lines of a process's output.
#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                self.lines.push_back(line);
                if self.lines.len() > TAIL_LINES {
                    self.lines.pop_front();
                }
            } else {
                self.partial.push(b);
            }
        }
    }
    fn into_lines(mut self) -> Vec<String> {
        if !self.partial.is_empty() {
            self.push(b"\n");
        }
        self.lines.into()
    }
}

/// Where a file op's remote sources landed: ADD URL downloads (URL to dir and file name) and
/// git checkouts ([`crate::git::checkout_key`] to dir).
struct RemoteSources<'a> {
    fetched: &'a BTreeMap<String, (PathBuf, String)>,
    checkouts: &'a BTreeMap<String, PathBuf>,
}

struct Runner {
    store: Store,
    graph: Arc<BuildGraph>,
    keys: Vec<Option<Digest>>,
    clamps: BTreeMap<NodeId, Option<i64>>,
    /// Why each node misses the cache, when it does.
    reasons: Vec<Option<String>>,
    opts: SolveOptions,
    events: progress::Sender,
    /// Steps re-run by `--no-cache-filter` (or after one) whose result differs from their
    /// previous record: the steps that use them cannot trust their own records.
    changed: Mutex<HashSet<NodeId>>,
    remote: Option<Arc<Imported>>,
}

impl Runner {
    /// The `--no-cache-filter` stage of `n`, when it is one of the filtered stages.
    fn filtered(&self, n: NodeId) -> Option<&str> {
        let label = explain::stage_label(&self.graph.nodes[n].name)?;
        self.opts
            .no_cache_stages
            .iter()
            .find(|s| s.eq_ignore_ascii_case(label))
            .map(String::as_str)
    }

    fn emit(&self, n: NodeId, kind: EventKind) {
        progress::emit(&self.events, n, &self.graph.nodes[n].name, kind);
    }

    fn lowers(&self, chain: &[Digest]) -> Vec<PathBuf> {
        chain
            .iter()
            .rev()
            .map(|d| self.store.snapshot_path(d))
            .collect()
    }

    fn source(&self, n: NodeId, op: &SourceOp) -> Result<NodeResult, SolveError> {
        let at = || location(&self.opts, &self.graph.nodes[n]);
        match op {
            SourceOp::Scratch => Ok(NodeResult {
                chain: vec![],
                made_layer: false,
            }),
            SourceOp::Image { manifest, .. } => {
                let image = self
                    .store
                    .image(manifest)
                    .map_err(|source| SolveError::Store {
                        at: at(),
                        source: Box::new(source),
                    })?;
                let chain = image.config.rootfs.diff_ids.clone();
                if let Some(d) = chain.iter().find(|d| !self.store.has_layer(d)) {
                    return Err(SolveError::MissingLayer {
                        at: at(),
                        diff_id: d.clone(),
                    });
                }
                Ok(NodeResult {
                    chain,
                    made_layer: false,
                })
            }
        }
    }

    /// The cached result of `n`, when its record exists and all its layers are present.
    fn cached(&self, n: NodeId, key: &Digest) -> Result<Option<Vec<Digest>>, SolveError> {
        if self.opts.no_cache {
            return Ok(None);
        }
        let at = || location(&self.opts, &self.graph.nodes[n]);
        let rec = self
            .store
            .cache_get(key)
            .map_err(|source| SolveError::Store {
                at: at(),
                source: Box::new(source),
            })?;
        let local = rec
            .filter(|r| r.layers.iter().all(|d| self.store.has_layer(d)))
            .map(|r| r.layers);
        // An imported record's layers are fetched only when read (crate::remote).
        Ok(local.or_else(|| Some(self.remote.as_ref()?.lookup(key)?.to_vec())))
    }

    fn exec_spec(
        &self,
        n: NodeId,
        x: &ExecOp,
        rootfs: Rootfs,
        inputs: &BTreeMap<NodeId, Arc<NodeResult>>,
    ) -> Result<(InitSpec, RunGuards), SolveError> {
        let at = || location(&self.opts, &self.graph.nodes[n]);
        let lowers = |m: NodeId| {
            self.lowers(
                &inputs
                    .get(&m)
                    .expect("the scheduler passes every input")
                    .chain,
            )
        };
        let ignore = Ignore::parse(&self.opts.dockerignore);
        let cx = crate::mounts::MountContext {
            store: &self.store,
            context: &self.opts.context,
            secrets: &self.opts.secrets,
            ssh: &self.opts.ssh,
            ignore: &ignore,
            lowers: &lowers,
        };
        // A sharing=locked cache mount blocks on its flock: let the runtime move its other
        // tasks (the lock holder's sandbox among them) off this worker meanwhile.
        let prepare = || crate::mounts::prepare(&cx, &x.mounts);
        let prepared = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(prepare),
            _ => prepare(),
        }
        .map_err(|source| SolveError::Mount { at: at(), source })?;
        let mounts = prepared.mounts;
        let (network, lease) = match (x.network, self.opts.network, &self.opts.bridge) {
            (NetworkMode::Host, _, _) | (NetworkMode::Default, NetworkMode::Host, _) => {
                (Network::Host, None)
            }
            (NetworkMode::Default, NetworkMode::Default, Some(bridge)) => {
                // Usually instant (a pooled namespace); may wait for a free slot.
                let acquire = || bridge.acquire();
                let lease = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor())
                {
                    Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                        tokio::task::block_in_place(acquire)
                    }
                    _ => acquire(),
                }
                .map_err(|source| SolveError::Network {
                    at: at(),
                    source: Box::new(source),
                })?;
                (lease.network("kiln"), Some(lease))
            }
            _ => (Network::Loopback, None),
        };
        let mut env = x.env.clone();
        env.extend(x.proxy_env.iter().cloned());
        env.extend(prepared.env);
        let spec = InitSpec::Run(RunSpec {
            rootfs,
            args: x.args.clone(),
            env,
            cwd: x.cwd.clone(),
            user: x.user.clone(),
            hostname: "kiln".to_owned(),
            network,
            mounts,
            tty: false,
            security: self.opts.security.clone(),
        });
        Ok((spec, (prepared.guards, lease)))
    }

    fn file_spec(
        &self,
        n: NodeId,
        f: &FileOp,
        rootfs: Rootfs,
        inputs: &BTreeMap<NodeId, Arc<NodeResult>>,
        remote: RemoteSources<'_>,
        scratch: &Path,
    ) -> Result<InitSpec, SolveError> {
        let RemoteSources { fetched, checkouts } = remote;
        let at = || location(&self.opts, &self.graph.nodes[n]);
        let mut tasks = Vec::new();
        for (i, a) in f.actions.iter().enumerate() {
            tasks.push(match a {
                FileAction::Inline(x) => {
                    let dir = scratch.join(format!("inline-{i}"));
                    executor::copy::stage_inline(&dir, &x.name, &x.data).map_err(|source| {
                        SolveError::Inline {
                            at: at(),
                            path: dir.join(&x.name),
                            source,
                        }
                    })?;
                    CopyTask::Copy {
                        from: CopyFrom::Context {
                            dir,
                            ignore: Vec::new(),
                        },
                        // The name is a file name, not a pattern: escape glob characters.
                        sources: vec![x.name.chars().fold(String::new(), |mut o, c| {
                            if matches!(c, '*' | '?' | '[' | '\\') {
                                o.push('\\');
                            }
                            o.push(c);
                            o
                        })],
                        dest: x.dest.clone(),
                        chown: x.chown.clone(),
                        chmod: x.chmod.clone(),
                        exclude: Vec::new(),
                        parents: false,
                        unpack_archives: false,
                    }
                }
                FileAction::Mkdir { path, owner } => CopyTask::Mkdir {
                    path: path.clone(),
                    owner: owner.clone(),
                },
                FileAction::Copy(c) => {
                    let mut sources = c.sources.clone();
                    let from = match &c.from {
                        CopySource::Context => CopyFrom::Context {
                            dir: self.opts.context.clone(),
                            ignore: self.opts.dockerignore.lines().map(str::to_owned).collect(),
                        },
                        CopySource::Node(m) => CopyFrom::Layers {
                            lowers: self.lowers(
                                &inputs
                                    .get(m)
                                    .expect("the scheduler passes every input")
                                    .chain,
                            ),
                        },
                        CopySource::Url { url, .. } => {
                            let Some((dir, name)) = fetched.get(url) else {
                                return Err(SolveError::Unsupported {
                                    at: at(),
                                    what: "ADD from a URL that was not downloaded",
                                });
                            };
                            sources = vec![name.clone()];
                            CopyFrom::Context {
                                dir: dir.clone(),
                                ignore: Vec::new(),
                            }
                        }
                        CopySource::Git(g) => {
                            let Some(dir) = checkouts.get(&crate::git::checkout_key(g)) else {
                                return Err(SolveError::Unsupported {
                                    at: at(),
                                    what: "ADD from a git repository that was not checked out",
                                });
                            };
                            // The checkout (or its subdir) is copied like a context directory.
                            sources = vec![".".to_owned()];
                            CopyFrom::Context {
                                dir: dir.clone(),
                                ignore: Vec::new(),
                            }
                        }
                    };
                    CopyTask::Copy {
                        from,
                        sources,
                        dest: c.dest.clone(),
                        chown: c.chown.clone(),
                        chmod: c.chmod.clone(),
                        exclude: c.exclude.clone(),
                        parents: c.parents,
                        unpack_archives: c.unpack_archives,
                    }
                }
            });
        }
        Ok(InitSpec::Copy(CopySpec { rootfs, tasks }))
    }

    /// Runs the sandbox for `spec`, streaming its output; fails on a non-zero exit.
    async fn sandbox(&self, n: NodeId, spec: &InitSpec) -> Result<(), SolveError> {
        let at = || location(&self.opts, &self.graph.nodes[n]);
        let spawn_err = |source| SolveError::Spawn {
            at: at(),
            exe: self.opts.kiln_exe.clone(),
            source,
        };
        let mut cmd = executor::sandbox::command(&self.opts.kiln_exe, spec).map_err(spawn_err)?;
        // A killed build takes its sandbox with it.
        executor::sys::kill_with_spawner(&mut cmd);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = crate::spawn::spawn(cmd).await.map_err(spawn_err)?;
        let tail = Mutex::new(Tail::default());
        let pump = |mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>, stream: Stream| {
            let tail = &tail;
            async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            tail.lock().expect("not poisoned").push(&buf[..k]);
                            self.emit(
                                n,
                                EventKind::Log {
                                    stream,
                                    bytes: buf[..k].to_vec(),
                                },
                            );
                        }
                    }
                }
            }
        };
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        let (_, _, status) = tokio::join!(
            pump(Box::new(out), Stream::Stdout),
            pump(Box::new(err), Stream::Stderr),
            child.wait()
        );
        let status = status.map_err(spawn_err)?;
        if status.success() {
            return Ok(());
        }
        let code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        });
        let tail = tail.into_inner().expect("not poisoned").into_lines();
        // Setup and copy failures: exit 125 with one `kiln: ` line naming the culprit.
        if code == 125
            && let Some(msg) = tail.iter().rev().find_map(|l| l.strip_prefix("kiln: "))
        {
            return Err(SolveError::Sandbox {
                at: at(),
                message: msg.to_owned(),
            });
        }
        Err(SolveError::Exit {
            at: at(),
            code,
            tail,
        })
    }

    async fn build(
        &self,
        n: NodeId,
        key: &Digest,
        root: &NodeResult,
        inputs: &BTreeMap<NodeId, Arc<NodeResult>>,
    ) -> Result<NodeResult, SolveError> {
        let node = &self.graph.nodes[n];
        let at = || location(&self.opts, node);
        let store_err = |source| SolveError::Store {
            at: at(),
            source: Box::new(source),
        };
        let tmp = self.store.temp_dir("step-").map_err(store_err)?;
        let upper = tmp.path().join("upper");
        let work = tmp.path().join("work");
        for d in [&upper, &work] {
            std::fs::create_dir(d).map_err(|e| SolveError::Spawn {
                at: at(),
                exe: d.clone(),
                source: e,
            })?;
        }
        let rootfs = Rootfs {
            lowers: self.lowers(&root.chain),
            upper: upper.clone(),
            work,
        };
        let mut guards = None;
        let fetched = match &node.op {
            Op::File(f) => crate::fetch::fetch_all(&self.store, f)
                .await
                .map_err(|source| SolveError::Fetch {
                    at: at(),
                    source: Box::new(source),
                })?,
            _ => Default::default(),
        };
        let checkouts = match &node.op {
            Op::File(f)
                if f.actions.iter().any(
                    |a| matches!(a, FileAction::Copy(c) if matches!(c.from, CopySource::Git(_))),
                ) =>
            {
                let (store, f, sock) = (
                    self.store.clone(),
                    f.clone(),
                    self.opts.ssh.default_socket(),
                );
                tokio::task::spawn_blocking(move || {
                    crate::git::checkout_all(&store, &f, sock.as_deref())
                })
                .await
                .expect("git checkout does not panic")
                .map_err(|source| SolveError::Git {
                    at: at(),
                    source: Box::new(source),
                })?
            }
            _ => Default::default(),
        };
        let mut mtimes = None;
        let (spec, clamp) = match &node.op {
            Op::Exec(x) => {
                mtimes = Some(cache::layer::writer::StepMtimes::starting_now());
                let (spec, g) = self.exec_spec(n, x, rootfs, inputs)?;
                guards = Some(g);
                (spec, RUN_CLAMP_MTIME)
            }
            Op::File(f) => (
                self.file_spec(
                    n,
                    f,
                    rootfs,
                    inputs,
                    RemoteSources {
                        fetched: &fetched.files,
                        checkouts: &checkouts.dirs,
                    },
                    tmp.path(),
                )?,
                [fetched.newest, checkouts.newest].into_iter().fold(
                    self.clamps.get(&n).copied().flatten(),
                    |c, t| match (c, t) {
                        (Some(c), Some(t)) => Some(c.max(t)),
                        (c, t) => c.or(t),
                    },
                ),
            ),
            Op::Source(_) => unreachable!("sources are resolved, not built"),
        };
        self.sandbox(n, &spec).await?;
        drop(guards);
        let store = self.store.clone();
        let layer = tokio::task::spawn_blocking(move || {
            mtimes.map_or(Ok(0), |m| m.restamp(&upper))?;
            store.commit_layer(&upper, &CommitOptions { clamp_mtime: clamp })
        })
        .await
        .expect("commit_layer does not panic")
        .map_err(store_err)?;
        drop(tmp);
        let mut chain = root.chain.clone();
        let made_layer = layer.is_some();
        chain.extend(layer.map(|l| l.diff_id));
        self.store
            .cache_put(
                key,
                &CacheRecord {
                    layers: chain.clone(),
                },
            )
            .map_err(store_err)?;
        Ok(NodeResult { chain, made_layer })
    }

    async fn run_node(
        &self,
        n: NodeId,
        inputs: BTreeMap<NodeId, Arc<NodeResult>>,
    ) -> Result<NodeResult, SolveError> {
        let node = &self.graph.nodes[n];
        let root = match &node.op {
            Op::Source(s) => return self.source(n, s),
            Op::Exec(x) => x.root,
            Op::File(f) => f.root,
        };
        let root = inputs.get(&root).expect("the scheduler passes every input");
        let key = self.keys[n]
            .as_ref()
            .expect("keys exist for every needed node");
        let filtered = self.filtered(n);
        let after_changed = {
            let changed = self.changed.lock().expect("not poisoned");
            inputs.keys().any(|i| changed.contains(i))
        };
        let forced = filtered.is_some() || after_changed;
        if !forced && let Some(chain) = self.cached(n, key)? {
            self.emit(n, EventKind::Cached);
            let made_layer = chain.len() > root.chain.len();
            return Ok(NodeResult { chain, made_layer });
        }
        // A forced step's previous result, to tell its users whether they may keep theirs.
        let previous = match forced {
            true => self.store.cache_get(key).ok().flatten(),
            false => None,
        };
        let why = match (self.opts.no_cache, filtered) {
            (true, _) => "--no-cache".to_owned(),
            (false, Some(stage)) => format!("--no-cache-filter {stage}"),
            (false, None) if after_changed => {
                "a step it uses was re-run (--no-cache-filter) with a different result".to_owned()
            }
            _ => self.reasons[n]
                .clone()
                .unwrap_or_else(|| "no cache entry".to_owned()),
        };
        self.emit(
            n,
            EventKind::Log {
                stream: Stream::Stderr,
                bytes: format!("{}{why}\n", explain::PREFIX).into_bytes(),
            },
        );
        if let Some(r) = &self.remote {
            crate::remote::materialize(r, &self.store, &self.graph, n, root, &inputs)
                .await
                .map_err(|source| SolveError::RemoteCache {
                    at: location(&self.opts, node),
                    source: Box::new(source),
                })?;
        }
        let result = self.build(n, key, root, &inputs).await?;
        if previous.is_some_and(|p| p.layers != result.chain) {
            self.changed.lock().expect("not poisoned").insert(n);
        }
        Ok(result)
    }
}

impl OpRunner for Runner {
    type Output = Arc<NodeResult>;
    type Error = SolveError;

    async fn run(
        &self,
        n: NodeId,
        inputs: BTreeMap<NodeId, Arc<NodeResult>>,
    ) -> Result<Arc<NodeResult>, SolveError> {
        self.emit(n, EventKind::Started);
        match self.run_node(n, inputs).await {
            Ok(r) => {
                self.emit(n, EventKind::Done);
                Ok(Arc::new(r))
            }
            Err(e) => {
                self.emit(n, EventKind::Error { message: chain(&e) });
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_and_a_partial_one() {
        let mut t = Tail::default();
        for i in 0..15 {
            t.push(format!("line {i}\n").as_bytes());
        }
        t.push(b"no newline");
        let lines = t.into_lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines.first().map(String::as_str), Some("line 6"));
        assert_eq!(lines.last().map(String::as_str), Some("no newline"));
    }

    #[test]
    fn exit_error_names_line_instruction_and_code() {
        let e = SolveError::Exit {
            at: Location {
                file: "Dockerfile".into(),
                line: Some(7),
                instruction: "RUN false".into(),
            },
            code: 1,
            tail: vec!["oops".into()],
        };
        assert_eq!(e.to_string(), "Dockerfile:7: RUN false: exit code 1\noops");
    }
}

//! Runs one node of the graph: the cache lookup, the `--no-cache-filter` policy, the op
//! itself ([`super::source`], [`super::exec`], [`super::file`] and [`super::sandbox`]), then
//! the layer commit and the cache record.

use super::{LayerMtimes, NodeResult, SolveError, SolveOp, SolveOptions, chain, location};
use crate::cachesource::{CacheSource, CacheSourceError};
use crate::graph::MountKind;
use crate::graph::{BuildGraph, NodeId, Op};
use crate::progress::{self, EventKind};
use crate::sched::OpRunner;
use cache::oci::Digest;
use cache::records::CacheRecord;
use cache::snapshot::CommitOptions;
use cache::store::Store;
use executor::spec::{InitSpec, Rootfs};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub(super) struct Runner {
    pub(super) store: Store,
    pub(super) graph: Arc<BuildGraph>,
    pub(super) keys: Vec<Option<Digest>>,
    pub(super) clamps: BTreeMap<NodeId, Option<i64>>,
    /// Why each node misses the cache, when it does.
    pub(super) reasons: Vec<Option<String>>,
    pub(super) opts: SolveOptions,
    pub(super) events: progress::Sender,
    /// Steps re-run by `--no-cache-filter` (or after one) whose result differs from their
    /// previous record: the steps that use them cannot trust their own records.
    pub(super) changed: Mutex<HashSet<NodeId>>,
    /// Where results are looked up by key, in order: the local store, then imported caches.
    pub(super) sources: Vec<Arc<dyn CacheSource>>,
    /// Keys built during this build (shared by the solves of a multi-platform build): hits
    /// even under `--no-cache`, so a build-platform stage runs once for every target.
    pub(super) session: Arc<Mutex<HashSet<Digest>>>,
}

impl Runner {
    /// The `--no-cache-filter` stage of `n`, when it is one of the filtered stages.
    pub(super) fn filtered(&self, n: NodeId) -> Option<&str> {
        let label = self.graph.nodes[n].stage.as_deref()?;
        self.opts
            .no_cache_stages
            .iter()
            .find(|s| s.eq_ignore_ascii_case(label))
            .map(String::as_str)
    }

    pub(super) fn emit(&self, n: NodeId, kind: EventKind) {
        progress::emit(&self.events, n, &self.graph.nodes[n].name, kind);
    }

    pub(super) fn lowers(&self, chain: &[Digest]) -> Vec<PathBuf> {
        chain
            .iter()
            .rev()
            .map(|d| self.store.snapshot_path(d))
            .collect()
    }

    /// The cached result of `n`: the chain of the first cache source that has its key (an
    /// imported record's layers are fetched only when read). None under `--no-cache`.
    pub(super) fn cached(
        &self,
        n: NodeId,
        key: &Digest,
    ) -> Result<Option<Vec<Digest>>, SolveError> {
        let this_build = self.session.lock().expect("not poisoned").contains(key);
        if self.opts.no_cache && !this_build {
            return Ok(None);
        }
        // Under --no-cache only the local store's record this build wrote counts.
        let sources = match self.opts.no_cache {
            true => &self.sources[..1],
            false => &self.sources[..],
        };
        for s in sources {
            let found = s
                .lookup(key)
                .map_err(|e| source_err(location(&self.opts, &self.graph.nodes[n]), e))?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Before step `n` runs: every source makes present the layers of its root and of every
    /// other input it reads (COPY --from, RUN --mount from=), and the contents of its cache
    /// mounts that are absent locally.
    async fn materialize(
        &self,
        n: NodeId,
        root: &NodeResult,
        inputs: &BTreeMap<NodeId, Arc<NodeResult>>,
    ) -> Result<(), SolveError> {
        let mut need: Vec<Digest> = root.chain.clone();
        for r in inputs.values() {
            need.extend(r.chain.iter().cloned());
        }
        need.sort();
        need.dedup();
        let mut mounts = Vec::new();
        if let Op::Exec(x) = &self.graph.nodes[n].op {
            for m in &x.mounts {
                if let MountKind::Cache { id, .. } = &m.kind {
                    mounts.push(id.clone());
                }
            }
        }
        let at = || location(&self.opts, &self.graph.nodes[n]);
        for s in &self.sources {
            s.fetch(&self.store, &need)
                .await
                .map_err(|e| source_err(at(), e))?;
            s.restore_mounts(&self.store, &mounts)
                .await
                .map_err(|e| source_err(at(), e))?;
        }
        Ok(())
    }

    /// Builds node `n`'s layer on `root`: a fresh upper/work dir under `KILN_ROOT/tmp`, the
    /// sandbox that `prepare` specifies on the overlay (with the layer's mtime clamp, and
    /// what must live until the sandbox exits), the commit, and the record `key -> chain`.
    pub(super) async fn build<H>(
        &self,
        n: NodeId,
        root: &NodeResult,
        prepare: impl AsyncFnOnce(Rootfs, &Path) -> Result<(InitSpec, LayerMtimes, H), SolveError>,
    ) -> Result<NodeResult, SolveError> {
        let node = &self.graph.nodes[n];
        let key = self.keys[n]
            .as_ref()
            .expect("keys exist for every needed node");
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
        let lowers = match &node.op {
            // COPY --link: the copy runs on an empty root; its layer goes on the stage's.
            Op::File(f) if super::file::on_empty_root(f) => Vec::new(),
            _ => self.lowers(&root.chain),
        };
        let rootfs = Rootfs {
            lowers,
            upper: upper.clone(),
            work,
        };
        let (spec, mtimes, hold) = prepare(rootfs, tmp.path()).await?;
        self.sandbox(n, &spec).await?;
        drop(hold);
        let store = self.store.clone();
        let layer = cache::blocking::unblock(move || {
            let clamp_mtime = match mtimes {
                LayerMtimes::Clamp(c) => c,
                LayerMtimes::Step(m) => {
                    m.restamp(&upper)?;
                    None
                }
            };
            store.commit_layer(&upper, &CommitOptions { clamp_mtime })
        })
        .await
        .map_err(store_err)?;
        drop(tmp);
        let mut chain = root.chain.clone();
        let made_layer = layer.is_some();
        chain.extend(layer.map(|l| l.diff_id));
        let (store, key, record) = (
            self.store.clone(),
            key.clone(),
            CacheRecord {
                layers: chain.clone(),
            },
        );
        // The record is fsynced: off the runtime's workers, as every blocking write.
        cache::blocking::unblock(move || store.cache_put(&key, &record))
            .await
            .map_err(store_err)?;
        Ok(NodeResult { chain, made_layer })
    }

    pub(super) async fn run_node(
        &self,
        n: NodeId,
        inputs: BTreeMap<NodeId, Arc<NodeResult>>,
    ) -> Result<NodeResult, SolveError> {
        let node = &self.graph.nodes[n];
        let root = match &node.op {
            Op::Source(s) => return s.exec(self, n, None, &inputs).await,
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
        self.emit(n, EventKind::CacheMiss { reason: why });
        self.materialize(n, root, &inputs).await?;
        let result = match &node.op {
            Op::Exec(x) => x.exec(self, n, Some(root), &inputs).await?,
            Op::File(f) => f.exec(self, n, Some(root), &inputs).await?,
            Op::Source(_) => unreachable!("sources returned above"),
        };
        self.session
            .lock()
            .expect("not poisoned")
            .insert(key.clone());
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

/// A cache source's failure at `at`, as the solver reports it.
pub(super) fn source_err(at: super::Location, e: CacheSourceError) -> SolveError {
    match e {
        CacheSourceError::Store(source) => SolveError::Store {
            at,
            source: Box::new(source),
        },
        CacheSourceError::Remote(source) => SolveError::RemoteCache {
            at,
            source: Box::new(source),
        },
    }
}

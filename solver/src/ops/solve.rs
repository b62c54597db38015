//! The solve loop: prepares the graph (checksums, git refs, keys), asks the caches which
//! steps they hold, lets [`crate::sched`] run the rest and writes the image. It only
//! orchestrates: each node is run by [`super::runner`].

use super::keys::compute_keys;
use super::runner::{Runner, source_err};
use super::{CREATED, CreatedRule, NodeResult, SolveError, SolveOptions, location};
use crate::cachesource::{CacheSource, LocalCache};
use crate::graph::{BuildGraph, NodeId};
use crate::progress::{self, EventKind};
use crate::remote::Solved;
use crate::sched::{self, SchedError};
use cache::image::Image;
use cache::oci::{Digest, History, ImageConfig};
use cache::records::{ImageDate, created_key, created_note_key};
use cache::remote::import::Imported;
use cache::store::Store;
use context::statcache::StatCache;
use executor::container::time::rfc3339;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

/// Runs build graphs on a store.
#[derive(Debug, Clone)]
pub struct Solver {
    store: Store,
    opts: SolveOptions,
    /// Where step results are looked up by key: the local store, then `--cache-from`
    /// imports, whose layers are fetched when needed.
    sources: Vec<Arc<dyn CacheSource>>,
    /// Keys built by this solver or the others sharing the set ([`Solver::with_session`]).
    session: Arc<Mutex<HashSet<Digest>>>,
}

impl Solver {
    /// A solver over `store`.
    pub fn new(store: Store, opts: SolveOptions) -> Solver {
        Solver {
            sources: vec![Arc::new(LocalCache::new(store.clone()))],
            store,
            opts,
            session: Arc::default(),
        }
    }

    /// Shares `session`, the keys built so far in this build, with other solvers (one per
    /// platform of a multi-platform build): under `--no-cache` a step one of them built is a
    /// hit for the others.
    pub fn with_session(mut self, session: Arc<Mutex<HashSet<Digest>>>) -> Solver {
        self.session = session;
        self
    }

    /// Also looks keys up in `imported` (after the local records; see [`crate::remote`]).
    pub fn with_cache_from(mut self, imported: Arc<Imported>) -> Solver {
        self.sources.push(imported);
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
            cache::blocking::unblock(move || {
                match crate::git::resolve_all(&mut graph, sock.as_deref()) {
                    Ok(()) => Ok(graph),
                    Err((n, source)) => Err(SolveError::Git {
                        at: location(&opts, &graph.nodes[n]),
                        source: Box::new(source),
                    }),
                }
            })
            .await?
        };
        let graph = Arc::new(graph);
        let (keys, clamps, reasons, explain) = {
            let (g, opts) = (Arc::clone(&graph), self.opts.clone());
            let kiln_root = self.store.root().to_path_buf();
            let stat_file = StatCache::file_for(self.store.root(), &opts.context);
            cache::blocking::unblock(move || {
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
            .await?
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
            sources: self.sources.clone(),
            session: Arc::clone(&self.session),
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
        let prefetch = crate::remote::prefetch(&self.sources, &self.store, &graph, &hits);
        let inputs_of = |n| hits.inputs_of(&graph, n);
        let done = sched::schedule_with(&graph, runner, self.opts.jobs, inputs_of).await;
        // `--explain` records what this build saw, whether or not it succeeded.
        cache::blocking::unblock(move || {
            if let Err(e) = explain.write() {
                tracing::warn!(error = %e, "explain records not saved");
            }
        })
        .await;
        let done = done.map_err(|e| match e {
            SchedError::Op(e) => e,
            SchedError::Panicked { node } => SolveError::Internal(SchedError::Panicked { node }),
            SchedError::BadGraph { node, input } => {
                SolveError::Internal(SchedError::BadGraph { node, input })
            }
        })?;
        tracing::debug!(elapsed = ?t.elapsed(), "steps done");
        let mut config = final_config(&graph, &done);
        let dated = date_image(
            &self.store,
            &self.sources,
            &self.opts.created,
            &mut config,
            graph.image.history.len(),
        );
        if let Some(p) = prefetch {
            let _ = p.await;
        }
        for s in &self.sources {
            s.fetch(&self.store, &config.rootfs.diff_ids)
                .await
                .map_err(|e| source_err(location(&self.opts, &graph.nodes[graph.target]), e))?;
        }
        let chains = done.iter().map(|(&n, r)| (n, r.chain.clone())).collect();
        let (steps, cache_mounts) = crate::remote::steps(&graph, &keys, &chains, &hits);
        for s in &self.sources {
            s.keep(&self.store, &steps);
        }
        let store = self.store.clone();
        let image = cache::blocking::unblock(move || store.write_image(&config))
            .await
            .map_err(SolveError::Image)?;
        // Where the date came from, for `kiln inspect`: kept beside the image, not in it.
        let (secs, from, date) = dated;
        let diff_ids = &image.config.rootfs.diff_ids;
        let note = ImageDate {
            created: secs,
            from: Some(from),
            layers: diff_ids.clone(),
        };
        let note_key = created_note_key(&rfc3339(secs), diff_ids);
        if let Err(error) = self.store.date_put(&note_key, &note) {
            tracing::warn!(%error, "the note of where the image's date came from is not kept");
        }
        Ok(Solved {
            image,
            steps,
            cache_mounts,
            date,
        })
    }
}

/// The image config of the result: the template's config, whose history is the target's
/// base image's (the frontend copies it), then one entry per template step.
pub(super) fn final_config(
    graph: &BuildGraph,
    done: &BTreeMap<NodeId, Arc<NodeResult>>,
) -> ImageConfig {
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

/// Dates the image by `rule`: its `created` and the dates of its `new` last history entries
/// (the base image's entries keep theirs, as BuildKit). Returns the date (seconds) and where
/// it came from. Without SOURCE_DATE_EPOCH or a git HEAD, the date is the first build's clock,
/// kept (`dates/`, and in exported caches) under the undated config's [`created_key`], so a
/// rebuild of the same content gets the same date and digest.
pub(super) fn date_image(
    store: &Store,
    sources: &[Arc<dyn CacheSource>],
    rule: &CreatedRule,
    config: &mut ImageConfig,
    new: usize,
) -> (i64, String, Option<(cache::oci::Digest, i64)>) {
    let mut record = None;
    let (secs, from) = match rule {
        CreatedRule::SourceDateEpoch { secs, from } => {
            (*secs, format!("SOURCE_DATE_EPOCH={secs} ({from})"))
        }
        CreatedRule::GitHead { secs, commit } => (
            *secs,
            format!("commit time of the context's git HEAD {commit}"),
        ),
        CreatedRule::FirstBuild => {
            let undated = serde_json::to_vec(&*config).expect("an image config serializes");
            let key = created_key(&undated);
            let from = String::from("the clock of the first build of this content");
            // The local record, else an imported one (kept locally), else now (recorded).
            let local = store.date_get(&key).ok().flatten().map(|d| d.created);
            let t = local.or_else(|| sources.iter().find_map(|s| s.created(&key)));
            let secs = t.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64)
            });
            if local.is_none() {
                let date = ImageDate {
                    created: secs,
                    from: None,
                    layers: config.rootfs.diff_ids.clone(),
                };
                // Best effort: without it, only the next build's date differs.
                if let Err(error) = store.date_put(&key, &date) {
                    tracing::warn!(%error, "the image's date is not recorded");
                }
            }
            record = Some((key, secs));
            (secs, from)
        }
    };
    let t = rfc3339(secs);
    let first_new = config.history.len().saturating_sub(new);
    for h in &mut config.history[first_new..] {
        h.created = Some(t.clone());
    }
    config.created = Some(t);
    (secs, from, record)
}

//! The solver's side of the remote cache (`cache::remote`): what a build gives an export,
//! and the points where an import's lazily fetched layers and cache mounts are made real.
//!
//! A record found in an imported cache is a hit like a local one, but its layers may not be in
//! the store. They are fetched only when something reads them:
//! - a step that misses and runs on top of (or copies from, or bind-mounts) a remote hit
//!   ([`CacheSource::fetch`], [`CacheSource::restore_mounts`]);
//! - the final image's layers, before the image is written.
//!
//! A hit whose result only feeds other hits (a builder stage whose files were copied by a
//! cached COPY) is never downloaded.
//!
//! An import is a [`CacheSource`] like the local store: the solve loop asks both, in order.

use crate::cachesource::{CacheSource, CacheSourceError, Fetch};
use crate::graph::{BuildGraph, MountKind, NodeId, Op};
use cache::image::Image;
use cache::oci::Digest;
use cache::remote::Mode;
use cache::remote::export::{ExportMount, ExportPlan, ExportRecord};
use cache::remote::import::Imported;
use cache::store::Store;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A finished build: the image and every step's key and result, for a cache export.
#[derive(Debug, Clone)]
pub struct Solved {
    /// The image (written, not tagged).
    pub image: Image,
    /// Every exec and file step that ran or was found in a cache, in graph order.
    pub steps: Vec<SolvedStep>,
    /// Cache ids of the `RUN --mount=type=cache` mounts of the steps the target needed.
    pub cache_mounts: Vec<String>,
    /// The image's date record (key and seconds) when the date is the first build's clock:
    /// exported with the steps, so a runner that imports the cache dates the image alike.
    pub date: Option<(Digest, i64)>,
}

/// One step of a [`Solved`] build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolvedStep {
    /// The node.
    pub node: NodeId,
    /// Its cache key.
    pub key: Digest,
    /// The key of the step it ran on (None when that is a base image or scratch).
    pub parent: Option<Digest>,
    /// Its filesystem, base first.
    pub chain: Vec<Digest>,
    /// Whether the final image is built on it (the target or one of its roots).
    pub in_final: bool,
}

impl Solved {
    /// The records an export of `mode` carries: the final image's steps (min) or all (max),
    /// and with `mounts` the cache mount directories under `store` (those absent here are
    /// carried over from an imported cache by the export).
    pub fn export_plan(&self, mode: Mode, mounts: bool, store: &Store) -> ExportPlan {
        export_plan(std::slice::from_ref(self), mode, mounts, store)
    }

    fn records(&self, mode: Mode) -> impl Iterator<Item = ExportRecord> + '_ {
        self.steps
            .iter()
            .filter(move |s| mode == Mode::Max || s.in_final)
            .map(|s| ExportRecord {
                key: s.key.clone(),
                parent: s.parent.clone(),
                chain: s.chain.clone(),
                created: None,
            })
            .chain(self.date.iter().map(|(key, secs)| ExportRecord {
                key: key.clone(),
                parent: None,
                chain: self.image.config.rootfs.diff_ids.clone(),
                created: Some(*secs),
            }))
    }
}

/// One export of several solves (the platforms of a multi-platform build), as BuildKit
/// exports every platform's result into one cache: the records of each (`mode` as in
/// [`Solved::export_plan`]), a key only once (a build-platform stage is the same step in
/// every solve; the platform is part of every other key, so the platforms' records never
/// collide), and each cache mount once.
pub fn export_plan(builds: &[Solved], mode: Mode, mounts: bool, store: &Store) -> ExportPlan {
    let mut keys = BTreeSet::new();
    let records = builds
        .iter()
        .flat_map(|b| b.records(mode))
        .filter(|r| keys.insert(r.key.clone()))
        .collect();
    let ids: BTreeSet<&String> = match mounts {
        true => builds.iter().flat_map(|b| &b.cache_mounts).collect(),
        false => BTreeSet::new(),
    };
    let mounts = ids
        .into_iter()
        .map(|id| ExportMount {
            id: id.clone(),
            dir: crate::mounts::cache_dir_path(store.root(), id),
        })
        .collect();
    ExportPlan { records, mounts }
}

/// Which needed nodes are cache hits, and the hits no step needs the result of.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hits {
    hit: BTreeMap<NodeId, Vec<Digest>>,
    /// Hits that are not run at all (reported as cached).
    pub(crate) skipped: Vec<NodeId>,
}

impl Hits {
    /// The inputs `n` needs: a hit only its root (for its result's made-layer flag), any
    /// other node all its inputs.
    pub(crate) fn inputs_of(&self, graph: &BuildGraph, n: NodeId) -> Vec<NodeId> {
        let op = &graph.nodes[n].op;
        match op {
            Op::Exec(x) if self.hit.contains_key(&n) => vec![x.root],
            Op::File(f) if self.hit.contains_key(&n) => vec![f.root],
            _ => op.inputs(),
        }
    }
}

/// Looks every needed exec and file node up with `cached` (local records, then imported
/// ones), and finds the hits that no scheduled node needs.
pub(crate) fn hits(graph: &BuildGraph, cached: impl Fn(NodeId) -> Option<Vec<Digest>>) -> Hits {
    let reachable = graph.reachable();
    let mut h = Hits::default();
    for &n in &reachable {
        if matches!(graph.nodes[n].op, Op::Exec(_) | Op::File(_))
            && let Some(chain) = cached(n)
        {
            h.hit.insert(n, chain);
        }
    }
    let mut seen = BTreeSet::new();
    let mut stack = vec![graph.target];
    while let Some(n) = stack.pop() {
        if seen.insert(n) {
            stack.extend(h.inputs_of(graph, n));
        }
    }
    h.skipped = reachable
        .into_iter()
        .filter(|n| !seen.contains(n) && h.hit.contains_key(n))
        .collect();
    h
}

/// Starts downloading, in the background, the layers of the first hit on the final image's
/// path (walking from the target down its roots): they are needed either way (as the final
/// image, or under the first step that must run on them), and fetching them while other
/// stages run hides the download. Errors are left to the fetch that needs the layers.
pub(crate) fn prefetch(
    sources: &[Arc<dyn CacheSource>],
    store: &Store,
    graph: &BuildGraph,
    hits: &Hits,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut cur = Some(graph.target);
    while let Some(n) = cur {
        if let Some(chain) = hits.hit.get(&n) {
            let (sources, store, chain) = (sources.to_vec(), store.clone(), chain.clone());
            return Some(tokio::spawn(async move {
                for s in &sources {
                    if let Err(error) = s.fetch(&store, &chain).await {
                        tracing::debug!(%error, "prefetch failed");
                    }
                }
            }));
        }
        cur = match &graph.nodes[n].op {
            Op::Exec(x) => Some(x.root),
            Op::File(f) => Some(f.root),
            Op::Source(_) => None,
        };
    }
    None
}

/// The steps of a build, from its keys and results (the layer chain of each node that ran
/// or was looked up).
pub(crate) fn steps(
    graph: &BuildGraph,
    keys: &[Option<Digest>],
    done: &BTreeMap<NodeId, Vec<Digest>>,
    hits: &Hits,
) -> (Vec<SolvedStep>, Vec<String>) {
    let root_of = |n: NodeId| match &graph.nodes[n].op {
        Op::Exec(x) => Some(x.root),
        Op::File(f) => Some(f.root),
        Op::Source(_) => None,
    };
    let mut in_final = BTreeSet::new();
    let mut cur = Some(graph.target);
    while let Some(n) = cur {
        in_final.insert(n);
        cur = root_of(n);
    }
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    // Skipped hits are exported too: a max cache keeps the stages this build did not need.
    let skipped = hits
        .skipped
        .iter()
        .filter_map(|n| Some((*n, hits.hit.get(n)?.clone())));
    let results = done
        .iter()
        .map(|(&n, chain)| (n, chain.clone()))
        .chain(skipped)
        .collect::<BTreeMap<_, _>>();
    for (n, chain) in results {
        let (Some(root), Some(key)) = (root_of(n), keys.get(n).cloned().flatten()) else {
            continue;
        };
        if let Op::Exec(x) = &graph.nodes[n].op {
            for m in &x.mounts {
                if let MountKind::Cache { id, .. } = &m.kind {
                    ids.insert(id.clone());
                }
            }
        }
        out.push(SolvedStep {
            node: n,
            key,
            parent: root_of(root).and(keys.get(root).cloned().flatten()),
            chain,
            in_final: in_final.contains(&n),
        });
    }
    (out, ids.into_iter().collect())
}

/// Writes local records for the steps of a build that hit an imported cache and whose layers
/// are now all in the store, so that the next build on this root hits without `--cache-from`.
/// Best effort: a record that cannot be written is only a later cache miss.
pub(crate) fn record_locally(store: &Store, steps: &[SolvedStep]) {
    for s in steps {
        if matches!(store.cache_get(&s.key), Ok(Some(_)))
            || !s.chain.iter().all(|d| store.has_layer(d))
        {
            continue;
        }
        let rec = cache::records::CacheRecord {
            layers: s.chain.clone(),
        };
        if let Err(error) = store.cache_put(&s.key, &rec) {
            tracing::debug!(key = %s.key, %error, "imported record not kept locally");
        }
    }
}

impl CacheSource for Imported {
    fn lookup(&self, key: &Digest) -> Result<Option<Vec<Digest>>, CacheSourceError> {
        // An imported record's layers are fetched only when read.
        Ok(Imported::lookup(self, key).map(<[Digest]>::to_vec))
    }

    fn created(&self, key: &Digest) -> Option<i64> {
        Imported::created(self, key)
    }

    fn fetch<'a>(&'a self, store: &'a Store, layers: &'a [Digest]) -> Fetch<'a> {
        Box::pin(async move {
            self.ensure_layers(store, layers)
                .await
                .map_err(CacheSourceError::Remote)
        })
    }

    fn restore_mounts<'a>(&'a self, store: &'a Store, ids: &'a [String]) -> Fetch<'a> {
        Box::pin(async move {
            for id in ids {
                let dir = crate::mounts::cache_dir_path(store.root(), id);
                if (self.restore_mount(store, id, &dir).await).map_err(CacheSourceError::Remote)? {
                    tracing::debug!(id, ?dir, "cache mount restored");
                }
            }
            Ok(())
        })
    }

    fn keep(&self, store: &Store, steps: &[SolvedStep]) {
        record_locally(store, steps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{ImageTemplate, SourceOp};
    use crate::sched::tests::{copy_from, node, run_on};
    use cache::oci::{ImageConfig, Platform};

    /// n0 scratch; builder: n1 -> n2; final: n3 (run on n0), n4 = COPY --from n2 onto n3.
    fn graph() -> BuildGraph {
        BuildGraph {
            nodes: vec![
                node(Op::Source(SourceOp::Scratch)),
                run_on(0),
                run_on(1),
                run_on(0),
                copy_from(3, &[2]),
            ],
            target: 4,
            image: ImageTemplate {
                config: ImageConfig::empty(&Platform::host()),
                history: vec![],
            },
        }
    }

    fn chain(n: NodeId) -> Option<Vec<Digest>> {
        Some(vec![Digest::of(&[n as u8])])
    }

    #[test]
    fn a_hit_needs_only_its_root_and_the_stage_it_copies_from_is_skipped() {
        let g = graph();
        let h = hits(&g, chain);
        assert_eq!(h.inputs_of(&g, 4), vec![3]);
        assert_eq!(h.skipped, vec![1, 2], "the builder stage is not run");
    }

    #[test]
    fn a_miss_needs_every_input_and_nothing_is_skipped() {
        let g = graph();
        let h = hits(&g, |n| if n == 4 { None } else { chain(n) });
        assert_eq!(h.inputs_of(&g, 4), vec![3, 2]);
        assert!(h.skipped.is_empty());
    }

    /// A solve whose steps are `(key, in_final)`, each on the one before, with `mounts`.
    fn solved(image: &Image, steps: &[(&[u8], bool)], mounts: &[&str]) -> Solved {
        let mut parent = None;
        let steps = steps
            .iter()
            .enumerate()
            .map(|(node, (key, in_final))| {
                let key = Digest::of(key);
                SolvedStep {
                    node,
                    key: key.clone(),
                    parent: parent.replace(key.clone()),
                    chain: vec![Digest::of(&key.to_string().into_bytes())],
                    in_final: *in_final,
                }
            })
            .collect();
        Solved {
            image: image.clone(),
            steps,
            cache_mounts: mounts.iter().map(|m| m.to_string()).collect(),
            date: None,
        }
    }

    #[test]
    fn several_platforms_export_each_key_and_mount_once() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let image = store
            .write_image(&ImageConfig::empty(&Platform::host()))
            .unwrap();
        // A build-platform stage (the same key in both solves, not in the final image) and
        // each platform's own final step.
        let amd64 = solved(&image, &[(b"tool", false), (b"amd64 run", true)], &["pkgs"]);
        let arm64 = solved(
            &image,
            &[(b"tool", false), (b"arm64 run", true)],
            &["pkgs", "go"],
        );
        let both = [amd64, arm64];
        let keys = |mode| {
            export_plan(&both, mode, true, &store)
                .records
                .into_iter()
                .map(|r| r.key)
                .collect::<Vec<_>>()
        };
        let of = |k: &[u8]| Digest::of(k);
        assert_eq!(
            keys(Mode::Max),
            [of(b"tool"), of(b"amd64 run"), of(b"arm64 run")]
        );
        assert_eq!(keys(Mode::Min), [of(b"amd64 run"), of(b"arm64 run")]);
        let plan = export_plan(&both, Mode::Min, true, &store);
        let ids: Vec<&str> = plan.mounts.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["go", "pkgs"]);
        assert!(
            export_plan(&both, Mode::Min, false, &store)
                .mounts
                .is_empty()
        );
        // One solve exports as before.
        assert_eq!(
            both[0].export_plan(Mode::Max, true, &store),
            export_plan(&both[..1], Mode::Max, true, &store)
        );
    }

    #[test]
    fn unneeded_misses_are_neither_run_nor_reported() {
        let g = graph();
        // The builder's first step has no record (a mode=min cache), the final steps do.
        let h = hits(&g, |n| if n == 1 { None } else { chain(n) });
        assert_eq!(h.skipped, vec![2]);
        assert_eq!(h.inputs_of(&g, 1), vec![0], "a miss keeps its inputs");
    }
}

//! The scheduler: runs the nodes the target needs, each at most once, independent ones
//! concurrently, at most `jobs` at a time.
//!
//! It knows nothing of layers or sandboxes: a node is handed to an [`OpRunner`] with the
//! results of its inputs, and the runner decides whether that means a cache lookup, a sandboxed
//! process or nothing at all. Tests drive it with toy runners that count calls.
//!
//! A node becomes ready when all its inputs are done; ready nodes are spawned on the tokio
//! runtime and wait for a semaphore permit. Nodes the target does not need
//! ([`BuildGraph::reachable`]) are never handed to the runner. The first failure stops the
//! build: nothing new starts and the running nodes are cancelled (dropped).

use crate::graph::{BuildGraph, NodeId};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Runs one node. Implemented by the real runner ([`crate::ops`]) and by test fakes.
pub trait OpRunner: Send + Sync + 'static {
    /// A node's result (for the real runner: its layer chain).
    type Output: Clone + Send + Sync + 'static;
    /// A node's failure.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Runs `node`, whose inputs are all done: `inputs` maps each input id to its result.
    fn run(
        &self,
        node: NodeId,
        inputs: BTreeMap<NodeId, Self::Output>,
    ) -> impl Future<Output = Result<Self::Output, Self::Error>> + Send;
}

/// Why a schedule failed.
#[derive(Debug, thiserror::Error)]
pub enum SchedError<E: std::error::Error + 'static> {
    /// A node's op failed.
    #[error(transparent)]
    Op(E),
    /// A node's task panicked (a bug).
    #[error("build step {node} panicked")]
    Panicked {
        /// The node.
        node: NodeId,
    },
    /// An input id does not precede its user (a frontend bug).
    #[error("build graph node {node} has input {input}, which is not an earlier node")]
    BadGraph {
        /// The node.
        node: NodeId,
        /// Its bad input.
        input: NodeId,
    },
}

/// What a node's task returns.
type Finished<R> = (
    NodeId,
    Result<<R as OpRunner>::Output, <R as OpRunner>::Error>,
);

/// Runs every node the target needs; returns each run node's result by id.
///
/// Fails with the first node failure (others still running are cancelled).
pub async fn schedule<R: OpRunner>(
    graph: &BuildGraph,
    runner: Arc<R>,
    jobs: usize,
) -> Result<BTreeMap<NodeId, R::Output>, SchedError<R::Error>> {
    schedule_with(graph, runner, jobs, |n| graph.nodes[n].op.inputs()).await
}

/// [`schedule`], where `inputs_of(n)` says which inputs node `n` needs: a subset of its op's
/// inputs (a cache hit needs only its root, not the stage it copies from). Only nodes
/// reachable from the target through `inputs_of` run.
///
/// Fails as [`schedule`] does.
pub async fn schedule_with<R: OpRunner>(
    graph: &BuildGraph,
    runner: Arc<R>,
    jobs: usize,
    inputs_of: impl Fn(NodeId) -> Vec<NodeId>,
) -> Result<BTreeMap<NodeId, R::Output>, SchedError<R::Error>> {
    let needed = {
        let mut seen = BTreeMap::new();
        let mut stack = vec![graph.target];
        while let Some(n) = stack.pop() {
            if n < graph.nodes.len() && seen.insert(n, ()).is_none() {
                stack.extend(inputs_of(n));
            }
        }
        seen.into_keys().collect::<Vec<_>>()
    };
    // Distinct inputs of each needed node, and who waits on whom.
    let mut inputs: BTreeMap<NodeId, Vec<NodeId>> = BTreeMap::new();
    let mut users: BTreeMap<NodeId, Vec<NodeId>> = BTreeMap::new();
    for &n in &needed {
        let mut ins = inputs_of(n);
        ins.sort_unstable();
        ins.dedup();
        for &i in &ins {
            if i >= n {
                return Err(SchedError::BadGraph { node: n, input: i });
            }
            users.entry(i).or_default().push(n);
        }
        inputs.insert(n, ins);
    }
    let mut waiting: BTreeMap<NodeId, usize> = inputs.iter().map(|(&n, i)| (n, i.len())).collect();
    let permits = Arc::new(Semaphore::new(jobs.max(1)));
    let mut done: BTreeMap<NodeId, R::Output> = BTreeMap::new();
    let mut set: JoinSet<Finished<R>> = JoinSet::new();
    let mut tasks: BTreeMap<tokio::task::Id, NodeId> = BTreeMap::new();

    let spawn = |n: NodeId,
                 done: &BTreeMap<NodeId, R::Output>,
                 set: &mut JoinSet<_>,
                 tasks: &mut BTreeMap<tokio::task::Id, NodeId>| {
        let ins: BTreeMap<NodeId, R::Output> =
            inputs[&n].iter().map(|i| (*i, done[i].clone())).collect();
        let runner = Arc::clone(&runner);
        let permits = Arc::clone(&permits);
        let handle = set.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            (n, runner.run(n, ins).await)
        });
        tasks.insert(handle.id(), n);
    };

    for (&n, &w) in &waiting {
        if w == 0 {
            spawn(n, &done, &mut set, &mut tasks);
        }
    }
    while let Some(joined) = set.join_next_with_id().await {
        let (n, out) = match joined {
            Ok((_, (n, Ok(out)))) => (n, out),
            Ok((_, (_, Err(e)))) => {
                set.shutdown().await;
                return Err(SchedError::Op(e));
            }
            Err(e) => {
                let node = tasks.get(&e.id()).copied().unwrap_or(usize::MAX);
                set.shutdown().await;
                return Err(SchedError::Panicked { node });
            }
        };
        done.insert(n, out);
        for &u in users.get(&n).map(Vec::as_slice).unwrap_or(&[]) {
            let w = waiting.get_mut(&u).expect("every user is a needed node");
            *w -= 1;
            if *w == 0 {
                spawn(u, &done, &mut set, &mut tasks);
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::graph::{
        CopyAction, CopySource, ExecOp, FileAction, FileOp, ImageTemplate, NetworkMode, Node, Op,
        SourceOp,
    };
    use cache::oci::{ImageConfig, Platform};
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, thiserror::Error)]
    #[error("node {0} failed")]
    struct ToyError(NodeId);

    /// Counts runs and "execs"; cached nodes return without exec; a barrier can force overlap.
    #[derive(Default)]
    struct CountingRunner {
        runs: Mutex<BTreeMap<NodeId, usize>>,
        execs: AtomicUsize,
        cached: BTreeSet<NodeId>,
        failing: BTreeSet<NodeId>,
        barrier: Option<(BTreeSet<NodeId>, Arc<tokio::sync::Barrier>)>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
    }

    impl OpRunner for CountingRunner {
        type Output = Vec<NodeId>;
        type Error = ToyError;
        async fn run(
            &self,
            node: NodeId,
            inputs: BTreeMap<NodeId, Vec<NodeId>>,
        ) -> Result<Vec<NodeId>, ToyError> {
            *self
                .runs
                .lock()
                .expect("not poisoned")
                .entry(node)
                .or_default() += 1;
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            if let Some((nodes, barrier)) = &self.barrier
                && nodes.contains(&node)
            {
                barrier.wait().await;
            }
            tokio::task::yield_now().await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if self.failing.contains(&node) {
                return Err(ToyError(node));
            }
            if !self.cached.contains(&node) {
                self.execs.fetch_add(1, Ordering::SeqCst);
            }
            // The result: every node that contributed, to check inputs were passed.
            let mut out: Vec<NodeId> = inputs.into_values().flatten().collect();
            out.push(node);
            out.sort_unstable();
            out.dedup();
            Ok(out)
        }
    }

    pub(crate) fn node(op: Op) -> Node {
        Node {
            op,
            name: String::new(),
            stage: None,
            span: None,
            instruction: String::new(),
            platform: None,
        }
    }
    pub(crate) fn run_on(root: NodeId) -> Node {
        node(Op::Exec(ExecOp {
            root,
            args: vec!["true".into()],
            env: vec![],
            proxy_env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::Default,
            mounts: vec![],
            insecure: false,
        }))
    }
    pub(crate) fn copy_from(root: NodeId, from: &[NodeId]) -> Node {
        let actions = from
            .iter()
            .map(|&n| {
                FileAction::Copy(CopyAction {
                    from: CopySource::Node(n),
                    sources: vec!["/x".into()],
                    dest: "/".into(),
                    chown: None,
                    chmod: None,
                    exclude: vec![],
                    parents: false,
                    link: false,
                    unpack_archives: false,
                    instruction: "COPY",
                })
            })
            .collect();
        node(Op::File(FileOp { root, actions }))
    }

    /// n0 base; stage a: n1; stage b: n2; unused stage: n3; final: n4 = copy from n1 and n2 onto n0.
    fn diamond() -> BuildGraph {
        BuildGraph {
            nodes: vec![
                node(Op::Source(SourceOp::Scratch)),
                run_on(0),
                run_on(0),
                run_on(0),
                copy_from(0, &[1, 2]),
            ],
            target: 4,
            image: ImageTemplate {
                config: ImageConfig::empty(&Platform::host()),
                history: vec![],
            },
        }
    }

    async fn within<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(20), f)
            .await
            .expect("schedule hung")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn independent_stages_overlap_and_unused_stage_never_runs() {
        let runner = Arc::new(CountingRunner {
            // n1 and n2 can only pass this barrier together: the test hangs (and times out)
            // unless they run at the same time.
            barrier: Some(([1, 2].into(), Arc::new(tokio::sync::Barrier::new(2)))),
            ..Default::default()
        });
        let out = within(schedule(&diamond(), Arc::clone(&runner), 2))
            .await
            .expect("build succeeds");
        assert_eq!(out[&4], vec![0, 1, 2, 4]);
        let runs = runner.runs.lock().expect("not poisoned").clone();
        assert_eq!(
            runs,
            [(0, 1), (1, 1), (2, 1), (4, 1)].into(),
            "n3 is unused; others run once"
        );
    }

    #[tokio::test]
    async fn shared_node_runs_once() {
        // n1 is the root of n2 and n3, both copied into n4.
        let g = BuildGraph {
            nodes: vec![
                node(Op::Source(SourceOp::Scratch)),
                run_on(0),
                run_on(1),
                run_on(1),
                copy_from(1, &[2, 3, 2]),
            ],
            ..diamond()
        };
        let runner = Arc::new(CountingRunner::default());
        within(schedule(&g, Arc::clone(&runner), 4))
            .await
            .expect("build succeeds");
        assert!(
            runner
                .runs
                .lock()
                .expect("not poisoned")
                .values()
                .all(|&c| c == 1)
        );
        assert_eq!(runner.execs.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn cache_hits_execute_nothing() {
        let runner = Arc::new(CountingRunner {
            cached: [0, 1, 2, 3, 4].into(),
            ..Default::default()
        });
        within(schedule(&diamond(), Arc::clone(&runner), 2))
            .await
            .expect("build succeeds");
        assert_eq!(runner.execs.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_bounds_concurrency() {
        let runner = Arc::new(CountingRunner::default());
        within(schedule(&diamond(), Arc::clone(&runner), 1))
            .await
            .expect("build succeeds");
        assert_eq!(runner.max_in_flight.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failure_stops_the_build() {
        let runner = Arc::new(CountingRunner {
            failing: [1].into(),
            ..Default::default()
        });
        let err = within(schedule(&diamond(), Arc::clone(&runner), 1))
            .await
            .expect_err("n1 fails");
        assert!(matches!(err, SchedError::Op(ToyError(1))), "{err:?}");
        assert!(
            !runner.runs.lock().expect("not poisoned").contains_key(&4),
            "the final step never starts"
        );
    }

    #[tokio::test]
    async fn an_input_after_its_user_is_rejected() {
        let mut g = diamond();
        g.nodes[1] = run_on(2);
        let err = schedule(&g, Arc::new(CountingRunner::default()), 1)
            .await
            .expect_err("bad graph");
        assert!(
            matches!(err, SchedError::BadGraph { node: 1, input: 2 }),
            "{err:?}"
        );
    }
}

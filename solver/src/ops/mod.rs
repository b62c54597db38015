//! The real op runner: cache lookups, sandboxed RUN and COPY, layer commits, cache records,
//! and the final image.
//!
//! For each node the target needs ([`crate::sched`] decides the order):
//! - a source resolves to its image's layer chain (or nothing, for scratch);
//! - an exec or file node asks the cache sources ([`crate::cachesource`]: the local store,
//!   then `--cache-from` imports) for its key; on a hit it emits `Cached` and runs nothing;
//! - otherwise it gets a fresh upper/work dir under `KILN_ROOT/tmp`, runs
//!   `kiln __init <spec>` on an overlay of its root's chain (output streamed as `Log` events),
//!   commits the upper dir as a layer and records `key -> chain`.
//!
//! COPY sources from the context are walked and hashed on the host before anything runs, so a
//! missing, ignored or escaping source fails the build before the store is touched.
//!
//! One file per concern: [`solve`] is the solve loop (it only orchestrates), [`runner`] runs
//! one node (cache lookup, `--no-cache-filter`, commit and record), [`source`], [`exec`] and
//! [`file`] implement [`SolveOp`] (cache map and exec) for each kind of graph op,
//! [`sandbox`] runs a sandbox and pumps its output, and [`keys`] computes the cache keys (and
//! feeds `--explain`) before anything runs.

mod exec;
mod file;
mod keys;
mod runner;
mod sandbox;
mod solve;
mod source;

pub use solve::Solver;

use runner::Runner;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One kind of graph op as the solver runs it (BuildKit's `solver.Op`).
trait SolveOp {
    /// BuildKit's CacheMap: the op's cache key from the keys of the nodes (its inputs among
    /// them) and the content digests of what it reads from the context ([`crate::key`]).
    fn cache_map(&self, keys: &[Option<Digest>], contents: &[Option<Digest>]) -> Digest;

    /// BuildKit's Exec: node `n`'s result, given its root's (`None` for a source, which has
    /// none) and its inputs'. Exec and file ops run a sandbox and commit a layer.
    async fn exec(
        &self,
        r: &Runner,
        n: NodeId,
        root: Option<&NodeResult>,
        inputs: &BTreeMap<NodeId, Arc<NodeResult>>,
    ) -> Result<NodeResult, SolveError>;
}

/// The cache key of `node` (the [`SolveOp::cache_map`] of its op; a source's key also holds
/// the node's platform, which the op does not carry).
fn cache_map(node: &Node, keys: &[Option<Digest>], contents: &[Option<Digest>]) -> Digest {
    match &node.op {
        Op::Source(s) => crate::key::source_key(s, node.platform.as_ref()),
        Op::Exec(x) => x.cache_map(keys, contents),
        Op::File(f) => f.cache_map(keys, contents),
    }
}

use crate::graph::{NetworkMode, Node, NodeId, Op};
use crate::sched::SchedError;
use cache::oci::Digest;
use cache::store::StoreError;
use context::ContextError;
use std::fmt;
use std::path::PathBuf;

/// How a layer's file dates are made reproducible; each op's `prepare` returns its rule.
pub(crate) enum LayerMtimes {
    /// Every mtime after the clamp drops to it (COPY/ADD: the newest source date); None
    /// keeps every date.
    Clamp(Option<i64>),
    /// RUN: what the step dated (at or after its start) gets the build's epoch, older dates
    /// stay ([`cache::layer::writer::StepMtimes`]); a rebuild is byte-identical.
    Step(cache::layer::writer::StepMtimes),
}

/// mtime clamp of COPY layers when no context file is copied (COPY --from, WORKDIR): the epoch,
/// as for RUN (files from other stages already carry clamped times).
///
/// When a node copies context files, the clamp is instead the newest mtime among them: copied
/// files keep their own mtimes (as `docker build` does), while directories the copy creates or
/// touches (stamped with the wall clock) drop to that time, so the layer depends only on the
/// context, never on when the build ran.
pub const COPY_CLAMP_MTIME: Option<i64> = Some(0);

/// The placeholder of a built image's dates while its content key is computed (`kiln
/// import` dates its images at the import, as `docker import`).
pub const CREATED: &str = "1970-01-01T00:00:00Z";

/// Where a built image's `created` (and its new history entries' dates) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreatedRule {
    /// `SOURCE_DATE_EPOCH` (build arg or environment): the date, also the layers' epoch
    /// ([`SolveOptions::epoch`]), part of every exec and file key, and the clamp of COPY
    /// layers. `from` says which of the two gave it.
    SourceDateEpoch {
        /// Seconds since 1970.
        secs: i64,
        /// `build arg` or `environment`.
        from: String,
    },
    /// The context is a git checkout: its HEAD commit's time (the same on every machine).
    GitHead {
        /// The commit time, seconds since 1970.
        secs: i64,
        /// The commit.
        commit: String,
    },
    /// Neither: the wall clock of the first build of this content, kept in a cache record
    /// keyed by the image's layers and config, so a fully cached rebuild has the same date.
    FirstBuild,
}

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
    /// [`crate::graph::Node::stage`]).
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
    /// The build's epoch (seconds): what a RUN layer's own file dates become
    /// ([`cache::layer::writer::StepMtimes`]); `SOURCE_DATE_EPOCH`, or 0.
    pub epoch: i64,
    /// Where the image's `created` comes from.
    pub created: CreatedRule,
}

impl SolveOptions {
    /// The layers' epoch under `rule`: `SOURCE_DATE_EPOCH` or the git HEAD's commit time,
    /// else 0.
    pub fn epoch_of(rule: &CreatedRule) -> i64 {
        Self::clamp_of(rule).unwrap_or(0)
    }

    fn clamp_of(rule: &CreatedRule) -> Option<i64> {
        match rule {
            CreatedRule::SourceDateEpoch { secs, .. } | CreatedRule::GitHead { secs, .. } => {
                Some(*secs)
            }
            CreatedRule::FirstBuild => None,
        }
    }

    /// The date no copied file's date may pass: `SOURCE_DATE_EPOCH` or the git HEAD's time.
    /// Only `SOURCE_DATE_EPOCH` is part of the cache keys: as file dates are not, a step
    /// cached at an earlier commit keeps the dates it was built with.
    pub fn clamp_epoch(&self) -> Option<i64> {
        Self::clamp_of(&self.created)
    }

    /// `SOURCE_DATE_EPOCH`, when the build has one.
    pub fn source_date_epoch(&self) -> Option<i64> {
        match self.created {
            CreatedRule::SourceDateEpoch { secs, .. } => Some(secs),
            _ => None,
        }
    }
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
    /// A RUN of another architecture has no usable binfmt handler.
    #[error("{at}")]
    Binfmt {
        /// The step.
        at: Location,
        /// What is missing.
        #[source]
        source: Box<executor::binfmt::BinfmtError>,
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

#[cfg(test)]
mod tests {
    use super::*;

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

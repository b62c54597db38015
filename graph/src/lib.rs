//! The build graph IR: what the frontend hands to the solver.
//!
//! A [`BuildGraph`] is a list of [`Node`]s in topological order: a node's inputs always have
//! smaller ids. Each node is one op that yields a filesystem (a chain of layers):
//!
//! - [`Op::Source`]: a base image from the local store, or `scratch`.
//! - [`Op::Exec`]: RUN. Runs a process on top of its `root` input; the changes form a layer.
//! - [`Op::File`]: COPY, ADD and WORKDIR's mkdir. Writes onto its `root` input; the changes
//!   form a layer.
//!
//! Every op is fully explicit: an exec carries its whole environment, working directory and
//! user, so the solver needs no Dockerfile knowledge. Image metadata (ENV, CMD, LABEL...) is
//! computed by the frontend into the [`ImageTemplate`] of the target.
//!
//! [`git`] parses BuildKit's git URL forms into a [`GitSource`] (the solver runs git).
//!
//! This crate is a leaf apart from `cache`'s OCI types: the frontend depends on it (and not on
//! the solver), the solver consumes it. It does no I/O.
#![deny(missing_docs)]

pub mod git;

use cache::oci::{Digest, ImageConfig};
use std::fmt::{self, Write as _};

/// Index of a node in [`BuildGraph::nodes`].
pub type NodeId = usize;

/// A position in the Dockerfile, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
}

/// One vertex of the build.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What it does.
    pub op: Op,
    /// Progress name in BuildKit's style: `[builder 2/4] RUN make`.
    pub name: String,
    /// The label of the Dockerfile stage whose step this is, as its progress name shows it
    /// (`builder`; `""` in a single-stage build, whose names carry no label); `None` for
    /// nodes outside the stages' steps (scratch, `--from` images, heredoc preparation).
    /// `--no-cache-filter` matches it.
    pub stage: Option<String>,
    /// Where in the Dockerfile it comes from (none for implicit nodes).
    pub span: Option<Span>,
    /// The Dockerfile instruction as written (for errors: `Dockerfile:12: RUN make: ...`).
    pub instruction: String,
    /// The platform the node builds for (its stage's: the target's, or `FROM --platform`).
    /// It is part of a source's key, so everything built on it differs per platform; a RUN
    /// of another architecture than the host's runs through its binfmt handler. `None`: the
    /// host's, and no platform in the key.
    pub platform: Option<cache::oci::Platform>,
}

/// An operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A base filesystem.
    Source(SourceOp),
    /// A process run (RUN).
    Exec(ExecOp),
    /// Filesystem edits (COPY, ADD, WORKDIR).
    File(FileOp),
}

/// A base filesystem.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceOp {
    /// The empty filesystem.
    Scratch,
    /// An image from the local store, pinned by manifest digest.
    Image {
        /// The reference as written after ARG expansion, for progress output.
        reference: String,
        /// The manifest digest it resolved to.
        manifest: Digest,
    },
}

/// Network of a RUN step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// The builder's default: the bridge (with NAT), or `kiln build --network`.
    #[default]
    Default,
    /// Only a loopback interface.
    None,
    /// The host's network namespace.
    Host,
}

/// A RUN step.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOp {
    /// The filesystem it runs on.
    pub root: NodeId,
    /// Full argv (shell form already wrapped in the stage's SHELL).
    pub args: Vec<String>,
    /// Full environment, `KEY=value`, image ENV then ARGs in scope.
    pub env: Vec<String>,
    /// Proxy variables (HTTP_PROXY...): in the environment, but not in the cache key.
    pub proxy_env: Vec<String>,
    /// Absolute working directory.
    pub cwd: String,
    /// `user[:group]` as written in USER (resolved in the sandbox); empty = root.
    pub user: String,
    /// Network mode.
    pub network: NetworkMode,
    /// Extra mounts (RUN --mount).
    pub mounts: Vec<Mount>,
    /// `RUN --security=insecure`: every capability, no seccomp filter (only with
    /// `--allow security.insecure`).
    pub insecure: bool,
}

/// A `RUN --mount`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    /// Absolute target path in the container.
    pub target: String,
    /// What is mounted.
    pub kind: MountKind,
    /// Read-only.
    pub readonly: bool,
}

/// Sharing mode of a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheSharing {
    /// Concurrent writers share the directory.
    #[default]
    Shared,
    /// Each concurrent writer gets its own directory.
    Private,
    /// Writers take turns.
    Locked,
}

/// What a `RUN --mount` mounts.
#[derive(Debug, Clone, PartialEq)]
pub enum MountKind {
    /// `type=bind`: a path of the context or of another node's filesystem.
    Bind {
        /// Where it comes from.
        from: CopySource,
        /// Path inside that source.
        source: String,
    },
    /// `type=cache`: a persistent directory.
    Cache {
        /// Cache id (defaults to the target).
        id: String,
        /// Sharing mode.
        sharing: CacheSharing,
        /// Directory mode.
        mode: u32,
        /// Owner uid.
        uid: u32,
        /// Owner gid.
        gid: u32,
        /// Initial contents from another node (`from=`), if any.
        from: Option<(CopySource, String)>,
    },
    /// `type=tmpfs`.
    Tmpfs {
        /// Size limit in bytes, if any.
        size: Option<u64>,
    },
    /// `type=secret`: a file supplied at build time, never stored or hashed.
    Secret {
        /// Secret id.
        id: String,
        /// Fail when the secret is not supplied.
        required: bool,
        /// File mode.
        mode: u32,
        /// Owner uid.
        uid: u32,
        /// Owner gid.
        gid: u32,
        /// Expose as this environment variable instead of (or as well as) a file.
        env: Option<String>,
    },
    /// `type=ssh`: an agent socket, never stored or hashed.
    Ssh {
        /// SSH id (`kiln build --ssh ID=...`).
        id: String,
        /// Fail when the agent is not supplied.
        required: bool,
        /// Socket mode.
        mode: u32,
        /// Socket owner uid.
        uid: u32,
        /// Socket owner gid.
        gid: u32,
    },
}

/// Where COPY/ADD reads from.
#[derive(Debug, Clone, PartialEq)]
pub enum CopySource {
    /// The build context (after .dockerignore).
    Context,
    /// The filesystem of another node (`--from=stage` or `--from=image`).
    Node(NodeId),
    /// An http(s) URL (ADD).
    Url {
        /// The URL.
        url: String,
        /// `--checksum`, if given.
        checksum: Option<Digest>,
    },
    /// A git repository (ADD): its tree at one commit, copied like a directory.
    Git(Box<GitSource>),
}

/// An ADD git source, parsed from BuildKit's URL forms by [`git::parse_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    /// The URL as written in the Dockerfile (for messages).
    pub url: String,
    /// The remote as `git` takes it: no fragment, no kiln/BuildKit query keys.
    pub remote: String,
    /// Branch, tag, full ref (`refs/pull/1/head`) or 40-hex commit; `None`: the remote's HEAD.
    pub reference: Option<String>,
    /// Directory inside the repository whose contents are copied (`""`: the root).
    pub subdir: String,
    /// `--keep-git-dir=true`: keep `.git`.
    pub keep_git_dir: bool,
    /// Check out submodules too (BuildKit's default; `submodules=false` in the URL query
    /// turns it off).
    pub submodules: bool,
    /// `--checksum=` or `checksum=`/`commit=` in the URL: a hex prefix the commit must have.
    pub checksum: Option<String>,
    /// The commit `reference` resolves to, filled in by the solver (`git ls-remote`) before
    /// cache keys are computed; the key holds it, so a moved branch misses the cache.
    pub commit: Option<String>,
}

/// COPY/ADD/WORKDIR edits on top of `root`.
#[derive(Debug, Clone, PartialEq)]
pub struct FileOp {
    /// The filesystem edited.
    pub root: NodeId,
    /// Edits, applied in order.
    pub actions: Vec<FileAction>,
}

/// One filesystem edit.
#[derive(Debug, Clone, PartialEq)]
pub enum FileAction {
    /// COPY or ADD.
    Copy(CopyAction),
    /// Create a directory and its missing parents (WORKDIR).
    Mkdir {
        /// Absolute path.
        path: String,
        /// `user[:group]` that owns created directories; empty = root.
        owner: String,
    },
    /// A file whose content is in the Dockerfile (a COPY/ADD heredoc source).
    Inline(InlineFile),
}

/// A COPY/ADD heredoc source (`COPY <<EOF /dest`), copied as BuildKit does: a regular file
/// named after the delimiter, mode 0644 unless `--chmod`, owned by root unless `--chown`,
/// placed by the same destination rules as a one-file context COPY (a destination ending in
/// `/` or an existing directory receives `<name>`; anything else becomes the file).
#[derive(Debug, Clone, PartialEq)]
pub struct InlineFile {
    /// The file name (the heredoc delimiter, unquoted).
    pub name: String,
    /// The content, after `<<-` tab stripping and (unquoted delimiters) word expansion.
    pub data: Vec<u8>,
    /// Absolute destination; a trailing `/` means "into this directory".
    pub dest: String,
    /// `--chown=user[:group]`.
    pub chown: Option<String>,
    /// `--chmod=` (applied to the 0644 file).
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// Used in messages: `COPY` or `ADD`.
    pub instruction: &'static str,
}

/// COPY or ADD.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyAction {
    /// Where sources are read from.
    pub from: CopySource,
    /// Source paths or patterns, relative to the source root, after word expansion.
    pub sources: Vec<String>,
    /// Absolute destination; a trailing `/` means "into this directory".
    pub dest: String,
    /// `--chown=user[:group]`, resolved against the destination's /etc/passwd and /etc/group.
    pub chown: Option<String>,
    /// `--chmod=` (octal, or symbolic like `u+x`).
    pub chmod: Option<String>,
    /// `--exclude=` patterns.
    pub exclude: Vec<String>,
    /// `--parents`: keep the source's parent directories.
    pub parents: bool,
    /// `--link`.
    pub link: bool,
    /// ADD: extract local tar archives.
    pub unpack_archives: bool,
    /// Used in messages: `COPY` or `ADD`.
    pub instruction: &'static str,
}

/// One history step of the target image after its base image.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryStep {
    /// `created_by` text, as BuildKit writes it (`RUN /bin/sh -c make # buildkit`).
    pub created_by: String,
    /// The node whose layer this step made, or `None` for metadata-only steps.
    pub layer: Option<NodeId>,
}

/// The final image, minus what only solving can tell (layers and their diff ids).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTemplate {
    /// The config: base config plus the Dockerfile's changes. `rootfs` and `history` are
    /// filled in by the solver from the base image and the steps.
    pub config: ImageConfig,
    /// Steps after the base image, in order.
    pub history: Vec<HistoryStep>,
}

/// The whole build.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildGraph {
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// The node whose filesystem is the result.
    pub target: NodeId,
    /// The result's image metadata.
    pub image: ImageTemplate,
}

impl Op {
    /// Input nodes, in a fixed order: root first, then copy and mount sources.
    pub fn inputs(&self) -> Vec<NodeId> {
        let mut out = Vec::new();
        match self {
            Op::Source(_) => {}
            Op::Exec(e) => {
                out.push(e.root);
                for m in &e.mounts {
                    match &m.kind {
                        MountKind::Bind {
                            from: CopySource::Node(n),
                            ..
                        } => out.push(*n),
                        MountKind::Cache {
                            from: Some((CopySource::Node(n), _)),
                            ..
                        } => out.push(*n),
                        _ => {}
                    }
                }
            }
            Op::File(f) => {
                out.push(f.root);
                for a in &f.actions {
                    if let FileAction::Copy(CopyAction {
                        from: CopySource::Node(n),
                        ..
                    }) = a
                    {
                        out.push(*n);
                    }
                }
            }
        }
        out
    }
}

impl BuildGraph {
    /// The ids of nodes the target needs, ascending.
    pub fn reachable(&self) -> Vec<NodeId> {
        let mut seen = vec![false; self.nodes.len()];
        let mut stack = vec![self.target];
        while let Some(n) = stack.pop() {
            if !std::mem::replace(&mut seen[n], true) {
                stack.extend(self.nodes[n].op.inputs());
            }
        }
        (0..self.nodes.len()).filter(|&n| seen[n]).collect()
    }

    /// A stable, line-per-node text dump for golden tests: `n3 = exec(n2) ["sh","-c","make"] ...`.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for (id, node) in self.nodes.iter().enumerate() {
            let _ = write!(out, "n{id} = ");
            let _ = match &node.op {
                Op::Source(SourceOp::Scratch) => write!(out, "scratch"),
                Op::Source(SourceOp::Image {
                    reference,
                    manifest,
                }) => {
                    write!(out, "image {reference} @{}", manifest.short())
                }
                Op::Exec(e) => write!(
                    out,
                    "exec(n{}) {:?} env={:?} cwd={:?} user={:?} net={:?} mounts={}",
                    e.root,
                    e.args,
                    e.env,
                    e.cwd,
                    e.user,
                    e.network,
                    e.mounts.len()
                ),
                Op::File(f) => {
                    let _ = write!(out, "file(n{})", f.root);
                    for a in &f.actions {
                        let _ = match a {
                            FileAction::Mkdir { path, owner } => {
                                write!(out, " mkdir {path:?} owner={owner:?}")
                            }
                            FileAction::Copy(c) => write!(
                                out,
                                " {} {} {:?} -> {:?} chown={:?} chmod={:?}",
                                c.instruction.to_lowercase(),
                                Source(&c.from),
                                c.sources,
                                c.dest,
                                c.chown,
                                c.chmod
                            ),
                            FileAction::Inline(i) => write!(
                                out,
                                " {} inline <<{} {:?} -> {:?} chown={:?} chmod={:?}",
                                i.instruction.to_lowercase(),
                                i.name,
                                String::from_utf8_lossy(&i.data),
                                i.dest,
                                i.chown,
                                i.chmod
                            ),
                        };
                    }
                    Ok(())
                }
            };
            let line = node.span.map_or(0, |s| s.line);
            let _ = writeln!(out, "  # line {line} {}", node.name);
        }
        let _ = writeln!(out, "target = n{}", self.target);
        out
    }
}

struct Source<'a>(&'a CopySource);

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            CopySource::Context => write!(f, "context"),
            CopySource::Node(n) => write!(f, "n{n}"),
            CopySource::Url { url, .. } => write!(f, "{url}"),
            CopySource::Git(g) => write!(f, "{}", g.url),
        }
    }
}

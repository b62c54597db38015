//! File ops (COPY, ADD, WORKDIR): the copy tasks of the sandbox spec.

use super::runner::Runner;
use super::{LayerMtimes, NodeResult, SolveError, SolveOp, location};
use crate::graph::{CopySource, FileAction, FileOp, NodeId};
use cache::oci::Digest;
use executor::spec::{CopyFrom, CopySpec, CopyTask, InitSpec, Rootfs};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a file op's remote sources landed: ADD URL downloads (URL to dir and file name) and
/// git checkouts ([`crate::git::checkout_key`] to dir).
pub(super) struct RemoteSources<'a> {
    pub(super) fetched: &'a BTreeMap<String, (PathBuf, String)>,
    pub(super) checkouts: &'a BTreeMap<String, PathBuf>,
}

impl SolveOp for FileOp {
    fn cache_map(&self, keys: &[Option<Digest>], contents: &[Option<Digest>]) -> Digest {
        crate::key::file_key(self, keys, contents)
    }

    async fn exec(
        &self,
        r: &Runner,
        n: NodeId,
        root: Option<&NodeResult>,
        inputs: &BTreeMap<NodeId, Arc<NodeResult>>,
    ) -> Result<NodeResult, SolveError> {
        let root = root.expect("a file op has a root");
        let at = || location(&r.opts, &r.graph.nodes[n]);
        r.build(n, root, async |rootfs, scratch| {
            let fetched = crate::fetch::fetch_all(&r.store, self)
                .await
                .map_err(|source| SolveError::Fetch {
                    at: at(),
                    source: Box::new(source),
                })?;
            let checkouts = if self
                .actions
                .iter()
                .any(|a| matches!(a, FileAction::Copy(c) if matches!(c.from, CopySource::Git(_))))
            {
                let (store, f, sock) = (r.store.clone(), self.clone(), r.opts.ssh.default_socket());
                cache::blocking::unblock(move || {
                    crate::git::checkout_all(&store, &f, sock.as_deref())
                })
                .await
                .map_err(|source| SolveError::Git {
                    at: at(),
                    source: Box::new(source),
                })?
            } else {
                Default::default()
            };
            let spec = r.file_spec(
                n,
                self,
                rootfs,
                inputs,
                RemoteSources {
                    fetched: &fetched.files,
                    checkouts: &checkouts.dirs,
                },
                scratch,
            )?;
            let clamp = [fetched.newest, checkouts.newest].into_iter().fold(
                r.clamps.get(&n).copied().flatten(),
                |c, t| match (c, t) {
                    (Some(c), Some(t)) => Some(c.max(t)),
                    (c, t) => c.or(t),
                },
            );
            // SOURCE_DATE_EPOCH (or the git HEAD's time) caps every date, as BuildKit's
            // rewrite-timestamp does.
            let clamp = match (clamp, r.opts.clamp_epoch()) {
                (Some(c), Some(e)) => Some(c.min(e)),
                (c, e) => c.or(e),
            };
            // The downloads and checkouts live until the sandbox has copied them.
            Ok((spec, LayerMtimes::Clamp(clamp), (fetched, checkouts)))
        })
        .await
    }
}

/// Whether `f` is a `COPY --link` (or `ADD --link`): its copies run on an empty root and its
/// layer is stacked on the stage's, as BuildKit's merge of a copy onto scratch. So it never
/// sees the stage's files: a destination without a trailing `/` is a file even where the
/// stage has a directory, symlinks in the stage are replaced rather than followed, and the
/// parents it creates (mode, owner, date) shadow the stage's directories. As BuildKit v0.24,
/// `--chmod` turns it back into a plain copy, and a `--chown` name finds no /etc/passwd.
pub(super) fn on_empty_root(f: &FileOp) -> bool {
    let mut copies = f.actions.iter().filter_map(|a| match a {
        FileAction::Copy(c) => Some((c.link, c.chmod.is_none())),
        FileAction::Inline(x) => Some((x.link, x.chmod.is_none())),
        _ => None,
    });
    let first = copies.next();
    first.is_some_and(|(link, plain)| link && plain) && copies.all(|(link, plain)| link && plain)
}

impl Runner {
    pub(super) fn file_spec(
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
}

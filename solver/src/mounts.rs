//! RUN --mount on the host side: cache directories (with their locks), secrets in temp
//! files, the layers of the trees (context, stage, image) that bind mounts show. Those trees
//! are mounted by the sandbox in its own mount namespace, and the Dockerfile's source path is
//! resolved inside them there by [`executor::fsroot`]; nothing here joins it onto a host path. [`prepare`] turns the graph's
//! mounts into executor mounts plus [`Guards`] that must live until the step ends.

use crate::graph::{CacheSharing, CopySource, Mount, MountKind, NodeId};
use cache::store::{Store, TempDir};
use executor::spec::{MountKind as ExecMount, MountSpec};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

mod ssh;
use ssh::SshProxy;
pub use ssh::{SshAgents, missing_ssh};

/// Why a mount could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A filesystem operation on the host failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A temp directory in the store could not be made.
    #[error("temp dir for a mount: {0}")]
    Store(#[source] Box<cache::store::StoreError>),
    /// `required=true` secret that `kiln build --secret` did not supply.
    #[error(
        "secret {id:?} is required but was not supplied (kiln build --secret id={id},src=FILE)"
    )]
    MissingSecret {
        /// The secret id.
        id: String,
    },
    /// `required=true` ssh mount that `kiln build --ssh` did not supply.
    #[error("ssh agent {id:?} is required but was not supplied (kiln build --ssh {id}[=SOCKET])")]
    MissingSsh {
        /// The ssh id.
        id: String,
    },
    /// The `source` of a cache mount's `from` could not be copied.
    #[error("seeding the cache mount from {path:?}")]
    Seed {
        /// The source path, as the Dockerfile wrote it.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A mount kind the solver cannot run yet.
    #[error("{0} is not supported yet")]
    Unsupported(&'static str),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MountError + 'a {
    move |source| MountError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A read-only overlay mounted on the host while a cache mount is seeded; unmounted on
/// drop, before its temp dir is removed.
#[derive(Debug)]
struct Overlay {
    target: PathBuf,
    _dir: TempDir,
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if let Err(e) = rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::DETACH) {
            tracing::warn!("unmounting {}: {e}", self.target.display());
        }
    }
}

/// What must stay alive while the step runs: cache locks, secret files, scratch dirs, ssh
/// agent proxies (dropped first: they live in the temp dirs).
#[derive(Debug, Default)]
pub struct Guards {
    _ssh: Vec<SshProxy>,
    _locks: Vec<File>,
    _temps: Vec<TempDir>,
}

/// Executor mounts and extra environment of one RUN.
#[derive(Debug)]
pub struct Prepared {
    /// Mounts for [`executor::spec::RunSpec::mounts`].
    pub mounts: Vec<MountSpec>,
    /// `K=V` for secrets with `env=`.
    pub env: Vec<String>,
    /// Keep until the sandbox exits.
    pub guards: Guards,
}

/// `kiln build --secret` values: id to content. Debug prints the ids only.
#[derive(Clone, Default)]
pub struct Secrets(pub BTreeMap<String, Vec<u8>>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// What [`prepare`] needs from the build.
pub struct MountContext<'a> {
    /// The store (its root holds `cachemounts/`, its tmp the secrets and overlays).
    pub store: &'a Store,
    /// The build context directory.
    pub context: &'a Path,
    /// `kiln build --secret`: id to content.
    pub secrets: &'a Secrets,
    /// `kiln build --ssh`: id to agent socket.
    pub ssh: &'a SshAgents,
    /// The `.dockerignore` of the context: a context bind mount shows only what it keeps.
    pub ignore: &'a context::Ignore,
    /// The snapshot dirs of a node's filesystem, top layer first.
    pub lowers: &'a dyn Fn(NodeId) -> Vec<PathBuf>,
}

impl std::fmt::Debug for MountContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are never printed.
        f.debug_struct("MountContext")
            .field("context", &self.context)
            .field("secrets", self.secrets)
            .finish_non_exhaustive()
    }
}

/// `KILN_ROOT/cachemounts/<name>`: the directory of cache mount `id` (it may not exist).
pub fn cache_dir_path(root: &Path, id: &str) -> PathBuf {
    kroot::Dir::CacheMounts.path(root).join(cache_dir_name(id))
}

/// The flock file of the cache mount directory `dir`: `<dir>.lock` beside it. Its mtime is the
/// mount's last use.
pub(crate) fn lock_path(dir: &Path) -> PathBuf {
    let mut p = dir.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// A cache id as a single safe file name (ids may contain `/`).
fn cache_dir_name(id: &str) -> String {
    let mut s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with('.') || s.is_empty() {
        s.insert(0, '_');
    }
    // Distinct ids that sanitize alike stay apart.
    let hash = cache::oci::Digest::of(id.as_bytes());
    format!("{s}-{}", &hash.hex()[..12])
}

/// Prepares every mount of a RUN.
pub fn prepare(cx: &MountContext<'_>, mounts: &[Mount]) -> Result<Prepared, MountError> {
    let mut out = Prepared {
        mounts: Vec::new(),
        env: Vec::new(),
        guards: Guards::default(),
    };
    for m in mounts {
        let kind = match &m.kind {
            MountKind::Tmpfs { size } => ExecMount::Tmpfs { size: *size },
            MountKind::Bind {
                from: CopySource::Context,
                source,
            } => {
                let (lowers, scratch) = context_tree(cx, &mut out.guards, m.readonly)?;
                ExecMount::Tree {
                    lowers,
                    scratch,
                    path: source.clone(),
                }
            }
            MountKind::Bind {
                from: CopySource::Node(n),
                source,
            } => {
                let scratch = if m.readonly {
                    None
                } else {
                    Some(scratch_dirs(cx, &mut out.guards)?)
                };
                ExecMount::Tree {
                    lowers: (cx.lowers)(*n),
                    scratch,
                    path: source.clone(),
                }
            }
            MountKind::Bind {
                from: CopySource::Url { .. } | CopySource::Git(_),
                ..
            } => return Err(MountError::Unsupported("RUN --mount=type=bind from a URL")),
            MountKind::Cache {
                id,
                sharing,
                mode,
                uid,
                gid,
                from,
            } => {
                let (dir, created) =
                    cache_dir(cx, &mut out.guards, id, *sharing, *mode, *uid, *gid)?;
                if created && let Some((src, path)) = from {
                    let lowers = match src {
                        CopySource::Context => context_tree(cx, &mut out.guards, true)?.0,
                        CopySource::Node(n) => (cx.lowers)(*n),
                        CopySource::Url { .. } | CopySource::Git(_) => {
                            return Err(MountError::Unsupported(
                                "RUN --mount=type=cache,from=<url>",
                            ));
                        }
                    };
                    // Mounted on the host only while `cp` runs.
                    let seeded =
                        overlay(cx, lowers).and_then(|view| seed(&view.target, path, &dir));
                    if let Err(e) = seeded {
                        // Unseeded, it must not pass for seeded next time.
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(e);
                    }
                    std::os::unix::fs::chown(&dir, Some(*uid), Some(*gid))
                        .map_err(io("chown of cache mount", &dir))?;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(*mode))
                        .map_err(io("chmod of cache mount", &dir))?;
                }
                ExecMount::Bind { source: dir }
            }
            MountKind::Secret {
                id,
                required,
                mode,
                uid,
                gid,
                env,
            } => {
                let Some(content) = cx.secrets.0.get(id) else {
                    if *required {
                        return Err(MountError::MissingSecret { id: id.clone() });
                    }
                    continue;
                };
                if let Some(name) = env {
                    out.env
                        .push(format!("{name}={}", String::from_utf8_lossy(content)));
                }
                if m.target.is_empty() {
                    continue;
                }
                let dir = cx
                    .store
                    .temp_dir("secret-")
                    .map_err(|e| MountError::Store(Box::new(e)))?;
                let file = dir.path().join("secret");
                std::fs::write(&file, content).map_err(io("writing secret", &file))?;
                std::os::unix::fs::chown(&file, Some(*uid), Some(*gid))
                    .map_err(io("chown of secret", &file))?;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode))
                    .map_err(io("chmod of secret", &file))?;
                out.guards._temps.push(dir);
                out.mounts.push(MountSpec {
                    target: m.target.clone(),
                    kind: ExecMount::Bind { source: file },
                    readonly: true,
                });
                continue;
            }
            MountKind::Ssh {
                id,
                required,
                mode,
                uid,
                gid,
            } => {
                let Some(agent) = cx.ssh.0.get(id) else {
                    if *required {
                        return Err(MountError::MissingSsh { id: id.clone() });
                    }
                    continue;
                };
                let dir = cx
                    .store
                    .temp_dir("ssh-")
                    .map_err(|e| MountError::Store(Box::new(e)))?;
                let sock = dir.path().join("agent.sock");
                let proxy = SshProxy::start(agent, &sock, *uid, *gid, *mode)
                    .map_err(io("proxying the ssh agent at", &sock))?;
                out.guards._ssh.push(proxy);
                out.guards._temps.push(dir);
                // BuildKit: the first ssh mount becomes SSH_AUTH_SOCK.
                if !out.env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
                    out.env.push(format!("SSH_AUTH_SOCK={}", m.target));
                }
                out.mounts.push(MountSpec {
                    target: m.target.clone(),
                    kind: ExecMount::Bind { source: sock },
                    readonly: false,
                });
                continue;
            }
        };
        out.mounts.push(MountSpec {
            target: m.target.clone(),
            kind,
            readonly: m.readonly,
        });
    }
    Ok(out)
}

/// `KILN_ROOT/cachemounts/<id>`, created with `mode`/`uid`/`gid`, locked by `sharing`:
/// shared takes a shared flock (so that `locked` users wait), locked an exclusive one, and
/// private an exclusive one if free, or else a fresh throw-away directory.
fn cache_dir(
    cx: &MountContext<'_>,
    guards: &mut Guards,
    id: &str,
    sharing: CacheSharing,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<(PathBuf, bool), MountError> {
    let base = cx.store.dir(kroot::Dir::CacheMounts);
    std::fs::create_dir_all(&base).map_err(io("creating", &base))?;
    let name = cache_dir_name(id);
    let dir = base.join(&name);
    let lock_path = lock_path(&dir);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("opening", &lock_path))?;
    // The lock file's mtime is the mount's last use, which `kiln prune` goes by (a hint only).
    let _ = lock.set_modified(std::time::SystemTime::now());
    let dir = match sharing {
        CacheSharing::Shared => {
            lock.lock_shared().map_err(io("locking", &lock_path))?;
            dir
        }
        CacheSharing::Locked => {
            lock.lock().map_err(io("locking", &lock_path))?;
            dir
        }
        CacheSharing::Private => match lock.try_lock() {
            Ok(()) => dir,
            Err(std::fs::TryLockError::WouldBlock) => {
                let t = cx
                    .store
                    .temp_dir("cachemount-")
                    .map_err(|e| MountError::Store(Box::new(e)))?;
                let p = t.path().join("cache");
                guards._temps.push(t);
                p
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io("locking", &lock_path)(e)),
        },
    };
    guards._locks.push(lock);
    let created = match std::fs::create_dir(&dir) {
        Ok(()) => {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(io("chown of cache mount", &dir))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                .map_err(io("chmod of cache mount", &dir))?;
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io("creating cache mount", &dir)(e)),
    };
    Ok((dir, created))
}

/// Copies the contents of `path` (a directory, resolved inside the tree mounted at `root`
/// by [`executor::fsroot`], so `..`, absolute paths and symlinks stay in the tree) into the
/// new cache directory `dir`, keeping modes, owners, times and links (`cp -a`, from
/// coreutils, which copies symlinks as symlinks and so never leaves the source either).
fn seed(root: &Path, path: &str, dir: &Path) -> Result<(), MountError> {
    let resolve_err = |source| MountError::Seed {
        path: path.to_owned(),
        source,
    };
    let resolved = executor::fsroot::Root::open(root)
        .and_then(|r| r.resolve(path))
        .map_err(resolve_err)?;
    if !resolved.is_dir().map_err(resolve_err)? {
        return Err(resolve_err(std::io::Error::from(
            std::io::ErrorKind::NotADirectory,
        )));
    }
    // `cp` reaches the resolved directory through this process's descriptor, not by path.
    let src = resolved.proc_path();
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--one-file-system")
        .arg("--")
        .arg(src.join("."))
        .arg(dir)
        .output()
        .map_err(io("running cp -a from", &src))?;
    drop(resolved);
    if !out.status.success() {
        return Err(resolve_err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )));
    }
    Ok(())
}

/// The context as a RUN bind mount sees it: without the `.dockerignore`d paths (BuildKit
/// sends only the filtered context). Those are hidden by a top layer of overlay whiteouts
/// (0:0 character devices), so nothing is copied and the mount costs one walk of the context.
/// Returns the tree's layers and, unless `readonly`, scratch upper/work dirs so that a
/// writable bind (`rw`) writes to a throw-away upper dir, never to the context. The sandbox
/// mounts the tree in its own mount namespace.
fn context_tree(
    cx: &MountContext<'_>,
    guards: &mut Guards,
    readonly: bool,
) -> Result<(Vec<PathBuf>, Option<Scratch>), MountError> {
    let scratch = if readonly {
        None
    } else {
        Some(scratch_dirs(cx, guards)?)
    };
    let hidden = context::ignored_paths(cx.context, cx.ignore).map_err(|e| MountError::Io {
        what: "listing ignored files of",
        path: cx.context.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    if hidden.is_empty() {
        return Ok((vec![cx.context.to_owned()], scratch));
    }
    let dir = cx
        .store
        .temp_dir("ctxview-")
        .map_err(|e| MountError::Store(Box::new(e)))?;
    let whiteouts = dir.path().join("whiteouts");
    std::fs::create_dir(&whiteouts).map_err(io("creating", &whiteouts))?;
    for rel in &hidden {
        let target = whiteouts.join(rel);
        // Parents mirror the context's directories, whose metadata the merged view shows.
        let mut parent = PathBuf::new();
        for part in Path::new(rel)
            .parent()
            .into_iter()
            .flat_map(Path::components)
        {
            parent.push(part);
            let p = whiteouts.join(&parent);
            if p.exists() {
                continue;
            }
            std::fs::create_dir(&p).map_err(io("creating", &p))?;
            if let Ok(m) = std::fs::metadata(cx.context.join(&parent)) {
                use std::os::unix::fs::MetadataExt as _;
                std::os::unix::fs::chown(&p, Some(m.uid()), Some(m.gid()))
                    .map_err(io("chown of", &p))?;
                std::fs::set_permissions(&p, m.permissions()).map_err(io("chmod of", &p))?;
            }
        }
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &target,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(|e| MountError::Io {
            what: "creating a whiteout at",
            path: target.clone(),
            source: e.into(),
        })?;
    }
    guards._temps.push(dir);
    Ok((vec![whiteouts, cx.context.to_owned()], scratch))
}

/// Upper and work dir of a writable tree mount.
type Scratch = (PathBuf, PathBuf);

/// Empty upper and work dirs for a writable tree mount, removed when the step ends.
fn scratch_dirs(cx: &MountContext<'_>, guards: &mut Guards) -> Result<Scratch, MountError> {
    let dir = cx
        .store
        .temp_dir("scratch-")
        .map_err(|e| MountError::Store(Box::new(e)))?;
    let upper = dir.path().join("upper");
    let work = dir.path().join("work");
    for d in [&upper, &work] {
        std::fs::create_dir(d).map_err(io("creating", d))?;
    }
    guards._temps.push(dir);
    Ok((upper, work))
}

/// Mounts a read-only overlay of `lowers` (top first) on the host, for `cp` to read; the
/// returned guard unmounts it. A build killed meanwhile leaves it mounted under `tmp/`, where
/// the next build's (or `kiln prune`'s) stale-temp cleanup unmounts it.
fn overlay(cx: &MountContext<'_>, lowers: Vec<PathBuf>) -> Result<Overlay, MountError> {
    let dir = cx
        .store
        .temp_dir("mount-")
        .map_err(|e| MountError::Store(Box::new(e)))?;
    let target = dir.path().join("root");
    let empty = dir.path().join("empty");
    for d in [&target, &empty] {
        std::fs::create_dir(d).map_err(io("creating", d))?;
    }
    // An empty bottom layer: overlayfs without an upper dir needs two lower dirs.
    let mut lowerdir: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    lowerdir.push(empty.display().to_string());
    let data = format!("lowerdir={}", lowerdir.join(":"));
    let data = std::ffi::CString::new(data).map_err(|_| MountError::Io {
        what: "overlay options for",
        path: target.clone(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    rustix::mount::mount(
        "overlay",
        &target,
        "overlay",
        rustix::mount::MountFlags::RDONLY,
        data.as_c_str(),
    )
    .map_err(|e| MountError::Io {
        what: "mounting an overlay on",
        path: target.clone(),
        source: e.into(),
    })?;
    Ok(Overlay { target, _dir: dir })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_names_are_safe_and_distinct() {
        let a = cache_dir_name("/root/.cache");
        let b = cache_dir_name("_root_.cache");
        assert!(!a.contains('/') && !a.starts_with('.'), "{a}");
        assert_ne!(a, b);
        assert!(cache_dir_name("..").starts_with('_'));
    }

    fn cache_mount(sharing: CacheSharing) -> Mount {
        Mount {
            target: "/c".into(),
            kind: MountKind::Cache {
                id: "shared-id".into(),
                sharing,
                mode: 0o755,
                uid: 0,
                gid: 0,
                from: None,
            },
            readonly: false,
        }
    }

    fn source(p: &Prepared) -> PathBuf {
        match &p.mounts[0].kind {
            ExecMount::Bind { source } => source.clone(),
            other => panic!("not a bind: {other:?}"),
        }
    }

    #[test]
    fn private_gets_its_own_dir_while_another_holds_the_cache_and_locked_waits() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path().join("root")).expect("store");
        let secrets = Secrets::default();
        let lowers = |_: NodeId| Vec::new();
        let (ssh, ignore) = (SshAgents::default(), context::Ignore::default());
        let cx = MountContext {
            store: &store,
            context: tmp.path(),
            secrets: &secrets,
            ssh: &ssh,
            ignore: &ignore,
            lowers: &lowers,
        };
        let first = prepare(&cx, &[cache_mount(CacheSharing::Private)]).expect("first");
        let main_dir = source(&first);
        assert!(main_dir.starts_with(store.dir(kroot::Dir::CacheMounts)));
        let second = prepare(&cx, &[cache_mount(CacheSharing::Private)]).expect("second");
        assert_ne!(source(&second), main_dir, "private while held: own dir");
        drop(second);
        drop(first);
        let again = prepare(&cx, &[cache_mount(CacheSharing::Private)]).expect("again");
        assert_eq!(source(&again), main_dir, "free again: the shared dir");

        // `locked` waits for the holder: it gets the lock only after `again` is dropped.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let cx = MountContext {
                    store: &store,
                    context: tmp.path(),
                    secrets: &secrets,
                    ssh: &ssh,
                    ignore: &ignore,
                    lowers: &lowers,
                };
                let p = prepare(&cx, &[cache_mount(CacheSharing::Locked)]).expect("locked");
                tx.send(source(&p)).expect("send");
            });
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert!(rx.try_recv().is_err(), "locked did not wait");
            drop(again);
            let got = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("locked got the lock");
            assert_eq!(got, main_dir);
        });
    }
}

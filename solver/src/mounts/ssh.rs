//! RUN --mount=type=ssh on the host side: `kiln build --ssh` agents and the per-step proxy
//! socket that is bind-mounted into the sandbox.

use super::MountKind;
use crate::graph::NodeId;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// `kiln build --ssh`: id to the host path of an ssh agent socket.
#[derive(Debug, Clone, Default)]
pub struct SshAgents(pub BTreeMap<String, PathBuf>);

impl SshAgents {
    /// The `default` agent, which also serves ADD of ssh git remotes.
    pub fn default_socket(&self) -> Option<PathBuf> {
        self.0.get("default").cloned()
    }
}

/// The first needed RUN with a `required=true` ssh mount whose id `agents` lacks: (node, id).
pub fn missing_ssh(
    graph: &crate::graph::BuildGraph,
    agents: &SshAgents,
) -> Option<(NodeId, String)> {
    graph.reachable().into_iter().find_map(|n| {
        let crate::graph::Op::Exec(x) = &graph.nodes[n].op else {
            return None;
        };
        x.mounts.iter().find_map(|m| match &m.kind {
            MountKind::Ssh {
                id, required: true, ..
            } if !agents.0.contains_key(id) => Some((n, id.clone())),
            _ => None,
        })
    })
}

/// A unix socket that forwards every connection to an ssh agent, owned by the mount's
/// uid/gid with its mode: the agent's own socket belongs to whoever started it (mode 0600),
/// so a RUN as another user could not use a plain bind of it (BuildKit proxies it too).
/// Only the path of this socket enters the sandbox. Dropping it stops accepting.
#[derive(Debug)]
pub(super) struct SshProxy {
    /// The socket's path through its directory's descriptor (short, see [`SshProxy::start`]).
    short: PathBuf,
    _dir: File,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SshProxy {
    pub(super) fn start(
        agent: &Path,
        path: &Path,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> std::io::Result<SshProxy> {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::net::{UnixListener, UnixStream};
        // sun_path holds 108 bytes and KILN_ROOT may be deep: bind through the directory's
        // descriptor (`/proc/self/fd/N/agent.sock`), which is always short.
        let dir = path.parent().unwrap_or(Path::new("/"));
        let name = path.file_name().unwrap_or_default();
        let dir_fd = std::fs::File::open(dir)?;
        let short = Path::new("/proc/self/fd")
            .join(dir_fd.as_raw_fd().to_string())
            .join(name);
        let listener = UnixListener::bind(&short)?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (agent, flag) = (agent.to_owned(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("ssh-proxy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = conn else { continue };
                    let upstream = match UnixStream::connect(&agent) {
                        Ok(u) => u,
                        Err(e) => {
                            tracing::warn!(agent = %agent.display(), "ssh agent: {e}");
                            continue;
                        }
                    };
                    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
                        continue;
                    };
                    let pipe = |mut from: UnixStream, mut to: UnixStream| {
                        move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        }
                    };
                    std::thread::spawn(pipe(client, upstream));
                    std::thread::spawn(pipe(u2, c2));
                }
            })?;
        Ok(SshProxy {
            short,
            _dir: dir_fd,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = std::os::unix::net::UnixStream::connect(&self.short);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MountContext, Secrets, prepare};
    use super::*;
    use crate::graph::Mount;
    use cache::store::Store;
    use executor::spec::MountKind as ExecMount;

    fn source(p: &super::super::Prepared) -> PathBuf {
        match &p.mounts[0].kind {
            ExecMount::Bind { source } => source.clone(),
            other => panic!("not a bind: {other:?}"),
        }
    }

    #[test]
    fn ssh_mount_proxies_to_the_agent_with_its_mode_even_under_a_deep_root() {
        use std::io::{Read as _, Write as _};
        use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
        let tmp = tempfile::tempdir().expect("tempdir");
        // A peer standing in for ssh-agent: echoes what it reads.
        let agent = tmp.path().join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&agent).expect("bind");
        std::thread::spawn(move || {
            for c in listener.incoming().flatten() {
                let mut w = c.try_clone().expect("clone");
                let mut r = c;
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        // KILN_ROOT deeper than sun_path's 108 bytes.
        let deep = tmp.path().join("d".repeat(60)).join("e".repeat(60));
        let store = Store::open(deep.join("root")).expect("store");
        let secrets = Secrets::default();
        let ssh = SshAgents([("default".to_owned(), agent)].into_iter().collect());
        let ignore = context::Ignore::default();
        let lowers = |_: NodeId| Vec::new();
        let cx = MountContext {
            store: &store,
            context: tmp.path(),
            secrets: &secrets,
            ssh: &ssh,
            ignore: &ignore,
            lowers: &lowers,
        };
        let uid = rustix::process::getuid().as_raw();
        let mount = Mount {
            target: "/run/buildkit/ssh_agent.0".into(),
            kind: MountKind::Ssh {
                id: "default".into(),
                required: true,
                mode: 0o640,
                uid,
                gid: 0,
            },
            readonly: true,
        };
        let p = prepare(&cx, std::slice::from_ref(&mount)).expect("prepare");
        assert_eq!(p.env, ["SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0"]);
        let sock = source(&p);
        assert!(sock.as_os_str().len() > 108, "{}", sock.display());
        let meta = std::fs::metadata(&sock).expect("stat");
        assert!(meta.file_type().is_socket());
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o640, uid));
        // Through the proxy to the peer and back (connect through the short fd path too).
        let dir = std::fs::File::open(sock.parent().expect("dir")).expect("open");
        let short = format!(
            "/proc/self/fd/{}/agent.sock",
            std::os::fd::AsRawFd::as_raw_fd(&dir)
        );
        let mut c = std::os::unix::net::UnixStream::connect(&short).expect("connect");
        c.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"ping");
        drop(p);
        assert!(!sock.exists(), "the proxy socket outlived the step");

        // required and missing: an error naming the id; optional and missing: no mount.
        let none = SshAgents::default();
        let cx = MountContext { ssh: &none, ..cx };
        let err = prepare(&cx, std::slice::from_ref(&mount)).expect_err("required");
        assert!(err.to_string().contains("\"default\" is required"), "{err}");
        let mut optional = mount;
        if let MountKind::Ssh { required, .. } = &mut optional.kind {
            *required = false;
        }
        assert!(
            prepare(&cx, &[optional])
                .expect("optional")
                .mounts
                .is_empty()
        );
    }
}

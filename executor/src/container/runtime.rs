//! Where containers keep their host-wide runtime state (lease store, pinned namespaces, the
//! RUN pool, owner records) and, in a rootless session, the helper that forwards published
//! ports into the session's network namespace. The binary sets it once at start-up
//! ([`configure`]); without that it is root mode's `/run/kiln`.

use crate::rootless::net::{self as rlnet, Backend};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// This process's container runtime.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// `/run/kiln` as root; the session's state directory rootless.
    pub run_dir: PathBuf,
    /// The rootless session's runtime directory (`$XDG_RUNTIME_DIR/kiln`), whose network
    /// helper forwards published ports; `None` as root.
    pub rootless: Option<PathBuf>,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Sets the runtime; the first call wins (call it before any container work).
pub fn configure(rt: Runtime) {
    let _ = RUNTIME.set(rt);
}

fn get() -> Option<&'static Runtime> {
    RUNTIME.get()
}

/// `/run/kiln`, or the rootless session's state directory.
pub fn run_dir() -> PathBuf {
    get().map_or_else(|| PathBuf::from("/run/kiln"), |r| r.run_dir.clone())
}

/// The host-wide lease store (`/run/kiln/networks`).
pub fn state_dir() -> PathBuf {
    run_dir().join("networks")
}

/// Where container network namespaces are pinned (`/run/kiln/netns`).
pub fn netns_dir() -> PathBuf {
    run_dir().join("netns")
}

/// Where build RUN steps keep their pooled namespaces (`/run/kiln/pool/bridge/N.netns`).
pub fn pool_dir() -> PathBuf {
    run_dir().join("pool")
}

/// The owner records (`/run/kiln/containers`, see [`super::owner`]).
pub fn owners_dir() -> PathBuf {
    run_dir().join("containers")
}

/// False in a rootless session without an uplink (`KILN_ROOTLESS_NET=none`): bridged
/// containers then get only loopback.
pub fn has_uplink() -> bool {
    get()
        .and_then(|r| r.rootless.as_deref())
        .is_none_or(|d| rlnet::session_backend(d) != Backend::None)
}

/// True in a rootless session on the host's network (`KILN_ROOTLESS_NET=host`): RUN steps
/// and bridged containers then use the host network (there is no bridge to make).
pub fn host_network() -> bool {
    get()
        .and_then(|r| r.rootless.as_deref())
        .is_some_and(|d| rlnet::session_backend(d) == Backend::Host)
}

/// Rootless: forwards each published host port into the session's namespace, where kiln's
/// DNAT rules take it as in root mode. Undoes what it did on failure. A no-op as root.
pub(crate) fn publish(ports: &[crate::net::PortMapping]) -> Result<(), (u16, rlnet::NetError)> {
    let Some(dir) = get().and_then(|r| r.rootless.as_deref()) else {
        return Ok(());
    };
    for (i, p) in ports.iter().enumerate() {
        let ip = p.host_ip.map(|ip| ip.to_string()).unwrap_or_default();
        if let Err(e) = rlnet::forward(dir, p.proto == crate::net::Proto::Udp, &ip, p.host_port) {
            unpublish_in(dir, &ports[..i]);
            return Err((p.host_port, e));
        }
    }
    Ok(())
}

/// Undoes [`publish`]; best effort, a no-op as root.
pub(crate) fn unpublish(ports: &[crate::net::PortMapping]) {
    if let Some(dir) = get().and_then(|r| r.rootless.as_deref()) {
        unpublish_in(dir, ports);
    }
}

fn unpublish_in(dir: &Path, ports: &[crate::net::PortMapping]) {
    for p in ports {
        let _ = rlnet::unforward(dir, p.proto == crate::net::Proto::Udp, p.host_port);
    }
}

/// Tests: the host-wide runtime state (owner records, leases) in a private directory of this
/// test process instead of /run/kiln.
#[cfg(test)]
pub(crate) fn private_run_dir() {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("tempdir").keep());
    configure(Runtime {
        run_dir: dir.clone(),
        rootless: None,
    });
    assert_eq!(&run_dir(), dir, "the runtime was configured elsewhere");
}

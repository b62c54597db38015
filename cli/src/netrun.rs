//! The cli's side of container networking (`executor::container::network`): it supplies
//! `KILN_ROOT/containers` and turns errors into messages.

pub use executor::container::network::{Joined, Mode, Record, hosts_mount, ports};
pub use executor::container::runtime::state_dir;
use executor::net::PortMapping;
use executor::spec::Network;
use std::path::{Path, PathBuf};

fn containers() -> anyhow::Result<PathBuf> {
    Ok(crate::kiln_root()?.join(kroot::Dir::Containers.name()))
}

/// Reclaims what containers whose owner died left behind; run by `run`, `ps`, `network` and
/// `system prune`. A failure is a warning, not the command's error.
pub fn reclaim_orphans() {
    let done = containers().and_then(|c| Ok(executor::container::network::reclaim_orphans(&c)?));
    if let Err(e) = done {
        eprintln!("warning: reclaiming orphaned container resources: {e:#}");
    }
}

/// See [`executor::container::network::release`].
pub fn release(id: &str, network: Option<&str>, ports: &[PortMapping], running: bool) {
    if let Ok(c) = containers() {
        executor::container::network::release(&c, id, network, ports, running);
    }
}

/// See [`executor::container::network::build_network`].
pub fn build_network() -> anyhow::Result<std::sync::Arc<executor::net::BuildNetwork>> {
    Ok(executor::container::network::build_network()?)
}

/// See [`executor::container::network::setup`].
#[allow(clippy::too_many_arguments)]
pub fn setup(
    mode: &Mode,
    id: &str,
    cname: &str,
    hostname: &str,
    ports: &[PortMapping],
    dir: &Path,
    detached: bool,
    rec: &mut Record,
) -> anyhow::Result<(Network, Option<Joined>)> {
    let c = containers()?;
    Ok(executor::container::network::setup(
        &c, mode, id, cname, hostname, ports, dir, detached, rec,
    )?)
}

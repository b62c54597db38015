//! The cli's side of container networking (`executor::container::network`): it supplies
//! `KILN_ROOT/containers` and turns errors into messages.

pub use executor::container::network::{Mode, ports};
pub use executor::container::runtime::state_dir;
use std::path::PathBuf;

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

/// See [`executor::container::network::build_network`].
pub fn build_network() -> anyhow::Result<std::sync::Arc<executor::net::BuildNetwork>> {
    Ok(executor::container::network::build_network()?)
}

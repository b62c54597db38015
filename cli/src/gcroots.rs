//! Containers' part in `kiln prune` ([`cache::gc::GcRoots`]): the layers a container's overlay
//! uses stay while the container exists (running or exited), read from its typed spec.
//!
//! The container runtime is moving into `executor::container`; [`container_specs`] is the one
//! place that reads its specs here, to be re-pointed at the runtime's own reader.

use cache::gc::GcRoots;
use cache::oci::Digest;
use cache::store::StoreError;
use executor::spec::{MountKind, RunSpec};
use kroot::Dir;
use std::io;
use std::path::{Path, PathBuf};

/// The containers under one `KILN_ROOT`.
#[derive(Debug, Clone)]
pub struct ContainerRoots {
    root: PathBuf,
}

impl ContainerRoots {
    /// The containers under `kiln_root`.
    pub fn new(kiln_root: impl Into<PathBuf>) -> ContainerRoots {
        ContainerRoots {
            root: kiln_root.into(),
        }
    }
}

/// The spec of every container under `kiln_root` (`containers/<id>/spec.json`); a container
/// whose spec is missing or unreadable (being created, or half removed) has none.
///
/// Fails when the containers directory cannot be read.
pub fn container_specs(kiln_root: &Path) -> io::Result<Vec<RunSpec>> {
    let dir = Dir::Containers.path(kiln_root);
    let entries = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("spec.json")).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect())
}

/// The diff_ids of the snapshots (under `snapshots`) that `spec` mounts: its root's lower
/// layers and those of its tree mounts.
fn snapshot_layers(spec: &RunSpec, snapshots: &Path) -> Vec<Digest> {
    let trees = spec.mounts.iter().filter_map(|m| match &m.kind {
        MountKind::Tree { lowers, .. } => Some(lowers),
        _ => None,
    });
    std::iter::once(&spec.rootfs.lowers)
        .chain(trees)
        .flatten()
        .filter_map(|p| p.strip_prefix(snapshots).ok()?.iter().next())
        .filter_map(|hex| format!("sha256:{}", hex.to_string_lossy()).parse().ok())
        .collect()
}

impl GcRoots for ContainerRoots {
    fn layers(&self) -> Result<Vec<Digest>, StoreError> {
        let specs = container_specs(&self.root).map_err(|source| StoreError::Io {
            op: "read directory",
            path: Dir::Containers.path(&self.root),
            source,
        })?;
        let snapshots = Dir::Snapshots.path(&self.root);
        Ok(specs
            .iter()
            .flat_map(|s| snapshot_layers(s, &snapshots))
            .collect())
    }
}

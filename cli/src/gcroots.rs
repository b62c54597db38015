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
        .filter_map(|e| executor::container::supervisor::read_spec(&e.path()).ok())
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

#[cfg(test)]
mod tests {
    use super::*;
    use executor::spec::{MountSpec, Network, Rootfs, Security};

    fn spec(lowers: Vec<PathBuf>, mounts: Vec<MountSpec>) -> RunSpec {
        RunSpec {
            rootfs: Rootfs {
                lowers,
                upper: "/r/containers/c/upper".into(),
                work: "/r/containers/c/work".into(),
            },
            args: vec!["sh".into()],
            env: Vec::new(),
            cwd: "/".into(),
            user: String::new(),
            hostname: "c".into(),
            network: Network::Loopback,
            mounts,
            tty: false,
            security: Security::default(),
        }
    }

    #[test]
    fn containers_report_the_snapshots_their_root_and_tree_mounts_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let snap = |s: &str| {
            Dir::Snapshots
                .path(root)
                .join(Digest::of(s.as_bytes()).hex())
        };
        let tree = MountSpec {
            target: "/m".into(),
            kind: MountKind::Tree {
                lowers: vec![snap("tree")],
                scratch: None,
                path: "/".into(),
            },
            readonly: true,
        };
        let containers = Dir::Containers.path(root);
        for (id, s) in [
            (
                "a",
                spec(
                    vec![snap("top"), snap("base"), "/elsewhere/x".into()],
                    vec![tree],
                ),
            ),
            ("b", spec(vec![snap("base")], Vec::new())),
        ] {
            std::fs::create_dir_all(containers.join(id)).expect("mkdir");
            kroot::write_atomic(
                &containers.join(id).join("spec.json"),
                &serde_json::to_vec(&s).expect("json"),
            )
            .expect("spec");
        }
        // Being created: no spec yet; half written by an old kiln: not a spec.
        std::fs::create_dir_all(containers.join("new")).expect("mkdir");
        std::fs::create_dir_all(containers.join("bad")).expect("mkdir");
        std::fs::write(containers.join("bad/spec.json"), b"{").expect("write");

        let mut got = ContainerRoots::new(root).layers().expect("layers");
        got.sort_by(|a, b| a.hex().cmp(b.hex()));
        got.dedup();
        let mut want: Vec<Digest> = ["top", "base", "tree"]
            .iter()
            .map(|s| Digest::of(s.as_bytes()))
            .collect();
        want.sort_by(|a, b| a.hex().cmp(b.hex()));
        assert_eq!(got, want);
    }

    #[test]
    fn a_root_without_containers_reports_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            ContainerRoots::new(dir.path())
                .layers()
                .expect("layers")
                .is_empty()
        );
    }
}

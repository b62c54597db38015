//! Volumes, as docker's `local` driver keeps them: `KILN_ROOT/volumes/<name>/_data` is what a
//! container mounts, `<name>/meta.json` its creation date and labels. Named volumes are made by
//! `kiln volume create` or on first use by `kiln run -v NAME:/path`; anonymous ones (`-v
//! /path`) get a 64-hex name and go with their container under `--rm` or `rm -v`.
//!
//! A volume appears whole: it is made in a temporary directory beside the others and renamed
//! into place, so two `kiln run -v data:/x` at once share one volume. Which containers use a
//! volume is read from their `spec.json` mounts, the same record `kiln start` mounts again, so
//! `rm` and `prune` never remove a volume a container (running or not) still names; `kiln run`
//! holds a shared flock of `volumes/.lock` ([`Volumes::lock_shared`]) from making its volumes
//! until its `spec.json` names them, and `rm`/`prune` decide under the exclusive one, so a
//! volume is never pruned between its creation and its first container.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::spec::{ContainerMount, MountKind};

/// Errors of the volume store, in docker's words.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A name docker's local driver refuses.
    #[error(
        "create {0}: \"{0}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
    )]
    InvalidName(String),
    /// A one-character name.
    #[error(
        "create {0}: volume name is too short, names should be at least two alphanumeric characters"
    )]
    TooShort(String),
    /// No volume of that name.
    #[error("No such volume: {0}")]
    NotFound(String),
    /// Containers still name it.
    #[error("remove {name}: volume is in use - [{}]", .users.join(", "))]
    InUse {
        /// The volume.
        name: String,
        /// The ids of the containers using it.
        users: Vec<String>,
    },
    /// Reading or writing the store failed.
    #[error("{what} {}", .path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, VolumeError>;

/// A volume's record, with docker's `volume inspect` keys.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    /// RFC 3339, UTC.
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    /// `--label`s of `kiln volume create`; None (docker's `null`) for one made by `kiln run`.
    #[serde(rename = "Labels")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// One volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Its name.
    pub name: String,
    /// Its data directory (docker's `Mountpoint`).
    pub mountpoint: PathBuf,
    /// Its record.
    pub meta: Meta,
}

/// The volume store: a `KILN_ROOT/volumes` directory.
#[derive(Debug, Clone)]
pub struct Volumes {
    dir: PathBuf,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Checks `name` as docker's local driver does (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`).
pub fn check_name(name: &str) -> Result<()> {
    let ok = |c: char, first: bool| c.is_ascii_alphanumeric() || (!first && "_.-".contains(c));
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if ok(c, true) => {}
        _ => return Err(VolumeError::InvalidName(name.to_owned())),
    }
    if !chars.all(|c| ok(c, false)) {
        return Err(VolumeError::InvalidName(name.to_owned()));
    }
    if name.len() < 2 {
        return Err(VolumeError::TooShort(name.to_owned()));
    }
    Ok(())
}

impl Volumes {
    /// The store in `dir` (`KILN_ROOT/volumes`, see [`kroot::Dir::Volumes`]).
    pub fn new(dir: PathBuf) -> Volumes {
        Volumes { dir }
    }

    fn lock(&self, op: rustix::fs::FlockOperation) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.dir).map_err(io_err("creating", &self.dir))?;
        let path = self.dir.join(".lock");
        let f = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        rustix::fs::flock(&f, op).map_err(|e| io_err("locking", &path)(e.into()))?;
        Ok(f)
    }

    /// A shared lock on the store, held by `kiln run` from making its volumes until its
    /// `spec.json` names them (dropping the file releases it). Fails when it cannot be taken.
    pub fn lock_shared(&self) -> Result<std::fs::File> {
        self.lock(rustix::fs::FlockOperation::LockShared)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Volume `name`, made (empty, with `labels`) when it does not exist; true when made now.
    /// Fails on an invalid name or when the store cannot be written.
    pub fn create(
        &self,
        name: &str,
        labels: Option<BTreeMap<String, String>>,
    ) -> Result<(Volume, bool)> {
        check_name(name)?;
        if let Ok(v) = self.get(name) {
            return Ok((v, false));
        }
        std::fs::create_dir_all(&self.dir).map_err(io_err("creating", &self.dir))?;
        let tmp = self.dir.join(format!(".new-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let data = tmp.join("_data");
        std::fs::create_dir_all(&data).map_err(io_err("creating", &data))?;
        let meta = Meta {
            created_at: crate::container::time::now_rfc3339(),
            labels,
        };
        let bytes = serde_json::to_vec(&meta).map_err(|e| VolumeError::Io {
            what: "encoding",
            path: tmp.join("meta.json"),
            source: e.into(),
        })?;
        let m = tmp.join("meta.json");
        kroot::write_atomic(&m, &bytes).map_err(io_err("writing", &m))?;
        let to = self.path(name);
        match std::fs::rename(&tmp, &to) {
            Ok(()) => Ok((self.get(name)?, true)),
            // Made meanwhile by another kiln: that one is the volume.
            Err(e) if to.join("meta.json").is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
                drop(e);
                Ok((self.get(name)?, false))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(io_err("creating", &to)(e))
            }
        }
    }

    /// A new anonymous volume (a 64-hex name, no labels). Fails when the store cannot be
    /// written.
    pub fn create_anonymous(&self) -> Result<Volume> {
        Ok(self.create(&crate::container::state::new_id(), None)?.0)
    }

    /// Volume `name`. Fails when there is none.
    pub fn get(&self, name: &str) -> Result<Volume> {
        if check_name(name).is_err() {
            return Err(VolumeError::NotFound(name.to_owned()));
        }
        let dir = self.path(name);
        let m = dir.join("meta.json");
        let bytes = std::fs::read(&m).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => VolumeError::NotFound(name.to_owned()),
            _ => io_err("reading", &m)(e),
        })?;
        let meta = serde_json::from_slice(&bytes).map_err(|e| VolumeError::Io {
            what: "decoding",
            path: m.clone(),
            source: e.into(),
        })?;
        Ok(Volume {
            name: name.to_owned(),
            mountpoint: dir.join("_data"),
            meta,
        })
    }

    /// Every volume, by name.
    pub fn list(&self) -> Vec<Volume> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names.iter().filter_map(|n| self.get(n).ok()).collect()
    }

    /// Removes volume `name`, unless a container in `containers` (`KILN_ROOT/containers`)
    /// names it. Fails when it does not exist, is in use, or cannot be removed.
    pub fn remove(&self, containers: &Path, name: &str) -> Result<()> {
        self.get(name)?;
        let _lock = self.lock(rustix::fs::FlockOperation::LockExclusive)?;
        let users = users(containers, name);
        if !users.is_empty() {
            return Err(VolumeError::InUse {
                name: name.to_owned(),
                users,
            });
        }
        self.remove_unchecked(name)
    }

    /// Removes volume `name` whoever uses it (a `--rm` container's anonymous volumes).
    /// Fails when it cannot be removed.
    pub fn remove_unchecked(&self, name: &str) -> Result<()> {
        // Renamed away first, so no one finds a half-removed volume.
        let from = self.path(name);
        let gone = self.dir.join(format!(".rm-{}-{name}", std::process::id()));
        match std::fs::rename(&from, &gone) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::NotFound(name.to_owned()));
            }
            Err(e) => return Err(io_err("removing", &from)(e)),
        }
        std::fs::remove_dir_all(&gone).map_err(io_err("removing", &gone))
    }

    /// `kiln volume prune` (docker 20.10's: every volume no container names, named ones too)
    /// of the volumes `pick` takes: the removed names and the bytes their files held.
    pub fn prune(&self, containers: &Path, pick: impl Fn(&Volume) -> bool) -> (Vec<String>, u64) {
        let Ok(_lock) = self.lock(rustix::fs::FlockOperation::LockExclusive) else {
            return (Vec::new(), 0);
        };
        self.remove_stale_temps();
        let used = used_names(containers);
        let mut removed = Vec::new();
        let mut bytes = 0;
        for v in self.list() {
            if used.contains_key(&v.name) || !pick(&v) {
                continue;
            }
            let size = tree_size(&v.mountpoint);
            if self.remove_unchecked(&v.name).is_ok() {
                bytes += size;
                removed.push(v.name);
            }
        }
        (removed, bytes)
    }
}

impl Volumes {
    /// Removes what a kiln that died midway left: `.new-PID-NAME` (a volume being made) and
    /// `.rm-PID-NAME` (one being removed) of a process that no longer runs.
    fn remove_stale_temps(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(".new-")
                .or_else(|| name.strip_prefix(".rm-"))
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok());
            if let Some(pid) = pid
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The volumes container spec `mounts` names: (name, anonymous).
pub fn named_in(mounts: &[crate::spec::MountSpec]) -> Vec<(String, bool)> {
    mounts
        .iter()
        .filter_map(|m| match &m.kind {
            MountKind::Container(ContainerMount::Volume {
                name, anonymous, ..
            }) => Some((name.clone(), *anonymous)),
            _ => None,
        })
        .collect()
}

/// Removes the anonymous volumes the container in `dir` mounts (its `spec.json`), as docker's
/// `--rm` and `rm -v`; call before its directory goes. Named volumes stay.
pub fn remove_anonymous_of(dir: &Path) {
    if let Ok(spec) = crate::container::supervisor::read_spec(dir) {
        remove_anonymous(&spec.mounts);
    }
}

/// Removes the anonymous volumes of `mounts` (a container's spec mounts).
pub fn remove_anonymous(mounts: &[crate::spec::MountSpec]) {
    for m in mounts {
        if let MountKind::Container(ContainerMount::Volume {
            source,
            anonymous: true,
            ..
        }) = &m.kind
            && let Some(vol) = source.parent()
            && let (Some(store), Some(name)) = (vol.parent(), vol.file_name())
        {
            let _ = Volumes::new(store.to_path_buf()).remove_unchecked(&name.to_string_lossy());
        }
    }
}

/// Every volume some container under `containers` names, with those containers' ids.
fn used_names(containers: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(containers) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(spec) = crate::container::supervisor::read_spec(&e.path()) else {
            continue;
        };
        for (name, _) in named_in(&spec.mounts) {
            out.entry(name)
                .or_default()
                .push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// The ids of the containers under `containers` that name volume `name`.
pub fn users(containers: &Path, name: &str) -> Vec<String> {
    used_names(containers).remove(name).unwrap_or_default()
}

/// The bytes of the files under `dir` (symlinks not followed).
pub fn tree_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dockers_local_driver() {
        for ok in ["ab", "data", "a.b-c_d", "0x"] {
            check_name(ok).expect(ok);
        }
        for bad in ["bad/name", "-x", ".x", "_x", "a b", "", "../x"] {
            assert!(
                matches!(check_name(bad), Err(VolumeError::InvalidName(_))),
                "{bad}"
            );
        }
        assert!(matches!(check_name("a"), Err(VolumeError::TooShort(_))));
    }

    #[test]
    fn a_volume_is_made_once_and_listed_until_removed() {
        let root = tempfile::tempdir().expect("tempdir");
        let vols = Volumes::new(root.path().join("volumes"));
        let (v, made) = vols.create("data", None).expect("create");
        assert!(made && v.mountpoint.is_dir());
        std::fs::write(v.mountpoint.join("f"), "x").expect("write");
        let (again, made) = vols.create("data", None).expect("create again");
        assert!(!made);
        assert_eq!(again, v);
        assert_eq!(
            vols.list()
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>(),
            ["data"]
        );
        let (gone, bytes) = vols.prune(&root.path().join("containers"), |_| true);
        assert_eq!((gone, bytes), (vec!["data".to_owned()], 1));
        assert!(matches!(vols.get("data"), Err(VolumeError::NotFound(_))));
        // A dead kiln's half-made volume is cleaned by the next prune, and never listed.
        let stale = root.path().join("volumes/.new-999999999-x1");
        std::fs::create_dir_all(stale.join("_data")).expect("mkdir");
        assert!(vols.list().is_empty());
        vols.prune(&root.path().join("containers"), |_| true);
        assert!(!stale.exists());
        assert!(matches!(
            vols.remove(&root.path().join("containers"), "data"),
            Err(VolumeError::NotFound(_))
        ));
    }
}

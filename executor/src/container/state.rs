//! A container's state (`KILN_ROOT/containers/<id>/state.json`) and its lifecycle: the
//! [`Status`] moves only along docker's edges (created -> running -> exited -> created again
//! by `start`, anything -> removing), checked by [`State::transition`].

use super::process::alive;
use crate::net::PortMapping;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Errors reading, finding or changing container state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A state file could not be read or written.
    #[error("{}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A state file is not valid JSON of a [`State`].
    #[error("parsing {}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// No container has this name, id or id prefix.
    #[error("no such container: {0}")]
    NotFound(String),
    /// More than one container's id starts with this prefix.
    #[error("container name {0:?} is ambiguous")]
    Ambiguous(String),
    /// A change of status docker does not make (a bug in the caller).
    #[error("container {id}: cannot go from {from} to {to}")]
    Transition {
        /// The container.
        id: String,
        /// Its status.
        from: Status,
        /// The status asked for.
        to: Status,
    },
}

type Result<T> = std::result::Result<T, StateError>;

/// Where a container is in its life, as docker's `State.Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Prepared (directory, network, cgroup), its process not started yet.
    Created,
    /// Its sandbox process runs.
    Running,
    /// Its process has exited (or is gone).
    Exited,
    /// Being removed by `rm`.
    Removing,
}

impl Status {
    /// Whether docker moves a container from `self` to `to`.
    pub fn can_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Created, Running)
                | (Created, Exited)
                | (Running, Exited)
                | (Exited, Created)
                | (Created | Running | Exited, Removing)
        )
    }

    /// docker's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
            Status::Removing => "removing",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The container id: 64 hex digits, also its directory's name.
    pub id: String,
    /// Its name (`--name`, or generated); empty in state written before names were separate,
    /// where the id was the name (see [`State::name`]).
    #[serde(default)]
    pub name: String,
    /// The image as given on the command line.
    pub image: String,
    /// The command.
    pub command: Vec<String>,
    /// Where it is in its life.
    pub status: Status,
    /// The sandbox process.
    pub pid: Option<i32>,
    /// Exit code once exited.
    pub exit_code: Option<i32>,
    /// The bridge network, when attached.
    pub network: Option<String>,
    /// The container's address.
    pub ip: Option<Ipv4Addr>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// Remove everything on exit (`--rm`).
    pub auto_remove: bool,
    /// The bridge gateway, when attached.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// The image's STOPSIGNAL (`SIGTERM` when unset).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// When the container was created (RFC 3339, UTC).
    #[serde(default)]
    pub created: Option<String>,
    /// When its process started.
    #[serde(default)]
    pub started_at: Option<String>,
    /// When its process exited.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Its cgroup directories (one per v1 hierarchy, or one on v2), removed with it.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// `--memory`, `--cpus` (in millicpus), `--pids-limit`, as given.
    #[serde(default)]
    pub limits: crate::cgroup::Limits,
    /// `--network` as given (`bridge`, `none`, `host`, `container:NAME`, a network).
    #[serde(default)]
    pub network_mode: Option<String>,
    /// `kiln run`'s other docker options (labels, capabilities, DNS, ...), for `inspect`.
    #[serde(default)]
    pub options: super::options::RunOptions,
}

impl State {
    /// Its name (the id for state written when a named container's id was its name).
    pub fn name(&self) -> &str {
        if self.name.is_empty() {
            &self.id
        } else {
            &self.name
        }
    }

    /// Moves to `to`. Fails, changing nothing, on an edge docker does not take.
    pub fn transition(&mut self, to: Status) -> Result<()> {
        if !self.status.can_become(to) {
            return Err(StateError::Transition {
                id: self.id.clone(),
                from: self.status,
                to,
            });
        }
        self.status = to;
        Ok(())
    }

    /// Whether it runs (after [`effective`] corrected it).
    pub fn is_running(&self) -> bool {
        self.status == Status::Running
    }

    /// The status corrected for a process that is gone: running without a live sandbox
    /// process is exited, whatever the file says (its supervisor died before writing it).
    pub fn effective(mut self) -> State {
        if self.status == Status::Running && !alive(self.pid) {
            self.status = Status::Exited;
        }
        self
    }
}

/// Reads `dir/state.json`.
pub fn read(dir: &Path) -> Result<State> {
    let path = dir.join("state.json");
    let text = std::fs::read(&path).map_err(|source| StateError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| StateError::Parse { path, source })
}

/// Writes `dir/state.json` ([`kroot::write_atomic`]).
pub fn write(dir: &Path, s: &State) -> Result<()> {
    let path = dir.join("state.json");
    let bytes = serde_json::to_vec_pretty(s).map_err(|source| StateError::Parse {
        path: path.clone(),
        source,
    })?;
    kroot::write_atomic(&path, &bytes).map_err(|source| StateError::Io { path, source })
}

/// A new container id: 64 hex digits, as docker's (shown as 12 by `ps`, accepted as any
/// unique prefix), from 32 bytes of `/dev/urandom`.
pub fn new_id() -> String {
    use std::io::Read as _;
    let mut b = [0u8; 32];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if read.is_err() {
        // No /dev/urandom (a very bare chroot): the clock and pid still differ between
        // containers.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = t ^ (u128::from(std::process::id()) << 64);
        for (i, x) in b.iter_mut().enumerate() {
            *x = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every container's state under `containers` (a `KILN_ROOT/containers` directory),
/// corrected by [`State::effective`], with its directory.
pub fn all(containers: &Path) -> Vec<(PathBuf, State)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(containers) {
        for e in rd.flatten() {
            if let Ok(s) = read(&e.path()) {
                out.push((e.path(), s.effective()));
            }
        }
    }
    out
}

/// The container that `name` names under `containers`: its name, full id, or a unique id
/// prefix (docker's order). Ok(None) when none does.
pub fn lookup(containers: &Path, name: &str) -> Result<Option<(PathBuf, State)>> {
    if name.is_empty() {
        return Ok(None);
    }
    let all = all(containers);
    if let Some((d, s)) = all.iter().find(|(_, s)| s.id == name || s.name() == name) {
        return Ok(Some((d.clone(), s.clone())));
    }
    let mut hits = all.into_iter().filter(|(_, s)| s.id.starts_with(name));
    match (hits.next(), hits.next()) {
        (Some(one), None) => Ok(Some(one)),
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(StateError::Ambiguous(name.to_owned())),
    }
}

/// Like [`lookup`], failing when no container matches.
pub fn find(containers: &Path, name: &str) -> Result<(PathBuf, State)> {
    lookup(containers, name)?.ok_or_else(|| StateError::NotFound(name.to_owned()))
}

/// A created container's state with only `id` and `name` set, for tests.
#[cfg(test)]
pub(crate) fn sample(id: &str, name: &str) -> State {
    State {
        id: id.to_owned(),
        name: name.to_owned(),
        image: "busybox".to_owned(),
        command: vec!["sh".to_owned()],
        status: Status::Created,
        pid: None,
        exit_code: None,
        network: None,
        ip: None,
        ports: vec![],
        auto_remove: false,
        gateway: None,
        stop_signal: None,
        created: None,
        started_at: None,
        finished_at: None,
        cgroups: vec![],
        limits: Default::default(),
        network_mode: None,
        options: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_moves_only_along_dockers_edges() {
        let mut s = sample("a", "");
        s.transition(Status::Running).expect("created -> running");
        assert!(s.transition(Status::Created).is_err());
        assert_eq!(s.status, Status::Running);
        s.transition(Status::Exited).expect("running -> exited");
        s.transition(Status::Created).expect("start");
        s.transition(Status::Removing).expect("rm");
        assert!(s.transition(Status::Running).is_err());
        // The file keeps docker's words.
        let j = serde_json::to_value(&s).expect("json");
        assert_eq!(j["status"], "removing");
    }

    #[test]
    fn containers_are_found_by_name_id_or_unique_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        for (id, name) in [(&a, "web"), (&b, "db")] {
            let d = dir.path().join(id);
            std::fs::create_dir(&d).expect("mkdir");
            write(&d, &sample(id, name)).expect("write");
        }
        let id_of = |n: &str| lookup(dir.path(), n).expect(n).map(|(_, s)| s.id);
        assert_eq!(id_of("web").as_deref(), Some(a.as_str()));
        assert_eq!(id_of(&b).as_deref(), Some(b.as_str()));
        assert_eq!(id_of(&a[..12]).as_deref(), Some(a.as_str()));
        assert_eq!(id_of("nosuch"), None);
        assert_eq!(id_of("../x"), None);
        // A prefix both ids share, if any, is ambiguous.
        let common = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
        if common > 0 {
            assert!(matches!(
                lookup(dir.path(), &a[..common]),
                Err(StateError::Ambiguous(_))
            ));
        }
    }
}

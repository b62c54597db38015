//! Who holds a container's host-wide resources, and reclaiming them when that owner is dead.
//!
//! A container's lease, published ports (nft rules), veth, pinned network namespace and
//! cgroups are host-wide (under `/run/kiln`, in the kernel), while its state lives under a
//! `KILN_ROOT` that may be deleted. So every container that holds any of them has an [`Owner`]
//! record in a host-wide directory ([`super::runtime::owners_dir`], a tmpfs like the links it describes): the
//! process that owns it (the `__supervise` supervisor, or a foreground `kiln run`) by pid and
//! start time, its directory, and what it holds. An owner is dead when that process is gone
//! or the directory is. [`Owners::reclaim`] kills a dead owner's container, unpins its
//! namespace, removes its cgroups and releases every lease no live owner claims (deleting the
//! veth and the DNAT rules); the cli runs it on every `run`, `ps`, `network` and `system
//! prune`.
//!
//! `--network container:X` makes the sharer claim X's lease too ([`Owner::shares`]): a lease is
//! released only when neither X nor any sharer still claims it, so removing X while a sharer
//! runs keeps the address taken.
//!
//! The record is written before the lease is taken, so a lease no live record claims is
//! always an orphan (pooled build namespaces, `pool-N`, are the pool's and never touched).

use super::process::{alive, init_pid, kill, same_alive, start_time};
use crate::net::{Netlink, Networks, Nft};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors of the owner records.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// A record (or the lock) could not be read or written.
    #[error("{}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A network step of a release failed.
    #[error("releasing the address of container {container} on network {network}")]
    Release {
        /// The container the lease is named after.
        container: String,
        /// The network.
        network: String,
        /// The cause.
        #[source]
        source: Box<crate::net::AttachError>,
    },
}

type Result<T> = std::result::Result<T, OwnerError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OwnerError + '_ {
    move |source| OwnerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A lease by network and the container it was taken for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRef {
    /// The network.
    pub network: String,
    /// The container id the lease is named after.
    pub container: String,
}

/// A container's record: its owner process and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The container id.
    pub id: String,
    /// The owning process: the supervisor, or the `kiln run` in the foreground.
    pub pid: i32,
    /// Its start time (see [`start_time`]), so a recycled pid is not taken for it.
    pub start: u64,
    /// The container's directory (`KILN_ROOT/containers/<id>`).
    pub dir: PathBuf,
    /// The sandbox process, once spawned, and its start time.
    #[serde(default)]
    pub sandbox: Option<(i32, u64)>,
    /// Its own lease.
    #[serde(default)]
    pub lease: Option<LeaseRef>,
    /// The lease of the container whose network it shares (`--network container:X`).
    #[serde(default)]
    pub shares: Option<LeaseRef>,
    /// Its pinned network namespace.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Its cgroup directories.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
}

fn me() -> (i32, u64) {
    let pid = i32::try_from(std::process::id()).expect("invariant: pids fit in i32");
    (pid, start_time(pid).unwrap_or(0))
}

impl Owner {
    /// A record of container `id` (directory `dir`) owned by the calling process.
    pub fn new(id: &str, dir: &Path) -> Owner {
        let (pid, start) = me();
        Owner {
            id: id.to_owned(),
            pid,
            start,
            dir: dir.to_path_buf(),
            sandbox: None,
            lease: None,
            shares: None,
            netns: None,
            cgroups: Vec::new(),
        }
    }

    /// Makes the calling process the owner (the supervisor taking over from `kiln run -d`).
    pub fn take_over(&mut self) {
        (self.pid, self.start) = me();
    }

    /// Records the sandbox process `pid`.
    pub fn set_sandbox(&mut self, pid: i32) {
        self.sandbox = start_time(pid).map(|s| (pid, s));
    }

    /// Whether the owner process lives and the container's directory exists.
    pub fn alive(&self) -> bool {
        same_alive(self.pid, self.start) && self.dir.is_dir()
    }

    fn claims(&self, l: &LeaseRef) -> bool {
        self.lease.as_ref() == Some(l) || self.shares.as_ref() == Some(l)
    }
}

/// What [`Owners::reclaim`] took back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// Containers whose owner was dead.
    pub containers: Vec<String>,
    /// Leases released.
    pub leases: Vec<LeaseRef>,
}

/// The owner records in one directory (normally [`super::runtime::owners_dir`]).
#[derive(Debug, Clone)]
pub struct Owners {
    dir: PathBuf,
}

impl Owners {
    /// Opens (creating) the directory. Fails when it cannot be created.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Owners> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Owners { dir })
    }

    /// Serialises the decisions of release and reclaim between processes.
    fn lock(&self) -> Result<File> {
        let path = self.dir.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err(&path)(e.into()))?;
        Ok(f)
    }

    fn path(&self, id: &str) -> Option<PathBuf> {
        crate::names::check_container(id)
            .ok()
            .map(|()| self.dir.join(format!("{id}.json")))
    }

    /// Writes (or replaces) `o`'s record: temp file, then rename. No fsync: the records
    /// describe processes, which a power loss ends as well.
    pub fn record(&self, o: &Owner) -> Result<()> {
        let Some(path) = self.path(&o.id) else {
            return Ok(());
        };
        let tmp = self.dir.join(format!("{}.json.tmp", o.id));
        let bytes = serde_json::to_vec(o).expect("invariant: an Owner serialises");
        std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// The record of container `id`, if any.
    pub fn get(&self, id: &str) -> Option<Owner> {
        let bytes = std::fs::read(self.path(id)?).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn all(&self) -> Vec<Owner> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }

    /// The sandbox process (pid) of a live container other than `lease.container` that shares
    /// `lease` (`--network container:X` of the lease's container X), if one runs.
    pub fn live_sharer(&self, lease: &LeaseRef) -> Option<i32> {
        self.all()
            .into_iter()
            .filter(|o| o.id != lease.container && o.shares.as_ref() == Some(lease) && o.alive())
            .find_map(|o| {
                o.sandbox
                    .filter(|(p, st)| same_alive(*p, *st))
                    .map(|(p, _)| p)
            })
    }

    /// Removes container `id`'s record (it holds nothing host-wide any more).
    pub fn remove(&self, id: &str) {
        if let Some(p) = self.path(id) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Container `id` is done with its host resources (it exited, or `rm`): unpins its
    /// namespace, drops its record and releases its own lease (`own`, when the record does not
    /// name it) and the one it shares, each unless a live owner still claims it. With
    /// `delete_veth` (its process may still run) the veth is deleted now; otherwise the kernel
    /// deletes it with the namespace. Returns the leases released. The cgroups are the
    /// caller's to remove (it knows when the processes are gone).
    pub fn release<N: Netlink, F: Nft>(
        &self,
        nets: &mut Networks<N, F>,
        id: &str,
        own: Option<LeaseRef>,
        delete_veth: bool,
    ) -> Result<Vec<LeaseRef>> {
        let _l = self.lock()?;
        let rec = self.get(id);
        if let Some(ns) = rec.as_ref().and_then(|r| r.netns.as_ref()) {
            let _ = crate::net::netns::remove_path(ns);
        }
        let live: Vec<Owner> = self.all().into_iter().filter(Owner::alive).collect();
        let own = rec.as_ref().and_then(|r| r.lease.clone()).or(own);
        let shared = rec.and_then(|r| r.shares);
        let mut released = Vec::new();
        for l in [own, shared].into_iter().flatten() {
            if live.iter().any(|o| o.id != id && o.claims(&l)) {
                continue;
            }
            let done = if delete_veth {
                nets.detach(&l.network, &l.container)
            } else {
                nets.forget(&l.network, &l.container)
            };
            match done {
                Ok(true) => released.push(l),
                Ok(false) => {}
                Err(source) => {
                    self.remove(id);
                    return Err(OwnerError::Release {
                        container: l.container,
                        network: l.network,
                        source: Box::new(source),
                    });
                }
            }
        }
        // Last: a lease is never without the record that claims it.
        self.remove(id);
        Ok(released)
    }

    /// Whether [`reclaim`](Self::reclaim) has anything to do: a dead owner, or a lease on one
    /// of `leases` (network, container) that no live owner claims. Cheap (no netlink), so
    /// callers open [`Networks`] only when it says yes.
    pub fn pending(&self, leases: &[LeaseRef]) -> bool {
        let all = self.all();
        all.iter().any(|o| !o.alive())
            || leases
                .iter()
                .any(|l| !l.container.starts_with("pool-") && !all.iter().any(|o| o.claims(l)))
    }

    /// Reclaims what dead owners held: kills their containers' processes, unpins their
    /// namespaces, removes their cgroups and records, and releases (veth, lease, DNAT rules)
    /// every lease in `leases` that no live owner claims. Fails on the first lease that cannot
    /// be released (the rest stay for the next call).
    pub fn reclaim<N: Netlink, F: Nft>(
        &self,
        nets: &mut Networks<N, F>,
        leases: &[LeaseRef],
    ) -> Result<Reclaimed> {
        let _l = self.lock()?;
        let (live, dead): (Vec<Owner>, Vec<Owner>) = self.all().into_iter().partition(Owner::alive);
        let mut out = Reclaimed::default();
        for d in &dead {
            if let Some((pid, start)) = d.sandbox
                && same_alive(pid, start)
            {
                // PID 1 first: its pid namespace (every process of the container) dies with it.
                kill(init_pid(pid), rustix::process::Signal::KILL);
                kill(Some(pid), rustix::process::Signal::KILL);
                let deadline = Instant::now() + Duration::from_secs(2);
                while alive(Some(pid)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            if let Some(ns) = &d.netns {
                let _ = crate::net::netns::remove_path(ns);
            }
        }
        for l in leases {
            if l.container.starts_with("pool-") || live.iter().any(|o| o.claims(l)) {
                continue;
            }
            match nets.detach(&l.network, &l.container) {
                Ok(true) => out.leases.push(l.clone()),
                Ok(false) => {}
                Err(source) => {
                    return Err(OwnerError::Release {
                        container: l.container.clone(),
                        network: l.network.clone(),
                        source: Box::new(source),
                    });
                }
            }
        }
        for d in dead {
            let _ = crate::cgroup::Cgroup::open(d.cgroups.clone()).remove();
            self.remove(&d.id);
            out.containers.push(d.id);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(n: &str, c: &str) -> LeaseRef {
        LeaseRef {
            network: n.to_owned(),
            container: c.to_owned(),
        }
    }

    #[test]
    fn owners_die_with_their_process_or_their_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cdir = dir.path().join("c");
        std::fs::create_dir(&cdir).expect("mkdir");
        let mut o = Owner::new("a", &cdir);
        assert!(o.alive(), "this process owns it");
        o.start += 1;
        assert!(!o.alive(), "another process under a recycled pid");
        o.take_over();
        std::fs::remove_dir(&cdir).expect("rmdir");
        assert!(!o.alive(), "its KILN_ROOT is gone");
    }

    #[test]
    fn unclaimed_leases_and_dead_owners_are_pending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let owners = Owners::open(dir.path().join("owners")).expect("open");
        let cdir = dir.path().join("x");
        std::fs::create_dir(&cdir).expect("mkdir");
        let mut x = Owner::new("xx", &cdir);
        x.lease = Some(lease("bridge", "xx"));
        owners.record(&x).expect("record");
        let mut s = Owner::new("ss", &cdir);
        s.shares = Some(lease("bridge", "xx"));
        owners.record(&s).expect("record");
        let held = [lease("bridge", "xx"), lease("bridge", "pool-1")];
        assert!(!owners.pending(&held));
        assert!(owners.pending(&[lease("bridge", "gone")]));
        // x's record gone (removed): its sharer still claims the lease.
        owners.remove("xx");
        assert!(!owners.pending(&held));
        s.start += 1;
        owners.record(&s).expect("record");
        assert!(owners.pending(&held), "the sharer's owner is dead");
        assert_eq!(owners.get("ss"), Some(s));
    }
}

//! A pool of network namespaces already attached to a network, for build RUN steps.
//!
//! BuildKit's CNI provider keeps a few prepared namespaces and reuses them; docker's classic
//! builder pays ~0.25 s per RUN step for network setup on this machine. kiln is daemonless, so
//! the pool lives on disk and survives between `kiln build`s: slot `N` of network `NET` is
//! `RUN_DIR/NET/N.netns` (a pinned namespace with eth0 attached as container `pool-N`),
//! `N.json` (its [`Attachment`]) and `N.lock`. Whoever holds the flock on `N.lock` owns the slot;
//! the kernel drops the lock when the holder dies, so a crashed build never strands a slot.
//!
//! The sandbox joins a pooled namespace with `setns(open(path), CLONE_NEWNET)` instead of
//! unsharing a new one. After the step, `release` checks the namespace still holds exactly `lo`
//! and `eth0` with its address (a RUN step normally lacks CAP_NET_ADMIN, but if anything
//! changed, the slot is destroyed and rebuilt on next use).

use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::attach::{AttachError, Attachment, Networks};
use super::netlink::Netlink;
use super::netns::{self, Netns, NetnsError};
use super::nft::Nft;

/// Errors from the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A pool file could not be used.
    #[error("netns pool {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Creating or opening a namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// Attaching or detaching failed.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// Every slot is in use.
    #[error("all {max} pooled network namespaces of {dir} are in use")]
    Exhausted {
        /// The pool directory.
        dir: PathBuf,
        /// The number of slots.
        max: usize,
    },
}

type Result<T> = std::result::Result<T, PoolError>;

/// The pool of one network. Cheap to construct; all state is on disk.
#[derive(Debug, Clone)]
pub struct NetnsPool {
    dir: PathBuf,
    network: String,
    max: usize,
}

/// A namespace handed out by [`NetnsPool::acquire`]; give it back with [`NetnsPool::release`].
/// Dropping it instead also frees the slot (the namespace is then checked on next acquire).
#[derive(Debug)]
pub struct PooledNetns {
    netns: Netns,
    attachment: Attachment,
    slot: usize,
    _lock: File,
}

impl PooledNetns {
    /// The namespace file to `setns` into.
    pub fn path(&self) -> &Path {
        self.netns.path()
    }

    /// The open namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Address, gateway and veth of the namespace (for /etc/hosts).
    pub fn attachment(&self) -> &Attachment {
        &self.attachment
    }

    /// The slot number.
    pub fn slot(&self) -> usize {
        self.slot
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PoolError + '_ {
    move |source| PoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl NetnsPool {
    /// The pool of `network` under `run_dir` (e.g. `/run/kiln/netns`), with at most `max` slots.
    pub fn new(run_dir: impl AsRef<Path>, network: &str, max: usize) -> NetnsPool {
        NetnsPool {
            dir: run_dir.as_ref().join(network),
            network: network.to_string(),
            max,
        }
    }

    /// The pool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, slot: usize, ext: &str) -> PathBuf {
        self.dir.join(format!("{slot}.{ext}"))
    }

    fn id(slot: usize) -> String {
        format!("pool-{slot}")
    }

    fn lock_slot(&self, slot: usize, wait: bool) -> Result<Option<File>> {
        let path = self.path(slot, "lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let op = if wait {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::NonBlockingLockExclusive
        };
        match rustix::fs::flock(&file, op) {
            Ok(()) => Ok(Some(file)),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(io_err(&path)(e.into())),
        }
    }

    /// Hands out a free, attached namespace: an existing one when its slot is intact, else a
    /// new one (created and attached now, ~ms). Fails when all `max` slots are busy or setup
    /// fails.
    pub fn acquire<N: Netlink, F: Nft>(&self, nets: &mut Networks<N, F>) -> Result<PooledNetns> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        for slot in 0..self.max {
            let Some(lock) = self.lock_slot(slot, false)? else {
                continue;
            };
            if let Some((netns, attachment)) = self.intact(slot, nets) {
                return Ok(PooledNetns {
                    netns,
                    attachment,
                    slot,
                    _lock: lock,
                });
            }
            self.clear(slot, nets)?;
            let netns = Netns::create(self.path(slot, "netns"))?;
            let attachment = match nets.attach(&self.network, &Self::id(slot), &netns, &[]) {
                Ok(a) => a,
                Err(e) => {
                    let _ = netns.remove();
                    return Err(e.into());
                }
            };
            let json = self.path(slot, "json");
            let data =
                serde_json::to_vec(&attachment).map_err(|e| io_err(&json)(io::Error::other(e)))?;
            kroot::write_atomic(&json, &data).map_err(io_err(&json))?;
            return Ok(PooledNetns {
                netns,
                attachment,
                slot,
                _lock: lock,
            });
        }
        Err(PoolError::Exhausted {
            dir: self.dir.clone(),
            max: self.max,
        })
    }

    /// A slot is intact when its namespace is mounted, its attachment recorded, the lease still
    /// held with the same address and the host veth present.
    fn intact<N: Netlink, F: Nft>(
        &self,
        slot: usize,
        nets: &mut Networks<N, F>,
    ) -> Option<(Netns, Attachment)> {
        let netns = Netns::open(self.path(slot, "netns")).ok()?;
        let a: Attachment =
            serde_json::from_slice(&fs::read(self.path(slot, "json")).ok()?).ok()?;
        let leases = nets.ipam().leases(&self.network).ok()?;
        leases
            .iter()
            .find(|l| l.container == Self::id(slot) && l.ip == a.ip)?;
        nets.netlink().link_index(&a.host_veth).ok()??;
        Some((netns, a))
    }

    /// Removes whatever a slot holds (namespace, lease, rules, record). Caller holds the lock.
    fn clear<N: Netlink, F: Nft>(&self, slot: usize, nets: &mut Networks<N, F>) -> Result<()> {
        netns::remove_path(&self.path(slot, "netns"))?;
        nets.detach(&self.network, &Self::id(slot))?;
        let json = self.path(slot, "json");
        match fs::remove_file(&json) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&json)(e)),
        }
    }

    /// Gives a namespace back. It is kept for reuse when it still holds exactly `lo` and `eth0`
    /// with its address; otherwise it is destroyed (and rebuilt by a later acquire). Fails only
    /// when that destruction fails.
    pub fn release<N: Netlink, F: Nft>(
        &self,
        p: PooledNetns,
        nets: &mut Networks<N, F>,
    ) -> Result<()> {
        let clean = (|| -> Option<bool> {
            let mut inside = nets.netlink().in_netns(p.netns.as_fd()).ok()?;
            let mut names = inside.link_names().ok()?;
            names.sort();
            if names != ["eth0", "lo"] {
                return Some(false);
            }
            let eth0 = inside.link_index("eth0").ok()??;
            Some(inside.addresses(eth0).ok()? == [(p.attachment.ip, p.attachment.prefix)])
        })()
        .unwrap_or(false);
        if clean {
            return Ok(());
        }
        let PooledNetns {
            netns, slot, _lock, ..
        } = p;
        drop(netns);
        self.clear(slot, nets)
    }

    /// Prepares `n` slots ahead of use (e.g. at the start of a build with many RUN steps).
    pub fn prewarm<N: Netlink, F: Nft>(&self, nets: &mut Networks<N, F>, n: usize) -> Result<()> {
        let held = (0..n.min(self.max))
            .map(|_| self.acquire(nets))
            .collect::<Result<Vec<_>>>()?;
        drop(held);
        Ok(())
    }

    /// Destroys every slot (waiting for busy ones): namespaces, leases, rules, files. Returns
    /// how many slots held a namespace.
    pub fn destroy<N: Netlink, F: Nft>(&self, nets: &mut Networks<N, F>) -> Result<usize> {
        if !self.dir.exists() {
            return Ok(0);
        }
        let mut count = 0;
        for slot in 0..self.max {
            let Some(_lock) = self.lock_slot(slot, true)? else {
                continue;
            };
            if self.path(slot, "netns").exists() {
                count += 1;
            }
            self.clear(slot, nets)?;
            let lock = self.path(slot, "lock");
            fs::remove_file(&lock).map_err(io_err(&lock))?;
        }
        let _ = fs::remove_dir(&self.dir);
        Ok(count)
    }
}

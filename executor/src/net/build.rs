//! The network of build RUN steps: the default bridge (outbound NAT, so `apt-get` works where
//! the host reaches a mirror), through [`NetnsPool`] so that a step pays no setup.
//!
//! A [`BuildNetwork`] is shared by the steps of a build (`Arc`). [`BuildNetwork::acquire`]
//! hands out an attached namespace, which the sandbox joins through [`BuildLease::network`];
//! dropping the lease gives it back to the pool (checked and kept for the next step, or for
//! the next build: the pool lives under /run and survives between builds).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::attach::Networks;
use super::files;
use super::netlink::RealNetlink;
use super::nft::NftCommand;
use super::pool::{NetnsPool, PoolError, PooledNetns};
use crate::spec::Network;

/// How long `acquire` waits for a slot when every one is busy (parallel builds).
const WAIT_FOR_SLOT: Duration = Duration::from_secs(120);

/// Pooled bridge namespaces for RUN steps.
#[derive(Debug)]
pub struct BuildNetwork {
    pool: NetnsPool,
    max: usize,
    nets: Mutex<Networks<RealNetlink, NftCommand>>,
    resolv_conf: String,
}

/// A namespace lent to one RUN step; returned to the pool on drop.
#[derive(Debug)]
pub struct BuildLease {
    owner: Arc<BuildNetwork>,
    pooled: Option<PooledNetns>,
}

impl BuildNetwork {
    /// Steps join network `network` of the lease store `state_dir`, with namespaces pooled
    /// under `pool_dir` (at most `max` at once) and `host_resolv` (the host's resolv.conf
    /// text) made into their /etc/resolv.conf. Fails when the store or netlink cannot be
    /// opened, or `network` is not a valid name.
    pub fn open(
        state_dir: &std::path::Path,
        pool_dir: &std::path::Path,
        network: &str,
        max: usize,
        host_resolv: &str,
    ) -> Result<BuildNetwork, super::attach::AttachError> {
        // The pool directory is named after the network.
        if crate::names::check_network(network).is_err() {
            return Err(super::ipam::IpamError::BadName {
                name: network.to_owned(),
            }
            .into());
        }
        Ok(BuildNetwork {
            pool: NetnsPool::new(pool_dir, network, max),
            max,
            nets: Mutex::new(Networks::open(state_dir)?),
            resolv_conf: files::resolv_conf(host_resolv),
        })
    }

    /// An attached namespace for one step: a pooled one when free (no setup at all), else a
    /// new slot (a few ms). Waits while all slots are busy. Fails when setup fails.
    pub fn acquire(self: &Arc<Self>) -> Result<BuildLease, PoolError> {
        let deadline = Instant::now() + WAIT_FOR_SLOT;
        loop {
            match self.try_acquire() {
                Ok(Some(lease)) => return Ok(lease),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    return Err(PoolError::Exhausted {
                        dir: self.pool.dir().to_path_buf(),
                        max: self.max,
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Like [`acquire`](Self::acquire), but None at once when every slot is busy.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Option<BuildLease>, PoolError> {
        let got = {
            let mut nets = self.nets.lock().unwrap_or_else(|p| p.into_inner());
            self.pool.acquire(&mut nets)
        };
        match got {
            Ok(p) => Ok(Some(BuildLease {
                owner: Arc::clone(self),
                pooled: Some(p),
            })),
            Err(PoolError::Exhausted { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl BuildLease {
    /// Address, gateway and veth of the lent namespace.
    pub fn attachment(&self) -> &super::attach::Attachment {
        self.pooled
            .as_ref()
            .expect("the namespace is only taken out on drop")
            .attachment()
    }

    /// The sandbox network: join the pooled namespace, with /etc/hosts naming `hostname` on
    /// its address.
    pub fn network(&self, hostname: &str) -> Network {
        let p = self
            .pooled
            .as_ref()
            .expect("the namespace is only taken out on drop");
        Network::Join {
            netns: p.path().to_path_buf(),
            hosts: files::hosts(hostname, Some(p.attachment().ip), &[]),
            resolv_conf: self.owner.resolv_conf.clone(),
        }
    }
}

impl Drop for BuildLease {
    fn drop(&mut self) {
        if let Some(p) = self.pooled.take() {
            let mut nets = self.owner.nets.lock().unwrap_or_else(|e| e.into_inner());
            // A namespace that cannot be checked or cleared is simply rebuilt by a later
            // acquire (its slot lock goes with `p`).
            let _ = self.owner.pool.release(p, &mut nets);
        }
    }
}

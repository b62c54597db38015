//! IP address management: networks and their leases, persisted under a state directory
//! (`KILN_ROOT/networks`) and serialised between processes with `flock`.
//!
//! Layout:
//! ```text
//! networks/lock                     flock held for every read-modify-write below
//! networks/<name>/network.json      NetworkConfig (the default network's once chosen)
//! networks/<name>/leases.json       {"last": ip, "leases": [Lease...]}
//! ```
//! Published host ports are part of the lease, so the check that a host port is not already
//! published by another container happens under the same lock as the address allocation.
//!
//! The default network's subnet is chosen when its bridge is first needed
//! ([`Ipam::default_network_or`], with [`hostnet`](super::hostnet)'s rule) and stored in
//! `networks/bridge/network.json`; until then it reads as the pool's first choice.

use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::hostnet::{self, InUse};
use super::subnet::{PortMapping, Proto, Subnet};

/// Errors from network and lease bookkeeping.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A state file could not be read or written.
    #[error("network state {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A state file holds something we cannot parse.
    #[error("corrupt network state {path}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// No subnet of a pool is free (`hostnet`'s rule): each candidate and what holds it.
    #[error("no subnet of {pool} is free for network {network}: {why}")]
    NoFreeSubnet {
        /// The network name.
        network: String,
        /// The pool, as documented.
        pool: String,
        /// Each candidate and what holds it.
        why: String,
    },
    /// Every address of the subnet is leased.
    #[error("network {network} ({subnet}) has no free address left")]
    Exhausted {
        /// The network name.
        network: String,
        /// Its subnet.
        subnet: Subnet,
    },
    /// The container already holds a lease on this network.
    #[error("container {container} is already attached to network {network}")]
    AlreadyAttached {
        /// The network name.
        network: String,
        /// The container id.
        container: String,
    },
    /// Another kiln container already publishes this host port.
    #[error("host port {port} is already published by container {container}")]
    PortPublished {
        /// The requested mapping.
        port: PortMapping,
        /// The container holding it.
        container: String,
    },
    /// Something else on the host listens on this port.
    #[error("host port {port} is already in use on the host")]
    PortInUse {
        /// The requested mapping.
        port: PortMapping,
        /// The bind error.
        #[source]
        source: io::Error,
    },
    /// `-p IP:...` names an address that is not on this host.
    #[error("cannot publish {port}: {ip} is not an address of this host")]
    PortAddress {
        /// The requested mapping.
        port: PortMapping,
        /// The address.
        ip: Ipv4Addr,
    },
    /// `network create` with a name that exists.
    #[error("network {name} already exists")]
    NetworkExists {
        /// The name.
        name: String,
    },
    /// No such network.
    #[error("network {name} not found")]
    NoSuchNetwork {
        /// The name.
        name: String,
    },
    /// The subnet overlaps the subnet of another network.
    #[error("subnet {subnet} overlaps network {other} ({other_subnet})")]
    Overlap {
        /// The requested subnet.
        subnet: Subnet,
        /// The other network.
        other: String,
        /// Its subnet.
        other_subnet: Subnet,
    },
    /// `network rm` while containers hold leases.
    #[error("network {name} has {count} attached container(s)")]
    InUse {
        /// The name.
        name: String,
        /// How many leases remain.
        count: usize,
    },
    /// The name is not usable as a network name.
    #[error(
        "invalid network name `{name}`: use 1-64 characters from [a-zA-Z0-9_.-], starting with a letter or digit"
    )]
    BadName {
        /// The name.
        name: String,
    },
}

type Result<T> = std::result::Result<T, IpamError>;

/// The name of the default network (`--network bridge`, docker's name for it).
pub const DEFAULT_NETWORK: &str = "bridge";
/// The bridge device of the default network.
pub const DEFAULT_BRIDGE: &str = "kiln0";

/// Where user networks get their /24 when `network create` names no subnet: the first /24
/// that overlaps no other network and nothing on the host (see [`hostnet`](super::hostnet);
/// 10.89.0.0/16 is left to podman's user networks and to tests).
pub const AUTO_SUBNETS: &str = "10.90.0.0/16";

/// A bridge network: its bridge device, subnet and gateway (the bridge's address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The network name (`bridge` or a user network).
    pub name: String,
    /// The Linux bridge device (at most 15 bytes).
    pub bridge: String,
    /// The subnet containers get addresses from.
    pub subnet: Subnet,
    /// The bridge's address and the containers' default route.
    pub gateway: Ipv4Addr,
}

impl NetworkConfig {
    /// The default network as first choice: bridge `kiln0`, 10.88.0.0/16, gateway 10.88.0.1
    /// (never docker's 172.17.0.0/16). Where that is taken on the host, the default network
    /// gets another subnet ([`default_on`](Self::default_on), [`Ipam::default_network_or`]).
    pub fn default_bridge() -> NetworkConfig {
        let subnet = Subnet::new(Ipv4Addr::new(10, 88, 0, 0), 16)
            .expect("10.88.0.0/16 is a valid network address");
        NetworkConfig::default_on(subnet)
    }

    /// The default network (bridge `kiln0`) on `subnet`, the gateway its first host.
    pub fn default_on(subnet: Subnet) -> NetworkConfig {
        NetworkConfig {
            name: DEFAULT_NETWORK.to_string(),
            bridge: DEFAULT_BRIDGE.to_string(),
            gateway: subnet.first_host(),
            subnet,
        }
    }

    /// A user network: the bridge is `kiln-` and 8 hex digits of a stable hash of the name,
    /// the gateway the subnet's first host.
    pub fn user(name: &str, subnet: Subnet) -> NetworkConfig {
        // FNV-1a: stable across releases, unlike std's hasher.
        let mut h: u32 = 0x811c_9dc5;
        for b in name.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        NetworkConfig {
            name: name.to_string(),
            bridge: format!("kiln-{h:08x}"),
            gateway: subnet.first_host(),
            subnet,
        }
    }
}

/// One container's address (and published ports) on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The container (or pool entry) id.
    pub container: String,
    /// The address handed out.
    pub ip: Ipv4Addr,
    /// Host ports published to this container.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LeaseFile {
    /// The last address handed out: allocation continues after it, so a just-released address
    /// (whose ARP and conntrack entries may linger) is the last to be reused.
    last: Option<Ipv4Addr>,
    leases: Vec<Lease>,
}

/// Leases and network definitions under one state directory. Cheap; every call takes the lock.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
}

/// Held for the duration of a read-modify-write; dropping the file releases the flock.
struct Locked {
    _file: File,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn valid_name(name: &str) -> bool {
    crate::names::check_network(name).is_ok()
}

impl Ipam {
    /// Opens (creating) the state directory. Fails when it cannot be created.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Ipam> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Ipam { dir })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<Locked> {
        let path = self.dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err(&path)(e.into()))?;
        Ok(Locked { _file: file })
    }

    fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
        match fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| IpamError::Corrupt {
                        path: path.to_path_buf(),
                        source,
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    /// [`kroot::write_atomic`], so a crashed kiln never leaves half a lease file (the state
    /// directory is on tmpfs under /run, where the fsyncs cost nothing).
    fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
        let data = serde_json::to_vec_pretty(value).map_err(|source| IpamError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
        kroot::write_atomic(path, &data).map_err(io_err(path))
    }

    /// The directory of `network`; every path in the store built from a name goes through
    /// here, so a name such as `../x` never leaves the state directory.
    fn network_dir(&self, network: &str) -> Result<PathBuf> {
        if !valid_name(network) {
            return Err(IpamError::BadName {
                name: network.to_string(),
            });
        }
        Ok(self.dir.join(network))
    }

    fn leases_path(&self, network: &str) -> Result<PathBuf> {
        Ok(self.network_dir(network)?.join("leases.json"))
    }

    fn config_path(&self, network: &str) -> Result<PathBuf> {
        Ok(self.network_dir(network)?.join("network.json"))
    }

    /// Defines a user network. Fails on a bad or taken name, or a subnet overlapping another
    /// network's (the default one included).
    pub fn create_network(&self, config: &NetworkConfig) -> Result<()> {
        if !valid_name(&config.name) {
            return Err(IpamError::BadName {
                name: config.name.clone(),
            });
        }
        let _l = self.lock()?;
        for other in self.networks_locked()? {
            if other.name == config.name {
                return Err(IpamError::NetworkExists {
                    name: config.name.clone(),
                });
            }
            let (a, b) = (config.subnet, other.subnet);
            if a.contains(b.network()) || b.contains(a.network()) {
                return Err(IpamError::Overlap {
                    subnet: a,
                    other: other.name,
                    other_subnet: b,
                });
            }
        }
        Self::write_json(&self.config_path(&config.name)?, config)
    }

    /// `kiln network create NAME [--subnet CIDR]`: defines a user network with `subnet`, or
    /// with the first /24 of [`AUTO_SUBNETS`] that overlaps no other network and nothing of
    /// `host` (see [`hostnet`](super::hostnet)) when None. An explicit subnet is checked
    /// against kiln's networks only, as dockerd does. Fails like
    /// [`create_network`](Self::create_network), or when no /24 is free.
    pub fn define_network(
        &self,
        name: &str,
        subnet: Option<Subnet>,
        host: &[InUse],
    ) -> Result<NetworkConfig> {
        let subnet = match subnet {
            Some(s) => s,
            None => {
                let taken = self.networks()?;
                let auto: Subnet = AUTO_SUBNETS.parse().expect("AUTO_SUBNETS is a valid CIDR");
                let candidates = (0..256u32)
                    .filter_map(|i| auto.nth(i * 256))
                    .filter_map(|ip| Subnet::new(ip, 24).ok());
                hostnet::first_free(candidates, &taken, host).map_err(|e| {
                    IpamError::NoFreeSubnet {
                        network: name.to_string(),
                        pool: format!("{AUTO_SUBNETS} (as /24s)"),
                        // One line per /24 would be 256: the first and the last say enough.
                        why: match (e.0.first(), e.0.last()) {
                            (Some((a, wa)), Some((b, wb))) if e.0.len() > 2 => {
                                format!("{a}: {wa}; ...; {b}: {wb}")
                            }
                            _ => e.to_string(),
                        },
                    }
                })?
            }
        };
        // Two concurrent auto-picks may choose the same /24: create_network re-checks overlap
        // under the lock, so the second fails cleanly.
        let config = NetworkConfig::user(name, subnet);
        self.create_network(&config)?;
        Ok(config)
    }

    /// The network called `name`; the default network always exists (its stored subnet, or
    /// the first choice while none is stored).
    pub fn network(&self, name: &str) -> Result<NetworkConfig> {
        if name == DEFAULT_NETWORK {
            return self.default_network();
        }
        if !valid_name(name) {
            return Err(IpamError::BadName {
                name: name.to_string(),
            });
        }
        Self::read_json(&self.config_path(name)?)?.ok_or_else(|| IpamError::NoSuchNetwork {
            name: name.to_string(),
        })
    }

    /// Every network, the default first, then user networks by name.
    pub fn networks(&self) -> Result<Vec<NetworkConfig>> {
        let _l = self.lock()?;
        self.networks_locked()
    }

    /// The stored default network, else its first choice.
    fn default_network(&self) -> Result<NetworkConfig> {
        Ok(Self::read_json(&self.config_path(DEFAULT_NETWORK)?)?
            .unwrap_or_else(NetworkConfig::default_bridge))
    }

    /// The default network, its subnet chosen now by `choose` when none is stored yet, and
    /// stored: `choose` gets kiln's other networks and runs under the lock, so concurrent
    /// first uses agree. Once stored, the choice stays whatever the host's routes do later.
    pub fn default_network_or<E: From<IpamError>>(
        &self,
        choose: impl FnOnce(&[NetworkConfig]) -> std::result::Result<Subnet, E>,
    ) -> std::result::Result<NetworkConfig, E> {
        let path = self.config_path(DEFAULT_NETWORK)?;
        if let Some(c) = Self::read_json(&path)? {
            return Ok(c);
        }
        let _l = self.lock()?;
        if let Some(c) = Self::read_json(&path)? {
            return Ok(c);
        }
        let others: Vec<NetworkConfig> = self
            .networks_locked()?
            .into_iter()
            .filter(|n| n.name != DEFAULT_NETWORK)
            .collect();
        let config = NetworkConfig::default_on(choose(&others)?);
        let dir = self.network_dir(DEFAULT_NETWORK)?;
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Self::write_json(&path, &config)?;
        Ok(config)
    }

    fn networks_locked(&self) -> Result<Vec<NetworkConfig>> {
        let mut out = vec![self.default_network()?];
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            if let Some(name) = entry.file_name().to_str()
                && name != DEFAULT_NETWORK
                && self.config_path(name).is_ok_and(|p| p.exists())
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        for name in names {
            if let Some(c) = Self::read_json(&self.config_path(&name)?)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Removes a user network's definition. Fails while it has leases, or for the default.
    pub fn remove_network(&self, name: &str) -> Result<NetworkConfig> {
        let config = self.network(name)?;
        let _l = self.lock()?;
        let file: LeaseFile = Self::read_json(&self.leases_path(name)?)?.unwrap_or_default();
        if !file.leases.is_empty() || name == DEFAULT_NETWORK {
            return Err(IpamError::InUse {
                name: name.to_string(),
                count: file.leases.len(),
            });
        }
        let dir = self.network_dir(name)?;
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(config)
    }

    /// Leases an address on `net` for `container`, publishing `ports` (a `host_port` of 0 is
    /// replaced by a free port, for `-P`; the lease holds the result). Fails when the subnet is
    /// full, the container already has a lease there, or a host port is taken (by another
    /// container or by a host socket; the latter is checked by binding it). Nothing is
    /// recorded on failure.
    pub fn allocate(
        &self,
        net: &NetworkConfig,
        container: &str,
        ports: &[PortMapping],
    ) -> Result<Lease> {
        let _l = self.lock()?;
        let path = self.leases_path(&net.name)?;
        let mut file: LeaseFile = Self::read_json(&path)?.unwrap_or_default();
        if file.leases.iter().any(|l| l.container == container) {
            return Err(IpamError::AlreadyAttached {
                network: net.name.clone(),
                container: container.to_string(),
            });
        }
        let ports = self.resolve_ports(ports)?;
        let taken: std::collections::HashSet<Ipv4Addr> = file.leases.iter().map(|l| l.ip).collect();
        let size = u32::try_from(net.subnet.size()).unwrap_or(u32::MAX);
        let start = file
            .last
            .filter(|ip| net.subnet.contains(*ip))
            .map_or(1, |ip| u32::from(ip) - u32::from(net.subnet.network()));
        // Every address once, starting after the last one handed out and ending with it (in
        // a /30 it is the only one there is).
        let ip = (1..=size)
            .map(|i| (start + i) % size)
            .filter_map(|n| net.subnet.nth(n))
            .find(|ip| {
                *ip != net.subnet.network()
                    && *ip != net.subnet.broadcast()
                    && *ip != net.gateway
                    && !taken.contains(ip)
            })
            .ok_or_else(|| IpamError::Exhausted {
                network: net.name.clone(),
                subnet: net.subnet,
            })?;
        let lease = Lease {
            container: container.to_string(),
            ip,
            ports,
        };
        file.last = Some(ip);
        file.leases.push(lease.clone());
        Self::write_json(&path, &file)?;
        Ok(lease)
    }

    /// Checks every mapping and resolves `host_port: 0` (for `-P`) to a free port. Caller
    /// holds the lock.
    fn resolve_ports(&self, ports: &[PortMapping]) -> Result<Vec<PortMapping>> {
        if ports.is_empty() {
            return Ok(Vec::new());
        }
        let mut existing = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            if !entry.file_type().map_err(io_err(&self.dir))?.is_dir() {
                continue;
            }
            let path = entry.path().join("leases.json");
            let file: LeaseFile = Self::read_json(&path)?.unwrap_or_default();
            existing.extend(file.leases.into_iter().flat_map(|l| {
                let c = l.container;
                l.ports.into_iter().map(move |p| (c.clone(), p))
            }));
        }
        let mut out: Vec<PortMapping> = Vec::with_capacity(ports.len());
        for p in ports {
            let mut p = *p;
            let bind_err = |p: PortMapping, source: io::Error| match (source.kind(), p.host_ip) {
                (io::ErrorKind::AddrNotAvailable, Some(ip)) => {
                    IpamError::PortAddress { port: p, ip }
                }
                _ => IpamError::PortInUse { port: p, source },
            };
            if p.host_port == 0 {
                // Let the kernel pick a port nobody listens on; retry the rare pick that another
                // kiln container already publishes (nothing listens on DNAT'd ports).
                let mut picked = None;
                for _ in 0..16 {
                    let port = ephemeral_port(&p).map_err(|e| bind_err(p, e))?;
                    let cand = PortMapping {
                        host_port: port,
                        ..p
                    };
                    let taken = existing.iter().any(|(_, q)| q.conflicts_with(&cand))
                        || out.iter().any(|q| q.conflicts_with(&cand));
                    if !taken {
                        picked = Some(cand);
                        break;
                    }
                }
                p = picked.ok_or_else(|| bind_err(p, io::Error::from(io::ErrorKind::AddrInUse)))?;
            } else {
                if let Some((c, _)) = existing.iter().find(|(_, q)| q.conflicts_with(&p)) {
                    return Err(IpamError::PortPublished {
                        port: p,
                        container: c.clone(),
                    });
                }
                if out.iter().any(|q| q.conflicts_with(&p)) {
                    return Err(IpamError::PortPublished {
                        port: p,
                        container: "(this container)".to_string(),
                    });
                }
                host_port_free(&p).map_err(|e| bind_err(p, e))?;
            }
            out.push(p);
        }
        Ok(out)
    }

    /// Releases `container`'s lease on `network`; Ok(None) when it had none.
    pub fn release(&self, network: &str, container: &str) -> Result<Option<Lease>> {
        let _l = self.lock()?;
        let path = self.leases_path(network)?;
        let Some(mut file) = Self::read_json::<LeaseFile>(&path)? else {
            return Ok(None);
        };
        let Some(pos) = file.leases.iter().position(|l| l.container == container) else {
            return Ok(None);
        };
        let lease = file.leases.remove(pos);
        Self::write_json(&path, &file)?;
        Ok(Some(lease))
    }

    /// Runs `f` on every network with its leases, under the lock, so that what `f` derives
    /// (kiln's nft table) reflects one consistent state and concurrent callers are serialised.
    pub fn with_state<R>(&self, f: impl FnOnce(&[(NetworkConfig, Vec<Lease>)]) -> R) -> Result<R> {
        let _l = self.lock()?;
        let mut state = Vec::new();
        for net in self.networks_locked()? {
            let file: LeaseFile =
                Self::read_json(&self.leases_path(&net.name)?)?.unwrap_or_default();
            state.push((net, file.leases));
        }
        Ok(f(&state))
    }

    /// The leases on `network`, in allocation order.
    pub fn leases(&self, network: &str) -> Result<Vec<Lease>> {
        let _l = self.lock()?;
        Ok(Self::read_json::<LeaseFile>(&self.leases_path(network)?)?
            .unwrap_or_default()
            .leases)
    }
}

/// A port the kernel considers free for `p`'s address and protocol.
fn ephemeral_port(p: &PortMapping) -> io::Result<u16> {
    let ip = p.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    match p.proto {
        Proto::Tcp => TcpListener::bind((ip, 0))?.local_addr().map(|a| a.port()),
        Proto::Udp => UdpSocket::bind((ip, 0))?.local_addr().map(|a| a.port()),
    }
}

/// Whether a host socket could bind the published port. With DNAT nothing listens on the
/// host port, so this catches host services that the DNAT rule would otherwise shadow.
fn host_port_free(p: &PortMapping) -> io::Result<()> {
    let ip = p.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    match p.proto {
        Proto::Tcp => TcpListener::bind((ip, p.host_port)).map(drop),
        Proto::Udp => UdpSocket::bind((ip, p.host_port)).map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(cidr: &str) -> NetworkConfig {
        NetworkConfig::user("t", cidr.parse().expect("valid cidr"))
    }

    #[test]
    fn default_network_is_kiln0_on_10_88() {
        let n = NetworkConfig::default_bridge();
        assert_eq!((n.name.as_str(), n.bridge.as_str()), ("bridge", "kiln0"));
        assert_eq!(n.subnet.to_string(), "10.88.0.0/16");
        assert_eq!(n.gateway, Ipv4Addr::new(10, 88, 0, 1));
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(dir.path()).expect("open");
        assert_eq!(ipam.network("bridge").expect("default"), n);
    }

    #[test]
    fn allocation_skips_gateway_and_persists_across_handles() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = net("10.89.7.0/24");
        let a = Ipam::open(dir.path()).expect("open");
        assert_eq!(
            a.allocate(&n, "c1", &[]).expect("c1").ip,
            Ipv4Addr::new(10, 89, 7, 2)
        );
        let b = Ipam::open(dir.path()).expect("reopen");
        assert_eq!(
            b.allocate(&n, "c2", &[]).expect("c2").ip,
            Ipv4Addr::new(10, 89, 7, 3)
        );
        assert!(matches!(
            b.allocate(&n, "c1", &[]),
            Err(IpamError::AlreadyAttached { .. })
        ));
        assert_eq!(b.leases("t").expect("leases").len(), 2);
        assert!(dir.path().join("t/leases.json").exists());
    }

    #[test]
    fn released_addresses_are_reused_last_and_a_full_subnet_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = net("10.89.8.0/29"); // .1 gateway, .2-.6 usable, .7 broadcast
        let ipam = Ipam::open(dir.path()).expect("open");
        let ips: Vec<_> = (0..5)
            .map(|i| ipam.allocate(&n, &format!("c{i}"), &[]).expect("alloc").ip)
            .collect();
        assert_eq!(ips.last(), Some(&Ipv4Addr::new(10, 89, 8, 6)));
        assert!(matches!(
            ipam.allocate(&n, "c9", &[]),
            Err(IpamError::Exhausted { .. })
        ));
        let freed = ipam
            .release("t", "c1")
            .expect("release")
            .expect("had lease");
        assert_eq!(freed.ip, Ipv4Addr::new(10, 89, 8, 3));
        assert_eq!(ipam.release("t", "c1").expect("release twice"), None);
        assert_eq!(ipam.allocate(&n, "c9", &[]).expect("reuse").ip, freed.ip);
    }

    #[test]
    fn the_last_address_handed_out_is_tried_again_when_it_is_the_only_free_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = net("10.89.11.0/30"); // .1 gateway, .2 the only address
        let ipam = Ipam::open(dir.path()).expect("open");
        let only = Ipv4Addr::new(10, 89, 11, 2);
        assert_eq!(ipam.allocate(&n, "a", &[]).expect("a").ip, only);
        assert!(matches!(
            ipam.allocate(&n, "b", &[]),
            Err(IpamError::Exhausted { .. })
        ));
        ipam.release("t", "a").expect("release");
        assert_eq!(ipam.allocate(&n, "b", &[]).expect("b").ip, only);
    }

    #[test]
    fn ports_published_by_another_container_are_refused_and_nothing_is_leased() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = net("10.89.9.0/24");
        let ipam = Ipam::open(dir.path()).expect("open");
        // A port nobody on the host uses: take an ephemeral one and free it.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("ephemeral")
            .port();
        let p: PortMapping = format!("{port}:80").parse().expect("spec");
        ipam.allocate(&n, "web", &[p]).expect("first publish");
        let q: PortMapping = format!("127.0.0.1:{port}:81").parse().expect("spec");
        let e = ipam.allocate(&n, "web2", &[q]).expect_err("conflict");
        assert!(e.to_string().contains("published by container web"), "{e}");
        assert_eq!(ipam.leases("t").expect("leases").len(), 1);
    }

    #[test]
    fn a_port_bound_on_the_host_gives_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(dir.path()).expect("open");
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let p: PortMapping = format!("127.0.0.1:{port}:80").parse().expect("spec");
        let e = ipam
            .allocate(&net("10.89.10.0/24"), "c", &[p])
            .expect_err("in use");
        assert_eq!(
            e.to_string(),
            format!("host port 127.0.0.1:{port}:80/tcp is already in use on the host")
        );
        assert!(ipam.leases("t").expect("leases").is_empty());
    }

    #[test]
    fn host_port_zero_is_resolved_to_a_free_port_for_publish_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(dir.path()).expect("open");
        let any = PortMapping::any_host_port(80, Proto::Tcp);
        let any_udp = PortMapping::any_host_port(53, Proto::Udp);
        let l = ipam
            .allocate(&net("10.89.13.0/24"), "c", &[any, any_udp])
            .expect("alloc");
        assert!(l.ports.iter().all(|p| p.host_port != 0), "{:?}", l.ports);
        assert_eq!(l.ports[0].container_port, 80);
        assert_eq!(l.ports[1].proto, Proto::Udp);
        assert_eq!(ipam.leases("t").expect("leases")[0].ports, l.ports);
    }

    #[test]
    fn publishing_on_a_foreign_address_names_the_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(dir.path()).expect("open");
        // 192.0.2.0/24 is TEST-NET-1: never configured on a host; bind only, no traffic.
        let p: PortMapping = "192.0.2.7:8080:80".parse().expect("spec");
        let e = ipam
            .allocate(&net("10.89.12.0/24"), "c", &[p])
            .expect_err("foreign address");
        assert_eq!(
            e.to_string(),
            "cannot publish 192.0.2.7:8080:80/tcp: 192.0.2.7 is not an address of this host"
        );
    }

    /// Issue 10: every path of the store built from a network name goes through one check, so
    /// `../x` reaches no file outside the state directory, whatever the call.
    #[test]
    fn network_names_that_are_paths_reach_nothing_outside_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(dir.path().join("state")).expect("open");
        let outside = dir.path().join("x");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(
            outside.join("leases.json"),
            r#"{"last":null,"leases":[{"container":"c","ip":"10.1.0.2"}]}"#,
        )
        .expect("planted lease file");
        let net = NetworkConfig::user("../x", "10.89.22.0/24".parse().expect("cidr"));
        let bad = |r: Result<()>| matches!(r, Err(IpamError::BadName { .. }));
        assert!(bad(ipam.leases("../x").map(drop)));
        assert!(bad(ipam.release("../x", "c").map(drop)));
        assert!(bad(ipam.network("../x").map(drop)));
        assert!(bad(ipam.remove_network("../x").map(drop)));
        assert!(bad(ipam.allocate(&net, "c", &[]).map(drop)));
        assert!(bad(ipam.create_network(&net)));
        assert!(
            outside.join("leases.json").exists(),
            "nothing removed outside"
        );
        assert!(
            !outside.join("network.json").exists(),
            "nothing written outside"
        );
    }

    #[test]
    fn user_networks_are_created_listed_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(dir.path()).expect("open");
        let n = NetworkConfig::user("front", "10.89.20.0/24".parse().expect("cidr"));
        assert!(n.bridge.starts_with("kiln-") && n.bridge.len() <= 15);
        ipam.create_network(&n).expect("create");
        assert!(matches!(
            ipam.create_network(&n),
            Err(IpamError::NetworkExists { .. })
        ));
        let overlapping = NetworkConfig::user("x", "10.88.5.0/24".parse().expect("cidr"));
        let e = ipam.create_network(&overlapping).expect_err("overlap");
        assert!(e.to_string().contains("overlaps network bridge"), "{e}");
        let bad = NetworkConfig::user("../x", "10.89.21.0/24".parse().expect("cidr"));
        assert!(matches!(
            ipam.create_network(&bad),
            Err(IpamError::BadName { .. })
        ));
        let names: Vec<_> = ipam
            .networks()
            .expect("list")
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, ["bridge", "front"]);
        ipam.allocate(&n, "c", &[]).expect("alloc");
        assert!(matches!(
            ipam.remove_network("front"),
            Err(IpamError::InUse { count: 1, .. })
        ));
        ipam.release("front", "c").expect("release");
        ipam.remove_network("front").expect("rm");
        assert!(matches!(
            ipam.network("front"),
            Err(IpamError::NoSuchNetwork { .. })
        ));
    }

    #[test]
    fn network_create_without_subnet_picks_the_next_free_24() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(dir.path()).expect("open");
        let a = ipam.define_network("a", None, &[]).expect("a");
        let b = ipam.define_network("b", None, &[]).expect("b");
        assert_eq!(a.subnet.to_string(), "10.90.0.0/24");
        assert_eq!(b.subnet.to_string(), "10.90.1.0/24");
        assert_eq!(b.gateway, Ipv4Addr::new(10, 90, 1, 1));
        let c = ipam
            .define_network("c", Some("10.91.0.0/16".parse().expect("cidr")), &[])
            .expect("c");
        assert_eq!(ipam.network("c").expect("read back"), c);
    }

    #[test]
    fn concurrent_allocations_in_threads_never_collide() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = net("10.89.11.0/24");
        let ips = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|t| {
                    let (dir, n) = (dir.path(), &n);
                    s.spawn(move || {
                        let ipam = Ipam::open(dir).expect("open");
                        (0..10)
                            .map(|i| {
                                ipam.allocate(n, &format!("t{t}-{i}"), &[])
                                    .expect("alloc")
                                    .ip
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().expect("thread"))
                .collect::<Vec<_>>()
        });
        let unique: std::collections::HashSet<_> = ips.iter().collect();
        assert_eq!(unique.len(), 40);
    }
}

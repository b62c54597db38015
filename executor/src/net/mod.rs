//! Bridge networking for containers and RUN steps: subnets and leases, links, NAT and
//! published ports, a pool of prepared namespaces, and the /etc files that name it all.
//!
//! Flow: [`Networks::attach`] takes a network name, a container id, an open [`Netns`] and the
//! ports to publish, and returns an [`Attachment`] (address, gateway, veth, ports) to keep with
//! the container; [`Networks::detach`] undoes it by container id. Build RUN steps use
//! [`NetnsPool`]: `acquire` hands out an already attached namespace by path, which the sandbox
//! `setns`es into instead of unsharing a fresh one; `release` checks it and keeps it for reuse.
//!
//! ```no_run
//! use executor::net::{Networks, NetnsPool, Netns, PortMapping, files};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut nets = Networks::open("/var/lib/kiln/networks")?;
//! // kiln run -p 18080:80: a namespace for the container, attached to the default network.
//! let ns = Netns::create("/run/kiln/netns/3f2a9c")?;
//! let port: PortMapping = "18080:80".parse()?;
//! let att = nets.attach("bridge", "3f2a9c", &ns, &[port])?;
//! let hosts = files::hosts("3f2a9c", Some(att.ip), &[]);
//! let resolv = files::resolv_conf(&std::fs::read_to_string("/etc/resolv.conf")?);
//! // ... the sandbox joins ns.path() (setns CLONE_NEWNET) and bind-mounts hosts/resolv ...
//! # let _ = (hosts, resolv);
//! nets.detach("bridge", "3f2a9c")?;
//! ns.remove()?;
//!
//! // A build: RUN steps borrow prepared namespaces.
//! let pool = NetnsPool::new("/run/kiln/pool", "bridge", 8);
//! let pooled = pool.acquire(&mut nets)?;
//! // ... the RUN sandbox joins pooled.path() ...
//! pool.release(pooled, &mut nets)?;
//! # Ok(()) }
//! ```
//!
//! Side effects sit behind three seams: [`Netlink`] (links, addresses, routes), [`Nft`]
//! (kiln's nftables table) and [`Xtables`] (kiln's accept chain in the host's iptables filter
//! table, for hosts where dockerd or a firewall drops forwarded traffic; see [`firewall`]).
//! Everything else here is pure and tested without root. This module never changes host
//! interfaces it did not create, never touches other nft tables (in the iptables filter table
//! only its own chain and the one jump to it), and never enables forwarding by itself
//! ([`enable_ip_forward`] is the caller's explicit choice).

pub mod attach;
pub mod build;
pub mod files;
pub mod firewall;
pub mod hostnet;
pub mod ipam;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod pool;
pub mod subnet;

pub use attach::{AttachError, Attachment, Networks, enable_ip_forward};
pub use build::{BuildLease, BuildNetwork};
pub use firewall::{Xtables, XtablesCommand};
pub use ipam::{Ipam, Lease, NetworkConfig};
pub use netlink::{Netlink, RealNetlink};
pub use netns::Netns;
pub use nft::{Nft, NftCommand};
pub use pool::{NetnsPool, PoolError, PooledNetns};
pub use subnet::{PortMapping, Proto, Subnet};

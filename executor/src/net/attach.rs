//! Attaching a container's network namespace to a bridge network, and detaching it.
//!
//! The link work is first computed as data ([`plan_attach`]: a list of [`LinkStep`]s, tested
//! without root), then executed against a [`Netlink`] connection for the host and one inside
//! the container's namespace. [`Networks`] ties together the lease, the links and the nft table,
//! and undoes what it did when a later step fails, so a failed attach leaks nothing.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::firewall::{self, FirewallError, Xtables, XtablesCommand};
use super::hostnet;
use super::ipam::{DEFAULT_NETWORK, Ipam, IpamError, Lease, NetworkConfig};
use super::netlink::{Netlink, NetlinkError, NetnsTarget, RealNetlink};
use super::netns::Netns;
use super::nft::{self, Nft, NftCommand, NftError};
use super::subnet::PortMapping;

/// Errors from attaching or detaching.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Lease bookkeeping failed (includes a port already in use).
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// A link operation failed.
    #[error("attaching {container} to network {network}")]
    Link {
        /// The container.
        container: String,
        /// The network.
        network: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// A link operation outside of an attach (detach, bridge removal) failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A sysctl could not be written.
    #[error("cannot write {path}")]
    Sysctl {
        /// The /proc/sys file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The record of the applied nft rules could not be written.
    #[error("cannot write {path}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The nft table could not be updated.
    #[error("updating kiln's nftables rules")]
    Nft(#[from] NftError),
    /// kiln's accept rules in the host's iptables filter table could not be updated.
    #[error("updating kiln's rules in the iptables filter table")]
    Firewall(#[from] FirewallError),
    /// A link the plan refers to does not exist.
    #[error("link {name} not found")]
    MissingLink {
        /// Its name.
        name: String,
    },
}

type Result<T> = std::result::Result<T, AttachError>;

/// Which namespace a step runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The host (kiln's own namespace).
    Host,
    /// The container's namespace.
    Container,
}

/// One link operation of an attach or detach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStep {
    /// Create the bridge unless it exists.
    EnsureBridge {
        /// Bridge name.
        bridge: String,
    },
    /// Write `value` to `/proc/sys/<key>`.
    Sysctl {
        /// Path under /proc/sys.
        key: String,
        /// The value.
        value: &'static str,
    },
    /// Create a veth pair: `host` on the host, `container` created directly in the container.
    CreateVeth {
        /// Host-side name.
        host: String,
        /// Container-side name (eth0).
        container: String,
    },
    /// Enslave a host link to the bridge.
    SetController {
        /// The link.
        link: String,
        /// The bridge.
        bridge: String,
    },
    /// Add an IPv4 address.
    AddAddress {
        /// Where.
        side: Side,
        /// The link.
        link: String,
        /// The address.
        ip: Ipv4Addr,
        /// Prefix length.
        prefix: u8,
    },
    /// Set a link up.
    SetUp {
        /// Where.
        side: Side,
        /// The link.
        link: String,
    },
    /// Default route inside the container.
    DefaultRoute {
        /// The gateway (the bridge's address).
        gateway: Ipv4Addr,
    },
    /// Delete a host link (for a veth, both ends go).
    DeleteLink {
        /// The link.
        link: String,
    },
}

/// What a container got from [`Networks::attach`]; store it with the container (for
/// `inspect`, /etc/hosts and detach).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The network name.
    pub network: String,
    /// The container (or pool entry) id.
    pub container: String,
    /// The container's address (on eth0).
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// The default gateway.
    pub gateway: Ipv4Addr,
    /// The bridge device.
    pub bridge: String,
    /// The host end of the veth pair.
    pub host_veth: String,
    /// Published ports.
    pub ports: Vec<PortMapping>,
}

/// The host-side veth name for an address: `kv` + the address in hex (`kv0a580002`). Addresses
/// are unique across kiln's networks (subnets may not overlap), so names never collide and
/// detach needs nothing but the lease.
pub fn host_veth_name(ip: Ipv4Addr) -> String {
    format!("kv{:08x}", u32::from(ip))
}

/// The steps that attach a namespace to `net` with `lease`'s address.
pub fn plan_attach(net: &NetworkConfig, lease: &Lease) -> Vec<LinkStep> {
    let veth = host_veth_name(lease.ip);
    let prefix = net.subnet.prefix();
    vec![
        LinkStep::EnsureBridge {
            bridge: net.bridge.clone(),
        },
        LinkStep::AddAddress {
            side: Side::Host,
            link: net.bridge.clone(),
            ip: net.gateway,
            prefix,
        },
        // Lets DNAT from the host's 127.0.0.1 leave through this bridge (see nft.rs).
        LinkStep::Sysctl {
            key: format!("net/ipv4/conf/{}/route_localnet", net.bridge),
            value: "1",
        },
        LinkStep::SetUp {
            side: Side::Host,
            link: net.bridge.clone(),
        },
        // The address is ours under the lease lock, so a link with its name is a leftover of a
        // kiln that died between release and delete: remove it or CreateVeth would fail.
        LinkStep::DeleteLink { link: veth.clone() },
        LinkStep::CreateVeth {
            host: veth.clone(),
            container: "eth0".to_string(),
        },
        LinkStep::SetController {
            link: veth.clone(),
            bridge: net.bridge.clone(),
        },
        LinkStep::SetUp {
            side: Side::Host,
            link: veth,
        },
        LinkStep::SetUp {
            side: Side::Container,
            link: "lo".to_string(),
        },
        LinkStep::AddAddress {
            side: Side::Container,
            link: "eth0".to_string(),
            ip: lease.ip,
            prefix,
        },
        LinkStep::SetUp {
            side: Side::Container,
            link: "eth0".to_string(),
        },
        LinkStep::DefaultRoute {
            gateway: net.gateway,
        },
    ]
}

/// The steps that detach `lease` (the namespace side disappears with the veth).
pub fn plan_detach(lease: &Lease) -> Vec<LinkStep> {
    vec![LinkStep::DeleteLink {
        link: host_veth_name(lease.ip),
    }]
}

/// Runs `steps`. `container` is opened (inside `netns`) the first time a step needs it.
pub fn execute<N: Netlink>(
    steps: &[LinkStep],
    host: &mut N,
    netns: Option<BorrowedFd<'_>>,
    proc_sys: &Path,
) -> Result<()> {
    let mut ctr: Option<N> = None;
    let mut index: HashMap<(Side, String), u32> = HashMap::new();
    fn lookup<N: Netlink>(
        nl: &mut N,
        cache: &mut HashMap<(Side, String), u32>,
        side: Side,
        name: &str,
    ) -> Result<u32> {
        if let Some(i) = cache.get(&(side, name.to_string())) {
            return Ok(*i);
        }
        let i = nl
            .link_index(name)?
            .ok_or_else(|| AttachError::MissingLink {
                name: name.to_string(),
            })?;
        cache.insert((side, name.to_string()), i);
        Ok(i)
    }
    let missing_netns = || AttachError::MissingLink {
        name: "eth0 (no container namespace given)".to_string(),
    };
    for step in steps {
        match step {
            LinkStep::EnsureBridge { bridge } => {
                let i = host.create_bridge(bridge)?;
                index.insert((Side::Host, bridge.clone()), i);
            }
            LinkStep::Sysctl { key, value } => {
                let path = proc_sys.join(key);
                fs::write(&path, value).map_err(|source| AttachError::Sysctl { path, source })?;
            }
            LinkStep::CreateVeth {
                host: name,
                container,
            } => {
                let fd = netns.ok_or_else(missing_netns)?;
                let i = host.create_veth(name, container, Some(NetnsTarget::Fd(fd)))?;
                index.insert((Side::Host, name.clone()), i);
            }
            LinkStep::SetController { link, bridge } => {
                let l = lookup(host, &mut index, Side::Host, link)?;
                let b = lookup(host, &mut index, Side::Host, bridge)?;
                host.set_controller(l, b)?;
            }
            LinkStep::AddAddress {
                side,
                link,
                ip,
                prefix,
            } => {
                let nl = side_conn(*side, host, &mut ctr, netns)?;
                let i = lookup(nl, &mut index, *side, link)?;
                nl.add_address(i, *ip, *prefix)?;
            }
            LinkStep::SetUp { side, link } => {
                let nl = side_conn(*side, host, &mut ctr, netns)?;
                let i = lookup(nl, &mut index, *side, link)?;
                nl.set_up(i)?;
            }
            LinkStep::DefaultRoute { gateway } => {
                side_conn(Side::Container, host, &mut ctr, netns)?.add_default_route(*gateway)?;
            }
            LinkStep::DeleteLink { link } => {
                if let Some(i) = host.link_index(link)? {
                    host.delete_link(i)?;
                }
            }
        }
    }
    Ok(())
}

fn side_conn<'a, N: Netlink>(
    side: Side,
    host: &'a mut N,
    ctr: &'a mut Option<N>,
    netns: Option<BorrowedFd<'_>>,
) -> Result<&'a mut N> {
    match side {
        Side::Host => Ok(host),
        Side::Container => {
            if ctr.is_none() {
                let fd = netns.ok_or_else(|| AttachError::MissingLink {
                    name: "eth0 (no container namespace given)".to_string(),
                })?;
                *ctr = Some(host.in_netns(fd)?);
            }
            Ok(ctr.as_mut().expect("set just above when it was None"))
        }
    }
}

/// Networks as a whole: leases, links, nft rules and the host firewall's accept rules, kept
/// consistent.
pub struct Networks<N: Netlink, F: Nft> {
    ipam: Ipam,
    netlink: N,
    nft: F,
    firewall: Box<dyn Xtables + Send>,
    proc_sys: PathBuf,
    resolv_conf: PathBuf,
    table: String,
}

impl<N: Netlink + std::fmt::Debug, F: Nft + std::fmt::Debug> std::fmt::Debug for Networks<N, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Networks")
            .field("ipam", &self.ipam)
            .field("netlink", &self.netlink)
            .field("nft", &self.nft)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl Networks<RealNetlink, NftCommand> {
    /// The real thing: state under `state_dir` (`KILN_ROOT/networks`), rtnetlink in the
    /// calling thread's namespace, `nft` and `iptables-*` from PATH, `/proc/sys`. Fails when
    /// the state dir cannot be created or netlink cannot be opened.
    pub fn open(state_dir: impl Into<PathBuf>) -> Result<Self> {
        Ok(Networks::new(
            Ipam::open(state_dir)?,
            RealNetlink::open()?,
            NftCommand::default(),
            Box::new(XtablesCommand::default()),
            PathBuf::from("/proc/sys"),
        ))
    }
}

impl<N: Netlink, F: Nft> Networks<N, F> {
    /// Assembles from parts (tests pass fakes and a temp `proc_sys`).
    pub fn new(
        ipam: Ipam,
        netlink: N,
        nft: F,
        firewall: Box<dyn Xtables + Send>,
        proc_sys: PathBuf,
    ) -> Self {
        Networks {
            ipam,
            netlink,
            nft,
            firewall,
            proc_sys,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            table: nft::TABLE.to_string(),
        }
    }

    /// Reads the nameservers that a new subnet must not cover from `path` instead of
    /// /etc/resolv.conf (tests).
    pub fn with_resolv_conf(mut self, path: impl Into<PathBuf>) -> Self {
        self.resolv_conf = path.into();
        self
    }

    /// The network called `network`. The default network's subnet is chosen now when none is
    /// stored yet, from what this namespace's routes, addresses and nameservers leave free
    /// ([`hostnet::choose_default`]), and stored ([`Ipam::default_network_or`]).
    pub fn network(&mut self, network: &str) -> Result<NetworkConfig> {
        if network != DEFAULT_NETWORK {
            return Ok(self.ipam.network(network)?);
        }
        let (ipam, nl, resolv) = (&self.ipam, &mut self.netlink, &self.resolv_conf);
        ipam.default_network_or(|others| -> Result<_> {
            let text = fs::read_to_string(resolv).unwrap_or_default();
            let in_use = hostnet::in_use(nl, &text)?;
            hostnet::choose_default(super::ipam::DEFAULT_BRIDGE, others, &in_use).map_err(|e| {
                AttachError::Ipam(IpamError::NoFreeSubnet {
                    network: DEFAULT_NETWORK.to_string(),
                    pool: hostnet::DEFAULT_POOL.join(", "),
                    why: e.to_string(),
                })
            })
        })
    }

    /// Uses nft table `table` instead of `kiln` (tests, or several KILN_ROOTs on one host).
    pub fn with_table(mut self, table: &str) -> Self {
        self.table = table.to_string();
        self
    }

    /// The nft table in use.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The lease and network store.
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// The host netlink connection.
    pub fn netlink(&mut self) -> &mut N {
        &mut self.netlink
    }

    /// Attaches `netns` to `network` as `container`, publishing `ports`: leases an address,
    /// creates the bridge if needed and a veth pair (eth0 inside, with address, default route,
    /// lo up), and adds the NAT rules. Fails when a port is taken, the subnet is full, or a link
    /// or nft step fails; everything done so far is undone first.
    pub fn attach(
        &mut self,
        network: &str,
        container: &str,
        netns: &Netns,
        ports: &[PortMapping],
    ) -> Result<Attachment> {
        let net = self.network(network)?;
        let lease = self.ipam.allocate(&net, container, ports)?;
        let steps = plan_attach(&net, &lease);
        let done = execute(
            &steps,
            &mut self.netlink,
            Some(netns.as_fd()),
            &self.proc_sys,
        )
        .map_err(|e| match e {
            AttachError::Netlink(source) => AttachError::Link {
                container: container.to_string(),
                network: network.to_string(),
                source,
            },
            e => e,
        })
        .and_then(|()| self.sync_rules());
        if let Err(e) = done {
            let _ = self.undo(&net.name, &lease);
            return Err(e);
        }
        Ok(Attachment {
            network: net.name,
            container: container.to_string(),
            ip: lease.ip,
            prefix: net.subnet.prefix(),
            gateway: net.gateway,
            bridge: net.bridge,
            host_veth: host_veth_name(lease.ip),
            ports: lease.ports,
        })
    }

    fn undo(&mut self, network: &str, lease: &Lease) -> Result<()> {
        let links = execute(&plan_detach(lease), &mut self.netlink, None, &self.proc_sys);
        let released = self.ipam.release(network, &lease.container);
        let rules = self.sync_rules();
        links?;
        released?;
        rules
    }

    /// Detaches `container` from `network`: deletes its veth pair, releases its lease and
    /// drops its published ports. Ok(false) when it was not
    /// attached. Fails when a link or nft step fails (the lease is released regardless).
    pub fn detach(&mut self, network: &str, container: &str) -> Result<bool> {
        let Some(lease) = self.ipam.release(network, container)? else {
            return Ok(false);
        };
        let links = execute(
            &plan_detach(&lease),
            &mut self.netlink,
            None,
            &self.proc_sys,
        );
        let rules = self.sync_rules();
        links?;
        rules?;
        Ok(true)
    }

    /// Detaches `container` whose namespace is already unpinned and unused: releases its lease
    /// and drops its published ports, but leaves the veth pair to the kernel, which deletes
    /// both ends when the namespace dies, asynchronously. Deleting a veth ourselves waits for
    /// an RCU grace period (~35 ms here), the largest part of a `kiln run --rm` on the bridge.
    /// The address is not handed out again soon (allocation continues after the last one), and
    /// the attach plan deletes a leftover pair of the same name. Ok(false) when it was not
    /// attached.
    pub fn forget(&mut self, network: &str, container: &str) -> Result<bool> {
        if self.ipam.release(network, container)?.is_none() {
            return Ok(false);
        }
        self.sync_rules()?;
        Ok(true)
    }

    /// Detaches every container of `network` for which `keep` says false: leases left by a
    /// kiln that died before detaching (the cli passes the ids of containers it knows are
    /// alive; pooled namespaces are `pool-N`). Returns the leases removed. Fails on the first
    /// detach that fails.
    pub fn prune(&mut self, network: &str, keep: impl Fn(&str) -> bool) -> Result<Vec<Lease>> {
        let mut removed = Vec::new();
        for lease in self.ipam.leases(network)? {
            if !keep(&lease.container) && self.detach(network, &lease.container)? {
                removed.push(lease);
            }
        }
        Ok(removed)
    }

    /// Brings kiln's nft table in line with the leases (see [`nft::ruleset`]), skipping the
    /// `nft` run (~15 ms) when the rules are the ones this boot last applied, which is the
    /// case for most attaches and detaches without published ports.
    ///
    /// The record of what was applied (`<state>/<table>.applied`: boot id + script) lives next
    /// to the leases and is written under the same lock; the boot id makes a reboot, which
    /// empties the kernel's tables, force a real run. Changes made to the table behind kiln's
    /// back are not noticed: [`resync_rules`](Self::resync_rules) repairs them.
    ///
    /// kiln's chain in the host's iptables filter table (see [`firewall`]) is synced the same
    /// way, with its own record (`<state>/<table>.firewall`: boot id, backends, bridges), so
    /// only a network created or removed, or a legacy iptables table appearing, runs iptables.
    pub fn sync_rules(&mut self) -> Result<()> {
        self.apply_rules(false)
    }

    /// Like [`sync_rules`](Self::sync_rules), but always runs `nft`.
    pub fn resync_rules(&mut self) -> Result<()> {
        self.apply_rules(true)
    }

    fn apply_rules(&mut self, force: bool) -> Result<()> {
        let (nft, firewall, table) = (&mut self.nft, &mut self.firewall, &self.table);
        let dir = self.ipam.dir();
        let boot_id =
            fs::read_to_string(self.proc_sys.join("kernel/random/boot_id")).unwrap_or_default();
        let boot_id = boot_id.trim();
        self.ipam.with_state(|state| -> Result<()> {
            let script = nft::ruleset(table, state);
            unless_recorded(
                &dir.join(format!("{table}.applied")),
                force,
                &format!("{boot_id}\n{script}"),
                || nft.apply(&script).map_err(AttachError::from),
            )?;
            // The firewall's chain depends on the bridges only, so ports coming and going do
            // not run iptables; the backends are in the key so that a legacy table appearing
            // (a firewall started since) gets the chain too.
            let bridges: Vec<String> = state.iter().map(|(n, _)| n.bridge.clone()).collect();
            let backends = firewall.backends();
            let key = format!("{boot_id}\n{backends:?}\n{}", bridges.join("\n"));
            unless_recorded(&dir.join(format!("{table}.firewall")), force, &key, || {
                firewall::sync(firewall.as_mut(), table, &bridges).map_err(AttachError::from)
            })
        })?
    }

    /// `kiln network rm NAME`: removes a user network's definition and its bridge. Fails while
    /// containers (or pooled namespaces: destroy the network's [`NetnsPool`] first) hold
    /// leases on it, or for the default network.
    ///
    /// [`NetnsPool`]: super::pool::NetnsPool
    pub fn remove_network(&mut self, name: &str) -> Result<NetworkConfig> {
        let config = self.ipam.remove_network(name)?;
        self.remove_bridge(&config)?;
        self.sync_rules()?;
        Ok(config)
    }

    /// Deletes a network's bridge (for `network rm`, or tests); ok when it is gone. Callers
    /// check that no container is attached (see [`Ipam::remove_network`]).
    pub fn remove_bridge(&mut self, net: &NetworkConfig) -> Result<()> {
        if let Some(i) = self.netlink.link_index(&net.bridge)? {
            self.netlink.delete_link(i)?;
        }
        Ok(())
    }
}

/// Runs `apply` unless `record` holds `key` (and `force` is false), then records `key`: the
/// record is removed first, so that an `apply` failing half-way runs again next time.
fn unless_recorded(
    record: &Path,
    force: bool,
    key: &str,
    apply: impl FnOnce() -> Result<()>,
) -> Result<()> {
    if !force && fs::read_to_string(record).is_ok_and(|k| k == key) {
        return Ok(());
    }
    let _ = fs::remove_file(record);
    apply()?;
    kroot::write_atomic(record, key.as_bytes()).map_err(|source| AttachError::Record {
        path: record.to_path_buf(),
        source,
    })
}

/// Turns on IPv4 forwarding (`/proc/sys/net/ipv4/ip_forward`), which outbound NAT needs. This
/// is a host-wide setting, so kiln's cli asks for it explicitly (as dockerd does at start);
/// attach never does it implicitly, and tests never call it.
pub fn enable_ip_forward(proc_sys: &Path) -> Result<()> {
    let path = proc_sys.join("net/ipv4/ip_forward");
    fs::write(&path, "1").map_err(|source| AttachError::Sysctl { path, source })
}

#[cfg(test)]
mod tests {
    use super::super::firewall::RecordingXtables;
    use super::super::netlink::fake::FakeNetlink;
    use super::super::nft::RecordingNft;
    use super::*;

    fn lease(ip: &str) -> Lease {
        Lease {
            container: "c1".into(),
            ip: ip.parse().expect("ip"),
            ports: vec![],
        }
    }

    #[test]
    fn attach_plan_builds_bridge_veth_address_and_route() {
        let net = NetworkConfig::default_bridge();
        let steps = plan_attach(&net, &lease("10.88.0.2"));
        let text: Vec<String> = steps.iter().map(|s| format!("{s:?}")).collect();
        assert_eq!(
            text,
            [
                r#"EnsureBridge { bridge: "kiln0" }"#,
                r#"AddAddress { side: Host, link: "kiln0", ip: 10.88.0.1, prefix: 16 }"#,
                r#"Sysctl { key: "net/ipv4/conf/kiln0/route_localnet", value: "1" }"#,
                r#"SetUp { side: Host, link: "kiln0" }"#,
                r#"DeleteLink { link: "kv0a580002" }"#,
                r#"CreateVeth { host: "kv0a580002", container: "eth0" }"#,
                r#"SetController { link: "kv0a580002", bridge: "kiln0" }"#,
                r#"SetUp { side: Host, link: "kv0a580002" }"#,
                r#"SetUp { side: Container, link: "lo" }"#,
                r#"AddAddress { side: Container, link: "eth0", ip: 10.88.0.2, prefix: 16 }"#,
                r#"SetUp { side: Container, link: "eth0" }"#,
                "DefaultRoute { gateway: 10.88.0.1 }",
            ]
        );
        assert_eq!(
            plan_detach(&lease("10.88.0.2")),
            [LinkStep::DeleteLink {
                link: "kv0a580002".into()
            }]
        );
    }

    #[test]
    fn a_stale_veth_with_the_leased_name_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = dir.path().join("sys");
        fs::create_dir_all(sys.join("net/ipv4/conf/kiln0")).expect("mkdir");
        let mut host = FakeNetlink::new();
        host.create_veth("kv0a580002", "old-peer", None)
            .expect("stale veth");
        let file = fs::File::open(dir.path()).expect("any fd stands in for the netns");
        let net = NetworkConfig::default_bridge();
        execute(
            &plan_attach(&net, &lease("10.88.0.2")),
            &mut host,
            Some(file.as_fd()),
            &sys,
        )
        .expect("attach over a stale veth");
        let names = host.link_names().expect("names");
        assert!(!names.contains(&"old-peer".to_string()), "{names:?}");
    }

    #[test]
    fn prune_detaches_only_unknown_containers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(dir.path()).expect("ipam");
        let net = ipam.network("bridge").expect("default");
        for c in ["alive", "dead", "pool-0"] {
            ipam.allocate(&net, c, &[]).expect("alloc");
        }
        let mut nets = Networks::new(
            ipam,
            FakeNetlink::new(),
            RecordingNft::default(),
            Box::new(RecordingXtables::default()),
            dir.path().into(),
        );
        let gone = nets
            .prune("bridge", |c| c == "alive" || c.starts_with("pool-"))
            .expect("prune");
        assert_eq!(
            gone.iter()
                .map(|l| l.container.as_str())
                .collect::<Vec<_>>(),
            ["dead"]
        );
        let left: Vec<_> = nets
            .ipam()
            .leases("bridge")
            .expect("leases")
            .into_iter()
            .map(|l| l.container)
            .collect();
        assert_eq!(left, ["alive", "pool-0"]);
    }

    #[test]
    fn unchanged_rules_are_not_applied_twice_within_a_boot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = dir.path().join("sys");
        fs::create_dir_all(sys.join("kernel/random")).expect("mkdir");
        fs::write(sys.join("kernel/random/boot_id"), "boot-1\n").expect("boot id");
        let ipam = Ipam::open(dir.path().join("state")).expect("ipam");
        let net = ipam.network("bridge").expect("default");
        ipam.allocate(&net, "a", &[]).expect("alloc");
        let mut nets = Networks::new(
            ipam,
            FakeNetlink::new(),
            RecordingNft::default(),
            Box::new(RecordingXtables::default()),
            sys.clone(),
        );
        nets.sync_rules().expect("first");
        nets.sync_rules().expect("unchanged");
        assert_eq!(nets.nft.scripts.len(), 1);
        // Another container without ports: the same rules, so no nft run.
        nets.ipam().release("bridge", "a").expect("release");
        nets.ipam().allocate(&net, "b", &[]).expect("alloc b");
        nets.sync_rules().expect("same rules: still no run");
        assert_eq!(nets.nft.scripts.len(), 1);
        nets.resync_rules().expect("forced");
        assert_eq!(nets.nft.scripts.len(), 2);
        fs::write(sys.join("kernel/random/boot_id"), "boot-2\n").expect("reboot");
        nets.sync_rules().expect("after reboot");
        assert_eq!(nets.nft.scripts.len(), 3);
        nets.ipam().release("bridge", "b").expect("release b");
        nets.sync_rules()
            .expect("the network's rules stay without leases");
        assert_eq!(nets.nft.scripts.len(), 3);
    }

    /// Counts iptables reads; the table it shows is always empty.
    #[derive(Debug, Clone, Default)]
    struct CountingXtables(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl Xtables for CountingXtables {
        fn backends(&mut self) -> Vec<firewall::Backend> {
            vec![firewall::Backend::Nft]
        }
        fn save(
            &mut self,
            _: firewall::Backend,
        ) -> std::result::Result<Option<String>, FirewallError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Some(String::new()))
        }
        fn restore(
            &mut self,
            _: firewall::Backend,
            _: &str,
        ) -> std::result::Result<(), FirewallError> {
            Ok(())
        }
    }

    #[test]
    fn iptables_runs_when_networks_change_not_when_containers_or_ports_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = dir.path().join("sys");
        fs::create_dir_all(sys.join("kernel/random")).expect("mkdir");
        fs::write(sys.join("kernel/random/boot_id"), "boot-1\n").expect("boot id");
        let ipam = Ipam::open(dir.path().join("state")).expect("ipam");
        let net = ipam.network("bridge").expect("default");
        let xt = CountingXtables::default();
        let runs = || xt.0.load(std::sync::atomic::Ordering::SeqCst);
        let mut nets = Networks::new(
            ipam,
            FakeNetlink::new(),
            RecordingNft::default(),
            Box::new(xt.clone()),
            sys.clone(),
        );
        nets.sync_rules().expect("first");
        assert_eq!(runs(), 1);
        // Containers with and without published ports: nft runs, iptables does not.
        nets.ipam()
            .allocate(&net, "web", &["18080:80".parse().expect("port")])
            .expect("alloc");
        nets.sync_rules().expect("a port");
        nets.ipam().allocate(&net, "db", &[]).expect("alloc");
        nets.sync_rules().expect("a container");
        assert_eq!((nets.nft.scripts.len(), runs()), (2, 1));
        // A network created, then removed: iptables each time.
        nets.ipam()
            .define_network("front", Some("10.89.7.0/24".parse().expect("cidr")), &[])
            .expect("define");
        nets.sync_rules().expect("a network");
        assert_eq!(runs(), 2);
        nets.remove_network("front").expect("rm");
        assert_eq!(runs(), 3);
        // A reboot, or a forced resync (`kiln system check --fix`).
        fs::write(sys.join("kernel/random/boot_id"), "boot-2\n").expect("reboot");
        nets.sync_rules().expect("after reboot");
        assert_eq!(runs(), 4);
        nets.resync_rules().expect("forced");
        assert_eq!(runs(), 5);
    }

    #[test]
    fn real_networks_can_move_to_a_blocking_thread() {
        // The solver/cli hold Networks in tokio code and call it through spawn_blocking.
        fn send<T: Send + 'static>() {}
        send::<Networks<RealNetlink, NftCommand>>();
        send::<super::super::pool::PooledNetns>();
    }

    #[test]
    fn veth_names_fit_ifnamsiz_and_are_unique_per_address() {
        let a = host_veth_name("10.88.255.254".parse().expect("ip"));
        assert_eq!(a, "kv0a58fffe");
        assert!(a.len() <= 15);
        assert_ne!(a, host_veth_name("10.88.255.253".parse().expect("ip")));
    }

    #[test]
    fn executing_the_plan_on_fakes_configures_both_sides() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = dir.path().join("sys");
        fs::create_dir_all(sys.join("net/ipv4/conf/kiln0")).expect("mkdir");
        let mut host = FakeNetlink::new();
        let net = NetworkConfig::default_bridge();
        let file = fs::File::open(dir.path()).expect("any fd stands in for the netns");
        execute(
            &plan_attach(&net, &lease("10.88.0.2")),
            &mut host,
            Some(file.as_fd()),
            &sys,
        )
        .expect("execute");
        let br = host.link_index("kiln0").expect("get").expect("bridge");
        assert_eq!(
            host.links[&br].addresses,
            [("10.88.0.1".parse().expect("ip"), 16)]
        );
        assert!(host.links[&br].up);
        let v = host.link_index("kv0a580002").expect("get").expect("veth");
        assert_eq!(host.links[&v].controller, Some(br));
        assert_eq!(
            fs::read_to_string(sys.join("net/ipv4/conf/kiln0/route_localnet")).expect("sysctl"),
            "1"
        );
        assert!(host.calls.contains(&"in_netns".to_string()));
        assert!(
            host.calls
                .contains(&"create_veth kv0a580002 eth0 netns".to_string())
        );
    }

    #[test]
    fn a_failed_attach_releases_the_lease_and_deletes_the_veth() {
        let dir = tempfile::tempdir().expect("tempdir");
        // No /proc/sys tree: the sysctl step fails after the bridge exists.
        let ipam = Ipam::open(dir.path().join("state")).expect("ipam");
        let mut nets = Networks::new(
            ipam,
            FakeNetlink::new(),
            RecordingNft::default(),
            Box::new(RecordingXtables::default()),
            dir.path().join("missing-sys"),
        );
        let fake_ns_path = dir.path().join("ns");
        fs::write(&fake_ns_path, "").expect("file");
        // Netns::open refuses non-nsfs files, so drive execute's failure through attach's parts.
        let net = nets.ipam().network("bridge").expect("net");
        let lease = nets.ipam().allocate(&net, "c1", &[]).expect("alloc");
        let err = execute(
            &plan_attach(&net, &lease),
            nets.netlink(),
            None,
            &dir.path().join("x"),
        )
        .expect_err("sysctl missing");
        assert!(matches!(err, AttachError::Sysctl { .. }), "{err}");
        nets.undo("bridge", &lease).expect("undo");
        assert!(nets.ipam().leases("bridge").expect("leases").is_empty());
        let last = nets.nft.scripts.last().expect("rules synced");
        assert!(
            last.contains("outbound bridge") && !last.contains("dnat to"),
            "{last}"
        );
    }
}

//! Networking of `kiln run`: `--network bridge|none|host|NAME`, `-p`, `-P`.
//!
//! Bridge mode creates a network namespace pinned at `/run/kiln/netns/<id>`, attaches it with
//! [`Networks::attach`] (veth, lease, default route, NAT and published ports) and hands the
//! sandbox a [`Network::Join`] with the container's /etc/hosts and resolv.conf. [`Joined::teardown`]
//! detaches and unpins it. The bridge `kiln0` and the nft table `kiln` are host-wide, so the
//! lease store is too: `/run/kiln/networks` (a tmpfs, like the links it describes, so a reboot
//! clears both together). Published ports reach the host's 127.0.0.1 through DNAT in the nat
//! output hook plus route_localnet on kiln's bridges (see `executor::net::nft`).

use anyhow::Context as _;
use executor::net::{Attachment, Netns, NftCommand, PortMapping, Proto, RealNetlink, files};
use executor::spec::Network;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Where the host-wide lease store lives.
pub const STATE_DIR: &str = "/run/kiln/networks";
/// Where container network namespaces are pinned.
pub const NETNS_DIR: &str = "/run/kiln/netns";

/// `--network`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A bridge network by name (`bridge` is the default `kiln0`).
    Bridge(String),
    /// Only `lo`.
    None,
    /// The host's network namespace.
    Host,
    /// Another container's network namespace (`container:NAME`).
    Container(String),
}

impl std::fmt::Display for Mode {
    /// As docker's `HostConfig.NetworkMode` shows it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Bridge(n) => f.write_str(n),
            Mode::None => f.write_str("none"),
            Mode::Host => f.write_str("host"),
            Mode::Container(c) => write!(f, "container:{c}"),
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Mode> {
        Ok(match s {
            "none" => Mode::None,
            "host" => Mode::Host,
            "" | "default" => Mode::Bridge("bridge".to_owned()),
            s if s.starts_with("container:") => {
                let name = &s["container:".len()..];
                anyhow::ensure!(!name.is_empty(), "--network container:NAME needs a name");
                Mode::Container(name.to_owned())
            }
            s => {
                executor::names::check_network(s)?;
                Mode::Bridge(s.to_owned())
            }
        })
    }
}

/// The ports to publish: `-p` specs, plus (with `-P`) every EXPOSEd port on a host port the
/// allocator picks. Fails on a malformed spec, or on `-p`/`-P` without a bridge network.
pub fn ports(
    specs: &[String],
    publish_all: bool,
    exposed: &BTreeMap<String, impl Sized>,
) -> anyhow::Result<Vec<PortMapping>> {
    let mut out = specs
        .iter()
        .map(|s| s.parse::<PortMapping>().with_context(|| format!("-p {s}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if publish_all {
        for key in exposed.keys() {
            let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
            let proto = match proto {
                "udp" => Proto::Udp,
                "tcp" => Proto::Tcp,
                _ => continue,
            };
            let port: u16 = port
                .parse()
                .with_context(|| format!("EXPOSEd port {key:?} of the image"))?;
            if !out
                .iter()
                .any(|p| p.container_port == port && p.proto == proto)
            {
                out.push(PortMapping::any_host_port(port, proto));
            }
        }
    }
    Ok(out)
}

/// Where build RUN steps keep their pooled namespaces (`POOL_DIR/bridge/N.netns`).
pub const POOL_DIR: &str = "/run/kiln/pool";

/// Slots of the RUN pool: enough for a build's parallel steps and a few concurrent builds.
const POOL_SLOTS: usize = 16;

/// The bridge that build RUN steps on the default network join (see
/// [`executor::net::BuildNetwork`]). Fails when the lease store or netlink cannot be opened.
pub fn build_network() -> anyhow::Result<std::sync::Arc<executor::net::BuildNetwork>> {
    executor::net::enable_ip_forward(Path::new("/proc/sys")).context("enabling IPv4 forwarding")?;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let net = executor::net::BuildNetwork::open(
        Path::new(STATE_DIR),
        Path::new(POOL_DIR),
        executor::net::ipam::DEFAULT_NETWORK,
        POOL_SLOTS,
        &host_resolv,
    )
    .with_context(|| format!("opening the network state at {STATE_DIR}"))?;
    Ok(std::sync::Arc::new(net))
}

/// A container attached to a bridge network; [`Joined::teardown`] undoes it.
#[allow(missing_debug_implementations)]
pub struct Joined {
    inner: JoinedKind,
    /// What the container got.
    pub attachment: Attachment,
}

enum JoinedKind {
    /// Its own namespace, veth and lease.
    Own {
        nets: executor::net::Networks<RealNetlink, NftCommand>,
        netns: Netns,
    },
    /// A namespace borrowed from the RUN pool (foreground `kiln run` on the default bridge
    /// without published ports), given back after the run.
    Pooled(executor::net::BuildLease),
}

/// The pinned namespace path of container `id`.
pub fn netns_path(id: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(id)
}

/// Prepares the network of container `id` (host name `hostname`, state in `dir`): the
/// sandbox's [`Network`] and, for a bridge, the attachment to tear down after the run. Fails
/// (leaving nothing behind) when a port is taken, the network is unknown, or a link or nft
/// step fails.
///
/// On a bridge, /etc/hosts is also written to `dir/hosts`, which the caller bind-mounts over
/// the sandbox's (see [`hosts_mount`]): on a user network every member's file is rewritten in
/// place when a container joins or leaves ([`refresh_hosts`]), so containers started earlier
/// resolve the ones started later by name, as docker's embedded DNS would let them.
///
/// A foreground container (`detached` false) on the default bridge without published ports
/// borrows a namespace from the RUN pool instead, as build steps do: no namespace, veth or
/// lease to create and undo (~10-20 ms of a ~20 ms run). Nothing outside kiln can name such a
/// container (it has no state), so its address being the pool slot's is invisible.
pub fn setup(
    mode: &Mode,
    id: &str,
    hostname: &str,
    ports: &[PortMapping],
    dir: &Path,
    detached: bool,
) -> anyhow::Result<(Network, Option<Joined>)> {
    if !detached
        && ports.is_empty()
        && *mode == Mode::Bridge(executor::net::ipam::DEFAULT_NETWORK.to_owned())
        && let Some(done) = pooled(id, hostname, dir)?
    {
        return Ok(done);
    }
    let name = match mode {
        Mode::None | Mode::Host | Mode::Container(_) if !ports.is_empty() => {
            anyhow::bail!("published ports (-p, -P) need a bridge network")
        }
        Mode::None => return Ok((Network::Loopback, None)),
        Mode::Host => return Ok((Network::Host, None)),
        Mode::Container(other) => return Ok((join_container(other, hostname)?, None)),
        Mode::Bridge(name) => name,
    };
    let mut nets = executor::net::Networks::open(STATE_DIR)
        .with_context(|| format!("opening the network state at {STATE_DIR}"))?;
    executor::net::enable_ip_forward(Path::new("/proc/sys")).context("enabling IPv4 forwarding")?;
    let path = netns_path(id);
    let netns = Netns::create(&path)
        .with_context(|| format!("creating the network namespace {}", path.display()))?;
    let attachment = match nets.attach(name, id, &netns, ports) {
        Ok(a) => a,
        Err(e) => {
            let _ = netns.remove();
            return Err(anyhow::Error::new(e)
                .context(format!("attaching container {id} to network {name}")));
        }
    };
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let hosts = hosts_text(id, hostname, attachment.ip, &[]);
    let hosts_file = dir.join("hosts");
    if let Err(e) = std::fs::write(&hosts_file, &hosts) {
        let _ = nets.detach(name, id);
        let _ = netns.remove();
        return Err(anyhow::Error::new(e).context(format!("writing {}", hosts_file.display())));
    }
    if name != executor::net::ipam::DEFAULT_NETWORK {
        refresh_hosts(name);
    }
    let network = Network::Join {
        netns: path,
        hosts,
        resolv_conf: files::resolv_conf(&host_resolv),
    };
    Ok((
        network,
        Some(Joined {
            inner: JoinedKind::Own { nets, netns },
            attachment,
        }),
    ))
}

/// A pooled namespace for a foreground container; None when every slot is busy (the caller
/// then makes the container its own).
fn pooled(
    id: &str,
    hostname: &str,
    dir: &Path,
) -> anyhow::Result<Option<(Network, Option<Joined>)>> {
    let Some(lease) = build_network()?
        .try_acquire()
        .context("borrowing a network namespace of the default bridge")?
    else {
        return Ok(None);
    };
    let attachment = lease.attachment().clone();
    let hosts = hosts_text(id, hostname, attachment.ip, &[]);
    let hosts_file = dir.join("hosts");
    std::fs::write(&hosts_file, &hosts)
        .with_context(|| format!("writing {}", hosts_file.display()))?;
    let network = match lease.network(hostname) {
        Network::Join {
            netns, resolv_conf, ..
        } => Network::Join {
            netns,
            hosts,
            resolv_conf,
        },
        other => other,
    };
    Ok(Some((
        network,
        Some(Joined {
            inner: JoinedKind::Pooled(lease),
            attachment,
        }),
    )))
}

fn hosts_text(id: &str, hostname: &str, ip: Ipv4Addr, peers: &[(String, Ipv4Addr)]) -> String {
    let mut hosts = files::hosts(hostname, Some(ip), peers);
    if id != hostname {
        // The full container name too (the host name is its first 12 characters).
        hosts.push_str(&format!("{ip}\t{id}\n"));
    }
    hosts
}

/// The mount that puts `dir/hosts` (written by [`setup`]) on the sandbox's /etc/hosts.
pub fn hosts_mount(dir: &Path) -> executor::spec::MountSpec {
    executor::spec::MountSpec {
        target: "/etc/hosts".to_owned(),
        kind: executor::spec::MountKind::Bind {
            source: dir.join("hosts"),
        },
        readonly: false,
    }
}

/// Rewrites the /etc/hosts of every container of user network `network` that this KILN_ROOT
/// knows, naming all current members. Files are rewritten in place (truncate and write, not
/// rename) because running sandboxes have them bind-mounted. Best effort: a member that
/// cannot be updated keeps its old file.
pub fn refresh_hosts(network: &str) {
    if network == executor::net::ipam::DEFAULT_NETWORK {
        return;
    }
    let (Ok(ipam), Ok(root)) = (executor::net::Ipam::open(STATE_DIR), crate::kiln_root()) else {
        return;
    };
    let Ok(leases) = ipam.leases(network) else {
        return;
    };
    let peers: Vec<(String, Ipv4Addr)> =
        leases.iter().map(|l| (l.container.clone(), l.ip)).collect();
    for l in &leases {
        let file = kroot::Dir::Containers
            .path(&root)
            .join(&l.container)
            .join("hosts");
        if !file.exists() {
            continue;
        }
        let hostname: String = l.container.chars().take(12).collect();
        let text = hosts_text(&l.container, &hostname, l.ip, &peers);
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&file)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    }
}

/// The network of running container `name`: its pinned namespace when it has one, else
/// its sandbox's, with /etc/hosts naming its address.
fn join_container(name: &str, hostname: &str) -> anyhow::Result<Network> {
    let (_, state) = crate::containers::find(name)?;
    anyhow::ensure!(
        state.status == "running",
        "--network container:{name}: the container is not running"
    );
    let pinned = netns_path(&state.id);
    let netns = if state.network.is_some() && pinned.exists() {
        pinned
    } else {
        let pid = state.pid.context("the container has no process")?;
        PathBuf::from(format!("/proc/{pid}/ns/net"))
    };
    let mut hosts = files::hosts(hostname, state.ip, &[]);
    if let Some(ip) = state.ip {
        hosts.push_str(&format!("{ip}\t{}\n", state.id));
    }
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    Ok(Network::Join {
        netns,
        hosts,
        resolv_conf: if state.ip.is_some() {
            files::resolv_conf(&host_resolv)
        } else {
            String::new()
        },
    })
}

impl Joined {
    /// Detaches the container (veth, lease, rules) and unpins its namespace. Both are tried;
    /// the first failure is returned.
    pub fn teardown(self) -> anyhow::Result<()> {
        let Joined { inner, attachment } = self;
        let (mut nets, netns) = match inner {
            JoinedKind::Own { nets, netns } => (nets, netns),
            // The pool checks the namespace and keeps it for the next user.
            JoinedKind::Pooled(lease) => {
                drop(lease);
                return Ok(());
            }
        };
        // Unpinned first: with the sandbox gone, the namespace dies and takes the veth pair
        // with it, so only the lease and rules are left to undo (see `Networks::forget`).
        let removed = netns.remove().context("removing the network namespace");
        let detached = nets
            .forget(&attachment.network, &attachment.container)
            .with_context(|| format!("detaching container {}", attachment.container));
        refresh_hosts(&attachment.network);
        detached?;
        removed?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_modes_parse() {
        assert_eq!("none".parse::<Mode>().ok(), Some(Mode::None));
        assert_eq!("host".parse::<Mode>().ok(), Some(Mode::Host));
        assert_eq!(
            "bridge".parse::<Mode>().ok(),
            Some(Mode::Bridge("bridge".into()))
        );
        assert_eq!(
            "container:x".parse::<Mode>().ok(),
            Some(Mode::Container("x".into()))
        );
        assert!("container:".parse::<Mode>().is_err());
    }

    #[test]
    fn publish_all_adds_exposed_ports_not_given_with_p() {
        let mut exposed = BTreeMap::new();
        exposed.insert("80/tcp".to_string(), ());
        exposed.insert("53/udp".to_string(), ());
        let got = ports(&["8080:80".into()], true, &exposed).expect("ports");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].host_port, 8080);
        assert_eq!((got[1].container_port, got[1].host_port), (53, 0));
        assert_eq!(got[1].proto, Proto::Udp);
        assert!(ports(&["80".into()], false, &exposed).is_err());
    }
}

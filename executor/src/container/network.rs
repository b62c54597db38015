//! A container's network: `--network bridge|none|host|container:NAME|NAME`, `-p`, `-P`.
//!
//! Bridge mode creates a network namespace pinned at `/run/kiln/netns/<id>`, attaches it with
//! [`Networks::attach`] (veth, lease, default route, NAT and published ports) and hands the
//! sandbox a [`Network::Join`] with the container's /etc/hosts and resolv.conf. [`Joined::teardown`]
//! detaches and unpins it. The bridge `kiln0` and the nft table `kiln` are host-wide, so the
//! lease store is too: `/run/kiln/networks` (a tmpfs, like the links it describes, so a reboot
//! clears both together). Published ports reach the host's 127.0.0.1 through DNAT in the nat
//! output hook plus route_localnet on kiln's bridges (see `crate::net::nft`).
//!
//! Functions that rewrite /etc/hosts files or look containers up take `containers`, the
//! `KILN_ROOT/containers` directory.

use super::owner::{LeaseRef, Owner, OwnerError, Owners};
use super::runtime::{self, owners_dir, state_dir};
use super::state::StateError;
use crate::net::{
    AttachError, Attachment, Netns, NftCommand, PoolError, PortMapping, Proto, RealNetlink, files,
};
use crate::spec::Network;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Errors setting a container's network up or down.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The host-wide network state could not be opened.
    #[error("opening the network state at {}", state_dir().display())]
    State(#[source] Box<AttachError>),
    /// IPv4 forwarding could not be turned on.
    #[error("enabling IPv4 forwarding")]
    Forward(#[source] Box<AttachError>),
    /// The container's namespace could not be created or removed.
    #[error("{what} the network namespace {}", .path.display())]
    Netns {
        /// `creating` or `removing`.
        what: &'static str,
        /// Its pin.
        path: PathBuf,
        /// The cause.
        #[source]
        source: crate::net::netns::NetnsError,
    },
    /// Attaching to the bridge failed (a taken port, a full subnet, a link step).
    #[error("attaching container {container} to network {network}")]
    Attach {
        /// The container id.
        container: String,
        /// The network.
        network: String,
        /// The cause.
        #[source]
        source: Box<AttachError>,
    },
    /// A hosts file could not be written.
    #[error("writing {}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `-p`/`-P` without a bridge.
    #[error("published ports (-p, -P) need a bridge network")]
    PortsNeedBridge,
    /// A malformed `-p`.
    #[error("-p {spec}")]
    Port {
        /// As given.
        spec: String,
        /// The cause.
        #[source]
        source: crate::net::subnet::ParseError,
    },
    /// An EXPOSEd port that is not a port number.
    #[error("EXPOSEd port {0:?} of the image")]
    Exposed(String),
    /// `--network container:` without a name.
    #[error("--network container:NAME needs a name")]
    NoContainerName,
    /// A network name that cannot be one.
    #[error(transparent)]
    Name(#[from] crate::names::NameError),
    /// `--network container:X` of a container that does not run.
    #[error("--network container:{0}: the container is not running")]
    NotRunning(String),
    /// `--network container:X` of a container without a process.
    #[error("--network container:{0}: the container has no process")]
    NoProcess(String),
    /// The container of `--network container:X` could not be found.
    #[error(transparent)]
    Container(#[from] StateError),
    /// The owner records could not be opened.
    #[error("cannot create {}", owners_dir().display())]
    NoOwners,
    /// The owner record could not be written or the release failed.
    #[error("recording or releasing the network of container {id}")]
    Owner {
        /// The container id.
        id: String,
        /// The cause.
        #[source]
        source: OwnerError,
    },
    /// Rootless: the session's network helper did not forward a published port.
    #[error("publishing port {port}")]
    Publish {
        /// The host port.
        port: u16,
        /// The cause.
        #[source]
        source: crate::rootless::net::NetError,
    },
    /// No pooled namespace could be borrowed.
    #[error("borrowing a network namespace of the default bridge")]
    Pool(#[source] PoolError),
}

type Result<T> = std::result::Result<T, NetError>;

/// The owner record of a container being set up (see [`super::owner`]): written
/// before it takes a lease, so that a lease is never without its claim.
#[derive(Debug)]
pub struct Record {
    owners: Option<Owners>,
    /// What it says.
    pub owner: Owner,
}

impl Record {
    /// A record of container `id` (directory `dir`), owned by this process.
    pub fn new(id: &str, dir: &Path) -> Record {
        Record {
            owners: Owners::open(owners_dir()).ok(),
            owner: Owner::new(id, dir),
        }
    }

    /// Writes it. Fails when it cannot be written: a lease without its record would be
    /// reclaimed as an orphan.
    pub fn save(&self) -> Result<()> {
        let owners = self.owners.as_ref().ok_or(NetError::NoOwners)?;
        owners
            .record(&self.owner)
            .map_err(|source| NetError::Owner {
                id: self.owner.id.clone(),
                source,
            })
    }

    /// Writes it if it can (a container that holds nothing host-wide).
    pub fn save_if_possible(&self) {
        if let Some(o) = &self.owners {
            let _ = o.record(&self.owner);
        }
    }
}

/// Reclaims what containers whose owner died left behind (leases, DNAT rules, veths,
/// namespaces, cgroups; see [`super::owner`]) and rewrites the hosts files of the user
/// networks that lost members. Cheap when there is nothing to do (no netlink socket is
/// opened).
pub fn reclaim_orphans(containers: &Path) -> Result<()> {
    // The links and rules to reclaim live in the host's network namespace: from another one
    // (`unshare -n kiln network ls`) a reclaim would delete nothing there yet record the
    // rules as applied.
    if !in_host_netns() {
        return Ok(());
    }
    let (Ok(owners), Ok(ipam)) = (
        Owners::open(owners_dir()),
        crate::net::Ipam::open(state_dir()),
    ) else {
        // Nothing can have been recorded where nothing can be written.
        return Ok(());
    };
    let leases = ipam
        .with_state(|st| {
            st.iter()
                .flat_map(|(n, ls)| {
                    ls.iter().map(|l| LeaseRef {
                        network: n.name.clone(),
                        container: l.container.clone(),
                    })
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if !owners.pending(&leases) {
        return Ok(());
    }
    let mut nets =
        crate::net::Networks::open(state_dir()).map_err(|e| NetError::State(Box::new(e)))?;
    let r = owners
        .reclaim(&mut nets, &leases)
        .map_err(|source| NetError::Owner {
            id: "(orphans)".to_owned(),
            source,
        })?;
    let mut names: Vec<&str> = r.leases.iter().map(|l| l.network.as_str()).collect();
    names.dedup();
    for n in names {
        refresh_hosts(containers, n);
    }
    Ok(())
}

/// Whether this process is in the network namespace of PID 1 (the host's, or the
/// container's that kiln itself runs in).
fn in_host_netns() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let ns = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    match (ns("/proc/self/ns/net"), ns("/proc/1/ns/net")) {
        (Some(a), Some(b)) => a == b,
        // Unreadable (no /proc, or PID 1 not ours to inspect): assume the host's.
        _ => true,
    }
}

/// Container `id` is done with its network (it exited, or `rm`): unpins its namespace and
/// releases its lease (`network`, when the record does not name it) and the one it shares,
/// unless a live container still claims them; with `running` (`rm -f`) its veth is deleted
/// now. Idempotent and best effort.
pub fn release(
    containers: &Path,
    id: &str,
    network: Option<&str>,
    ports: &[PortMapping],
    running: bool,
) {
    runtime::unpublish(ports);
    let Ok(owners) = Owners::open(owners_dir()) else {
        return;
    };
    let own = network.map(|n| LeaseRef {
        network: n.to_owned(),
        container: id.to_owned(),
    });
    if network.is_some() {
        let _ = crate::net::netns::remove_path(&netns_path(id));
    }
    let rec = owners.get(id);
    let holds = own.is_some()
        || rec
            .as_ref()
            .is_some_and(|r| r.lease.is_some() || r.shares.is_some());
    if !holds {
        owners.remove(id);
        return;
    }
    let Ok(mut nets) = crate::net::Networks::open(state_dir()) else {
        return;
    };
    if let Ok(released) = owners.release(&mut nets, id, own, running) {
        for l in released {
            refresh_hosts(containers, &l.network);
        }
    }
    if let Some(n) = network {
        refresh_hosts(containers, n);
    }
}

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
    type Err = NetError;
    fn from_str(s: &str) -> Result<Mode> {
        Ok(match s {
            "none" => Mode::None,
            "host" => Mode::Host,
            "" | "default" => Mode::Bridge("bridge".to_owned()),
            s if s.starts_with("container:") => {
                let name = &s["container:".len()..];
                if name.is_empty() {
                    return Err(NetError::NoContainerName);
                }
                Mode::Container(name.to_owned())
            }
            s => {
                crate::names::check_network(s)?;
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
) -> Result<Vec<PortMapping>> {
    let mut out = specs
        .iter()
        .map(|s| {
            s.parse::<PortMapping>().map_err(|source| NetError::Port {
                spec: s.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if publish_all {
        for key in exposed.keys() {
            let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
            let proto = match proto {
                "udp" => Proto::Udp,
                "tcp" => Proto::Tcp,
                _ => continue,
            };
            let port: u16 = port.parse().map_err(|_| NetError::Exposed(key.clone()))?;
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

/// Slots of the RUN pool: enough for a build's parallel steps and a few concurrent builds.
const POOL_SLOTS: usize = 16;

/// The bridge that build RUN steps on the default network join (see
/// [`crate::net::BuildNetwork`]). Fails when the lease store or netlink cannot be opened.
pub fn build_network() -> Result<std::sync::Arc<crate::net::BuildNetwork>> {
    crate::net::enable_ip_forward(Path::new("/proc/sys"))
        .map_err(|e| NetError::Forward(Box::new(e)))?;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let net = crate::net::BuildNetwork::open(
        &state_dir(),
        &runtime::pool_dir(),
        crate::net::ipam::DEFAULT_NETWORK,
        POOL_SLOTS,
        &host_resolv,
    )
    .map_err(|e| NetError::State(Box::new(e)))?;
    Ok(std::sync::Arc::new(net))
}

/// A container attached to a bridge network; [`Joined::teardown`] undoes it.
#[allow(missing_debug_implementations)]
pub struct Joined {
    inner: JoinedKind,
    containers: PathBuf,
    /// What the container got.
    pub attachment: Attachment,
}

enum JoinedKind {
    /// Its own namespace, veth and lease.
    Own {
        nets: crate::net::Networks<RealNetlink, NftCommand>,
        netns: Netns,
    },
    /// A namespace borrowed from the RUN pool (foreground `kiln run` on the default bridge
    /// without published ports), given back after the run.
    Pooled(crate::net::BuildLease),
}

/// The pinned namespace path of container `id`.
pub fn netns_path(id: &str) -> PathBuf {
    runtime::netns_dir().join(id)
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
#[allow(clippy::too_many_arguments)]
pub fn setup(
    containers: &Path,
    mode: &Mode,
    id: &str,
    cname: &str,
    hostname: &str,
    ports: &[PortMapping],
    dir: &Path,
    detached: bool,
    rec: &mut Record,
) -> Result<(Network, Option<Joined>)> {
    if matches!(mode, Mode::Bridge(_)) && runtime::host_network() {
        if !ports.is_empty() {
            eprintln!(
                "warning: rootless session on the host network: published ports are discarded \
                 (the container's ports are the host's)"
            );
        }
        rec.save_if_possible();
        return Ok((Network::Host, None));
    }
    if matches!(mode, Mode::Bridge(_)) && ports.is_empty() && !runtime::has_uplink() {
        rec.save_if_possible();
        return Ok((Network::Loopback, None));
    }
    if !detached
        && ports.is_empty()
        && *mode == Mode::Bridge(crate::net::ipam::DEFAULT_NETWORK.to_owned())
        && let Some(done) = pooled(containers, cname, hostname, dir)?
    {
        rec.save_if_possible();
        return Ok(done);
    }
    let name = match mode {
        Mode::None | Mode::Host | Mode::Container(_) if !ports.is_empty() => {
            return Err(NetError::PortsNeedBridge);
        }
        Mode::None | Mode::Host => {
            rec.save_if_possible();
            return Ok((
                if *mode == Mode::Host {
                    Network::Host
                } else {
                    Network::Loopback
                },
                None,
            ));
        }
        Mode::Container(other) => {
            let (network, shares) = join_container(containers, other, hostname)?;
            // The shared address stays taken while this container runs (see
            // `super::owner`).
            rec.owner.shares = shares;
            if rec.owner.shares.is_some() {
                rec.save()?;
            } else {
                rec.save_if_possible();
            }
            return Ok((network, None));
        }
        Mode::Bridge(name) => name,
    };
    let mut nets =
        crate::net::Networks::open(state_dir()).map_err(|e| NetError::State(Box::new(e)))?;
    crate::net::enable_ip_forward(Path::new("/proc/sys"))
        .map_err(|e| NetError::Forward(Box::new(e)))?;
    let path = netns_path(id);
    rec.owner.lease = Some(LeaseRef {
        network: name.clone(),
        container: id.to_owned(),
    });
    rec.owner.netns = Some(path.clone());
    rec.save()?;
    let (netns, attachment) = match rejoin(&mut nets, name, id, &path)? {
        Some(done) => done,
        None => {
            let netns = Netns::create(&path).map_err(|source| NetError::Netns {
                what: "creating",
                path: path.clone(),
                source,
            })?;
            match nets.attach(name, id, &netns, ports) {
                Ok(a) => (netns, a),
                Err(e) => {
                    let _ = netns.remove();
                    return Err(NetError::Attach {
                        container: id.to_owned(),
                        network: name.clone(),
                        source: Box::new(e),
                    });
                }
            }
        }
    };
    if let Err((port, source)) = runtime::publish(&attachment.ports) {
        let _ = nets.detach(name, id);
        let _ = netns.remove();
        return Err(NetError::Publish { port, source });
    }
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let hosts = hosts_text(cname, hostname, attachment.ip, &[]);
    let hosts_file = dir.join("hosts");
    if let Err(e) = std::fs::write(&hosts_file, &hosts) {
        let _ = nets.detach(name, id);
        let _ = netns.remove();
        return Err(NetError::Write {
            path: hosts_file,
            source: e,
        });
    }
    if name != crate::net::ipam::DEFAULT_NETWORK {
        refresh_hosts_naming(containers, name, Some((id, cname)));
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
            containers: containers.to_path_buf(),
            attachment,
        }),
    ))
}

/// Container `id` starting again while its lease on `network` is still held by a container
/// sharing its network (`--network container:ID`, see [`super::owner`]): the lease, its veth
/// and the namespace are still its own, alive through the sharer's processes, so it rejoins
/// them (pinned again at `path`) rather than attaching anew, which the lease store would
/// refuse. None when it has no lease there (a lease nobody shares is released first).
fn rejoin(
    nets: &mut crate::net::Networks<RealNetlink, NftCommand>,
    network: &str,
    id: &str,
    path: &Path,
) -> Result<Option<(Netns, Attachment)>> {
    let state = |e| NetError::State(Box::new(AttachError::from(e)));
    let Some(lease) = nets
        .ipam()
        .leases(network)
        .map_err(state)?
        .into_iter()
        .find(|l| l.container == id)
    else {
        return Ok(None);
    };
    let attach_err = |source: AttachError| NetError::Attach {
        container: id.to_owned(),
        network: network.to_owned(),
        source: Box::new(source),
    };
    let owners = Owners::open(owners_dir()).map_err(|_| NetError::NoOwners)?;
    let lref = LeaseRef {
        network: network.to_owned(),
        container: id.to_owned(),
    };
    let Some(sharer) = owners.live_sharer(&lref) else {
        // Nobody uses it: a leftover, released so the attach can lease again.
        nets.detach(network, id).map_err(attach_err)?;
        return Ok(None);
    };
    let pid = super::process::init_pid(sharer).unwrap_or(sharer);
    let netns_err = |source| NetError::Netns {
        what: "pinning",
        path: path.to_path_buf(),
        source,
    };
    let shared = Netns::of_pid(Path::new("/proc"), pid as u32).map_err(netns_err)?;
    let _ = crate::net::netns::remove_path(path);
    let pin = || -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(path)?;
        rustix::mount::mount_bind(shared.path(), path)?;
        Ok(())
    };
    if let Err(source) = pin() {
        let _ = std::fs::remove_file(path);
        return Err(NetError::Write {
            path: path.to_path_buf(),
            source,
        });
    }
    let netns = Netns::open(path).map_err(netns_err)?;
    let net = nets.ipam().network(network).map_err(state)?;
    let attachment = Attachment {
        network: net.name,
        container: id.to_owned(),
        ip: lease.ip,
        prefix: net.subnet.prefix(),
        gateway: net.gateway,
        bridge: net.bridge,
        host_veth: crate::net::attach::host_veth_name(lease.ip),
        ports: lease.ports,
    };
    Ok(Some((netns, attachment)))
}

/// A pooled namespace for a foreground container; None when every slot is busy (the caller
/// then makes the container its own).
fn pooled(
    containers: &Path,
    cname: &str,
    hostname: &str,
    dir: &Path,
) -> Result<Option<(Network, Option<Joined>)>> {
    let Some(lease) = build_network()?.try_acquire().map_err(NetError::Pool)? else {
        return Ok(None);
    };
    let attachment = lease.attachment().clone();
    let hosts = hosts_text(cname, hostname, attachment.ip, &[]);
    let hosts_file = dir.join("hosts");
    std::fs::write(&hosts_file, &hosts).map_err(|source| NetError::Write {
        path: hosts_file.clone(),
        source,
    })?;
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
            containers: containers.to_path_buf(),
            attachment,
        }),
    )))
}

/// /etc/hosts of container `name` (host name `hostname`, its id's first 12 digits).
fn hosts_text(name: &str, hostname: &str, ip: Ipv4Addr, peers: &[(String, Ipv4Addr)]) -> String {
    let mut hosts = files::hosts(hostname, Some(ip), peers);
    if name != hostname && !peers.iter().any(|(p, _)| p == name) {
        // Its name too.
        hosts.push_str(&format!("{ip}\t{name}\n"));
    }
    hosts
}

/// The mount that puts `dir/hosts` (written by [`setup`]) on the sandbox's /etc/hosts.
pub fn hosts_mount(dir: &Path) -> crate::spec::MountSpec {
    crate::spec::MountSpec {
        target: "/etc/hosts".to_owned(),
        kind: crate::spec::MountKind::Bind {
            source: dir.join("hosts"),
        },
        readonly: false,
    }
}

/// Rewrites the /etc/hosts of every container of user network `network` that this KILN_ROOT
/// knows, naming all current members. Files are rewritten in place (truncate and write, not
/// rename) because running sandboxes have them bind-mounted. Best effort: a member that
/// cannot be updated keeps its old file.
pub fn refresh_hosts(containers: &Path, network: &str) {
    refresh_hosts_naming(containers, network, None);
}

/// [`refresh_hosts`], naming container `joining` (id, name) whose state is not written yet.
fn refresh_hosts_naming(containers: &Path, network: &str, joining: Option<(&str, &str)>) {
    if network == crate::net::ipam::DEFAULT_NETWORK {
        return;
    }
    let Ok(ipam) = crate::net::Ipam::open(state_dir()) else {
        return;
    };
    let Ok(leases) = ipam.leases(network) else {
        return;
    };
    // Peers by name (a lease is named by container id; the name is in its state).
    let name_of = |id: &str| {
        crate::names::check_container(id)
            .ok()
            .and_then(|()| super::state::read(&containers.join(id)).ok())
            .map(|s| s.name().to_owned())
            .or_else(|| joining.filter(|(j, _)| *j == id).map(|(_, n)| n.to_owned()))
            .unwrap_or_else(|| id.to_owned())
    };
    let peers: Vec<(String, Ipv4Addr)> = leases
        .iter()
        .map(|l| (name_of(&l.container), l.ip))
        .collect();
    for (l, (name, _)) in leases.iter().zip(&peers) {
        if crate::names::check_container(&l.container).is_err() {
            continue;
        }
        let file = containers.join(&l.container).join("hosts");
        if !file.exists() {
            continue;
        }
        // Its own host name (`-h`) and `--add-host` lines, from its spec.
        let spec = super::supervisor::read_spec(&containers.join(&l.container)).ok();
        let hostname: String = match &spec {
            Some(s) => s.hostname.clone(),
            None => l.container.chars().take(12).collect(),
        };
        let extra = spec.map(|s| s.security.extra_hosts).unwrap_or_default();
        let text = super::options::with_extra_hosts(
            &hosts_text(name, &hostname, l.ip, &peers),
            l.ip,
            &extra,
        );
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&file)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    }
}

/// The network of running container `name`: its pinned namespace when it has one, else
/// its sandbox's, with /etc/hosts naming its address; and its lease, which the joiner claims.
fn join_container(
    containers: &Path,
    name: &str,
    hostname: &str,
) -> Result<(Network, Option<LeaseRef>)> {
    let (_, state) = super::state::find(containers, name)?;
    if !state.is_running() {
        return Err(NetError::NotRunning(name.to_owned()));
    }
    let pinned = netns_path(&state.id);
    let netns = if state.network.is_some() && pinned.exists() {
        pinned
    } else {
        let pid = state
            .pid
            .ok_or_else(|| NetError::NoProcess(name.to_owned()))?;
        PathBuf::from(format!("/proc/{pid}/ns/net"))
    };
    let mut hosts = files::hosts(hostname, state.ip, &[]);
    if let Some(ip) = state.ip {
        hosts.push_str(&format!("{ip}\t{}\n", state.name()));
    }
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let lease = state.network.as_ref().map(|n| LeaseRef {
        network: n.clone(),
        container: state.id.clone(),
    });
    let network = Network::Join {
        netns,
        hosts,
        resolv_conf: if state.ip.is_some() {
            files::resolv_conf(&host_resolv)
        } else {
            String::new()
        },
    };
    Ok((network, lease))
}

impl Joined {
    /// Detaches the container (veth, lease, rules) and unpins its namespace. Both are tried;
    /// the first failure is returned.
    pub fn teardown(self) -> Result<()> {
        let Joined {
            inner,
            containers,
            attachment,
        } = self;
        let (mut nets, netns) = match inner {
            JoinedKind::Own { nets, netns } => (nets, netns),
            // The pool checks the namespace and keeps it for the next user.
            JoinedKind::Pooled(lease) => {
                drop(lease);
                return Ok(());
            }
        };
        // Unpinned first: with the sandbox gone, the namespace dies and takes the veth pair
        // with it, so only the lease and rules are left to undo (see `Networks::forget`),
        // unless a container sharing the namespace still claims the lease.
        runtime::unpublish(&attachment.ports);
        let path = netns.path().to_path_buf();
        let removed = netns.remove().map_err(|source| NetError::Netns {
            what: "removing",
            path,
            source,
        });
        let id = attachment.container.clone();
        let detached = Owners::open(owners_dir())
            .and_then(|owners| {
                let own = LeaseRef {
                    network: attachment.network.clone(),
                    container: id.clone(),
                };
                owners.release(&mut nets, &id, Some(own), false)
            })
            .map_err(|source| NetError::Owner { id, source });
        refresh_hosts(&containers, &attachment.network);
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

//! Subnets nobody else on the host uses: what the default network and user networks created
//! without `--subnet` are given, as dockerd's default address pools are.
//!
//! The rule (docker's, learned from libnetwork's `netutils.FindAvailableNetwork`, and checked
//! against dockerd 20.10): a candidate is free when it overlaps no route and no nameserver of
//! the host. kiln looks a little further than docker, which reads the main routing table only:
//! every unicast route with a destination in any table but `local` (a VPN's policy table holds
//! routes too), every interface address, and the nameservers of /etc/resolv.conf. A default
//! route holds no addresses of its own and never makes a candidate taken. "The host" is the
//! network namespace where kiln's bridges live: the caller's as root, the session's rootless.
//!
//! The choice is made once, when a network is defined (the default one: when its bridge is
//! first needed) and stored with it (`ipam`): later routes never move a network, as with docker.
//! A bridge `kiln0` that already holds an address when no choice is stored (made by a kiln
//! before choices were stored) keeps it, as dockerd keeps an existing `docker0`'s. An explicit
//! `--subnet` is checked against kiln's own networks only: dockerd 20.10 accepts a `--subnet`
//! that overlaps a host route and refuses only one overlapping another docker network.

use std::fmt;
use std::net::Ipv4Addr;

use super::ipam::NetworkConfig;
use super::netlink::{Netlink, NetlinkError};
use super::subnet::Subnet;

/// Where the default network's subnet comes from, first free wins: podman's default first
/// (10.88.0.0/16, kiln's default before this pool existed), then 10.92-10.95. Left out:
/// 10.89.0.0/16 (podman's user networks, kiln's tests), 10.90.0.0/16 (kiln's user networks,
/// [`AUTO_SUBNETS`](super::ipam::AUTO_SUBNETS)), 10.91.0.0/16 (kiln's tests) and 10.96.0.0/12
/// (Kubernetes' service range).
pub const DEFAULT_POOL: [&str; 5] = [
    "10.88.0.0/16",
    "10.92.0.0/16",
    "10.93.0.0/16",
    "10.94.0.0/16",
    "10.95.0.0/16",
];

/// What holds a range of addresses on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A unicast route, through `link` when it names one, in routing table `table`.
    Route {
        /// The outgoing link's name.
        link: Option<String>,
        /// The routing table (254 is `main`).
        table: u32,
    },
    /// An address of link `link`.
    Address {
        /// The link's name.
        link: String,
    },
    /// A nameserver of /etc/resolv.conf (a bridge on its subnet would capture DNS).
    Nameserver,
}

/// A range of addresses in use: `ip/prefix` (any prefix length, /32 included) and its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    /// An address of the range (host bits may be set: an interface address).
    pub ip: Ipv4Addr,
    /// The prefix length, 0..=32.
    pub prefix: u8,
    /// What holds it.
    pub holder: Holder,
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

impl InUse {
    /// Whether the range shares an address with `s`. A default route (prefix 0) never does.
    pub fn overlaps(&self, s: Subnet) -> bool {
        if self.prefix == 0 {
            return false;
        }
        let m = mask(self.prefix.min(s.prefix()));
        u32::from(self.ip) & m == u32::from(s.network()) & m
    }

    /// The link it is on, if any.
    pub fn link(&self) -> Option<&str> {
        match &self.holder {
            Holder::Route { link, .. } => link.as_deref(),
            Holder::Address { link } => Some(link),
            Holder::Nameserver => None,
        }
    }
}

impl fmt::Display for InUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let net = Ipv4Addr::from(u32::from(self.ip) & mask(self.prefix));
        match &self.holder {
            Holder::Route { link, table } => {
                write!(f, "route {net}/{}", self.prefix)?;
                if let Some(l) = link {
                    write!(f, " dev {l}")?;
                }
                if *table != 254 {
                    write!(f, " table {table}")?;
                }
                Ok(())
            }
            Holder::Address { link } => write!(f, "address {}/{} of {link}", self.ip, self.prefix),
            Holder::Nameserver => write!(f, "nameserver {}", self.ip),
        }
    }
}

/// The IPv4 nameservers of a resolv.conf.
pub fn nameservers(resolv_conf: &str) -> Vec<InUse> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<Ipv4Addr>().ok())
        .map(|ip| InUse {
            ip,
            prefix: 32,
            holder: Holder::Nameserver,
        })
        .collect()
}

/// Everything in use in `nl`'s namespace: its routes and addresses (see [`Netlink::in_use`]),
/// and the nameservers of `resolv_conf`.
pub fn in_use<N: Netlink>(nl: &mut N, resolv_conf: &str) -> Result<Vec<InUse>, NetlinkError> {
    let mut out = nl.in_use()?;
    out.extend(nameservers(resolv_conf));
    Ok(out)
}

/// [`in_use`] in the calling thread's namespace, with /etc/resolv.conf (absent: none).
pub fn host_in_use() -> Result<Vec<InUse>, NetlinkError> {
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    in_use(&mut super::netlink::RealNetlink::open()?, &resolv)
}

/// Why no candidate was free: each one and what holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoneFree(pub Vec<(Subnet, String)>);

impl fmt::Display for NoneFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(s, why)| format!("{s}: {why}"))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

/// The first of `candidates` that overlaps no network of `kiln` (kiln's own networks) and
/// nothing of `in_use`. Err names, for each candidate, the first thing holding it.
pub fn first_free(
    candidates: impl IntoIterator<Item = Subnet>,
    kiln: &[NetworkConfig],
    in_use: &[InUse],
) -> Result<Subnet, NoneFree> {
    let mut why = Vec::new();
    for c in candidates {
        let other = kiln
            .iter()
            .find(|n| n.subnet.contains(c.network()) || c.contains(n.subnet.network()));
        if let Some(n) = other {
            why.push((c, format!("kiln network {} ({})", n.name, n.subnet)));
            continue;
        }
        match in_use.iter().find(|u| u.overlaps(c)) {
            Some(u) => why.push((c, u.to_string())),
            None => return Ok(c),
        }
    }
    Err(NoneFree(why))
}

/// The default network's subnet when none is stored yet: the subnet of the address `bridge`
/// (`kiln0`) already holds in `in_use` (left by a kiln that stored no choice: containers may be
/// using it), else the first free subnet of [`DEFAULT_POOL`]; the bridge's own routes and
/// addresses are never counted against it.
pub fn choose_default(
    bridge: &str,
    kiln: &[NetworkConfig],
    in_use: &[InUse],
) -> Result<Subnet, NoneFree> {
    let held = in_use.iter().find_map(|u| match &u.holder {
        Holder::Address { link } if link == bridge => {
            let net = Ipv4Addr::from(u32::from(u.ip) & mask(u.prefix));
            Subnet::new(net, u.prefix).ok()
        }
        _ => None,
    });
    if let Some(s) = held {
        return Ok(s);
    }
    let others: Vec<InUse> = in_use
        .iter()
        .filter(|u| u.link() != Some(bridge))
        .cloned()
        .collect();
    first_free(
        DEFAULT_POOL
            .iter()
            .map(|s| s.parse().expect("DEFAULT_POOL holds valid subnets")),
        kiln,
        &others,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(cidr: &str, link: &str) -> InUse {
        let (ip, p) = cidr.split_once('/').expect("cidr");
        InUse {
            ip: ip.parse().expect("ip"),
            prefix: p.parse().expect("prefix"),
            holder: Holder::Route {
                link: Some(link.into()),
                table: 254,
            },
        }
    }

    fn addr(cidr: &str, link: &str) -> InUse {
        InUse {
            holder: Holder::Address { link: link.into() },
            ..route(cidr, link)
        }
    }

    fn s(cidr: &str) -> Subnet {
        cidr.parse().expect("subnet")
    }

    /// This host's table (`ip -4 route`, `ip -4 addr`) with podman's cni-podman0 up.
    fn podman_host() -> Vec<InUse> {
        vec![
            route("0.0.0.0/0", "eth0"),
            route("10.88.0.0/16", "cni-podman0"),
            route("172.17.0.0/16", "docker0"),
            route("192.0.2.0/24", "eth0"),
            addr("127.0.0.1/8", "lo"),
            addr("192.0.2.2/24", "eth0"),
            addr("172.17.0.1/16", "docker0"),
            addr("10.88.0.1/16", "cni-podman0"),
        ]
    }

    #[test]
    fn overlap_is_sharing_any_address_whatever_the_prefix_lengths() {
        let n = s("10.88.0.0/16");
        assert!(route("10.88.0.0/16", "x").overlaps(n));
        assert!(route("10.88.7.0/24", "x").overlaps(n), "inside");
        assert!(route("10.0.0.0/8", "x").overlaps(n), "around");
        assert!(route("10.88.255.255/32", "x").overlaps(n), "a host route");
        assert!(addr("10.88.3.4/32", "wg0").overlaps(n), "a /32 address");
        assert!(!route("10.89.0.0/16", "x").overlaps(n), "beside");
        assert!(!route("10.87.255.0/24", "x").overlaps(n), "just below");
        assert!(!route("0.0.0.0/0", "eth0").overlaps(n), "a default route");
        assert!(route("10.88.0.0/15", "x").overlaps(s("10.89.0.0/16")));
    }

    #[test]
    fn the_first_free_default_is_10_88_unless_something_holds_it() {
        let clean = vec![
            route("0.0.0.0/0", "eth0"),
            route("192.0.2.0/24", "eth0"),
            addr("192.0.2.2/24", "eth0"),
        ];
        assert_eq!(choose_default("kiln0", &[], &clean), Ok(s("10.88.0.0/16")));
        assert_eq!(
            choose_default("kiln0", &[], &podman_host()),
            Ok(s("10.92.0.0/16"))
        );
        // A VPN's /24 route inside 10.92/16, in its own table, and a nameserver in 10.93/16.
        let mut vpn = podman_host();
        vpn.push(InUse {
            ip: "10.92.4.0".parse().expect("ip"),
            prefix: 24,
            holder: Holder::Route {
                link: Some("tailscale0".into()),
                table: 52,
            },
        });
        vpn.extend(nameservers(
            "search x\nnameserver 10.93.0.53\nnameserver ::1\n",
        ));
        assert_eq!(choose_default("kiln0", &[], &vpn), Ok(s("10.94.0.0/16")));
        // kiln's own user networks count too, bridge or not.
        let user = NetworkConfig::user("u", s("10.94.1.0/24"));
        assert_eq!(
            choose_default("kiln0", &[user], &vpn),
            Ok(s("10.95.0.0/16"))
        );
    }

    #[test]
    fn an_existing_kiln0_keeps_its_address_and_its_routes_never_count() {
        // kiln0 made before choices were stored, beside podman's bridge on the same subnet:
        // it keeps 10.88 (containers may be on it), as dockerd keeps docker0's address.
        let mut t = podman_host();
        t.push(route("10.88.0.0/16", "kiln0"));
        t.push(addr("10.88.0.1/16", "kiln0"));
        assert_eq!(choose_default("kiln0", &[], &t), Ok(s("10.88.0.0/16")));
        // kiln0 without an address: its leftover routes do not push the choice away.
        let t = vec![route("10.88.0.0/16", "kiln0")];
        assert_eq!(choose_default("kiln0", &[], &t), Ok(s("10.88.0.0/16")));
    }

    #[test]
    fn a_full_pool_names_what_holds_each_candidate() {
        let t = vec![
            route("10.0.0.0/8", "vpn0"),
            InUse {
                ip: "10.0.0.0".parse().expect("ip"),
                prefix: 8,
                holder: Holder::Route {
                    link: None,
                    table: 100,
                },
            },
        ];
        let e = choose_default("kiln0", &[], &t).expect_err("all taken");
        assert_eq!(e.0.len(), DEFAULT_POOL.len());
        assert_eq!(
            e.to_string().split("; ").next(),
            Some("10.88.0.0/16: route 10.0.0.0/8 dev vpn0")
        );
        assert_eq!(t[1].to_string(), "route 10.0.0.0/8 table 100");
        assert_eq!(
            addr("10.88.0.1/16", "cni-podman0").to_string(),
            "address 10.88.0.1/16 of cni-podman0"
        );
    }

    // Ipam and Networks with the rule.

    use super::super::attach::Networks;
    use super::super::firewall::RecordingXtables;
    use super::super::ipam::{Ipam, IpamError};
    use super::super::netlink::fake::FakeNetlink;
    use super::super::nft::RecordingNft;
    use std::fs;

    type Result<T> = std::result::Result<T, IpamError>;

    fn held(cidr: &str, link: &str) -> InUse {
        let (ip, prefix) = cidr.split_once('/').expect("cidr");
        InUse {
            ip: ip.parse().expect("ip"),
            prefix: prefix.parse().expect("prefix"),
            holder: Holder::Route {
                link: Some(link.into()),
                table: 254,
            },
        }
    }

    #[test]
    fn network_create_without_subnet_skips_what_the_host_routes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(dir.path()).expect("open");
        // A VPN routing 10.90.0.0/23 and a docker network on 10.90.2.0/24.
        let host = [held("10.90.0.0/23", "tun0"), held("10.90.2.0/24", "br-1")];
        let a = ipam.define_network("a", None, &host).expect("a");
        assert_eq!(a.subnet.to_string(), "10.90.3.0/24");
        // An explicit subnet over a host route is taken, as dockerd 20.10 takes it.
        let b = ipam
            .define_network("b", Some("10.90.0.0/24".parse().expect("cidr")), &host)
            .expect("explicit subnet over a route");
        assert_eq!(b.subnet.to_string(), "10.90.0.0/24");
        // Every /24 routed elsewhere: the error names the pool and what holds it.
        let e = ipam
            .define_network("c", None, &[held("10.0.0.0/8", "vpn0")])
            .expect_err("nothing free");
        assert_eq!(
            e.to_string(),
            "no subnet of 10.90.0.0/16 (as /24s) is free for network c: 10.90.0.0/24: kiln network \
             b (10.90.0.0/24); ...; 10.90.255.0/24: route 10.0.0.0/8 dev vpn0"
        );
    }

    #[test]
    fn the_default_network_is_chosen_once_and_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(dir.path()).expect("open");
        // Unchosen, it reads as the first choice and nothing is stored.
        assert_eq!(
            ipam.network("bridge").expect("default"),
            NetworkConfig::default_bridge()
        );
        assert!(!dir.path().join("bridge/network.json").exists());
        let user = ipam
            .define_network("u", Some("10.92.0.0/24".parse().expect("cidr")), &[])
            .expect("user network");
        let chosen = ipam
            .default_network_or(|others| -> Result<Subnet> {
                assert_eq!(others, std::slice::from_ref(&user), "kiln's other networks");
                Ok("10.93.0.0/16".parse().expect("cidr"))
            })
            .expect("chosen");
        assert_eq!(
            (chosen.bridge.as_str(), chosen.gateway),
            ("kiln0", Ipv4Addr::new(10, 93, 0, 1))
        );
        // Stored: read back by every handle, and never chosen again.
        let again = Ipam::open(dir.path()).expect("reopen");
        assert_eq!(again.network("bridge").expect("stored"), chosen);
        assert_eq!(again.networks().expect("list")[0], chosen);
        let kept = again
            .default_network_or(|_| -> Result<Subnet> { panic!("chosen twice") })
            .expect("kept");
        assert_eq!(kept, chosen);
        let e = again
            .create_network(&NetworkConfig::user(
                "x",
                "10.93.1.0/24".parse().expect("cidr"),
            ))
            .expect_err("overlaps the stored default");
        assert!(
            e.to_string()
                .contains("overlaps network bridge (10.93.0.0/16)"),
            "{e}"
        );
        assert!(matches!(
            again.remove_network("bridge"),
            Err(IpamError::InUse { .. })
        ));
    }

    #[test]
    fn the_default_network_avoids_the_hosts_routes_once_and_keeps_its_choice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut host = FakeNetlink::new();
        // podman's bridge holds 10.88.0.0/16; a nameserver sits in 10.92.0.0/16.
        let podman = host.create_bridge("cni-podman0").expect("bridge");
        host.add_address(podman, "10.88.0.1".parse().expect("ip"), 16)
            .expect("address");
        host.routes.push(InUse {
            ip: "10.88.0.0".parse().expect("ip"),
            prefix: 16,
            holder: Holder::Route {
                link: Some("cni-podman0".into()),
                table: 254,
            },
        });
        let resolv = dir.path().join("resolv.conf");
        fs::write(&resolv, "nameserver 10.92.0.53\n").expect("resolv.conf");
        let mut nets = Networks::new(
            Ipam::open(dir.path().join("state")).expect("ipam"),
            host,
            RecordingNft::default(),
            Box::new(RecordingXtables::default()),
            dir.path().into(),
        )
        .with_resolv_conf(&resolv);
        let net = nets.network("bridge").expect("default");
        assert_eq!(
            (net.bridge.as_str(), net.subnet.to_string(), net.gateway),
            (
                "kiln0",
                "10.93.0.0/16".to_string(),
                "10.93.0.1".parse().expect("ip")
            )
        );
        // podman's network gone: the stored choice stays, as docker's does.
        let i = nets.netlink().link_index("cni-podman0").expect("get");
        nets.netlink().delete_link(i.expect("bridge")).expect("rm");
        nets.netlink().routes.clear();
        fs::write(&resolv, "").expect("resolv.conf");
        assert_eq!(nets.network("bridge").expect("default"), net);
        assert_eq!(nets.ipam().network("bridge").expect("stored"), net);
    }
}

//! The `Netlink` seam: the dozen link/address/route operations kiln needs, a real
//! implementation speaking rtnetlink over a synchronous socket, and (for tests) a fake.
//!
//! Why not the `rtnetlink` crate: its API is async and needs a tokio reactor, while our callers
//! include the synchronous netns pool and the single-threaded sandbox init. The messages come
//! from `netlink-packet-route` (the same crate `rtnetlink` builds on); we only add the
//! request/ack loop. A socket is bound to the network namespace it was created in, so
//! [`RealNetlink::open_in`] creates its socket on a short-lived thread that first `setns`es
//! into the target namespace; the socket then works from any thread.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::hostnet::{Holder, InUse};

/// A netlink failure: which operation, on what, and the kernel's errno.
#[derive(Debug, thiserror::Error)]
#[error("netlink {op} {target}")]
pub struct NetlinkError {
    /// The operation (`create bridge`, `add address`, ...).
    pub op: &'static str,
    /// The link name, index or address it was applied to.
    pub target: String,
    /// The kernel's answer.
    #[source]
    pub source: io::Error,
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// A network namespace to move a link into.
#[derive(Debug, Clone, Copy)]
pub enum NetnsTarget<'a> {
    /// An open `/proc/PID/ns/net` or a bind mount of one.
    Fd(BorrowedFd<'a>),
    /// The namespace of a process.
    Pid(u32),
}

/// The link/address/route operations kiln performs, against one network namespace.
///
/// Creating and deleting are idempotent where the caller cannot know the state (a bridge left
/// by an earlier run, an address on a reused namespace): they succeed when the object already
/// exists (or is already gone).
pub trait Netlink {
    /// The index of the link called `name`, None when there is none.
    fn link_index(&mut self, name: &str) -> Result<Option<u32>>;
    /// The names of all links.
    fn link_names(&mut self) -> Result<Vec<String>>;
    /// Creates a bridge (or finds the existing one) and returns its index.
    fn create_bridge(&mut self, name: &str) -> Result<u32>;
    /// Creates a veth pair `name` <-> `peer`; the peer is created directly in `peer_netns`
    /// when given (so it can be called `eth0` without clashing with the host's links).
    /// Returns the index of `name`.
    fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: Option<NetnsTarget<'_>>,
    ) -> Result<u32>;
    /// Moves a link into another namespace.
    fn move_to_netns(&mut self, index: u32, netns: NetnsTarget<'_>) -> Result<()>;
    /// Renames a (down) link.
    fn rename(&mut self, index: u32, name: &str) -> Result<()>;
    /// Sets a link up.
    fn set_up(&mut self, index: u32) -> Result<()>;
    /// Enslaves a link to a bridge.
    fn set_controller(&mut self, index: u32, bridge: u32) -> Result<()>;
    /// Adds an IPv4 address (ok when present).
    fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()>;
    /// The IPv4 addresses of a link.
    fn addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>>;
    /// Adds the default route via `gateway` (ok when present).
    fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<()>;
    /// What holds IPv4 addresses in this namespace: every unicast route with a destination in
    /// any table but `local`, and every interface address (see [`super::hostnet`]).
    fn in_use(&mut self) -> Result<Vec<InUse>>;
    /// Deletes a link (ok when it is gone); deleting one end of a veth deletes both.
    fn delete_link(&mut self, index: u32) -> Result<()>;
    /// A connection of the same kind inside the namespace `netns`.
    fn in_netns(&mut self, netns: BorrowedFd<'_>) -> Result<Self>
    where
        Self: Sized;
}

/// rtnetlink over a blocking `NETLINK_ROUTE` socket.
#[derive(Debug)]
pub struct RealNetlink {
    socket: Socket,
    seq: u32,
}

/// A stable, locally administered unicast address for bridge `name`.
pub fn bridge_mac(name: &str) -> [u8; 6] {
    // FNV-1a: stable across releases.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let b = h.to_be_bytes();
    [0x02, 0x6b, b[0], b[1], b[2], b[3]]
}

fn nl_err(op: &'static str, target: impl ToString) -> impl FnOnce(io::Error) -> NetlinkError {
    move |source| NetlinkError {
        op,
        target: target.to_string(),
        source,
    }
}

fn raw_errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
}

impl RealNetlink {
    /// A socket in the calling thread's network namespace. Fails when netlink is unavailable.
    pub fn open() -> Result<RealNetlink> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(nl_err("open socket", "route"))?;
        socket.bind_auto().map_err(nl_err("bind socket", "route"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(nl_err("connect socket", "route"))?;
        Ok(RealNetlink { socket, seq: 1 })
    }

    /// A socket inside the network namespace `netns` (an open nsfs file). Fails when `setns`
    /// is refused (not root, not a netns file).
    pub fn open_in(netns: BorrowedFd<'_>) -> Result<RealNetlink> {
        std::thread::scope(|s| {
            s.spawn(|| {
                // This thread exists only to create the socket; it ends right after, so its
                // changed namespace never leaks to other work.
                rustix::thread::move_into_link_name_space(
                    netns,
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| nl_err("setns", "netns")(e.into()))?;
                RealNetlink::open()
            })
            .join()
            .map_err(|_| nl_err("setns", "netns")(io::Error::other("setns thread panicked")))?
        })
    }

    /// Sends one request and collects the answers until the ack (or the end of a dump).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut nl = NetlinkMessage::from(msg);
        self.seq = self.seq.wrapping_add(1);
        nl.header.flags = NLM_F_REQUEST | flags;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (bytes, _) = self.socket.recv_from_full()?;
            let mut off = 0;
            while off < bytes.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[off..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "zero-length netlink message",
                    ));
                }
                off += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue; // a stale answer to an earlier request
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn link_msg(index: u32) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m
    }

    fn set_link(&mut self, m: LinkMessage) -> io::Result<()> {
        self.request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)
            .map(drop)
    }
}

impl Netlink for RealNetlink {
    fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(m), NLM_F_ACK) {
            Ok(msgs) => Ok(msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if raw_errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_err("get link", name)(e)),
        }
    }

    fn link_names(&mut self) -> Result<Vec<String>> {
        let msgs = self
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(nl_err("list links", "all"))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                }),
                _ => None,
            })
            .collect())
    }

    fn create_bridge(&mut self, name: &str) -> Result<u32> {
        if let Some(i) = self.link_index(name)? {
            // A bridge made by an older kiln may still follow its ports' addresses.
            let assigned =
                std::fs::read_to_string(format!("/sys/class/net/{name}/addr_assign_type"));
            if assigned.is_ok_and(|t| t.trim() != "3") {
                let mut m = Self::link_msg(i);
                m.attributes
                    .push(LinkAttribute::Address(bridge_mac(name).to_vec()));
                self.set_link(m)
                    .map_err(nl_err("set bridge address", name))?;
            }
            return Ok(i);
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        // A fixed address: otherwise a bridge takes the lowest address of its ports, which
        // changes as containers come and go, and namespaces that cached the gateway's old
        // address (pooled ones, long-running containers) lose it for seconds (docker sets it
        // for the same reason).
        m.attributes
            .push(LinkAttribute::Address(bridge_mac(name).to_vec()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        match self.request(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            // EEXIST: another kiln created it between our lookup and our create.
            Ok(_) => {}
            Err(e) if raw_errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(nl_err("create bridge", name)(e)),
        }
        self.link_index(name)?.ok_or_else(|| {
            nl_err("create bridge", name)(io::Error::from_raw_os_error(libc::ENODEV))
        })
    }

    fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: Option<NetnsTarget<'_>>,
    ) -> Result<u32> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        match peer_netns {
            Some(NetnsTarget::Fd(fd)) => p.attributes.push(LinkAttribute::NetNsFd(fd.as_raw_fd())),
            Some(NetnsTarget::Pid(pid)) => p.attributes.push(LinkAttribute::NetNsPid(pid)),
            None => {}
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(nl_err("create veth", format!("{name}/{peer}")))?;
        self.link_index(name)?
            .ok_or_else(|| nl_err("create veth", name)(io::Error::from_raw_os_error(libc::ENODEV)))
    }

    fn move_to_netns(&mut self, index: u32, netns: NetnsTarget<'_>) -> Result<()> {
        let mut m = Self::link_msg(index);
        m.attributes.push(match netns {
            NetnsTarget::Fd(fd) => LinkAttribute::NetNsFd(fd.as_raw_fd()),
            NetnsTarget::Pid(pid) => LinkAttribute::NetNsPid(pid),
        });
        self.set_link(m)
            .map_err(nl_err("move to netns", format!("link {index}")))
    }

    fn rename(&mut self, index: u32, name: &str) -> Result<()> {
        let mut m = Self::link_msg(index);
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.set_link(m)
            .map_err(nl_err("rename", format!("link {index} to {name}")))
    }

    fn set_up(&mut self, index: u32) -> Result<()> {
        let mut m = Self::link_msg(index);
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.set_link(m)
            .map_err(nl_err("set up", format!("link {index}")))
    }

    fn set_controller(&mut self, index: u32, bridge: u32) -> Result<()> {
        let mut m = Self::link_msg(index);
        m.attributes.push(LinkAttribute::Controller(bridge));
        self.set_link(m).map_err(nl_err(
            "set controller",
            format!("link {index} to {bridge}"),
        ))
    }

    fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(ip.into()));
        m.attributes.push(AddressAttribute::Address(ip.into()));
        match self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(()),
            Err(e) if raw_errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(nl_err(
                "add address",
                format!("{ip}/{prefix} on link {index}"),
            )(e)),
        }
    }

    fn addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        let msgs = self
            .request(RouteNetlinkMessage::GetAddress(m), NLM_F_DUMP)
            .map_err(nl_err("list addresses", format!("link {index}")))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Local(std::net::IpAddr::V4(ip)) => {
                            Some((*ip, a.header.prefix_len))
                        }
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        match self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(()),
            Err(e) if raw_errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(nl_err("add default route", gateway)(e)),
        }
    }

    fn in_use(&mut self) -> Result<Vec<InUse>> {
        let mut names = std::collections::HashMap::new();
        let links = self
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(nl_err("list links", "all"))?;
        for m in links {
            if let RouteNetlinkMessage::NewLink(l) = m
                && let Some(n) = l.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                })
            {
                names.insert(l.header.index, n);
            }
        }
        let name = |i: u32| names.get(&i).cloned().unwrap_or_else(|| format!("if{i}"));
        let mut out = Vec::new();
        let mut a = AddressMessage::default();
        a.header.family = AddressFamily::Inet;
        let addrs = self
            .request(RouteNetlinkMessage::GetAddress(a), NLM_F_DUMP)
            .map_err(nl_err("list addresses", "all"))?;
        for m in addrs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            let ip = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(std::net::IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = ip {
                out.push(InUse {
                    ip,
                    prefix: a.header.prefix_len,
                    holder: Holder::Address {
                        link: name(a.header.index),
                    },
                });
            }
        }
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        let routes = self
            .request(RouteNetlinkMessage::GetRoute(r), NLM_F_DUMP)
            .map_err(nl_err("list routes", "all"))?;
        for m in routes {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            let mut table = u32::from(r.header.table);
            let (mut dst, mut oif) = (None, None);
            for at in &r.attributes {
                match at {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            // The local table holds the host's own addresses (listed above) and broadcasts.
            if r.header.kind != RouteType::Unicast || table == 255 {
                continue;
            }
            if let Some(ip) = dst {
                out.push(InUse {
                    ip,
                    prefix: r.header.destination_prefix_length,
                    holder: Holder::Route {
                        link: oif.map(name),
                        table,
                    },
                });
            }
        }
        Ok(out)
    }

    fn delete_link(&mut self, index: u32) -> Result<()> {
        match self.request(
            RouteNetlinkMessage::DelLink(Self::link_msg(index)),
            NLM_F_ACK,
        ) {
            Ok(_) => Ok(()),
            Err(e) if raw_errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(nl_err("delete link", format!("link {index}"))(e)),
        }
    }

    fn in_netns(&mut self, netns: BorrowedFd<'_>) -> Result<Self> {
        RealNetlink::open_in(netns)
    }
}

/// An in-memory stand-in that records every call, for tests of code above the seam.
#[cfg(any(test, feature = "testing"))]
pub mod fake {
    use super::*;
    use std::collections::BTreeMap;

    /// A link in the fake kernel.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct FakeLink {
        /// Its name.
        pub name: String,
        /// Up or down.
        pub up: bool,
        /// Bridge index when enslaved.
        pub controller: Option<u32>,
        /// Addresses.
        pub addresses: Vec<(Ipv4Addr, u8)>,
        /// The veth peer's index, if any (peers may sit in "another namespace": index only).
        pub peer: Option<u32>,
        /// Moved away to another namespace (no longer visible here).
        pub moved: bool,
    }

    /// Records calls and keeps links in a map; one instance is one namespace.
    #[derive(Debug, Default)]
    pub struct FakeNetlink {
        /// Links by index.
        pub links: BTreeMap<u32, FakeLink>,
        /// The default route's gateway.
        pub default_route: Option<Ipv4Addr>,
        /// Routes [`Netlink::in_use`] lists besides the links' addresses.
        pub routes: Vec<InUse>,
        /// Every call, as `op arg...`.
        pub calls: Vec<String>,
        /// Names of veth peers created "in another namespace", handed to the next `in_netns`.
        pub exported: Vec<String>,
        next: u32,
    }

    impl FakeNetlink {
        /// A namespace with `lo` only.
        pub fn new() -> FakeNetlink {
            let mut f = FakeNetlink {
                next: 1,
                ..FakeNetlink::default()
            };
            f.add("lo");
            f
        }

        fn add(&mut self, name: &str) -> u32 {
            let i = self.next;
            self.next += 1;
            self.links.insert(
                i,
                FakeLink {
                    name: name.to_string(),
                    up: false,
                    controller: None,
                    addresses: vec![],
                    peer: None,
                    moved: false,
                },
            );
            i
        }

        fn get(&mut self, op: &'static str, index: u32) -> Result<&mut FakeLink> {
            self.links
                .get_mut(&index)
                .filter(|l| !l.moved)
                .ok_or_else(|| nl_err(op, index)(io::Error::from_raw_os_error(libc::ENODEV)))
        }
    }

    impl Netlink for FakeNetlink {
        fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
            Ok(self
                .links
                .iter()
                .find(|(_, l)| l.name == name && !l.moved)
                .map(|(i, _)| *i))
        }
        fn link_names(&mut self) -> Result<Vec<String>> {
            Ok(self
                .links
                .values()
                .filter(|l| !l.moved)
                .map(|l| l.name.clone())
                .collect())
        }
        fn create_bridge(&mut self, name: &str) -> Result<u32> {
            self.calls.push(format!("create_bridge {name}"));
            match self.link_index(name)? {
                Some(i) => Ok(i),
                None => Ok(self.add(name)),
            }
        }
        fn create_veth(
            &mut self,
            name: &str,
            peer: &str,
            peer_netns: Option<NetnsTarget<'_>>,
        ) -> Result<u32> {
            self.calls.push(format!(
                "create_veth {name} {peer}{}",
                if peer_netns.is_some() { " netns" } else { "" }
            ));
            if self.link_index(name)?.is_some() {
                return Err(nl_err("create veth", name)(io::Error::from_raw_os_error(
                    libc::EEXIST,
                )));
            }
            let i = self.add(name);
            let p = self.add(peer);
            if peer_netns.is_some() {
                self.exported.push(peer.to_string());
            }
            if let Some(l) = self.links.get_mut(&p) {
                l.moved = peer_netns.is_some();
                l.peer = Some(i);
            }
            if let Some(l) = self.links.get_mut(&i) {
                l.peer = Some(p);
            }
            Ok(i)
        }
        fn move_to_netns(&mut self, index: u32, _netns: NetnsTarget<'_>) -> Result<()> {
            self.calls.push(format!("move_to_netns {index}"));
            self.get("move to netns", index)?.moved = true;
            Ok(())
        }
        fn rename(&mut self, index: u32, name: &str) -> Result<()> {
            self.calls.push(format!("rename {index} {name}"));
            self.get("rename", index)?.name = name.to_string();
            Ok(())
        }
        fn set_up(&mut self, index: u32) -> Result<()> {
            self.calls.push(format!("set_up {index}"));
            self.get("set up", index)?.up = true;
            Ok(())
        }
        fn set_controller(&mut self, index: u32, bridge: u32) -> Result<()> {
            self.calls.push(format!("set_controller {index} {bridge}"));
            self.get("set controller", index)?.controller = Some(bridge);
            Ok(())
        }
        fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
            self.calls
                .push(format!("add_address {index} {ip}/{prefix}"));
            let l = self.get("add address", index)?;
            if !l.addresses.contains(&(ip, prefix)) {
                l.addresses.push((ip, prefix));
            }
            Ok(())
        }
        fn addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
            Ok(self.get("list addresses", index)?.addresses.clone())
        }
        fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<()> {
            self.calls.push(format!("add_default_route {gateway}"));
            self.default_route = Some(gateway);
            Ok(())
        }
        fn in_use(&mut self) -> Result<Vec<InUse>> {
            let mut out = self.routes.clone();
            for l in self.links.values().filter(|l| !l.moved) {
                for (ip, prefix) in &l.addresses {
                    out.push(InUse {
                        ip: *ip,
                        prefix: *prefix,
                        holder: Holder::Address {
                            link: l.name.clone(),
                        },
                    });
                }
            }
            Ok(out)
        }
        fn delete_link(&mut self, index: u32) -> Result<()> {
            self.calls.push(format!("delete_link {index}"));
            if let Some(l) = self.links.remove(&index)
                && let Some(p) = l.peer
            {
                self.links.remove(&p);
            }
            Ok(())
        }
        fn in_netns(&mut self, _netns: BorrowedFd<'_>) -> Result<Self> {
            self.calls.push("in_netns".to_string());
            let mut ns = FakeNetlink::new();
            for name in self.exported.drain(..) {
                ns.add(&name);
            }
            Ok(ns)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bridge_mac;

    #[test]
    fn bridge_addresses_are_stable_local_unicast_and_differ_by_name() {
        let a = bridge_mac("kiln0");
        assert_eq!(a, bridge_mac("kiln0"));
        assert_eq!(a[0] & 0b11, 0b10, "locally administered, unicast");
        assert_ne!(a, bridge_mac("kiln-1234abcd"));
    }
}

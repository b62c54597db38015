//! IPv4 subnets in CIDR notation and published-port specs (`-p`), parsed without side effects.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Errors from parsing a subnet or a port spec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The text is not `A.B.C.D/N`.
    #[error("invalid subnet `{text}`: expected IPv4 CIDR such as 10.88.0.0/16")]
    Cidr {
        /// What was given.
        text: String,
    },
    /// The prefix length leaves no room for a gateway and one container.
    #[error("subnet `{text}` is too small: the prefix must be between /8 and /30")]
    PrefixLength {
        /// What was given.
        text: String,
    },
    /// Host bits are set (`10.88.0.1/16`).
    #[error("subnet `{text}` has host bits set; did you mean {network}?")]
    HostBits {
        /// What was given.
        text: String,
        /// The network address with host bits cleared.
        network: String,
    },
    /// The `-p` spec is malformed.
    #[error("invalid port spec `{text}`: {reason}")]
    Port {
        /// What was given.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

type Result<T> = std::result::Result<T, ParseError>;

/// An IPv4 subnet such as `10.88.0.0/16`. The network address has no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// Builds a subnet; fails when host bits are set or the prefix is outside /8../30.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Subnet> {
        let text = format!("{network}/{prefix}");
        if !(8..=30).contains(&prefix) {
            return Err(ParseError::PrefixLength { text });
        }
        let s = Subnet { network, prefix };
        let masked = Ipv4Addr::from(u32::from(network) & s.mask());
        if masked != network {
            return Err(ParseError::HostBits {
                text,
                network: format!("{masked}/{prefix}"),
            });
        }
        Ok(s)
    }

    /// The network address (all host bits zero).
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// The number of addresses, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// Whether `ip` lies inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// The `n`th address of the subnet (0 is the network address), or None past the end.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        if u64::from(n) >= self.size() {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.network) + n))
    }

    /// The conventional gateway: the first host address (`.1`).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The broadcast address (last address), never handed out.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = ParseError;
    fn from_str(text: &str) -> Result<Subnet> {
        let bad = || ParseError::Cidr {
            text: text.to_string(),
        };
        let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 2 {
            return Err(bad());
        }
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Subnet::new(addr, prefix)
    }
}

impl TryFrom<String> for Subnet {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Subnet> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// `tcp` or `udp`, as nft and docker spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A published port: `-p [IP:]HOSTPORT:CPORT[/tcp|udp]`.
///
/// `host_ip` None means every host address (docker's `0.0.0.0`), including 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address the port is published on; None for all.
    pub host_ip: Option<Ipv4Addr>,
    /// The port on the host.
    pub host_port: u16,
    /// The port inside the container.
    pub container_port: u16,
    /// tcp or udp.
    pub proto: Proto,
}

impl PortMapping {
    /// `-P`: publish `container_port` on a host port the allocator picks (host_port 0 until
    /// [`Ipam::allocate`](super::ipam::Ipam::allocate) resolves it).
    pub fn any_host_port(container_port: u16, proto: Proto) -> PortMapping {
        PortMapping {
            host_ip: None,
            host_port: 0,
            container_port,
            proto,
        }
    }

    /// Whether two mappings claim the same host socket (same proto and port, overlapping IPs).
    pub fn conflicts_with(&self, other: &PortMapping) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.proto
        )
    }
}

impl FromStr for PortMapping {
    type Err = ParseError;
    /// Parses `HOSTPORT:CPORT`, `IP:HOSTPORT:CPORT`, each with an optional `/tcp` or `/udp`.
    fn from_str(text: &str) -> Result<PortMapping> {
        let err = |reason| ParseError::Port {
            text: text.to_string(),
            reason,
        };
        let (rest, proto) = match text.rsplit_once('/') {
            Some((rest, "tcp")) => (rest, Proto::Tcp),
            Some((rest, "udp")) => (rest, Proto::Udp),
            Some(_) => return Err(err("the protocol must be tcp or udp")),
            None => (text, Proto::Tcp),
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let (ip, host, cont) = match parts.as_slice() {
            [host, cont] => (None, *host, *cont),
            [ip, host, cont] => (Some(*ip), *host, *cont),
            [_] => {
                return Err(err(
                    "a host port is required (HOSTPORT:CPORT); -P publishes EXPOSEd ports",
                ));
            }
            _ => return Err(err("expected [IP:]HOSTPORT:CPORT[/tcp|udp]")),
        };
        let host_ip = match ip {
            None | Some("") | Some("0.0.0.0") => None,
            Some(ip) => Some(
                ip.parse::<Ipv4Addr>()
                    .map_err(|_| err("the host address must be IPv4"))?,
            ),
        };
        let port = |p: &str| -> Result<u16> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(err("ports must be numbers from 1 to 65535")),
                Ok(n) => Ok(n),
            }
        };
        Ok(PortMapping {
            host_ip,
            host_port: port(host)?,
            container_port: port(cont)?,
            proto,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_reports_bounds() {
        let s: Subnet = "10.88.0.0/16".parse().expect("valid");
        assert_eq!(s.network(), Ipv4Addr::new(10, 88, 0, 0));
        assert_eq!(s.prefix(), 16);
        assert_eq!(s.size(), 65536);
        assert_eq!(s.first_host(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 88, 255, 255));
        assert!(s.contains(Ipv4Addr::new(10, 88, 200, 3)));
        assert!(!s.contains(Ipv4Addr::new(10, 89, 0, 1)));
        assert_eq!(s.nth(258), Some(Ipv4Addr::new(10, 88, 1, 2)));
        assert_eq!(s.nth(65536), None);
        assert_eq!(s.to_string(), "10.88.0.0/16");
    }

    #[test]
    fn cidr_rejects_garbage_host_bits_and_tiny_prefixes() {
        for bad in [
            "10.88.0.0",
            "10.88.0/16",
            "10.88.0.0/",
            "10.88.0.0/33",
            "x/8",
            "10.88.0.0/+8",
        ] {
            assert!(
                matches!(bad.parse::<Subnet>(), Err(ParseError::Cidr { .. })),
                "{bad}"
            );
        }
        assert_eq!(
            "10.88.0.1/16".parse::<Subnet>(),
            Err(ParseError::HostBits {
                text: "10.88.0.1/16".into(),
                network: "10.88.0.0/16".into()
            })
        );
        assert!(matches!(
            "10.0.0.0/31".parse::<Subnet>(),
            Err(ParseError::PrefixLength { .. })
        ));
        assert!(matches!(
            "10.0.0.0/4".parse::<Subnet>(),
            Err(ParseError::PrefixLength { .. })
        ));
    }

    #[test]
    fn subnet_round_trips_through_json_as_a_string() {
        let s: Subnet = "10.89.3.0/24".parse().expect("valid");
        let j = serde_json::to_string(&s).expect("serialize");
        assert_eq!(j, "\"10.89.3.0/24\"");
        assert_eq!(serde_json::from_str::<Subnet>(&j).expect("parse"), s);
        assert!(serde_json::from_str::<Subnet>("\"10.89.3.1/24\"").is_err());
    }

    #[test]
    fn port_specs_parse_like_docker() {
        let p: PortMapping = "18080:80".parse().expect("valid");
        assert_eq!(
            p,
            PortMapping {
                host_ip: None,
                host_port: 18080,
                container_port: 80,
                proto: Proto::Tcp
            }
        );
        let p: PortMapping = "127.0.0.1:5353:53/udp".parse().expect("valid");
        assert_eq!(p.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(p.proto, Proto::Udp);
        assert_eq!(p.to_string(), "127.0.0.1:5353:53/udp");
        let p: PortMapping = "0.0.0.0:1:2/tcp".parse().expect("valid");
        assert_eq!(p.host_ip, None);
    }

    #[test]
    fn bad_port_specs_say_what_is_wrong() {
        let cases = [
            ("80", "a host port is required"),
            ("1:2:3:4", "expected [IP:]HOSTPORT:CPORT"),
            ("80:80/sctp", "tcp or udp"),
            ("0:80", "from 1 to 65535"),
            ("70000:80", "from 1 to 65535"),
            ("::1:80:80", "expected"),
            ("host:80:80", "IPv4"),
        ];
        for (text, want) in cases {
            let e = text.parse::<PortMapping>().expect_err(text).to_string();
            assert!(e.contains(want) && e.contains(text), "{text}: {e}");
        }
    }

    #[test]
    fn port_conflicts_consider_wildcard_addresses() {
        let p = |s: &str| s.parse::<PortMapping>().expect("valid");
        assert!(p("80:1").conflicts_with(&p("127.0.0.1:80:2")));
        assert!(!p("10.0.0.1:80:1").conflicts_with(&p("127.0.0.1:80:2")));
        assert!(!p("80:1/udp").conflicts_with(&p("80:1/tcp")));
        assert!(!p("81:1").conflicts_with(&p("80:1")));
    }
}

//! Contents of a container's `/etc/hosts` and `/etc/resolv.conf`. Pure: the caller reads the
//! host's resolv.conf and writes the results where the sandbox bind-mounts them.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

/// Nameservers used when the host's are all loopback (as docker does: a local resolver such
/// as systemd-resolved's 127.0.0.53 is unreachable from a container's namespace).
pub const FALLBACK_NAMESERVERS: [&str; 2] = ["8.8.8.8", "8.8.4.4"];

/// `/etc/hosts`: localhost, the container's own name on its address (or on 127.0.0.1 when it
/// has none, as with `--network none`), then other containers of the same user network by
/// name, so they resolve each other without a DNS server. `peers` is (name, address); names
/// that are not valid host names are skipped.
pub fn hosts(hostname: &str, ip: Option<Ipv4Addr>, peers: &[(String, Ipv4Addr)]) -> String {
    let mut s = String::new();
    let own = valid_hostname(hostname).then_some(hostname);
    match (ip, own) {
        (None, Some(h)) => s.push_str(&format!("127.0.0.1\tlocalhost {h}\n")),
        _ => s.push_str("127.0.0.1\tlocalhost\n"),
    }
    s.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let (Some(ip), Some(h)) = (ip, own) {
        let _ = writeln!(s, "{ip}\t{h}");
    }
    for (name, addr) in peers {
        if valid_hostname(name) && Some(*addr) != ip {
            let _ = writeln!(s, "{addr}\t{name}");
        }
    }
    s
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `/etc/resolv.conf` from the host's: loopback nameservers dropped (they would point at the
/// container's own loopback), `search` and `options` kept, and [`FALLBACK_NAMESERVERS`] when
/// no nameserver is left.
pub fn resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let t = line.trim();
        let mut words = t.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                let Some(addr) = words.next() else { continue };
                // Zone ids (fe80::1%eth0) name host interfaces: meaningless inside.
                match addr.parse::<IpAddr>() {
                    Ok(ip) if !ip.is_loopback() => {
                        let _ = writeln!(out, "nameserver {ip}");
                        servers += 1;
                    }
                    _ => {}
                }
            }
            Some("search") | Some("domain") | Some("options") => {
                let _ = writeln!(out, "{t}");
            }
            _ => {}
        }
    }
    if servers == 0 {
        let mut s: String = FALLBACK_NAMESERVERS
            .iter()
            .map(|n| format!("nameserver {n}\n"))
            .collect();
        s.push_str(&out);
        return s;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_names_the_container_and_its_peers() {
        let peers = vec![
            ("db".to_string(), Ipv4Addr::new(10, 89, 1, 3)),
            ("web".to_string(), Ipv4Addr::new(10, 89, 1, 2)),
            ("bad name".to_string(), Ipv4Addr::new(10, 89, 1, 4)),
        ];
        assert_eq!(
            hosts("web", Some(Ipv4Addr::new(10, 89, 1, 2)), &peers),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             10.89.1.2\tweb\n10.89.1.3\tdb\n"
        );
    }

    #[test]
    fn hosts_without_an_address_maps_the_name_to_loopback() {
        assert_eq!(
            hosts("box", None, &[]),
            "127.0.0.1\tlocalhost box\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        );
    }

    #[test]
    fn resolv_conf_drops_loopback_nameservers_and_keeps_search() {
        let host = "# generated\nnameserver 127.0.0.53\nnameserver 192.0.2.1\n\
                    nameserver ::1\nsearch example.test\noptions edns0 trust-ad\n";
        assert_eq!(
            resolv_conf(host),
            "nameserver 192.0.2.1\nsearch example.test\noptions edns0 trust-ad\n"
        );
    }

    #[test]
    fn resolv_conf_falls_back_when_only_loopback_is_left() {
        assert_eq!(
            resolv_conf("nameserver 127.0.0.53\nsearch lan\n"),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\nsearch lan\n"
        );
        assert_eq!(resolv_conf(""), "nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
}

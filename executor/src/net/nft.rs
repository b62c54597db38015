//! kiln's nftables rules: NAT for its bridges, DNAT for published ports, the guard that
//! keeps containers away from the host's loopback services, and the isolation between
//! networks (a container on one network never reaches one on another, as docker's
//! DOCKER-ISOLATION chains do; a drop here is final whatever other tables accept). The accepts
//! a host firewall's FORWARD drop needs cannot live here: see [`firewall`](super::firewall). Everything lives in one table,
//! `table ip kiln`, which never touches other tables (docker's, the distribution's firewall).
//!
//! The rules are *derived from the IPAM state*: every attach and detach regenerates the whole
//! table from the networks and their leases in one `nft -f -` transaction (`add table; flush
//! table; table {...}`). So removal per container is exact by construction (a detached
//! container's rules are simply not generated again), a crash between two steps heals on the
//! next attach or detach, and concurrent kiln processes cannot interleave half-updates because
//! regeneration runs under the IPAM lock.
//!
//! Each defined network (the default one always) keeps its NAT and guard rules whether or not a
//! container is attached, as docker's do: only published ports depend on the leases. So an
//! attach or detach without `-p` generates the same script as before, and
//! `Networks::sync_rules` skips running `nft` (~15-25 ms a run, twice per `kiln run --rm`).
//! `kiln network rm` drops a network's rules; the table goes only with the last network.
//!
//! Host loopback access to published ports (`curl 127.0.0.1:HOSTPORT`): DNAT in the `output`
//! hook plus `route_localnet=1` on kiln's bridges (only those, never on host interfaces) and a
//! masquerade of 127.0.0.0/8 sources leaving through the bridge, so the container answers to
//! the gateway. We chose this over a userland proxy (docker-proxy) because kiln is daemonless:
//! a proxy would be a process per published port to supervise, and it hides the client's
//! address. The price of route_localnet is CVE-2020-8558: a neighbour on the bridge could send
//! packets to 127.0.0.1 through it. The `guard` chain drops any packet that arrives on a kiln
//! bridge addressed to 127.0.0.0/8, before routing (priority raw), which closes that hole.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::ipam::{Lease, NetworkConfig};

/// The name of kiln's table (family ip). Tests use their own name (see
/// `Networks::with_table`) so they never disturb a real kiln on the same machine.
pub const TABLE: &str = "kiln";

/// Errors from running `nft`.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The binary could not be started.
    #[error("cannot run {binary}")]
    Spawn {
        /// The nft binary.
        binary: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// nft rejected the rule set.
    #[error("{binary} -f - failed: {stderr}")]
    Rejected {
        /// The nft binary.
        binary: PathBuf,
        /// nft's complaint.
        stderr: String,
    },
}

type Result<T> = std::result::Result<T, NftError>;

/// Applies nft scripts. The real one runs the `nft` binary; tests may record instead.
pub trait Nft {
    /// Runs `script` as one atomic transaction (`nft -f -`).
    fn apply(&mut self, script: &str) -> Result<()>;
}

/// The `nft` binary.
#[derive(Debug, Clone)]
pub struct NftCommand {
    /// Path of the binary (`nft` from PATH by default).
    pub binary: PathBuf,
}

impl Default for NftCommand {
    fn default() -> Self {
        NftCommand {
            binary: PathBuf::from("nft"),
        }
    }
}

impl NftCommand {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let spawn_err = |source| NftError::Spawn {
            binary: self.binary.clone(),
            source,
        };
        let mut child = Command::new(&self.binary)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if !out.status.success() {
            return Err(NftError::Rejected {
                binary: self.binary.clone(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `nft list table ip TABLE`, or None when the table does not exist.
    pub fn list_table(&self, table: &str) -> Result<Option<String>> {
        match self.run(&["list", "table", "ip", table], None) {
            Ok(s) => Ok(Some(s)),
            Err(NftError::Rejected { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl NftCommand {
    /// `nft -j list chains`: every chain of every table, as JSON (for `kiln system check`).
    pub fn list_chains_json(&self) -> Result<String> {
        self.run(&["-j", "list", "chains"], None)
    }
}

impl Nft for NftCommand {
    fn apply(&mut self, script: &str) -> Result<()> {
        self.run(&["-f", "-"], Some(script)).map(drop)
    }
}

/// Records scripts instead of running them.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct RecordingNft {
    /// Every script applied, in order.
    pub scripts: Vec<String>,
}

#[cfg(any(test, feature = "testing"))]
impl Nft for RecordingNft {
    fn apply(&mut self, script: &str) -> Result<()> {
        self.scripts.push(script.to_string());
        Ok(())
    }
}

/// Keeps a comment inside its quotes whatever the container id holds.
fn comment_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.:-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The script that replaces the rules of kiln's table with those `state` needs: NAT and the
/// loopback guard for each network, DNAT for the ports its leases publish. With no network at
/// all, it deletes the table.
///
/// `add table` first makes `flush`/`delete` valid when the table is absent; the whole script
/// is one transaction, so other processes never see the table half-built.
pub fn ruleset(table: &str, state: &[(NetworkConfig, Vec<Lease>)]) -> String {
    let active: Vec<_> = state.iter().collect();
    if active.is_empty() {
        return format!("add table ip {table}\ndelete table ip {table}\n");
    }
    // Flushing keeps the chains and their hooks registered: deleting a table with base chains
    // waits for an RCU grace period (~15 ms here), flushing does not.
    let mut s = format!("add table ip {table}\nflush table ip {table}\n");
    let w = &mut s;
    // Writing into a String cannot fail.
    let _ = writeln!(w, "table ip {table} {{");
    let _ = writeln!(
        w,
        "  chain guard {{\n    type filter hook prerouting priority raw; policy accept;"
    );
    for (net, _) in &active {
        let _ = writeln!(
            w,
            "    iifname \"{}\" ip daddr 127.0.0.0/8 counter drop comment \"no host loopback from {}\"",
            net.bridge, net.name
        );
    }
    let _ = writeln!(w, "  }}");
    // Isolation between networks, as docker's DOCKER-ISOLATION chains do: a drop here is final
    // whatever the iptables filter table accepts (see firewall.rs), so it holds with or
    // without a host firewall. One network alone needs no chain on the forward hook.
    if active.len() > 1 {
        let _ = writeln!(
            w,
            "  chain isolation {{\n    type filter hook forward priority filter; policy accept;"
        );
        for (net, _) in &active {
            let others: Vec<String> = active
                .iter()
                .filter(|(o, _)| o.bridge != net.bridge)
                .map(|(o, _)| format!("\"{}\"", o.bridge))
                .collect();
            let _ = writeln!(
                w,
                "    iifname \"{}\" oifname {{ {} }} counter drop comment \"isolate {}\"",
                net.bridge,
                others.join(", "),
                net.name
            );
        }
        let _ = writeln!(w, "  }}");
    }
    let _ = writeln!(
        w,
        "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    fib daddr type local jump ports\n  }}"
    );
    let _ = writeln!(
        w,
        "  chain output {{\n    type nat hook output priority -100; policy accept;\n    fib daddr type local jump ports\n  }}"
    );
    let _ = writeln!(w, "  chain ports {{");
    for (_, leases) in &active {
        for lease in leases {
            for p in &lease.ports {
                let daddr = p
                    .host_ip
                    .map(|ip| format!("ip daddr {ip} "))
                    .unwrap_or_default();
                let _ = writeln!(
                    w,
                    "    {daddr}{proto} dport {hp} dnat to {ip}:{cp} comment \"{c}\"",
                    proto = p.proto,
                    hp = p.host_port,
                    ip = lease.ip,
                    cp = p.container_port,
                    c = comment_text(&lease.container),
                );
            }
        }
    }
    let _ = writeln!(w, "  }}");
    let _ = writeln!(
        w,
        "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;"
    );
    for (net, _) in &active {
        let (b, sn) = (&net.bridge, net.subnet);
        // Outbound NAT for everything leaving through another interface.
        let _ = writeln!(
            w,
            "    ip saddr {sn} oifname != \"{b}\" masquerade comment \"outbound {}\"",
            net.name
        );
        // The host's own 127.0.0.1 reaching a published port: answer to the gateway.
        let _ = writeln!(
            w,
            "    oifname \"{b}\" ip saddr 127.0.0.0/8 masquerade comment \"host loopback to {}\"",
            net.name
        );
        // Hairpin: a container reaching another through a published port.
        let _ = writeln!(
            w,
            "    oifname \"{b}\" ip saddr {sn} ct status dnat masquerade comment \"hairpin {}\"",
            net.name
        );
    }
    let _ = writeln!(w, "  }}\n}}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(c: &str, ip: &str, ports: &[&str]) -> Lease {
        Lease {
            container: c.to_string(),
            ip: ip.parse().expect("ip"),
            ports: ports.iter().map(|p| p.parse().expect("port")).collect(),
        }
    }

    #[test]
    fn networks_keep_their_rules_without_leases_and_no_network_means_no_table() {
        let net = NetworkConfig::default_bridge();
        let empty = ruleset(TABLE, &[(net.clone(), vec![])]);
        assert!(
            empty.contains("masquerade comment \"outbound bridge\""),
            "{empty}"
        );
        // A container without ports changes nothing: no nft run on its attach or detach.
        assert_eq!(
            ruleset(TABLE, &[(net, vec![lease("a", "10.88.0.2", &[])])]),
            empty
        );
        assert_eq!(
            ruleset(TABLE, &[]),
            "add table ip kiln\ndelete table ip kiln\n"
        );
    }

    #[test]
    fn published_ports_become_dnat_rules_tagged_with_the_container() {
        let net = NetworkConfig::default_bridge();
        let s = ruleset(
            TABLE,
            &[(
                net,
                vec![
                    lease("web", "10.88.0.2", &["18080:80", "127.0.0.1:5353:53/udp"]),
                    lease("db", "10.88.0.3", &[]),
                ],
            )],
        );
        let expected = r#"add table ip kiln
flush table ip kiln
table ip kiln {
  chain guard {
    type filter hook prerouting priority raw; policy accept;
    iifname "kiln0" ip daddr 127.0.0.0/8 counter drop comment "no host loopback from bridge"
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local jump ports
  }
  chain output {
    type nat hook output priority -100; policy accept;
    fib daddr type local jump ports
  }
  chain ports {
    tcp dport 18080 dnat to 10.88.0.2:80 comment "web"
    ip daddr 127.0.0.1 udp dport 5353 dnat to 10.88.0.2:53 comment "web"
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 10.88.0.0/16 oifname != "kiln0" masquerade comment "outbound bridge"
    oifname "kiln0" ip saddr 127.0.0.0/8 masquerade comment "host loopback to bridge"
    oifname "kiln0" ip saddr 10.88.0.0/16 ct status dnat masquerade comment "hairpin bridge"
  }
}
"#;
        assert_eq!(s, expected);
    }

    #[test]
    fn every_network_gets_nat_and_guard_rules() {
        let a = NetworkConfig::default_bridge();
        let b = NetworkConfig::user("front", "10.89.1.0/24".parse().expect("cidr"));
        let s = ruleset(
            TABLE,
            &[(a, vec![]), (b.clone(), vec![lease("x", "10.89.1.2", &[])])],
        );
        assert!(s.contains("iifname \"kiln0\""));
        assert!(s.contains(&format!("iifname \"{}\"", b.bridge)));
        assert!(s.contains("ip saddr 10.89.1.0/24 oifname"));
        assert!(
            s.contains(&format!(
                "iifname \"kiln0\" oifname {{ \"{}\" }} counter drop comment \"isolate bridge\"",
                b.bridge
            )),
            "{s}"
        );
        assert!(
            s.contains(&format!(
                "iifname \"{}\" oifname {{ \"kiln0\" }} counter drop comment \"isolate front\"",
                b.bridge
            )),
            "{s}"
        );
    }

    #[test]
    fn recording_nft_keeps_scripts() {
        let mut r = RecordingNft::default();
        r.apply("add table ip kiln\n").expect("record");
        assert_eq!(r.scripts, ["add table ip kiln\n"]);
    }
}

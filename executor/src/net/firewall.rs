//! Coexistence with the host's iptables firewall: the accept rules kiln's bridges need when
//! something else (dockerd, ufw, firewalld on its iptables backend) sets the filter table's
//! FORWARD policy to DROP.
//!
//! Why a second place for rules: kiln's own rules live in its nftables table (see [`nft`]), but
//! an accept there cannot override a drop in another table, since a packet must pass every
//! base chain on the forward hook. dockerd 20.10 loads br_netfilter (so even traffic between
//! two containers on one bridge crosses FORWARD) and sets `iptables -P FORWARD DROP`, so
//! without an accept in the iptables filter table kiln's bridges are dead. Docker documents
//! the `DOCKER-USER` chain as the place for such rules
//! (<https://docs.docker.com/network/packet-filtering-firewalls/>), and podman's netavark does
//! the same with its own `NETAVARK_FORWARD` chain jumped to from FORWARD.
//!
//! What kiln installs, per iptables backend (`iptables-nft` always, `iptables-legacy` when the
//! kernel already holds a legacy filter table): one chain of its own, `<TABLE>-FORWARD`
//! (`KILN-FORWARD` for the real table), holding for each bridge
//!
//! ```text
//! -A KILN-FORWARD -o kiln0 -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT
//! -A KILN-FORWARD -i kiln0 -j ACCEPT
//! ```
//!
//! and one jump to it: from `DOCKER-USER` when that chain exists, else from the top of
//! FORWARD. Isolation between kiln networks is not done here but with drops in kiln's nft
//! table (a drop there is final whatever iptables says), so it holds on hosts without iptables.
//!
//! Like the nft table, the chain is *derived*: [`plan`] compares what `iptables-save` shows
//! with what the networks need and returns the `iptables-restore --noflush` script that fixes
//! the difference (nothing when there is none), in one transaction per backend. With no
//! network left, the jump and the chain are removed. The cost (a save and a restore, ~3 ms per
//! backend) is paid when networks change, not per container: `Networks` records what it
//! applied and skips the processes while the bridges and backends stay the same.
//!
//! We drive the `iptables-*-save/restore` binaries rather than writing nft rules into `table ip
//! filter` ourselves: iptables-nft refuses to work on a table holding rules it cannot parse
//! ("table `filter' is incompatible, use 'nft' tool"), which would break dockerd.
//!
//! [`nft`]: super::nft

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// An iptables implementation whose filter table kiln keeps its chain in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    /// iptables over nf_tables (`iptables-nft`, Debian's default since 10).
    Nft,
    /// The old x_tables kernel interface (`iptables-legacy`).
    Legacy,
}

impl Backend {
    /// The binary's name prefix (`iptables-nft`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft",
            Backend::Legacy => "iptables-legacy",
        }
    }
}

/// Errors from running iptables.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The binary could not be started or talked to.
    #[error("cannot run {binary}")]
    Spawn {
        /// The binary.
        binary: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// iptables rejected the command or script.
    #[error("{binary} failed: {stderr}")]
    Failed {
        /// The binary.
        binary: String,
        /// Its complaint.
        stderr: String,
    },
}

type Result<T> = std::result::Result<T, FirewallError>;

/// Reads and writes iptables filter tables. The real one runs `iptables-*-save/restore`;
/// tests may script it.
pub trait Xtables {
    /// The backends kiln keeps its chain in on this host. Must not start processes: it is
    /// consulted on every rule sync to notice a backend appearing (dockerd started later).
    fn backends(&mut self) -> Vec<Backend>;
    /// The filter table as `iptables-save -t filter` prints it; None when this backend's
    /// binaries are not installed.
    fn save(&mut self, backend: Backend) -> Result<Option<String>>;
    /// Runs `script` with `iptables-restore --noflush` (one transaction).
    fn restore(&mut self, backend: Backend, script: &str) -> Result<()>;
}

/// The real iptables binaries, from PATH.
#[derive(Debug, Clone)]
pub struct XtablesCommand {
    /// The network namespace's /proc/net (`/proc/thread-self/net`: per thread, since kiln and
    /// its tests may run a thread in another namespace; `/proc/net` is the main thread's).
    pub proc_net: PathBuf,
}

impl Default for XtablesCommand {
    fn default() -> Self {
        XtablesCommand {
            proc_net: PathBuf::from("/proc/thread-self/net"),
        }
    }
}

impl XtablesCommand {
    fn run(&self, binary: &str, args: &[&str], stdin: Option<&str>) -> Result<Option<String>> {
        let spawn_err = |source| FirewallError::Spawn {
            binary: binary.to_string(),
            source,
        };
        let child = Command::new(binary)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(spawn_err(e)),
        };
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if !out.status.success() {
            return Err(FirewallError::Failed {
                binary: binary.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
    }
}

impl Xtables for XtablesCommand {
    fn backends(&mut self) -> Vec<Backend> {
        // Reading a legacy table through iptables-legacy-save would create it (and load
        // ip_tables): only use legacy when something else already did.
        let legacy = std::fs::read_to_string(self.proc_net.join("ip_tables_names"))
            .is_ok_and(|names| names.lines().any(|l| l == "filter"));
        let mut b = vec![Backend::Nft];
        if legacy {
            b.push(Backend::Legacy);
        }
        b
    }

    fn save(&mut self, backend: Backend) -> Result<Option<String>> {
        self.run(&format!("{}-save", backend.name()), &["-t", "filter"], None)
    }

    fn restore(&mut self, backend: Backend, script: &str) -> Result<()> {
        let binary = format!("{}-restore", backend.name());
        match self.run(&binary, &["--noflush", "-w"], Some(script))? {
            Some(_) => Ok(()),
            None => Err(FirewallError::Spawn {
                binary,
                source: io::ErrorKind::NotFound.into(),
            }),
        }
    }
}

/// A scripted iptables for tests: `save` returns `tables[backend]`, `restore` records.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct RecordingXtables {
    /// The backends reported, with what `save` prints for each.
    pub tables: Vec<(Backend, String)>,
    /// Every restore script, in order.
    pub restores: Vec<(Backend, String)>,
}

#[cfg(any(test, feature = "testing"))]
impl Xtables for RecordingXtables {
    fn backends(&mut self) -> Vec<Backend> {
        self.tables.iter().map(|(b, _)| *b).collect()
    }
    fn save(&mut self, backend: Backend) -> Result<Option<String>> {
        Ok(self
            .tables
            .iter()
            .find(|(b, _)| *b == backend)
            .map(|(_, t)| t.clone()))
    }
    fn restore(&mut self, backend: Backend, script: &str) -> Result<()> {
        self.restores.push((backend, script.to_string()));
        Ok(())
    }
}

/// The filter table as `iptables-save` shows it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FilterTable {
    /// The table exists (an empty save output means it does not).
    pub exists: bool,
    /// The FORWARD chain's policy (`ACCEPT`, `DROP`).
    pub forward_policy: Option<String>,
    /// Every chain, built-in or not.
    pub chains: BTreeSet<String>,
    /// Every rule as `(chain, spec)`: `-A FORWARD -j DOCKER-USER` is `("FORWARD", "-j
    /// DOCKER-USER")`.
    pub rules: Vec<(String, String)>,
}

impl FilterTable {
    /// Parses `iptables-save -t filter` output.
    pub fn parse(save: &str) -> FilterTable {
        let mut t = FilterTable::default();
        let mut inside = false;
        for line in save.lines() {
            let line = line.trim_end();
            if line == "*filter" {
                inside = true;
                t.exists = true;
            } else if line == "COMMIT" {
                inside = false;
            } else if !inside {
            } else if let Some(decl) = line.strip_prefix(':') {
                let mut parts = decl.split_whitespace();
                if let (Some(name), Some(policy)) = (parts.next(), parts.next()) {
                    if name == "FORWARD" {
                        t.forward_policy = Some(policy.to_string());
                    }
                    t.chains.insert(name.to_string());
                }
            } else if let Some(rule) = line.strip_prefix("-A ")
                && let Some((chain, spec)) = rule.split_once(' ')
            {
                t.rules.push((chain.to_string(), spec.to_string()));
            }
        }
        t
    }

    /// The rules of `chain`, in order.
    pub fn chain_rules(&self, chain: &str) -> Vec<&str> {
        self.rules
            .iter()
            .filter(|(c, _)| c == chain)
            .map(|(_, r)| r.as_str())
            .collect()
    }

    /// FORWARD drops what no rule accepts: its policy is DROP, or it holds rules (ufw and
    /// firewalld end theirs with a reject or a drop of their own).
    pub fn forward_filters(&self) -> bool {
        self.forward_policy.as_deref() == Some("DROP") || !self.chain_rules("FORWARD").is_empty()
    }
}

/// The name of the chain that belongs to nft table `table`: `KILN-FORWARD` for `kiln`, so that
/// tests (tables `kiln_t<pid>`) never touch a real kiln's chain. iptables chain names hold at
/// most 28 characters.
pub fn chain_name(table: &str) -> String {
    let t: String = table.to_ascii_uppercase().chars().take(20).collect();
    format!("{t}-FORWARD")
}

/// The chain's rules for `bridges`, in `iptables-save`'s spelling (so that [`plan`] can
/// compare them with what is there): return traffic and published ports into each bridge,
/// everything out of it. Traffic between two kiln networks is dropped by kiln's nft table.
pub fn accept_rules(bridges: &[String]) -> Vec<String> {
    let mut r = Vec::with_capacity(bridges.len() * 2);
    for b in bridges {
        r.push(format!(
            "-o {b} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT"
        ));
        r.push(format!("-i {b} -j ACCEPT"));
    }
    r
}

/// The chain kiln's jump lives in: docker's `DOCKER-USER` when it exists (dockerd keeps it
/// first in FORWARD and never flushes it), else FORWARD itself.
pub fn hook_chain(t: &FilterTable) -> &'static str {
    if t.chains.contains("DOCKER-USER") {
        "DOCKER-USER"
    } else {
        "FORWARD"
    }
}

/// The `iptables-restore --noflush` script that turns `current` into what `bridges` need
/// (chain `chain` with [`accept_rules`], exactly one jump to it from [`hook_chain`], none
/// elsewhere), or None when `current` is already right. With no bridges, the script removes
/// the jumps and the chain.
pub fn plan(current: &FilterTable, chain: &str, bridges: &[String]) -> Option<String> {
    let mut s = String::new();
    let w = &mut s;
    let jump = format!("-j {chain}");
    let jumps = |c: &str| {
        current
            .chain_rules(c)
            .iter()
            .filter(|r| **r == jump)
            .count()
    };
    if bridges.is_empty() {
        for c in ["DOCKER-USER", "FORWARD"] {
            for _ in 0..jumps(c) {
                let _ = writeln!(w, "-D {c} {jump}");
            }
        }
        if current.chains.contains(chain) {
            let _ = writeln!(w, "-F {chain}\n-X {chain}");
        }
    } else {
        let want = accept_rules(bridges);
        if !current.chains.contains(chain) || current.chain_rules(chain) != want {
            // With --noflush, declaring a chain creates it or empties it.
            let _ = writeln!(w, ":{chain} - [0:0]");
            for r in &want {
                let _ = writeln!(w, "-A {chain} {r}");
            }
        }
        let hook = hook_chain(current);
        match jumps(hook) {
            0 => {
                let _ = writeln!(w, "-I {hook} 1 {jump}");
            }
            n => {
                for _ in 1..n {
                    let _ = writeln!(w, "-D {hook} {jump}");
                }
            }
        }
        // A jump from FORWARD made before dockerd created DOCKER-USER moves there.
        if hook != "FORWARD" {
            for _ in 0..jumps("FORWARD") {
                let _ = writeln!(w, "-D FORWARD {jump}");
            }
        }
    }
    (!s.is_empty()).then(|| format!("*filter\n{s}COMMIT\n"))
}

/// Brings every backend's filter table in line with `bridges` (see [`plan`]). A backend whose
/// binaries are missing is skipped: its table cannot exist either. Fails on the first
/// backend iptables refuses.
pub fn sync<X: Xtables + ?Sized>(x: &mut X, table: &str, bridges: &[String]) -> Result<()> {
    let chain = chain_name(table);
    for b in x.backends() {
        let Some(saved) = x.save(b)? else {
            continue;
        };
        let current = FilterTable::parse(&saved);
        if bridges.is_empty() && !current.exists {
            continue;
        }
        if let Some(script) = plan(&current, &chain, bridges) {
            x.restore(b, &script)?;
        }
    }
    Ok(())
}

/// Something on the host that still drops traffic of kiln's bridges (`kiln system check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// `net.ipv4.ip_forward` is 0: nothing leaves a bridge for another interface.
    IpForwardOff,
    /// A backend's FORWARD chain drops what no rule accepts, and kiln's chain or its jump is
    /// missing or stale (a firewall reload flushed it, or the host changed since kiln last
    /// synced).
    Iptables {
        /// The backend.
        backend: Backend,
        /// FORWARD's policy.
        policy: String,
        /// Bridges kiln's chain does not accept (all of them when the jump is missing).
        bridges: Vec<String>,
        /// br_netfilter hands bridged frames to iptables, so even traffic between two
        /// containers on one bridge is dropped.
        br_netfilter: bool,
    },
    /// A native nftables base chain on the forward hook with policy drop (firewalld's nftables
    /// backend, a hand-written /etc/nftables.conf): kiln does not write into other tables, and
    /// cannot tell whether its rules let kiln's bridges through.
    NftForwardDrop {
        /// Family and table (`inet firewalld`).
        table: String,
        /// The chain.
        chain: String,
    },
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blocker::IpForwardOff => write!(
                f,
                "IPv4 forwarding is off (net.ipv4.ip_forward = 0): containers cannot reach \
                 anything beyond their bridge\nhint: kiln turns it on at each `kiln run` and \
                 build; something turned it off since (sysctl -w net.ipv4.ip_forward=1)"
            ),
            Blocker::Iptables {
                backend,
                policy,
                bridges,
                br_netfilter,
            } => {
                write!(
                    f,
                    "{}: the filter table's FORWARD chain (policy {policy}) drops traffic of {}, \
                     which kiln's chain does not accept",
                    backend.name(),
                    bridges.join(", ")
                )?;
                if *br_netfilter {
                    write!(
                        f,
                        " (br_netfilter is loaded: this includes traffic between containers \
                         on one bridge)"
                    )?;
                }
                write!(
                    f,
                    "\nhint: `kiln system check --fix` reinstalls kiln's chain (needed after \
                     a firewall reload flushes it)"
                )
            }
            Blocker::NftForwardDrop { table, chain } => write!(
                f,
                "nftables table {table}, chain {chain} drops forwarded packets by default, and \
                 kiln does not add rules to other tables: if nothing there accepts kiln's \
                 bridges, their traffic is dropped\nhint: accept them there (firewalld: \
                 firewall-cmd --zone=trusted --add-interface=kiln0)"
            ),
        }
    }
}

/// What the host's packet filters do to kiln's bridges: each backend's FORWARD chain against
/// the chain `table` needs for `bridges`, `ip_forward` and br_netfilter under `proc_sys`, and
/// the forward base chains in `nft_chains` (`nft -j list chains`; None to skip). Fails when
/// iptables cannot be read.
pub fn check<X: Xtables + ?Sized>(
    x: &mut X,
    table: &str,
    bridges: &[String],
    proc_sys: &std::path::Path,
    nft_chains: Option<&str>,
) -> Result<Vec<Blocker>> {
    let mut found = Vec::new();
    let read = |k: &str| std::fs::read_to_string(proc_sys.join(k)).unwrap_or_default();
    if read("net/ipv4/ip_forward").trim() == "0" {
        found.push(Blocker::IpForwardOff);
    }
    let br_netfilter = read("net/bridge/bridge-nf-call-iptables").trim() == "1";
    let chain = chain_name(table);
    let jump = format!("-j {chain}");
    for b in x.backends() {
        let Some(saved) = x.save(b)? else {
            continue;
        };
        let t = FilterTable::parse(&saved);
        if !t.forward_filters() {
            continue;
        }
        // Reached only through the jump, and the jump only from FORWARD or DOCKER-USER
        // (which FORWARD jumps to first when dockerd made it).
        let jumped = ["FORWARD", "DOCKER-USER"]
            .iter()
            .any(|c| t.chain_rules(c).contains(&jump.as_str()));
        let have = t.chain_rules(&chain);
        let missing: Vec<String> = bridges
            .iter()
            .filter(|b| {
                !jumped
                    || accept_rules(std::slice::from_ref(b))
                        .iter()
                        .any(|r| !have.contains(&r.as_str()))
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            found.push(Blocker::Iptables {
                backend: b,
                policy: t.forward_policy.clone().unwrap_or_default(),
                bridges: missing,
                br_netfilter,
            });
        }
    }
    if let Some(json) = nft_chains {
        found.extend(nft_forward_drops(json, table));
    }
    Ok(found)
}

/// Forward-hook base chains with policy drop in `nft -j list chains` output, except
/// iptables-nft's own (`ip filter`, `ip6 filter`: checked through iptables) and kiln's.
pub fn nft_forward_drops(json: &str, kiln_table: &str) -> Vec<Blocker> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| c["hook"] == "forward" && c["policy"] == "drop")
        .filter_map(|c| {
            let (family, table) = (c["family"].as_str()?, c["table"].as_str()?);
            let iptables = table == "filter" && (family == "ip" || family == "ip6");
            let kiln = family == "ip" && table == kiln_table;
            (!iptables && !kiln).then(|| Blocker::NftForwardDrop {
                table: format!("{family} {table}"),
                chain: c["name"].as_str().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `iptables-nft-save -t filter` on this machine with dockerd 20.10 running.
    const DOCKER: &str = "# Generated by iptables-nft-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
";

    fn bridges(b: &[&str]) -> Vec<String> {
        b.iter().map(|s| s.to_string()).collect()
    }

    /// Applies `script`'s effect on a parsed table the way iptables-restore --noflush does, for
    /// the few commands `plan` writes.
    fn apply(t: &FilterTable, script: &str) -> FilterTable {
        let mut t = t.clone();
        t.exists = true;
        for line in script.lines() {
            let words: Vec<&str> = line.splitn(3, ' ').collect();
            match words.as_slice() {
                [decl] if decl.starts_with(':') => {
                    let name = decl[1..].to_string();
                    t.rules.retain(|(c, _)| *c != name);
                    t.chains.insert(name);
                }
                [decl, ..] if decl.starts_with(':') => {
                    let name = decl[1..].to_string();
                    t.rules.retain(|(c, _)| *c != name);
                    t.chains.insert(name);
                }
                ["-A", c, r] => t.rules.push((c.to_string(), r.to_string())),
                ["-I", c, r] => {
                    let r = r.strip_prefix("1 ").expect("plan inserts at 1");
                    let at = t.rules.iter().position(|(x, _)| x == c).unwrap_or(0);
                    t.rules.insert(at, (c.to_string(), r.to_string()));
                }
                ["-D", c, r] => {
                    let at = t
                        .rules
                        .iter()
                        .position(|(x, y)| x == c && y == r)
                        .expect("-D of a rule that exists");
                    t.rules.remove(at);
                }
                ["-F", c] => t.rules.retain(|(x, _)| x != c),
                ["-X", c] => {
                    t.chains.remove(*c);
                }
                _ => {}
            }
        }
        t
    }

    #[test]
    fn docker_host_gets_a_chain_and_one_jump_from_docker_user() {
        let t = FilterTable::parse(DOCKER);
        assert_eq!(t.forward_policy.as_deref(), Some("DROP"));
        assert!(t.forward_filters());
        let script = plan(&t, "KILN-FORWARD", &bridges(&["kiln0", "kiln-ab12"])).expect("work");
        assert_eq!(
            script,
            "*filter
:KILN-FORWARD - [0:0]
-A KILN-FORWARD -o kiln0 -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT
-A KILN-FORWARD -i kiln0 -j ACCEPT
-A KILN-FORWARD -o kiln-ab12 -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT
-A KILN-FORWARD -i kiln-ab12 -j ACCEPT
-I DOCKER-USER 1 -j KILN-FORWARD
COMMIT
"
        );
        let after = apply(&t, &script);
        assert_eq!(after.chain_rules("DOCKER-USER")[0], "-j KILN-FORWARD");
        // Applied once, nothing more to do.
        assert_eq!(
            plan(&after, "KILN-FORWARD", &bridges(&["kiln0", "kiln-ab12"])),
            None
        );
    }

    #[test]
    fn without_docker_the_jump_goes_first_in_forward_and_moves_when_docker_comes() {
        let plain = FilterTable::parse(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n-A FORWARD -j ufw-before-forward\nCOMMIT\n",
        );
        let b = bridges(&["kiln0"]);
        let s = plan(&plain, "KILN-FORWARD", &b).expect("work");
        assert!(s.contains("-I FORWARD 1 -j KILN-FORWARD\n"), "{s}");
        let after = apply(&plain, &s);
        assert_eq!(after.chain_rules("FORWARD")[0], "-j KILN-FORWARD");
        // dockerd starts: DOCKER-USER appears above our jump.
        let mut docker = after.clone();
        docker.chains.insert("DOCKER-USER".into());
        docker
            .rules
            .insert(0, ("FORWARD".into(), "-j DOCKER-USER".into()));
        docker
            .rules
            .push(("DOCKER-USER".into(), "-j RETURN".into()));
        let s = plan(&docker, "KILN-FORWARD", &b).expect("move the jump");
        assert_eq!(
            s,
            "*filter\n-I DOCKER-USER 1 -j KILN-FORWARD\n-D FORWARD -j KILN-FORWARD\nCOMMIT\n"
        );
        let moved = apply(&docker, &s);
        assert_eq!(
            moved.chain_rules("DOCKER-USER"),
            ["-j KILN-FORWARD", "-j RETURN"]
        );
        assert_eq!(
            moved.chain_rules("FORWARD"),
            ["-j DOCKER-USER", "-j ufw-before-forward"]
        );
    }

    #[test]
    fn duplicate_jumps_are_reduced_to_one_and_a_changed_chain_is_rewritten() {
        let mut t = FilterTable::parse(DOCKER);
        let b = bridges(&["kiln0"]);
        t = apply(&t, &plan(&t, "KILN-FORWARD", &b).expect("install"));
        t.rules
            .insert(0, ("DOCKER-USER".into(), "-j KILN-FORWARD".into()));
        assert_eq!(
            plan(&t, "KILN-FORWARD", &b).expect("dedupe"),
            "*filter\n-D DOCKER-USER -j KILN-FORWARD\nCOMMIT\n"
        );
        // A network removed: the chain is rewritten without its bridge, the jump stays.
        let two = apply(
            &t,
            &plan(&t, "KILN-FORWARD", &bridges(&["kiln0", "kiln-x"])).expect("add"),
        );
        let s = plan(&two, "KILN-FORWARD", &b).expect("shrink");
        assert!(!s.contains("kiln-x") && !s.contains("-I "), "{s}");
    }

    #[test]
    fn no_bridges_means_no_chain_and_no_jump() {
        let t = FilterTable::parse(DOCKER);
        let installed = apply(
            &t,
            &plan(&t, "KILN-FORWARD", &bridges(&["kiln0"])).expect("install"),
        );
        let s = plan(&installed, "KILN-FORWARD", &[]).expect("remove");
        assert_eq!(
            s,
            "*filter\n-D DOCKER-USER -j KILN-FORWARD\n-F KILN-FORWARD\n-X KILN-FORWARD\nCOMMIT\n"
        );
        let removed = apply(&installed, &s);
        assert_eq!(removed.chains, t.chains);
        assert_eq!(removed.rules, t.rules);
        assert_eq!(plan(&removed, "KILN-FORWARD", &[]), None);
    }

    #[test]
    fn sync_touches_only_backends_that_need_it() {
        let mut x = RecordingXtables {
            tables: vec![
                (Backend::Nft, DOCKER.to_string()),
                (Backend::Legacy, String::new()),
            ],
            restores: vec![],
        };
        sync(&mut x, "kiln", &bridges(&["kiln0"])).expect("sync");
        let which: Vec<Backend> = x.restores.iter().map(|(b, _)| *b).collect();
        // The empty legacy output means no filter table: kiln creates the chain there too
        // (restore makes the table), so that a later legacy firewall finds it.
        assert_eq!(which, [Backend::Nft, Backend::Legacy]);
        x.restores.clear();
        // (The recording tables did not change:) nothing installed, nothing to remove, and a
        // backend without a filter table is left alone.
        sync(&mut x, "kiln", &[]).expect("sync");
        assert!(x.restores.is_empty(), "{:?}", x.restores);
    }

    #[test]
    fn chain_names_follow_the_table_and_fit_iptables() {
        assert_eq!(chain_name("kiln"), "KILN-FORWARD");
        assert_eq!(chain_name("kiln_t4294967295"), "KILN_T4294967295-FORWARD");
        assert!(chain_name(&"x".repeat(64)).len() <= 28);
    }

    #[test]
    fn check_names_what_still_blocks_and_nothing_once_synced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = dir.path();
        std::fs::create_dir_all(sys.join("net/ipv4")).expect("mkdir");
        std::fs::create_dir_all(sys.join("net/bridge")).expect("mkdir");
        std::fs::write(sys.join("net/ipv4/ip_forward"), "0\n").expect("write");
        std::fs::write(sys.join("net/bridge/bridge-nf-call-iptables"), "1\n").expect("write");
        let mut x = RecordingXtables {
            tables: vec![(Backend::Nft, DOCKER.to_string())],
            restores: vec![],
        };
        let b = bridges(&["kiln0", "kiln-ab12"]);
        let found = check(&mut x, "kiln", &b, sys, None).expect("check");
        assert_eq!(
            found,
            [
                Blocker::IpForwardOff,
                Blocker::Iptables {
                    backend: Backend::Nft,
                    policy: "DROP".into(),
                    bridges: b.clone(),
                    br_netfilter: true,
                }
            ]
        );
        assert!(
            found[1].to_string().contains("kiln system check --fix"),
            "{}",
            found[1]
        );
        // Installed, but for kiln0 only: kiln-ab12 is still blocked.
        let t = FilterTable::parse(DOCKER);
        let one = apply(&t, &plan(&t, "KILN-FORWARD", &b[..1]).expect("install"));
        let mut x = RecordingXtables {
            tables: vec![(Backend::Nft, save_text(&one))],
            restores: vec![],
        };
        std::fs::write(sys.join("net/ipv4/ip_forward"), "1\n").expect("write");
        let found = check(&mut x, "kiln", &b, sys, None).expect("check");
        assert!(
            matches!(&found[..], [Blocker::Iptables { bridges, .. }] if bridges == &b[1..]),
            "{found:?}"
        );
        let both = apply(&t, &plan(&t, "KILN-FORWARD", &b).expect("install"));
        let mut x = RecordingXtables {
            tables: vec![(Backend::Nft, save_text(&both))],
            restores: vec![],
        };
        assert_eq!(check(&mut x, "kiln", &b, sys, None).expect("check"), []);
    }

    #[test]
    fn native_nft_forward_drops_are_reported_except_iptables_and_kiln_tables() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "policy": "drop"}},
          {"chain": {"family": "inet", "table": "firewalld", "name": "filter_FORWARD", "hook": "forward", "policy": "drop"}},
          {"chain": {"family": "inet", "table": "filter", "name": "forward", "hook": "forward", "policy": "accept"}},
          {"chain": {"family": "ip", "table": "kiln", "name": "isolation", "hook": "forward", "policy": "drop"}}]}"#;
        assert_eq!(
            nft_forward_drops(json, "kiln"),
            [Blocker::NftForwardDrop {
                table: "inet firewalld".into(),
                chain: "filter_FORWARD".into()
            }]
        );
    }

    /// `t` as iptables-save prints it (enough of it for `FilterTable::parse`).
    fn save_text(t: &FilterTable) -> String {
        let mut s = String::from("*filter\n");
        for c in &t.chains {
            let policy = match c.as_str() {
                "FORWARD" => t.forward_policy.as_deref().unwrap_or("ACCEPT"),
                "INPUT" | "OUTPUT" => "ACCEPT",
                _ => "-",
            };
            s.push_str(&format!(":{c} {policy} [0:0]\n"));
        }
        for (c, r) in &t.rules {
            s.push_str(&format!("-A {c} {r}\n"));
        }
        s + "COMMIT\n"
    }
}

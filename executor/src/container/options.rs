//! `kiln run`'s docker options beyond the command and network: what the container keeps in
//! its state for `inspect` and `ps --filter label=` ([`RunOptions`]), and the /etc files they
//! change, written as docker 20.10 writes them ([`resolv_conf`], [`with_extra_hosts`]).

use crate::spec::Ulimit;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `hostname` of `--add-host NAME:host-gateway`: the bridge's gateway address.
pub const HOST_GATEWAY: &str = "host-gateway";

/// `kiln run` options shown by `kiln inspect` where docker shows them (`Config.Labels`,
/// `HostConfig.CapAdd`, ...), as given (after validation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOptions {
    /// `-h`: the hostname, when given.
    #[serde(default)]
    pub hostname: Option<String>,
    /// `-l`, `--label-file`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `--dns`.
    #[serde(default)]
    pub dns: Vec<String>,
    /// `--dns-search`.
    #[serde(default)]
    pub dns_search: Vec<String>,
    /// `--dns-option`.
    #[serde(default)]
    pub dns_options: Vec<String>,
    /// `--add-host`, as given (`NAME:IP`, `NAME:host-gateway`).
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    /// `--cap-add`, as given.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// `--cap-drop`, as given.
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// `--privileged`.
    #[serde(default)]
    pub privileged: bool,
    /// `--init`.
    #[serde(default)]
    pub init: bool,
    /// `--group-add`.
    #[serde(default)]
    pub group_add: Vec<String>,
    /// `--ulimit`.
    #[serde(default)]
    pub ulimits: Vec<Ulimit>,
    /// `--shm-size` in bytes (docker's default 64 MiB when None).
    #[serde(default)]
    pub shm_size: Option<u64>,
    /// `--stop-timeout` in seconds: `kiln stop` without `-t` waits this long.
    #[serde(default)]
    pub stop_timeout: Option<i64>,
    /// `--device`: path on the host, path in the container, permissions.
    #[serde(default)]
    pub devices: Vec<[String; 3]>,
}

impl RunOptions {
    /// Whether `ps --filter label=K` or `label=K=V` matches.
    pub fn has_label(&self, filter: &str) -> bool {
        match filter.split_once('=') {
            Some((k, v)) => self.labels.get(k).is_some_and(|x| x == v),
            None => self.labels.contains_key(filter),
        }
    }
}

/// /etc/resolv.conf as docker writes it when `--dns`, `--dns-search` or `--dns-option` is
/// given (libnetwork's `resolvconf.Build`): each list not given is taken from `base` (the
/// network's resolv.conf); a search list of only `.` writes no `search` line. None when none
/// of the three is given (the network's file stays).
pub fn resolv_conf(
    base: &str,
    dns: &[String],
    search: &[String],
    options: &[String],
) -> Option<String> {
    if dns.is_empty() && search.is_empty() && options.is_empty() {
        return None;
    }
    let from_base = |key: &str| -> Vec<String> {
        base.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(key)).then(|| w.map(str::to_owned).collect::<Vec<_>>())
            })
            .flatten()
            .collect()
    };
    // The last `search` line counts, as in the resolver.
    let base_search = base
        .lines()
        .filter_map(|l| l.trim().strip_prefix("search "))
        .next_back()
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let pick = |given: &[String], base: Vec<String>| match given.is_empty() {
        true => base,
        false => given.to_vec(),
    };
    let (dns, search, options) = (
        pick(dns, from_base("nameserver")),
        pick(search, base_search),
        pick(options, from_base("options")),
    );
    let mut out = String::new();
    let search = search.join(" ");
    if !search.is_empty() && search.trim() != "." {
        out.push_str(&format!("search {search}\n"));
    }
    for d in dns {
        out.push_str(&format!("nameserver {d}\n"));
    }
    let options = options.join(" ");
    if !options.trim().is_empty() {
        out.push_str(&format!("options {options}\n"));
    }
    Some(out)
}

/// `hosts` (a bridge container's /etc/hosts) with `--add-host` lines where docker puts
/// them: after the localhost lines, before the container's own address (`own`).
pub fn with_extra_hosts(
    hosts: &str,
    own: std::net::Ipv4Addr,
    extra: &[(String, String)],
) -> String {
    let lines: String = extra.iter().map(|(n, ip)| format!("{ip}\t{n}\n")).collect();
    let mark = format!("{own}\t");
    let mut out = String::new();
    let mut placed = false;
    for l in hosts.split_inclusive('\n') {
        if !placed && l.starts_with(&mark) {
            out.push_str(&lines);
            placed = true;
        }
        out.push_str(l);
    }
    if !placed {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&lines);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    /// docker 20.10's files for the same flags (see tests/it/run_flags_docker.rs).
    #[test]
    fn resolv_conf_is_dockers() {
        let base = "search corp\nnameserver 10.255.255.53\noptions edns0\n";
        assert_eq!(resolv_conf(base, &[], &[], &[]), None);
        assert_eq!(
            resolv_conf(
                base,
                &v(&["1.1.1.1"]),
                &v(&["example.com"]),
                &v(&["ndots:2"])
            )
            .as_deref(),
            Some("search example.com\nnameserver 1.1.1.1\noptions ndots:2\n")
        );
        assert_eq!(
            resolv_conf(base, &[], &v(&["a.com"]), &[]).as_deref(),
            Some("search a.com\nnameserver 10.255.255.53\noptions edns0\n")
        );
        assert_eq!(
            resolv_conf("", &v(&["1.1.1.1"]), &v(&["."]), &[]).as_deref(),
            Some("nameserver 1.1.1.1\n")
        );
    }

    #[test]
    fn extra_hosts_go_before_the_containers_own_line() {
        let hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost\n10.88.0.2\tweb\n10.88.0.3\tpeer\n";
        let got = with_extra_hosts(
            hosts,
            "10.88.0.2".parse().expect("ip"),
            &[("db".into(), "10.1.2.3".into())],
        );
        assert_eq!(
            got,
            "127.0.0.1\tlocalhost\n::1\tlocalhost\n10.1.2.3\tdb\n10.88.0.2\tweb\n10.88.0.3\tpeer\n"
        );
    }
}

//! RUN step options of `kiln build`, as `docker buildx build` takes them: `--add-host`,
//! `--shm-size`, `--ulimit`, and the entitlements of `--allow`.

use anyhow::{Context as _, bail};
use executor::spec::{Security, ULIMIT_NAMES, Ulimit};

/// What `--allow` grants (BuildKit's entitlements).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allow {
    /// `network.host`: `RUN --network=host`.
    pub network_host: bool,
    /// `security.insecure`: `RUN --security=insecure`.
    pub security_insecure: bool,
}

/// Parses `--allow` values (comma-separated or repeated).
///
/// Fails on an unknown entitlement, in buildx's words.
pub fn parse_allow(args: &[String]) -> anyhow::Result<Allow> {
    let mut a = Allow::default();
    for v in args.iter().flat_map(|v| v.split(',')).map(str::trim) {
        match v {
            "" => {}
            "network.host" => a.network_host = true,
            "security.insecure" => a.security_insecure = true,
            other => bail!(
                "--allow: invalid entitlement: {other} (expected network.host or security.insecure)"
            ),
        }
    }
    Ok(a)
}

/// BuildKit's entitlement check, on the lowered graph: a `RUN --network=host` needs
/// `network.host`, a `RUN --security=insecure` needs `security.insecure`. `kiln build
/// --network host` grants `network.host` itself, as buildx adds it for `--network host`.
///
/// Fails with the first step that is not allowed, named as `Dockerfile:LINE`.
pub fn check_entitlements(
    graph: &graph::BuildGraph,
    allow: Allow,
    dockerfile: &str,
) -> anyhow::Result<()> {
    use graph::{NetworkMode, Op};
    for n in &graph.nodes {
        let Op::Exec(x) = &n.op else { continue };
        let missing = if x.network == NetworkMode::Host && !allow.network_host {
            "network.host"
        } else if x.insecure && !allow.security_insecure {
            "security.insecure"
        } else {
            continue;
        };
        let line = n.span.map_or(0, |s| s.line);
        bail!(
            "{dockerfile}:{line}: {}: {missing} is not allowed\nhint: add --allow {missing} to \
             kiln build",
            n.instruction
        );
    }
    Ok(())
}

/// Parses `--add-host NAME:IP` (or `NAME=IP`) into (name, ip).
///
/// Fails when the address is not an IP address.
pub fn parse_add_host(v: &str) -> anyhow::Result<(String, String)> {
    let (name, ip) = v
        .split_once('=')
        .or_else(|| v.split_once(':'))
        .with_context(|| format!("--add-host {v:?}: expected NAME:IP"))?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    anyhow::ensure!(!name.is_empty(), "--add-host {v:?}: the name is empty");
    ip.parse::<std::net::IpAddr>()
        .with_context(|| format!("--add-host {v:?}: invalid IP address {ip:?}"))?;
    Ok((name.to_owned(), ip.to_owned()))
}

/// Parses `--ulimit NAME=SOFT[:HARD]` (docker's form; `-1` is unlimited; HARD defaults to
/// SOFT).
///
/// Fails on an unknown name, a bad number, or soft above hard.
pub fn parse_ulimit(v: &str) -> anyhow::Result<Ulimit> {
    let (name, limits) = v
        .split_once('=')
        .with_context(|| format!("--ulimit {v:?}: expected NAME=SOFT[:HARD]"))?;
    anyhow::ensure!(
        ULIMIT_NAMES.contains(&name),
        "--ulimit {v:?}: invalid ulimit type {name:?}"
    );
    let num = |s: &str| -> anyhow::Result<Option<u64>> {
        match s.trim().parse::<i64>() {
            Ok(-1) => Ok(None),
            Ok(n) if n >= 0 => Ok(Some(n as u64)),
            _ => bail!("--ulimit {v:?}: invalid limit {s:?}"),
        }
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((s, h)) => (num(s)?, num(h)?),
        None => (num(limits)?, num(limits)?),
    };
    if let (Some(s), Some(h)) = (soft, hard) {
        anyhow::ensure!(
            s <= h,
            "--ulimit {v:?}: soft limit {s} is above hard limit {h}"
        );
    }
    anyhow::ensure!(
        !(soft.is_none() && hard.is_some()),
        "--ulimit {v:?}: an unlimited soft limit needs an unlimited hard limit"
    );
    Ok(Ulimit {
        name: name.to_owned(),
        soft,
        hard,
    })
}

/// The sandbox options of every RUN: `security` (from `--security-opt`) with the hosts, shm
/// size and ulimits of these flags.
///
/// Fails on a bad value.
pub fn apply(
    mut security: Security,
    add_hosts: &[String],
    shm_size: Option<&str>,
    ulimits: &[String],
) -> anyhow::Result<Security> {
    security.extra_hosts = add_hosts
        .iter()
        .flat_map(|h| h.split(','))
        .map(parse_add_host)
        .collect::<anyhow::Result<_>>()?;
    security.shm_size = shm_size
        .map(|s| {
            kroot::size::parse(s)
                .ok()
                .filter(|&b| b > 0)
                .with_context(|| format!("--shm-size {s:?}: expected bytes or a size like 128m"))
        })
        .transpose()?;
    security.ulimits = ulimits
        .iter()
        .map(|u| parse_ulimit(u))
        .collect::<anyhow::Result<_>>()?;
    Ok(security)
}

/// BuildKit's stage (or ARG) comment: among the comment lines right above line `from`
/// (1-based), the first that starts with `name ` gives the rest.
pub(super) fn stage_comment(lines: &[&str], from: usize, name: &str) -> String {
    if name.is_empty() {
        return String::new();
    }
    let mut comments = Vec::new();
    let mut i = from.saturating_sub(1);
    while i > 0 {
        let l = lines.get(i - 1).map_or("", |l| l.trim());
        match l.strip_prefix('#') {
            Some(c) => comments.push(c.trim()),
            None => break,
        }
        i -= 1;
    }
    comments.reverse();
    comments
        .iter()
        .find_map(|c| c.strip_prefix(&format!("{name} ")))
        .unwrap_or("")
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_parse_as_docker_reads_them() {
        assert_eq!(
            parse_add_host("db:10.1.2.3").expect("v4"),
            ("db".into(), "10.1.2.3".into())
        );
        assert_eq!(
            parse_add_host("v6=::1").expect("v6 with ="),
            ("v6".into(), "::1".into())
        );
        assert!(parse_add_host("db:nope").is_err());
        let u = parse_ulimit("nofile=1024:2048").expect("soft:hard");
        assert_eq!((u.soft, u.hard), (Some(1024), Some(2048)));
        let u = parse_ulimit("core=-1").expect("unlimited");
        assert_eq!((u.soft, u.hard), (None, None));
        assert!(parse_ulimit("nofile=10:5").is_err());
        assert!(parse_ulimit("bogus=1").is_err());
        let a = parse_allow(&["network.host,security.insecure".into()]).expect("both");
        assert!(a.network_host && a.security_insecure);
        assert!(parse_allow(&["device".into()]).is_err());
    }
}

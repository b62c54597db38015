//! `kiln run`'s docker flags beyond the basics: `--env-file`, `-h`, `--add-host`, the DNS
//! flags, capabilities, `--privileged`, `--group-add`, `--init`, labels, `--ulimit`,
//! `--shm-size`, `--stop-signal`, `--stop-timeout` and `--restart`, parsed and checked with
//! docker 20.10's syntax and messages (its CLI's `opts` package, the daemon's checks), and
//! turned into the container's [`RunOptions`] and sandbox [`Security`].

use anyhow::{Context as _, bail, ensure};
use executor::container::options::{HOST_GATEWAY, RunOptions};
use executor::spec::Security;
use std::collections::BTreeMap;

/// The flags (flattened into `kiln run`'s).
#[derive(Debug, Default, clap::Args)]
pub struct DockerFlags {
    /// Read environment variables from a file (docker's format: `K=V` lines, `#` comments,
    /// `K` alone takes the caller's value; no quote processing).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<String>,
    /// Container host name.
    #[arg(short = 'h', long = "hostname")]
    pub hostname: Option<String>,
    /// Add a line to /etc/hosts (`NAME:IP`; `NAME:host-gateway` for the bridge's gateway).
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_host: Vec<String>,
    /// Nameserver for /etc/resolv.conf.
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<String>,
    /// Search domain for /etc/resolv.conf.
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// Resolver option for /etc/resolv.conf (`ndots:2`).
    #[arg(long = "dns-option", alias = "dns-opt", value_name = "OPT")]
    pub dns_option: Vec<String>,
    /// Add a capability (`NET_ADMIN`, `CAP_NET_ADMIN`, `ALL`).
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability (`CHOWN`, `ALL`).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Every capability, no seccomp filter, no masked paths, the host's devices, writable
    /// /sys and cgroup filesystem (docker's --privileged).
    #[arg(long)]
    pub privileged: bool,
    /// Add a supplementary group (a name in the image's /etc/group, or a gid).
    #[arg(long = "group-add", value_name = "GROUP")]
    pub group_add: Vec<String>,
    /// Run kiln's init as PID 1: it forwards signals and reaps zombies.
    #[arg(long)]
    pub init: bool,
    /// Set a label (`K=V`, or `K` for an empty value).
    #[arg(short = 'l', long = "label", value_name = "K=V")]
    pub label: Vec<String>,
    /// Read labels from a file (`K=V` lines, `#` comments).
    #[arg(long = "label-file", value_name = "FILE")]
    pub label_file: Vec<String>,
    /// Resource limit (`nofile=1024:2048`).
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    pub ulimit: Vec<String>,
    /// Size of /dev/shm (`64m`, default 64m).
    #[arg(long = "shm-size", value_name = "SIZE")]
    pub shm_size: Option<String>,
    /// Signal `kiln stop` sends (`SIGTERM` unless the image sets STOPSIGNAL).
    #[arg(long = "stop-signal", value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Seconds `kiln stop` waits before SIGKILL (default 10).
    #[arg(
        long = "stop-timeout",
        value_name = "SECONDS",
        allow_hyphen_values = true
    )]
    pub stop_timeout: Option<i64>,
    /// Restart policy: only `no` (kiln has no daemon to restart containers).
    #[arg(long = "restart", value_name = "POLICY")]
    pub restart: Option<String>,
    /// Give the container a host device (`/dev/fuse`, `/dev/fuse:/dev/f:r`).
    #[arg(long = "device", value_name = "HOST[:CTR[:rwm]]")]
    pub device: Vec<String>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// What the flags give a container.
#[derive(Debug, Default)]
pub struct Applied {
    /// For its state and `inspect`.
    pub options: RunOptions,
    /// Environment lines of the `--env-file`s, before `-e`'s (docker's order).
    pub env: Vec<String>,
    /// `--stop-signal`, normalised (`SIGUSR1`).
    pub stop_signal: Option<String>,
}

/// Where `K` alone in an env file takes its value from (the caller's environment).
pub type Lookup = dyn Fn(&str) -> Option<String>;

/// docker's `ErrBadKey`.
fn bad_key(msg: String) -> anyhow::Error {
    anyhow::anyhow!("poorly formatted environment: {msg}")
}

/// A `--env-file` or `--label-file` as docker's `parseKeyValueFile` reads it: leading blanks
/// trimmed, `#` lines and empty lines skipped, the name before `=` must hold no blank, `K`
/// alone is `K=<lookup(K)>` when `lookup` knows it and skipped otherwise (always for labels);
/// values are taken verbatim (quotes and trailing blanks kept).
pub fn parse_kv_file(path: &str, lookup: Option<&Lookup>) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read(path).map_err(|e| {
        let msg = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file or directory".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        };
        anyhow::anyhow!("open {path}: {msg}")
    })?;
    let text =
        String::from_utf8(text).map_err(|_| anyhow::anyhow!("{path}: invalid utf8 bytes"))?;
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let raw = if n == 0 {
            raw.trim_start_matches('\u{feff}')
        } else {
            raw
        };
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim_start_matches([' ', '\t']), Some(v)),
            None => (line.trim_start_matches([' ', '\t']), None),
        };
        if name.contains([' ', '\t']) {
            return Err(bad_key(format!("variable '{name}' contains whitespaces")));
        }
        if name.is_empty() {
            return Err(bad_key(format!("no variable name on line '{line}'")));
        }
        match value {
            Some(v) => out.push(format!("{name}={v}")),
            None => {
                if let Some(v) = lookup.and_then(|f| f(name.trim())) {
                    out.push(format!("{}={v}", name.trim()));
                }
            }
        }
    }
    Ok(out)
}

/// docker's `invalid argument "V" for "--FLAG" flag: MSG` (its flag parser's wording).
fn invalid(flag: &str, v: &str, msg: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("invalid argument \"{v}\" for \"--{flag}\" flag: {msg}")
}

/// `--add-host NAME:IP` as docker's `ValidateExtraHost`.
fn parse_add_host(v: &str) -> anyhow::Result<(String, String)> {
    let Some((name, ip)) = v.split_once(':').filter(|(n, _)| !n.is_empty()) else {
        return Err(invalid(
            "add-host",
            v,
            format!("bad format for add-host: \"{v}\""),
        ));
    };
    if ip != HOST_GATEWAY && ip.parse::<std::net::IpAddr>().is_err() {
        return Err(invalid(
            "add-host",
            v,
            format!("invalid IP address in add-host: \"{ip}\""),
        ));
    }
    Ok((name.to_owned(), ip.to_owned()))
}

/// A `--dns-search` domain as docker's `ValidateDNSSearch` (`.` is allowed).
fn check_domain(v: &str) -> anyhow::Result<()> {
    if v == "." {
        return Ok(());
    }
    let d = v.strip_suffix('.').unwrap_or(v);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    ensure!(
        d.len() <= 255 && d.split('.').all(label_ok),
        invalid("dns-search", v, format!("{v} is not a valid domain"))
    );
    Ok(())
}

/// A capability as the daemon normalises it: upper case with `CAP_` (or `ALL`). Fails on a
/// name the kernel does not have, as docker's `invalid CapAdd: unknown capability`.
fn capability(flag: &str, v: &str) -> anyhow::Result<String> {
    let up = v.to_ascii_uppercase();
    if up == "ALL" {
        return Ok(up);
    }
    let name = match up.starts_with("CAP_") {
        true => up,
        false => format!("CAP_{up}"),
    };
    let known = executor::seccomp::capability_names(rustix::thread::CapabilitySet::all());
    ensure!(
        known.contains(&name),
        "Error response from daemon: invalid {flag}: unknown capability: \"{name}\""
    );
    Ok(name)
}

/// `--stop-signal`: a name (with or without `SIG`) or number, as `signal.ParseSignal`.
pub fn parse_signal(v: &str) -> anyhow::Result<String> {
    let err = || anyhow::anyhow!("Error response from daemon: Invalid signal: {v}");
    if let Ok(n) = v.parse::<i32>() {
        rustix::process::Signal::from_named_raw(n).ok_or_else(err)?;
        executor::container::process::parse_signal(v)
            .map_err(|_| anyhow::anyhow!("--stop-signal {v}: kiln's stop does not send it"))?;
        return Ok(v.to_owned());
    }
    let name = v.to_ascii_uppercase();
    let name = match name.starts_with("SIG") {
        true => name,
        false => format!("SIG{name}"),
    };
    const KNOWN: &[&str] = &[
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    ensure!(KNOWN.contains(&name.as_str()), err());
    executor::container::process::parse_signal(v).map_err(|_| {
        anyhow::anyhow!(
            "--stop-signal {v}: kiln's stop sends SIGHUP, SIGINT, SIGQUIT, SIGKILL, SIGUSR1, \
             SIGUSR2, SIGTERM, SIGWINCH or SIGPWR"
        )
    })?;
    // docker keeps the signal as given (`inspect` shows `SIGUSR1` for `--stop-signal SIGUSR1`).
    Ok(v.to_owned())
}

/// `--restart`: `no` (or empty) only. The other policies need a daemon that outlives the
/// container; kiln has none, so they are refused naming that.
fn check_restart(v: Option<&str>, rm: bool) -> anyhow::Result<()> {
    let Some(v) = v.filter(|v| !v.is_empty() && *v != "no") else {
        return Ok(());
    };
    ensure!(!rm, "Conflicting options: --restart and --rm");
    let (name, count) = v.split_once(':').unwrap_or((v, ""));
    match name {
        "always" | "unless-stopped" | "on-failure" => {
            if !count.is_empty() {
                ensure!(
                    name == "on-failure",
                    "Error response from daemon: maximum retry count cannot be used with restart policy '{name}'"
                );
                count
                    .parse::<i64>()
                    .map_err(|_| anyhow::anyhow!("maximum retry count must be an integer"))?;
            }
            bail!(
                "--restart {v}: kiln has no daemon, so nothing would restart the container \
                 after it exits; only --restart no is supported (run kiln under a supervisor \
                 such as a systemd unit with Restart= instead)"
            )
        }
        _ => bail!("Error response from daemon: invalid restart policy '{name}'"),
    }
}

/// `--ulimit NAME=SOFT[:HARD]` with the messages of docker's `units.ParseUlimit`; the value
/// itself as `kiln build --ulimit` takes it.
fn parse_ulimit(v: &str) -> anyhow::Result<executor::spec::Ulimit> {
    let bad = |msg: String| invalid("ulimit", v, msg);
    let Some((name, limits)) = v.split_once('=') else {
        return Err(bad(format!("invalid ulimit argument: {v}")));
    };
    if !executor::spec::ULIMIT_NAMES.contains(&name) {
        return Err(bad(format!("invalid ulimit type: {name}")));
    }
    let parts: Vec<&str> = limits.split(':').collect();
    if parts.len() > 2 {
        return Err(bad(format!(
            "too many limit value arguments - {limits}, can only have up to two, `soft[:hard]`"
        )));
    }
    let mut nums = Vec::new();
    for p in &parts {
        nums.push(
            p.parse::<i64>()
                .map_err(|_| bad(format!("strconv.ParseInt: parsing \"{p}\": invalid syntax")))?,
        );
    }
    if let [s, h] = nums[..]
        && s > h
    {
        return Err(bad(format!(
            "ulimit soft limit must be less than or equal to hard limit: {s} > {h}"
        )));
    }
    crate::build::runopts::parse_ulimit(v).map_err(|e| bad(format!("{e:#}")))
}

/// docker's `validDeviceMode`: some of `r`, `w`, `m`, each once.
fn device_mode(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 3
        && m.chars().all(|c| "rwm".contains(c))
        && m.chars().all(|c| m.matches(c).count() == 1)
}

/// `--device HOST[:CTR][:MODE]` as docker's CLI parses and checks it (`validateLinuxPath`,
/// `parseDevice`), then the host node as its daemon finds it: (host, container, mode).
fn parse_device(v: &str) -> anyhow::Result<executor::spec::DeviceAllow> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let parts: Vec<&str> = v.split(':').collect();
    ensure!(
        parts.len() <= 3 && !parts[0].is_empty(),
        "bad format for path: {v}"
    );
    let (src, dst, mode) = match parts[..] {
        [s] => (s, s, "rwm"),
        [s, m] if device_mode(m) => (s, s, m),
        [s, d] => (s, d, "rwm"),
        [s, d, m] => {
            ensure!(device_mode(m), "bad mode specified: {m}");
            (s, d, m)
        }
        _ => bail!("bad format for path: {v}"),
    };
    for p in [src, dst] {
        ensure!(p.starts_with('/'), "{p} is not an absolute path");
    }
    let gather = |e: String| {
        anyhow::anyhow!(
            "Error response from daemon: error gathering device information while adding custom device \"{src}\": {e}"
        )
    };
    let m = std::fs::metadata(src).map_err(|e| {
        gather(match e.kind() {
            std::io::ErrorKind::NotFound => "no such file or directory".to_owned(),
            _ => e.to_string(),
        })
    })?;
    let t = m.file_type();
    ensure!(
        t.is_char_device() || t.is_block_device(),
        gather("not a device node (kiln takes device nodes, not directories)".to_owned())
    );
    let rdev = m.rdev();
    Ok(executor::spec::DeviceAllow {
        block: t.is_block_device(),
        major: rustix::fs::major(rdev),
        minor: rustix::fs::minor(rdev),
        access: mode.to_owned(),
        source: src.into(),
        target: std::path::Path::new(dst)
            .components()
            .collect::<std::path::PathBuf>()
            .to_string_lossy()
            .into_owned(),
    })
}

/// Parses and checks every flag (docker refuses these before creating a container); fills
/// `security` (the sandbox's) and returns the rest.
pub fn apply(f: &DockerFlags, rm: bool, security: &mut Security) -> anyhow::Result<Applied> {
    check_restart(f.restart.as_deref(), rm)?;
    let lookup = |k: &str| std::env::var(k).ok();
    let mut env = Vec::new();
    for p in &f.env_file {
        env.extend(parse_kv_file(p, Some(&lookup))?);
    }
    let mut labels = BTreeMap::new();
    let mut label_lines = Vec::new();
    for p in &f.label_file {
        label_lines.extend(parse_kv_file(p, None)?);
    }
    label_lines.extend(f.label.iter().cloned());
    for l in label_lines {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        labels.insert(k.to_owned(), v.to_owned());
    }
    let mut extra_hosts = Vec::new();
    for h in &f.add_host {
        let (name, mut ip) = parse_add_host(h)?;
        if ip == HOST_GATEWAY {
            // docker's host-gateway is its default bridge's address (docker0), whatever the
            // container's network: kiln's is kiln0's.
            let gw = executor::net::Ipam::open(crate::netrun::state_dir())
                .and_then(|i| i.network(executor::net::ipam::DEFAULT_NETWORK))
                .map(|c| c.gateway)
                .with_context(|| format!("--add-host {h}: finding the default bridge's address"))?;
            ip = gw.to_string();
        }
        extra_hosts.push((name, ip));
    }
    for d in &f.dns {
        ensure!(
            d.parse::<std::net::IpAddr>().is_ok(),
            invalid("dns", d, format!("{d} is not an ip address"))
        );
    }
    for d in &f.dns_search {
        check_domain(d)?;
    }
    let cap_add = f
        .cap_add
        .iter()
        .map(|c| capability("CapAdd", c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cap_drop = f
        .cap_drop
        .iter()
        .map(|c| capability("CapDrop", c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ulimits = f
        .ulimit
        .iter()
        .map(|u| parse_ulimit(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let shm_size = f
        .shm_size
        .as_deref()
        .map(|s| match s.trim() {
            "0" => Ok(0),
            _ => kroot::size::parse(s)
                .map_err(|_| invalid("shm-size", s, format!("invalid size: '{s}'"))),
        })
        .transpose()?
        // 0 is docker's default (64m).
        .filter(|n| *n > 0);
    let stop_signal = f.stop_signal.as_deref().map(parse_signal).transpose()?;
    let devices = f
        .device
        .iter()
        .map(|d| parse_device(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    security.extra_hosts.extend(extra_hosts);
    security.cap_add.clone_from(&cap_add);
    security.cap_drop.clone_from(&cap_drop);
    security.group_add.clone_from(&f.group_add);
    security.init = f.init;
    security.ulimits.clone_from(&ulimits);
    if shm_size.is_some() {
        security.shm_size = shm_size;
    }
    // On cgroup v2 a container has a cgroup of its own below kiln's, whose device program
    // every descendant answers to: one container's devices cannot be allowed there.
    if !devices.is_empty()
        && !executor::rootless::in_user_namespace()
        && matches!(
            executor::devices::DeviceCgroup::host(),
            Ok(executor::devices::DeviceCgroup::V2 { .. })
        )
    {
        bail!(
            "--device: not supported on a cgroup v2 host yet (kiln's device program on its \
             cgroup covers every container and cannot be widened for one)"
        );
    }
    let device_options = devices
        .iter()
        .map(|d| {
            [
                d.source.to_string_lossy().into_owned(),
                d.target.clone(),
                d.access.clone(),
            ]
        })
        .collect();
    security.devices = devices;
    if f.privileged {
        security.privileged = true;
        security.all_devices = true;
        security.seccomp = executor::spec::Seccomp::Unconfined;
    }
    Ok(Applied {
        options: RunOptions {
            hostname: f.hostname.clone(),
            labels,
            dns: f.dns.clone(),
            dns_search: f.dns_search.clone(),
            dns_options: f.dns_option.clone(),
            extra_hosts: f.add_host.clone(),
            cap_add: f.cap_add.clone(),
            cap_drop: f.cap_drop.clone(),
            privileged: f.privileged,
            init: f.init,
            group_add: f.group_add.clone(),
            ulimits,
            shm_size,
            stop_timeout: f.stop_timeout,
            devices: device_options,
        },
        env,
        stop_signal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_read_as_docker_reads_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("e");
        std::fs::write(
            &p,
            "# c\nA=1\n  B=x y \nC=\"q\"\nHOME\nUNSET_XYZ\n\nD=\n #c2\n",
        )
        .expect("w");
        let p = p.to_str().expect("utf-8");
        let look = |k: &str| (k == "HOME").then(|| "/caller".to_owned());
        assert_eq!(
            parse_kv_file(p, Some(&look)).expect("parsed"),
            ["A=1", "B=x y ", "C=\"q\"", "HOME=/caller", "D="]
        );
        assert_eq!(
            parse_kv_file(p, None).expect("labels"),
            ["A=1", "B=x y ", "C=\"q\"", "D="]
        );
        std::fs::write(p, "  B = x\n").expect("w");
        let e = parse_kv_file(p, None).expect_err("blank in name");
        assert_eq!(
            e.to_string(),
            "poorly formatted environment: variable 'B ' contains whitespaces"
        );
    }

    #[test]
    fn bad_values_get_dockers_messages() {
        let msg = |r: anyhow::Result<()>| format!("{:#}", r.expect_err("refused"));
        assert_eq!(
            msg(parse_add_host("db:nope").map(drop)),
            "invalid argument \"db:nope\" for \"--add-host\" flag: invalid IP address in add-host: \"nope\""
        );
        assert_eq!(
            msg(capability("CapAdd", "bogus").map(drop)),
            "Error response from daemon: invalid CapAdd: unknown capability: \"CAP_BOGUS\""
        );
        assert_eq!(
            capability("CapAdd", "net_admin").expect("ok"),
            "CAP_NET_ADMIN"
        );
        assert_eq!(
            msg(check_restart(Some("bogus"), false)),
            "Error response from daemon: invalid restart policy 'bogus'"
        );
        assert!(check_restart(Some("no"), true).is_ok());
        assert!(msg(check_restart(Some("always"), false)).contains("kiln has no daemon"));
        assert_eq!(
            msg(parse_signal("BOGUS").map(drop)),
            "Error response from daemon: Invalid signal: BOGUS"
        );
        assert!(check_domain("example.com").is_ok() && check_domain("bad_domain!").is_err());
    }
}

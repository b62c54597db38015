//! `kiln run` networking: the default bridge with a published port reached from the host's
//! 127.0.0.1, cleanup after the container is stopped, port conflicts, `--network none`.

use crate::harness::{TestDir, busybox_dir, text};
use anyhow::{Context as _, ensure};
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

const LEASES: &str = "/run/kiln/networks/bridge/leases.json";

const WEB: &str = "FROM busybox\nRUN mkdir -p /www && echo hello-from-kiln > /www/index.html\n";

/// The id of container `name` (ids are 64 hex digits, names apart).
pub(crate) fn id_of(t: &TestDir, name: &str) -> anyhow::Result<String> {
    let out = t.ok(&["inspect", "-f", "{{.Id}}", name])?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "id of {name}: {id:?}"
    );
    Ok(id)
}

/// Whether nothing host-wide is left without an owner: every lease (but the build pool's) and
/// every pinned namespace belongs to a container with a record in `/run/kiln/containers`,
/// which kiln writes before it takes them and removes after it gives them back. A container
/// whose start failed has no id to look for, so this is how tests see that it leaked nothing.
pub(crate) fn unowned() -> Vec<String> {
    // Every container id a record claims a lease of: its own, and the one it shares.
    let mut claimed = std::collections::BTreeSet::new();
    for e in std::fs::read_dir("/run/kiln/containers")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(v) = std::fs::read(e.path())
            .map_err(anyhow::Error::new)
            .and_then(|b| Ok(serde_json::from_slice::<serde_json::Value>(&b)?))
        else {
            continue;
        };
        for k in ["id", "/lease/container", "/shares/container"] {
            let c = if k == "id" { v.get("id") } else { v.pointer(k) };
            if let Some(c) = c.and_then(|c| c.as_str()) {
                claimed.insert(c.to_owned());
            }
        }
    }
    let owned = |id: &str| claimed.contains(id);
    let mut out = Vec::new();
    for e in std::fs::read_dir("/run/kiln/networks")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(e.path().join("leases.json")) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        for l in v["leases"].as_array().into_iter().flatten() {
            let c = l["container"].as_str().unwrap_or_default();
            if !c.starts_with("pool-") && !owned(c) {
                out.push(format!("lease {c} on {:?}", e.file_name()));
            }
        }
    }
    for e in std::fs::read_dir("/run/kiln/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if !owned(&n) {
            out.push(format!("netns {n}"));
        }
    }
    out
}

/// The default bridge's gateway, as stored when its subnet was chosen (after any container on
/// it): 10.88.0.1 unless something else on the host holds 10.88.0.0/16 (see `subnet.rs`).
pub(crate) fn default_gateway() -> anyhow::Result<String> {
    let path = "/run/kiln/networks/bridge/network.json";
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).with_context(|| path.to_owned())?)?;
    v["gateway"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no gateway in {path}: {v}"))
}

/// The lease of container `container` (its id) on the default bridge, as JSON.
pub(crate) fn lease(container: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(LEASES).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["leases"]
        .as_array()?
        .iter()
        .find(|l| l["container"] == container)
        .cloned()
}

pub(crate) fn links() -> anyhow::Result<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn nft_ruleset() -> String {
    std::process::Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

pub(crate) fn get(port: u16) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// Polls `f` for up to 10 s (links of a dead namespace are deleted asynchronously).
pub(crate) fn settles(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Removes what a test left when it failed half-way: every container of its KILN_ROOT (their
/// processes, leases and cgroups outlive the temp dir otherwise) and the networks it names.
pub struct Reaper<'a> {
    t: &'a TestDir,
    networks: std::cell::RefCell<Vec<String>>,
}

impl<'a> Reaper<'a> {
    pub fn new(t: &'a TestDir) -> Reaper<'a> {
        Reaper {
            t,
            networks: Default::default(),
        }
    }

    /// Also remove network `name`.
    pub fn network(&self, name: &str) {
        self.networks.borrow_mut().push(name.to_owned());
    }
}

impl Drop for Reaper<'_> {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(self.t.root.join("containers")) {
            for e in rd.flatten() {
                let _ = self.t.kiln(&["rm", "-f", &e.file_name().to_string_lossy()]);
            }
        }
        for n in self.networks.borrow().iter() {
            let _ = self.t.kiln(&["network", "rm", n]);
        }
    }
}

/// A unique container name (tests share the host-wide bridge).
pub(crate) fn name(tag: &str) -> String {
    format!("it-{tag}-{}", std::process::id())
}

#[test]
fn published_port_serves_host_loopback_and_stop_cleans_up() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    t.write("Dockerfile", WEB);
    t.build("web:1", &[])?;
    let n = name("web");
    let mut child = t
        .cmd(&[
            "run", "--name", &n, "-p", "18080:80", "web:1", "httpd", "-f", "-p", "80", "-h", "/www",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        match get(18080) {
            Ok(b) if b.contains("hello-from-kiln") => break b,
            r => {
                if Instant::now() > deadline || child.try_wait()?.is_some() {
                    let _ = child.kill();
                    let out = child.wait_with_output()?;
                    anyhow::bail!("no page on 127.0.0.1:18080 ({r:?}):\n{}", text(&out));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    ensure!(body.starts_with("HTTP/1."), "{body}");
    let id = id_of(&t, &n)?;
    let l = lease(&id).context("a lease while running")?;
    let ip: std::net::Ipv4Addr = l["ip"].as_str().context("lease ip")?.parse()?;
    let veth = format!("kv{:08x}", u32::from(ip));
    ensure!(links()?.contains(&veth), "no {veth} while running");
    ensure!(
        nft_ruleset().contains("18080"),
        "no DNAT rule while running"
    );
    ensure!(Path::new("/run/kiln/netns").join(&id).exists());

    // The same host port again: a clear error, nothing leaked.
    let other = name("clash");
    let out = t.kiln(&[
        "run", "--rm", "--name", &other, "-p", "18080:80", "web:1", "true",
    ]);
    ensure!(!out.status.success(), "{}", text(&out));
    ensure!(
        text(&out).contains("18080"),
        "unclear error: {}",
        text(&out)
    );
    ensure!(t.kiln(&["inspect", &other]).status.code() != Some(0));
    ensure!(
        settles(|| unowned().is_empty()),
        "the clash leaked: {:?}",
        unowned()
    );
    ensure!(std::fs::read_dir(t.root.join("containers"))?.count() == 1);

    // Stop kiln: the container dies and the network is undone.
    let pid = rustix::process::Pid::from_raw(child.id() as i32).context("pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    let out = child.wait_with_output()?;
    ensure!(!out.status.success(), "{}", text(&out));
    ensure!(lease(&id).is_none(), "lease left after stop");
    // The kernel deletes the pair with the namespace, in the background.
    ensure!(
        settles(|| links().is_ok_and(|l| !l.contains(&veth))),
        "{veth} left after stop"
    );
    ensure!(!nft_ruleset().contains("18080"), "rule left after stop");
    ensure!(!Path::new("/run/kiln/netns").join(&id).exists());
    ensure!(get(18080).is_err(), "port still answers");
    Ok(())
}

#[test]
fn host_port_in_use_is_a_clear_error_and_leaks_nothing() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let taken = std::net::TcpListener::bind(("0.0.0.0", 0))?;
    let port = taken.local_addr()?.port();
    let n = name("inuse");
    let spec = format!("{port}:80");
    let out = t.kiln(&["run", "--rm", "--name", &n, "-p", &spec, "busybox", "true"]);
    ensure!(!out.status.success(), "{}", text(&out));
    let msg = text(&out);
    ensure!(
        msg.contains(&port.to_string()) && msg.contains("in use"),
        "unclear error: {msg}"
    );
    let no_containers =
        || std::fs::read_dir(t.root.join("containers")).map_or(true, |d| d.count() == 0);
    ensure!(unowned().is_empty(), "leaked: {:?}", unowned());
    ensure!(no_containers());

    // A command that cannot start and an unknown image leak nothing either.
    let out = t.kiln(&["run", "--rm", "--name", &n, "busybox", "no-such-command"]);
    ensure!(!out.status.success(), "{}", text(&out));
    ensure!(
        unowned().is_empty(),
        "a failed start leaked: {:?}",
        unowned()
    );
    ensure!(no_containers());
    let out = t.kiln(&["run", "--rm", "--name", &n, "no-such-image:1", "true"]);
    ensure!(
        !out.status.success() && text(&out).contains("no-such-image"),
        "{}",
        text(&out)
    );
    ensure!(unowned().is_empty() && no_containers());
    Ok(())
}

#[test]
fn network_none_has_only_lo_and_bridge_has_eth0_with_a_route() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let out = t.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "ls",
        "/sys/class/net",
    ])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            == ["lo"],
        "{}",
        text(&out)
    );
    let n = name("bridge");
    let out = t.ok(&[
        "run",
        "--rm",
        "--name",
        &n,
        "busybox",
        "sh",
        "-c",
        "ls /sys/class/net; ip route; cat /etc/hosts",
    ])?;
    let s = String::from_utf8_lossy(&out.stdout);
    let gw = default_gateway()?;
    ensure!(
        s.contains("eth0") && s.contains(&format!("default via {gw}")),
        "{}",
        text(&out)
    );
    ensure!(s.contains(&n), "no own name in /etc/hosts: {s}");
    ensure!(unowned().is_empty(), "--rm left: {:?}", unowned());
    Ok(())
}

fn ps(t: &TestDir, all: bool) -> anyhow::Result<String> {
    let args: &[&str] = if all { &["ps", "-a"] } else { &["ps"] };
    Ok(String::from_utf8_lossy(&t.ok(args)?.stdout).into_owned())
}

/// The `ps` row of container `name` (NAMES is the last column).
fn row<'a>(ps: &'a str, name: &str) -> Option<&'a str> {
    ps.lines()
        .find(|l| l.split_whitespace().last() == Some(name))
}

#[test]
fn detached_container_lifecycle_ps_logs_stop_rm() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    t.write("Dockerfile", WEB);
    t.build("web:1", &[])?;
    let n = name("detached");
    let out = t.ok(&[
        "run",
        "-d",
        "--name",
        &n,
        "-p",
        "18082:80",
        "web:1",
        "sh",
        "-c",
        "echo started; exec httpd -f -p 80 -h /www",
    ])?;
    // docker's: run -d prints the id, not the name.
    let id = id_of(&t, &n)?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == id,
        "{}",
        text(&out)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get(18082).is_ok_and(|b| b.contains("hello-from-kiln")) {
        ensure!(Instant::now() < deadline, "no page on 18082");
        std::thread::sleep(Duration::from_millis(100));
    }
    let listing = ps(&t, false)?;
    let r = row(&listing, &n).context(format!("{n} not in ps:\n{listing}"))?;
    ensure!(r.contains("Up") && r.contains("18082->80/tcp"), "{r}");
    let logs = t.ok(&["logs", &n])?;
    ensure!(
        String::from_utf8_lossy(&logs.stdout).contains("started"),
        "{}",
        text(&logs)
    );

    // Name conflict and rm of a running container: clear errors, nothing changes.
    let out = t.kiln(&["run", "-d", "--name", &n, "web:1", "true"]);
    ensure!(
        !out.status.success() && text(&out).contains("is already in use"),
        "{}",
        text(&out)
    );
    let out = t.kiln(&["rm", &n]);
    ensure!(
        !out.status.success() && text(&out).contains("is running"),
        "{}",
        text(&out)
    );
    ensure!(
        row(&ps(&t, false)?, &n).is_some(),
        "rm without -f removed it"
    );

    // httpd as PID 1 ignores TERM: stop ends it with KILL after the timeout (137). The
    // watchdog only turns a hang into a failure.
    crate::harness::ok_within(&t, &["stop", "-t", "5", &n], Duration::from_secs(120))?;
    ensure!(
        row(&ps(&t, false)?, &n).is_none(),
        "still listed as running"
    );
    let all = ps(&t, true)?;
    ensure!(
        row(&all, &n).is_some_and(|r| r.contains("Exited (137)")),
        "{all}"
    );
    ensure!(lease(&id).is_none(), "lease left after stop");
    ensure!(!nft_ruleset().contains("18082"), "rule left after stop");
    // The id, a unique prefix of it and the name all name it.
    for n in [&id[..12], &id[..5], &n] {
        let out = t.ok(&["inspect", "-f", "{{.Id}}", n])?;
        ensure!(String::from_utf8_lossy(&out.stdout).trim() == id, "{n}");
    }
    t.ok(&["rm", &id[..12]])?;
    ensure!(row(&ps(&t, true)?, &n).is_none(), "still listed after rm");
    ensure!(!t.root.join("containers").join(&id).exists());
    Ok(())
}

#[test]
fn container_whose_processes_died_shows_exited_and_rm_f_cleans_up() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let n = name("died");
    t.ok(&["run", "-d", "--name", &n, "busybox", "sleep", "1000"])?;
    let id = id_of(&t, &n)?;
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(
        t.root.join("containers").join(&id).join("state.json"),
    )?)?;
    let pid = state["pid"].as_i64().context("pid in state.json")? as i32;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ppid: i32 = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().nth(1))
        .context("ppid")?
        .parse()?;
    // The supervisor dies first, so nothing records the exit: ps must still tell.
    for p in [ppid, pid] {
        let p = rustix::process::Pid::from_raw(p).context("pid")?;
        rustix::process::kill_process(p, rustix::process::Signal::KILL)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let all = ps(&t, true)?;
    ensure!(row(&all, &n).is_some_and(|r| r.contains("Exited")), "{all}");
    ensure!(
        row(&ps(&t, false)?, &n).is_none(),
        "a dead container listed as running"
    );
    t.ok(&["rm", "-f", &n])?;
    ensure!(lease(&id).is_none(), "rm left the lease");
    ensure!(!Path::new("/run/kiln/netns").join(&id).exists());
    Ok(())
}

#[test]
fn container_network_shares_the_ip_and_exec_sees_the_processes() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let n = name("shared");
    t.ok(&["run", "-d", "--name", &n, "busybox", "sleep", "1000"])?;
    let id = id_of(&t, &n)?;
    let ip = lease(&id).context("a lease")?["ip"]
        .as_str()
        .context("ip")?
        .to_owned();
    let net = format!("container:{n}");
    let out = t.ok(&[
        "run",
        "--rm",
        "--network",
        &net,
        "busybox",
        "ip",
        "-4",
        "-o",
        "addr",
    ])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("inet {ip}/16")),
        "not the same address {ip}: {}",
        text(&out)
    );
    let out = t.ok(&["exec", &n, "ps"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("sleep 1000"),
        "{}",
        text(&out)
    );
    let out = t.ok(&["exec", &n, "ip", "-4", "-o", "addr"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains(&ip),
        "{}",
        text(&out)
    );
    let out = t.kiln(&["exec", &n, "sh", "-c", "exit 3"]);
    ensure!(out.status.code() == Some(3), "{}", text(&out));
    t.ok(&["kill", &n])?;
    let out = t.kiln(&["exec", &n, "true"]);
    ensure!(
        !out.status.success() && text(&out).contains("not running"),
        "{}",
        text(&out)
    );
    t.ok(&["rm", &n])?;
    ensure!(lease(&id).is_none(), "lease left after kill and rm");
    Ok(())
}

#[test]
fn logs_follow_prints_until_the_container_exits() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let n = name("logs");
    t.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &n,
        "busybox",
        "sh",
        "-c",
        "echo one; sleep 0.5; echo two >&2; exit 4",
    ])?;
    let out = t.ok(&["logs", "-f", &n])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "one\ntwo\n",
        "{}",
        text(&out)
    );
    let all = ps(&t, true)?;
    ensure!(
        row(&all, &n).is_some_and(|r| r.contains("Exited (4)")),
        "{all}"
    );
    t.ok(&["rm", &n])?;
    Ok(())
}

/// A /24 of 10.89.0.0/16 (left to tests by kiln's auto subnets) for this test process.
pub(crate) fn test_subnet(offset: u32) -> String {
    format!("10.89.{}.0/24", (std::process::id() + offset) % 250)
}

pub(crate) fn inspect(t: &TestDir, name: &str) -> anyhow::Result<serde_json::Value> {
    let out = t.ok(&["inspect", name])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v.get(0).cloned().context("inspect gives an array")
}

#[test]
fn user_network_containers_ping_each_other_by_ip_and_name() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let reap = Reaper::new(&t);
    let net = name("net");
    let subnet = test_subnet(0);
    reap.network(&net);
    t.ok(&["network", "create", "--subnet", &subnet, &net])?;
    let ls = String::from_utf8_lossy(&t.ok(&["network", "ls"])?.stdout).into_owned();
    ensure!(ls.contains(&net) && ls.contains(&subnet), "{ls}");
    let (a, b) = (name("pa"), name("pb"));
    for n in [&a, &b] {
        t.ok(&[
            "run",
            "-d",
            "--network",
            &net,
            "--name",
            n,
            "busybox",
            "sleep",
            "1000",
        ])?;
    }
    let ip_b = inspect(&t, &b)?["NetworkSettings"]["IPAddress"]
        .as_str()
        .context("IPAddress")?
        .to_owned();
    ensure!(
        ip_b.starts_with(&subnet[..subnet.len() - 4]),
        "{ip_b} not in {subnet}"
    );
    ensure!(
        inspect(&t, &b)?["NetworkSettings"]["Networks"][&net]["IPPrefixLen"] == 24,
        "prefix of a /24 user network"
    );

    // a started before b: its /etc/hosts was updated in place when b joined.
    for (from, to) in [(&a, b.as_str()), (&b, a.as_str()), (&a, ip_b.as_str())] {
        let out = t.kiln(&["exec", from, "ping", "-c", "1", "-W", "3", to]);
        ensure!(out.status.success(), "{from} -> {to}: {}", text(&out));
    }
    let out = t.kiln(&["network", "rm", &net]);
    ensure!(
        !out.status.success() && text(&out).contains("in use"),
        "{}",
        text(&out)
    );
    t.ok(&["rm", "-f", &a])?;
    let hosts = t.ok(&["exec", &b, "cat", "/etc/hosts"])?;
    ensure!(
        !String::from_utf8_lossy(&hosts.stdout).contains(&a),
        "a removed container is still named: {}",
        text(&hosts)
    );
    t.ok(&["rm", "-f", &b])?;
    t.ok(&["network", "rm", &net])?;
    let ls = String::from_utf8_lossy(&t.ok(&["network", "ls"])?.stdout).into_owned();
    ensure!(!ls.contains(&net), "{ls}");
    Ok(())
}

#[test]
fn inspect_gives_state_address_and_ports_like_docker() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let free = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    let port = free.local_addr()?.port();
    drop(free);
    let n = name("inspect");
    let spec = format!("{port}:80");
    t.ok(&[
        "run", "-d", "--name", &n, "-p", &spec, "busybox", "sleep", "1000",
    ])?;
    let c = inspect(&t, &n)?;
    ensure!(
        c["Name"] == format!("/{n}") && c["Config"]["Image"] == "busybox",
        "{c}"
    );
    ensure!(
        c["State"]["Status"] == "running" && c["State"]["Running"] == true,
        "{c}"
    );
    let pid = c["State"]["Pid"].as_i64().context("Pid")?;
    // PID 1 exists when `run -d` returns; its exec of sleep may follow a moment later.
    ensure!(
        settles(|| std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.starts_with("sleep"))),
        "Pid {pid} is not the container's process"
    );
    // The default bridge is a /16: the address shares the gateway's first two octets.
    let gw = default_gateway()?;
    let net16 = gw.rsplitn(3, '.').nth(2).unwrap_or_default().to_owned() + ".";
    ensure!(
        c["NetworkSettings"]["IPAddress"]
            .as_str()
            .is_some_and(|i| i.starts_with(&net16)),
        "{c}"
    );
    ensure!(
        c["NetworkSettings"]["Ports"]["80/tcp"]
            == serde_json::json!([{ "HostIp": "0.0.0.0", "HostPort": port.to_string() }]),
        "{c}"
    );
    ensure!(
        c["State"]["StartedAt"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{c}"
    );
    t.ok(&["kill", &n])?;
    let c = inspect(&t, &n)?;
    ensure!(
        c["State"]["Status"] == "exited" && c["State"]["ExitCode"] == 137,
        "{c}"
    );
    // Images go through the same command.
    let img = inspect(&t, "busybox")?;
    ensure!(img["RootFS"]["DiffIDs"].is_array(), "{img}");
    t.ok(&["rm", &n])?;
    let out = t.kiln(&["inspect", &n]);
    ensure!(
        !out.status.success() && text(&out).contains(&n),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn build_run_steps_join_the_bridge_unless_none_or_host_is_asked() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    t.write(
        "Dockerfile",
        "FROM busybox\n\
         RUN ip -4 -o addr > /default.txt && ip route >> /default.txt && cat /etc/hosts >> /default.txt\n\
         RUN --network=none ls /sys/class/net > /none.txt\n",
    );
    t.build("netbuild:1", &[])?;
    let out = t.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "netbuild:1",
        "cat",
        "/default.txt",
        "/none.txt",
    ])?;
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let gw = default_gateway()?;
    ensure!(
        s.contains("eth0") && s.contains(&format!("default via {gw}")),
        "the default RUN network is not the bridge: {s}"
    );
    ensure!(s.trim_end().ends_with("lo"), "RUN --network=none: {s}");
    ensure!(
        Path::new("/run/kiln/pool/bridge/0.netns").exists(),
        "no pooled namespace"
    );
    // kiln build --network none: the default steps get only lo.
    t.write(
        "Dockerfile",
        "FROM busybox\nRUN ls /sys/class/net > /net.txt\n",
    );
    t.build("netbuild:2", &["--network", "none"])?;
    let out = t.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "netbuild:2",
        "cat",
        "/net.txt",
    ])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == "lo",
        "{}",
        text(&out)
    );
    Ok(())
}

/// What a network holds on the host: links naming its bridge (the bridge and the veths
/// enslaved to it), its leases, and kiln's nft rules naming its bridge or subnet.
fn footprint(net: &str, bridge: &str, subnet: &str) -> anyhow::Result<(usize, usize, usize)> {
    let links = links()?.lines().filter(|l| l.contains(bridge)).count();
    let leases = std::fs::read_to_string(format!("/run/kiln/networks/{net}/leases.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["leases"].as_array().map(Vec::len))
        .unwrap_or(0);
    let rules = std::process::Command::new("nft")
        .args(["list", "table", "ip", "kiln"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains(bridge) || l.contains(subnet))
                .count()
        })?;
    // DNAT rules name the container's address, which is in the subnet's /24.
    let prefix = format!("dnat to {}", subnet.trim_end_matches("0/24"));
    let dnat = nft_ruleset()
        .lines()
        .filter(|l| l.contains(&prefix))
        .count();
    Ok((links, leases, rules + dnat))
}

#[test]
fn fifty_run_rm_cycles_leave_links_leases_and_rules_as_they_were() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let reap = Reaper::new(&t);
    let net = name("leak");
    let subnet = test_subnet(100);
    reap.network(&net);
    t.ok(&["network", "create", "--subnet", &subnet, &net])?;
    let ls = String::from_utf8_lossy(&t.ok(&["network", "ls"])?.stdout).into_owned();
    let bridge = ls
        .lines()
        .find(|l| l.split_whitespace().next() == Some(net.as_str()))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("bridge in network ls")?
        .to_owned();
    t.write("Dockerfile", "FROM busybox\nEXPOSE 80\n");
    t.build("exposed:1", &[])?;
    // Warm up: the bridge and the network's NAT rules stay from here on, as docker0's do.
    t.ok(&["run", "--rm", "--network", &net, "busybox", "true"])?;
    let before = footprint(&net, &bridge, &subnet)?;
    for i in 0..50 {
        let c = format!("{}-{i}", name("cyc"));
        if i % 2 == 0 {
            // Detached with a published port (-P: kiln picks a free one under its lock; DNAT
            // rules), then rm -f of the running one.
            t.ok(&[
                "run",
                "-d",
                "--network",
                &net,
                "--name",
                &c,
                "-P",
                "exposed:1",
                "sleep",
                "100",
            ])?;
            t.ok(&["rm", "-f", &c])?;
        } else {
            t.ok(&[
                "run",
                "--rm",
                "--network",
                &net,
                "--name",
                &c,
                "busybox",
                "true",
            ])?;
        }
    }
    let mut after = footprint(&net, &bridge, &subnet)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while after != before && Instant::now() < deadline {
        // Veth pairs go with their namespaces, which the kernel destroys in the background.
        std::thread::sleep(Duration::from_millis(50));
        after = footprint(&net, &bridge, &subnet)?;
    }
    ensure!(
        after == before,
        "(links, leases, rules) before {before:?}, after 50 cycles {after:?}; links now:\n{}",
        links()?
            .lines()
            .filter(|l| l.contains(&bridge))
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(
        unowned().is_empty(),
        "namespaces or leases left: {:?}",
        unowned()
    );
    t.ok(&["network", "rm", &net])?;
    Ok(())
}

#[test]
fn a_container_cannot_reach_an_unpublished_host_loopback_listener() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    // The bridge's gateway address exists once a container has been on it.
    t.ok(&["run", "--rm", "busybox", "true"])?;
    let local = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    let local_port = local.local_addr()?.port();
    // Control: a listener on the gateway address itself is reachable, so the path works.
    let gw = default_gateway()?;
    let open = std::net::TcpListener::bind((gw.as_str(), 0))?;
    let open_port = open.local_addr()?.port();
    let accepted = std::thread::spawn(move || open.accept().map(|_| ()));
    let script = format!(
        "echo hi | nc -w 2 {gw} {open_port} && echo control-ok; \
         echo hi | nc -w 2 {gw} {local_port} && echo gateway-reached; \
         echo hi | nc -w 2 127.0.0.1 {local_port} && echo loopback-reached; true"
    );
    let out = t.ok(&["run", "--rm", "busybox", "sh", "-c", &script])?;
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        s.contains("control-ok"),
        "the control connection failed: {}",
        text(&out)
    );
    ensure!(
        !s.contains("reached"),
        "a container reached the host's 127.0.0.1:{local_port}: {s}"
    );
    accepted
        .join()
        .map_err(|_| anyhow::anyhow!("accept thread"))??;
    drop(local);
    Ok(())
}

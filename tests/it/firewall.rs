//! Coexistence with host firewalls (issue 12): kiln's bridges pass traffic with dockerd
//! running (its FORWARD DROP, br_netfilter, DOCKER-USER), networks stay isolated from each
//! other, containers and RUN steps reach a host outside the bridges through NAT, and docker's
//! own containers keep working beside kiln's.
//!
//! These tests take the host's firewall as it is: in CI dockerd runs, so they prove
//! coexistence; `executor/tests/net.rs` runs the same checks inside a private namespace without
//! any firewall, and with FORWARD DROP in both iptables backends.

use crate::harness::{TestDir, busybox_dir, busybox_tar, text};
use crate::network::{Reaper, inspect, name, test_subnet};
use anyhow::{Context as _, ensure};
use std::process::{Child, Command, Stdio};

const WEB: &str = "FROM busybox\nRUN mkdir -p /www && echo hello-over-tcp > /www/index.html\n";

fn run_ok(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd}"))?;
    ensure!(out.status.success(), "{cmd} {args:?}: {}", text(&out));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip_of(t: &TestDir, container: &str) -> anyhow::Result<String> {
    Ok(inspect(t, container)?["NetworkSettings"]["IPAddress"]
        .as_str()
        .context("IPAddress")?
        .to_owned())
}

/// The ping both kiln's and docker's containers run: one request, two seconds.
fn ping_argv(ip: &str) -> [&str; 6] {
    ["ping", "-c", "1", "-W", "2", ip]
}

/// The page fetch both kiln's and docker's containers run: busybox 1.35's `wget -T`
/// segfaults, so timeout(1) bounds it instead.
fn wget_argv(url: &str) -> [&str; 7] {
    ["timeout", "3", "wget", "-q", "-O", "-", url]
}

/// `kiln exec FROM ping IP`.
fn pings(t: &TestDir, from: &str, ip: &str) -> bool {
    let mut args = vec!["exec", from];
    args.extend(ping_argv(ip));
    t.kiln(&args).status.success()
}

/// `kiln exec FROM wget http://IP/`: the page, or None.
fn page(t: &TestDir, from: &str, ip: &str) -> Option<String> {
    let url = format!("http://{ip}/");
    let mut args = vec!["exec", from];
    args.extend(wget_argv(&url));
    let out = t.kiln(&args);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_d(t: &TestDir, network: &str, n: &str, image: &str, cmd: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["run", "-d", "--network", network, "--name", n, image];
    args.extend_from_slice(cmd);
    t.ok(&args).map(drop)
}

#[test]
fn ping_and_tcp_within_a_network_and_nothing_across_networks() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let reap = Reaper::new(&t);
    t.write("Dockerfile", WEB);
    t.build("fwweb:1", &[])?;
    let (one, two) = (name("fw1"), name("fw2"));
    for (n, s) in [(&one, test_subnet(150)), (&two, test_subnet(200))] {
        reap.network(n);
        t.ok(&["network", "create", "--subnet", &s, n])?;
    }
    let httpd = ["httpd", "-f", "-p", "80", "-h", "/www"];
    let sleep = ["sleep", "1000"];
    // Clients and servers: two on the default bridge, two on `one`, one on `two`.
    let (d1, d2, u1, u2, x) = (
        name("fwd1"),
        name("fwd2"),
        name("fwu1"),
        name("fwu2"),
        name("fwx"),
    );
    run_d(&t, "bridge", &d1, "fwweb:1", &sleep)?;
    run_d(&t, "bridge", &d2, "fwweb:1", &httpd)?;
    run_d(&t, &one, &u1, "fwweb:1", &sleep)?;
    run_d(&t, &one, &u2, "fwweb:1", &httpd)?;
    run_d(&t, &two, &x, "fwweb:1", &httpd)?;
    let (ip_d2, ip_u2, ip_x) = (ip_of(&t, &d2)?, ip_of(&t, &u2)?, ip_of(&t, &x)?);
    for (from, to, what) in [
        (&d1, &ip_d2, "default bridge"),
        (&u1, &ip_u2, "user network"),
    ] {
        ensure!(pings(&t, from, to), "{what}: {from} cannot ping {to}");
        // httpd may still be starting: a few tries.
        let got = (0..10).find_map(|_| {
            page(&t, from, to).or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(200));
                None
            })
        });
        ensure!(
            got.as_deref() == Some("hello-over-tcp\n"),
            "{what}: TCP {from} -> {to}: {got:?}"
        );
    }
    // Across networks, both ways, ping and TCP: all blocked. The probes wait for their
    // timeouts at the same time.
    let probes: Vec<(&str, &str, &str)> = vec![
        (&d1, &ip_u2, "ping"),
        (&u1, &ip_d2, "ping"),
        (&u1, &ip_x, "ping"),
        (&d1, &ip_u2, "tcp"),
        (&u1, &ip_x, "tcp"),
    ];
    let leaks: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .map(|(from, to, how)| {
                let t = &t;
                s.spawn(move || {
                    let reached = match *how {
                        "ping" => pings(t, from, to),
                        _ => page(t, from, to).is_some(),
                    };
                    reached.then(|| format!("{how} {from} -> {to}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("probe thread"))
            .collect()
    });
    ensure!(leaks.is_empty(), "traffic crossed networks: {leaks:?}");
    let check = t.kiln(&["system", "check"]);
    ensure!(check.status.success(), "{}", text(&check));
    // Removing the networks removes their rules from the iptables filter table.
    let ls = String::from_utf8_lossy(&t.ok(&["network", "ls"])?.stdout).into_owned();
    let bridge_of = |n: &str| {
        ls.lines()
            .find(|l| l.split_whitespace().next() == Some(n))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_owned)
            .with_context(|| format!("{n} in network ls: {ls}"))
    };
    let bridges = [bridge_of(&one)?, bridge_of(&two)?];
    let save = run_ok("iptables-nft-save", &["-t", "filter"])?;
    ensure!(
        bridges
            .iter()
            .all(|b| save.contains(&format!("-A KILN-FORWARD -i {b} -j ACCEPT"))),
        "{bridges:?} not accepted: {save}"
    );
    t.ok(&["rm", "-f", &u1, &u2, &x])?;
    t.ok(&["network", "rm", &one, &two])?;
    let save = run_ok("iptables-nft-save", &["-t", "filter"])?;
    ensure!(
        bridges.iter().all(|b| !save.contains(b.as_str())),
        "rules of removed networks stay: {save}"
    );
    Ok(())
}

/// A network namespace standing in for a host on the internet: a veth pair whose host end has
/// `.1` and whose far end `.2` of a /30 of 198.51.100.0/24 (TEST-NET-2, created here only),
/// serving `/cgi-bin/peer` (the client's address as it arrives) with busybox httpd.
struct OutsideHost {
    ns: String,
    link: String,
    host_ip: String,
    ip: String,
    httpd: Option<Child>,
}

impl OutsideHost {
    fn start(t: &TestDir) -> anyhow::Result<OutsideHost> {
        let pid = std::process::id();
        let base = pid % 64 * 4;
        let mut h = OutsideHost {
            ns: format!("kit{pid}"),
            link: format!("kto{pid}"),
            host_ip: format!("198.51.100.{}", base + 1),
            ip: format!("198.51.100.{}", base + 2),
            httpd: None,
        };
        let (ns, link) = (h.ns.clone(), h.link.clone());
        // Leftovers of a killed run of a process with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["link", "del", &link]).output();
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        run_ok("ip", &["netns", "add", &ns])?;
        run_ok(
            "ip",
            &[
                "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        run_ok(
            "ip",
            &["addr", "add", &format!("{}/30", h.host_ip), "dev", &link],
        )?;
        run_ok("ip", &["link", "set", &link, "up"])?;
        run_ok(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/30", h.ip),
                "dev",
                "eth0",
            ],
        )?;
        run_ok("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run_ok("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        let www = t.dir.path().join("outside-www");
        std::fs::create_dir_all(www.join("cgi-bin"))?;
        let cgi = www.join("cgi-bin/peer");
        std::fs::write(
            &cgi,
            "#!/bin/busybox sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$REMOTE_ADDR\"\n",
        )?;
        std::fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        h.httpd = Some(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    "/bin/busybox",
                    "httpd",
                    "-f",
                    "-p",
                    "8080",
                    "-h",
                ])
                .arg(&www)
                .stdin(Stdio::null())
                .spawn()?,
        );
        Ok(h)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:8080/cgi-bin/peer", self.ip)
    }
}

impl Drop for OutsideHost {
    fn drop(&mut self) {
        if let Some(mut c) = self.httpd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// busybox httpd (listening on `::`) gives REMOTE_ADDR as `[::ffff:198.51.100.1]`.
fn client_v4(remote_addr: &str) -> String {
    let a = remote_addr.trim();
    let a = a.strip_prefix('[').unwrap_or(a);
    let a = a.strip_suffix(']').unwrap_or(a);
    a.strip_prefix("::ffff:").unwrap_or(a).to_owned()
}

#[test]
fn run_and_build_steps_reach_a_host_outside_the_bridge_through_nat() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let out = OutsideHost::start(&t)?;
    let url = out.peer_url();
    // httpd starts in the background: the first request may come too early.
    let mut seen = String::new();
    for _ in 0..10 {
        let mut args = vec!["run", "--rm", "busybox"];
        args.extend(wget_argv(&url));
        let r = t.kiln(&args);
        if r.status.success() {
            seen = client_v4(&String::from_utf8_lossy(&r.stdout));
            break;
        }
        seen = text(&r);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ensure!(
        seen == out.host_ip,
        "kiln run: the outside host saw {seen:?}, not the host's address {} (NAT)",
        out.host_ip
    );
    t.write(
        "Dockerfile",
        &format!("FROM busybox\nRUN timeout 5 wget -q -O /peer.txt {url}\n"),
    );
    t.build("natbuild:1", &[])?;
    let got = t.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "natbuild:1",
        "cat",
        "/peer.txt",
    ])?;
    let got = client_v4(&String::from_utf8_lossy(&got.stdout));
    ensure!(
        got == out.host_ip,
        "RUN step: the outside host saw {got:?}, not {}",
        out.host_ip
    );
    Ok(())
}

/// docker's containers (a busybox image imported from a tar: no registry here) ping and talk
/// to each other while kiln's containers do the same next to them.
#[test]
fn docker_containers_keep_working_beside_kiln() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft", "docker"])? else {
        return Ok(());
    };
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()?;
    if !info.status.success() {
        ensure!(
            std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() != Ok("1"),
            "dockerd is not running (REQUIRE_PRIVILEGED_TESTS=1): {}",
            text(&info)
        );
        eprintln!("skipped: dockerd is not running");
        return Ok(());
    }
    let _reap = Reaper::new(&t);
    let pid = std::process::id();
    let image = format!("kiln-it-busybox:{pid}");
    let (dweb, dcli) = (format!("kiln-it-dweb-{pid}"), format!("kiln-it-dcli-{pid}"));
    struct Docker(Vec<String>, String);
    impl Drop for Docker {
        fn drop(&mut self) {
            for c in &self.0 {
                let _ = Command::new("docker").args(["rm", "-f", c]).output();
            }
            let _ = Command::new("docker").args(["rmi", &self.1]).output();
        }
    }
    let _docker = Docker(vec![dweb.clone(), dcli.clone()], image.clone());
    let mut import = Command::new("docker")
        .args(["import", "-", &image])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write as _;
        let mut stdin = import.stdin.take().context("stdin")?;
        stdin.write_all(&busybox_tar()?)?;
    }
    let imported = import.wait_with_output()?;
    ensure!(
        imported.status.success(),
        "docker import: {}",
        text(&imported)
    );
    run_ok(
        "docker",
        &[
            "run",
            "-d",
            "--name",
            &dweb,
            &image,
            "/bin/sh",
            "-c",
            "mkdir -p /www && echo hello-from-docker > /www/index.html && exec httpd -f -p 80 -h /www",
        ],
    )?;
    run_ok(
        "docker",
        &["run", "-d", "--name", &dcli, &image, "/bin/sleep", "1000"],
    )?;
    // kiln's side, at the same time on the default bridge.
    t.write("Dockerfile", WEB);
    t.build("fwweb:2", &[])?;
    let (k1, k2) = (name("fwk1"), name("fwk2"));
    run_d(&t, "bridge", &k1, "fwweb:2", &["sleep", "1000"])?;
    run_d(
        &t,
        "bridge",
        &k2,
        "fwweb:2",
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    )?;
    let dweb_ip = run_ok(
        "docker",
        &["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &dweb],
    )?
    .trim()
    .to_owned();
    let mut ping = vec!["exec", dcli.as_str()];
    ping.extend(ping_argv(&dweb_ip));
    let docker_ping = run_ok("docker", &ping);
    ensure!(docker_ping.is_ok(), "docker ping: {docker_ping:?}");
    let dweb_url = format!("http://{dweb_ip}/");
    let mut fetch = vec!["exec", dcli.as_str()];
    fetch.extend(wget_argv(&dweb_url));
    let mut docker_page = Err(anyhow::anyhow!("not tried"));
    for _ in 0..10 {
        docker_page = run_ok("docker", &fetch);
        if docker_page.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    ensure!(
        docker_page.as_deref().ok() == Some("hello-from-docker\n"),
        "docker's containers cannot talk: {docker_page:?}"
    );
    let ip_k2 = ip_of(&t, &k2)?;
    ensure!(pings(&t, &k1, &ip_k2), "kiln ping beside docker");
    let got = (0..10).find_map(|_| {
        page(&t, &k1, &ip_k2).or_else(|| {
            std::thread::sleep(std::time::Duration::from_millis(200));
            None
        })
    });
    ensure!(
        got.as_deref() == Some("hello-over-tcp\n"),
        "kiln TCP beside docker: {got:?}"
    );
    // docker's own chains are as docker made them: kiln only added its jump to DOCKER-USER.
    let save = run_ok("iptables-nft-save", &["-t", "filter"])?;
    ensure!(
        save.contains("-A FORWARD -j DOCKER-USER\n")
            && save.contains("-A DOCKER-USER -j KILN-FORWARD\n")
            && save.contains("-A DOCKER-USER -j RETURN\n"),
        "{save}"
    );
    Ok(())
}

/// `kiln system check` on a host whose firewall drops forwarded traffic without kiln's chain
/// (here a private network namespace with its own empty iptables: FORWARD DROP, and
/// ip_forward off), as after a firewall reload flushed kiln's rules; `kiln network ls` warns;
/// `--fix` repairs both.
#[test]
fn system_check_names_what_blocks_the_bridges_and_fix_repairs_it() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft", "unshare", "iptables-nft"])? else {
        return Ok(());
    };
    let kiln = crate::harness::kiln_bin();
    let k = kiln.to_str().context("utf-8 path")?;
    let script = format!(
        "iptables-nft -P FORWARD DROP; echo 0 > /proc/sys/net/ipv4/ip_forward; \
         {k} network ls 2>&1 >/dev/null; {k} system check; echo rc=$?; echo =====; \
         {k} system check --fix; echo rc=$?; echo =====; \
         iptables-nft-save -t filter; cat /proc/sys/net/ipv4/ip_forward"
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .env("KILN_ROOT", &t.root)
        .stdin(Stdio::null())
        .output()?;
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    let parts: Vec<&str> = all.split("=====\n").collect();
    ensure!(parts.len() == 3, "{}", text(&out));
    let before = parts[0];
    ensure!(
        before.contains(
            "warning: 2 thing(s) on this host block kiln's bridges: run `kiln system check`"
        ) && before.contains("blocked: IPv4 forwarding is off")
            && before.contains(
                "blocked: iptables-nft: the filter table's FORWARD chain (policy DROP) drops \
                 traffic of kiln0"
            )
            && before.contains("kiln system check --fix")
            && before.contains("rc=1"),
        "{all}"
    );
    let fixed = parts[1];
    ensure!(
        fixed.contains("ok: nothing on this host blocks kiln's bridges") && fixed.contains("rc=0"),
        "{all}"
    );
    ensure!(
        parts[2].contains("-A FORWARD -j KILN-FORWARD\n")
            && parts[2].contains("-A KILN-FORWARD -i kiln0 -j ACCEPT\n")
            && parts[2].trim_end().ends_with('1'),
        "{all}"
    );
    Ok(())
}

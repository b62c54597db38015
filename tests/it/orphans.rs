//! What a container holds host-wide (lease, published port, veth, pinned namespace, cgroup)
//! goes back when its owner dies, and a shared network keeps its address while anyone uses it.

use crate::harness::{TestDir, busybox_dir, text};
use crate::network::{Reaper, get, id_of, lease, links, name, nft_ruleset, settles, unowned};
use anyhow::{Context as _, ensure};
use std::path::Path;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn kill9(pid: i32) -> anyhow::Result<()> {
    let p = rustix::process::Pid::from_raw(pid).context("pid")?;
    rustix::process::kill_process(p, rustix::process::Signal::KILL)?;
    Ok(())
}

fn ppid(pid: i32) -> anyhow::Result<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().nth(1))
        .context("ppid")?
        .parse()?)
}

fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_dead_supervisor_and_a_deleted_root_free_the_published_port() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let n = name("orphan");
    let out = t.ok(&[
        "run", "-d", "--name", &n, "-p", "18093:80", "-m", "32m", "busybox", "sleep", "1000",
    ])?;
    let id = stdout(&out);
    ensure!(id == id_of(&t, &n)?, "run -d printed {id:?}");
    let ip = lease(&id).context("a lease")?["ip"]
        .as_str()
        .context("ip")?
        .to_owned();
    let veth = format!("kv{:08x}", u32::from(ip.parse::<std::net::Ipv4Addr>()?));
    let netns = Path::new("/run/kiln/netns").join(&id);
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(
        t.root.join("containers").join(&id).join("state.json"),
    )?)?;
    let sandbox = state["pid"].as_i64().context("pid")? as i32;
    let cgroups: Vec<std::path::PathBuf> = state["cgroups"]
        .as_array()
        .context("cgroups")?
        .iter()
        .filter_map(|d| d.as_str().map(Into::into))
        .collect();
    ensure!(links()?.contains(&veth), "no {veth}");
    ensure!(nft_ruleset().contains(&format!("{ip}:80")), "no DNAT rule");
    ensure!(netns.exists() && !cgroups.is_empty());

    // The owner dies without a word and its KILN_ROOT goes with it.
    let supervisor = ppid(sandbox)?;
    kill9(supervisor)?;
    std::fs::remove_dir_all(&t.root)?;

    // A new KILN_ROOT publishes the same port: the dead one's resources are reclaimed first.
    let Some(t2) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t2);
    let n2 = name("heir");
    let out = t2.kiln(&[
        "run", "-d", "--name", &n2, "-p", "18093:80", "busybox", "httpd", "-f", "-p", "80",
    ]);
    ensure!(out.status.success(), "{}", text(&out));
    let id2 = id_of(&t2, &n2)?;
    ensure!(lease(&id).is_none(), "the dead one's lease remains");
    ensure!(!netns.exists(), "its namespace is still pinned");
    ensure!(
        !Path::new("/run/kiln/containers")
            .join(format!("{id}.json"))
            .exists()
    );
    ensure!(gone(sandbox), "its processes still run");
    for d in &cgroups {
        ensure!(!d.exists(), "{} remains", d.display());
    }
    let ip2 = lease(&id2).context("the heir's lease")?["ip"]
        .as_str()
        .context("ip")?
        .to_owned();
    ensure!(
        ip2 != ip,
        "the heir got the dead one's address {ip}: the test cannot tell its veth apart"
    );
    ensure!(
        settles(|| links().is_ok_and(|l| !l.contains(&veth))),
        "{veth} remains"
    );
    let rules = nft_ruleset();
    ensure!(
        !rules.contains(&format!("{ip}:")),
        "a rule names {ip}:\n{rules}"
    );
    ensure!(
        rules.contains(&format!("{ip2}:80")),
        "the heir's rule:\n{rules}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    ensure!(!mounts.contains(&id), "a bind mount names {id}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while get(18093).is_err() {
        ensure!(
            std::time::Instant::now() < deadline,
            "the heir does not answer on 18093"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    t2.ok(&["rm", "-f", &n2])?;
    ensure!(unowned().is_empty(), "left: {:?}", unowned());
    Ok(())
}

/// The IPv4 address of `name` as its own `ip` sees it.
fn inner_ip(t: &TestDir, name: &str) -> anyhow::Result<String> {
    let out = t.ok(&["exec", name, "ip", "-4", "-o", "addr", "show", "eth0"])?;
    let s = stdout(&out);
    s.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_owned)
        .with_context(|| format!("no address in {s:?}"))
}

#[test]
fn a_shared_network_keeps_its_address_until_every_sharer_is_gone() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let reap = Reaper::new(&t);
    // A /30 has one address for containers: whoever holds it, nobody else gets one.
    let net = name("share");
    let third = 100 + std::process::id() % 100;
    let subnet = format!("10.91.{third}.0/30");
    t.ok(&["network", "create", "--subnet", &subnet, &net])?;
    reap.network(&net);
    let (x, s, y) = (name("x"), name("sharer"), name("y"));
    let run = |n: &str, network: &str| {
        t.kiln(&[
            "run",
            "-d",
            "--name",
            n,
            "--network",
            network,
            "busybox",
            "sleep",
            "1000",
        ])
    };
    let out = run(&x, &net);
    ensure!(out.status.success(), "{}", text(&out));
    let x_id = id_of(&t, &x)?;
    let out = run(&s, &format!("container:{x}"));
    ensure!(out.status.success(), "{}", text(&out));
    let ip = inner_ip(&t, &s)?;
    ensure!(ip == format!("10.91.{third}.2"), "{ip}");

    // X goes; its sharer still uses the address, so it stays leased.
    t.ok(&["rm", "-f", &x])?;
    ensure!(inner_ip(&t, &s)? == ip, "the sharer lost its address");
    let leases = std::fs::read_to_string(format!("/run/kiln/networks/{net}/leases.json"))?;
    ensure!(leases.contains(&x_id), "the lease went with X: {leases}");
    let out = run(&y, &net);
    if out.status.success() {
        let y_ip = inner_ip(&t, &y)?;
        ensure!(y_ip != ip, "{y} got the sharer's address {ip}");
        t.ok(&["rm", "-f", &y])?;
    } else {
        ensure!(text(&out).contains("no free address"), "{}", text(&out));
    }

    // The sharer goes too: now the address is free, and the next container gets it.
    t.ok(&["rm", "-f", &s])?;
    ensure!(unowned().is_empty(), "left: {:?}", unowned());
    let out = run(&y, &net);
    ensure!(out.status.success(), "{}", text(&out));
    ensure!(inner_ip(&t, &y)? == ip);
    t.ok(&["rm", "-f", &y])?;
    Ok(())
}

/// The network namespace of `name`'s PID 1 (`net:[inode]`).
fn netns_of(t: &TestDir, name: &str) -> anyhow::Result<String> {
    Ok(stdout(&t.ok(&[
        "exec",
        name,
        "readlink",
        "/proc/1/ns/net",
    ])?))
}

#[test]
fn start_rejoins_its_own_lease_while_a_sharer_holds_it() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let (x, s) = (name("rejoin-x"), name("rejoin-s"));
    let run = |n: &str, network: &str| {
        t.ok(&[
            "run",
            "-d",
            "--name",
            n,
            "--network",
            network,
            "busybox",
            "sleep",
            "1000",
        ])
    };
    run(&x, "bridge")?;
    let x_id = id_of(&t, &x)?;
    let ip = inner_ip(&t, &x)?;
    run(&s, &format!("container:{x}"))?;
    ensure!(inner_ip(&t, &s)? == ip, "the sharer has another address");

    // X stops; its sharer keeps X's lease (and the namespace, alive through its processes).
    t.ok(&["stop", "-t", "1", &x])?;
    ensure!(
        lease(&x_id).is_some(),
        "the lease went while the sharer uses it"
    );
    ensure!(inner_ip(&t, &s)? == ip, "the sharer lost its address");

    // X starts again on its own lease, in the namespace the sharer is in.
    let out = t.kiln(&["start", &x]);
    ensure!(out.status.success(), "{}", text(&out));
    ensure!(inner_ip(&t, &x)? == ip, "X came back with another address");
    let shown = stdout(&t.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &x])?);
    ensure!(shown == ip, "inspect says {shown}, X has {ip}");
    ensure!(
        netns_of(&t, &x)? == netns_of(&t, &s)?,
        "X and its sharer are apart"
    );
    let gw = crate::network::default_gateway()?;
    let out = t.kiln(&["exec", &x, "ping", "-c", "1", "-W", "3", &gw]);
    ensure!(
        out.status.success(),
        "X cannot reach its gateway: {}",
        text(&out)
    );

    // The sharer goes: X keeps the address; X goes: everything is given back.
    t.ok(&["rm", "-f", &s])?;
    ensure!(inner_ip(&t, &x)? == ip);
    ensure!(lease(&x_id).is_some());
    t.ok(&["rm", "-f", &x])?;
    ensure!(lease(&x_id).is_none(), "X's lease outlived both");
    ensure!(settles(|| unowned().is_empty()), "left: {:?}", unowned());
    Ok(())
}

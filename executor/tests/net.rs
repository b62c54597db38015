//! Privileged networking tests: real bridges, network namespaces, veth pairs and nftables.
//!
//! Needs root, `nft`, `ip` and `/bin/busybox`. Without them every test is skipped with the
//! reason, unless REQUIRE_PRIVILEGED_TESTS=1, which turns the skip into a failure (CI).
//!
//! Isolation: each test gets its own bridge (`kt<pid>x<n>`), its own /24 in 10.89.0.0/16, its
//! own nft table (`kiln_t<pid>`), and its own state and run dirs in a tempdir; traffic only goes
//! to addresses inside these namespaces or to the host's loopback. A fixture tears everything
//! down even when the test body panics, and the harness checks that no link or table is left.
//!
//! Coexistence with host firewalls (issue 12) is tested on this host's own firewall (dockerd's
//! in CI) and in private network namespaces standing in for other hosts: one without any
//! firewall, one with ufw enabled, one with FORWARD DROP in both iptables backends. The
//! machine's own firewall is never changed.
//!
//! Run one test: `cargo test -p kiln-executor --test net -- NAME_SUBSTRING`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use executor::net::attach::Networks;
use executor::net::firewall::{self, XtablesCommand};
use executor::net::ipam::{Ipam, NetworkConfig};
use executor::net::netlink::{Netlink, NetnsTarget, RealNetlink};
use executor::net::netns::Netns;
use executor::net::nft::NftCommand;
use executor::net::pool::NetnsPool;
use executor::net::subnet::{PortMapping, Proto, Subnet};

type Nets = Networks<RealNetlink, NftCommand>;

const BUSYBOX: &str = "/bin/busybox";

struct Fixture {
    dir: tempfile::TempDir,
    net: NetworkConfig,
    nets: Nets,
    table: String,
}

impl Fixture {
    fn new(n: u32) -> Fixture {
        let pid = std::process::id();
        let dir = tempfile::tempdir().expect("tempdir");
        let third = u8::try_from((pid % 40) * 6 + n).expect("fits in a byte");
        let subnet = Subnet::new(Ipv4Addr::new(10, 89, third, 0), 24).expect("subnet");
        let net = NetworkConfig {
            name: "t".into(),
            bridge: format!("kt{pid}x{n}"),
            subnet,
            gateway: subnet.first_host(),
        };
        let ipam = Ipam::open(dir.path().join("networks")).expect("ipam");
        ipam.create_network(&net).expect("create network");
        let table = format!("kiln_t{pid}");
        let nets = Networks::new(
            ipam,
            RealNetlink::open().expect("netlink"),
            NftCommand::default(),
            Box::new(XtablesCommand::default()),
            PathBuf::from("/proc/sys"),
        )
        .with_table(&table);
        Fixture {
            dir,
            net,
            nets,
            table,
        }
    }

    fn netns(&self, name: &str) -> Netns {
        Netns::create(self.dir.path().join("run").join(name)).expect("create netns")
    }

    fn pool(&self, max: usize) -> NetnsPool {
        NetnsPool::new(self.dir.path().join("pool"), "t", max)
    }

    /// This fixture's links: its bridge and the host ends of veths with addresses in its
    /// subnet (other tests, and the kernel finishing a dead namespace's veths in the
    /// background, change the rest of the host's links meanwhile).
    fn host_links(&mut self) -> usize {
        let [a, b, c, _] = self.net.subnet.network().octets();
        let ours = format!("kv{a:02x}{b:02x}{c:02x}");
        let bridge = self.net.bridge.clone();
        self.nets
            .netlink()
            .link_names()
            .expect("links")
            .iter()
            .filter(|n| **n == bridge || n.starts_with(&ours))
            .count()
    }

    fn leases(&self) -> usize {
        self.nets.ipam().leases("t").expect("leases").len()
    }

    fn rules(&self) -> usize {
        self.table_text().lines().filter(|l| is_rule(l)).count()
    }

    fn table_text(&self) -> String {
        NftCommand::default()
            .list_table(&self.table)
            .expect("nft list")
            .unwrap_or_default()
    }
}

fn is_rule(line: &str) -> bool {
    let t = line.trim();
    !(t.is_empty()
        || t.starts_with("table")
        || t.starts_with("chain")
        || t.starts_with("type")
        || t == "}")
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.pool(8).destroy(&mut self.nets);
        let mut nets = self.nets.ipam().networks().unwrap_or_default();
        nets.retain(|n| n.name != "bridge");
        for net in nets {
            for l in self.nets.ipam().leases(&net.name).unwrap_or_default() {
                let _ = self.nets.detach(&net.name, &l.container);
            }
            let _ = self.nets.remove_bridge(&net);
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .stderr(Stdio::null())
            .status();
        let _ = firewall::sync(&mut XtablesCommand::default(), &self.table, &[]);
        for sub in ["run", "pool/t"] {
            if let Ok(rd) = std::fs::read_dir(self.dir.path().join(sub)) {
                for e in rd.flatten() {
                    if e.path().extension().is_none_or(|x| x == "netns") {
                        let _ = executor::net::netns::remove_path(&e.path());
                    }
                }
            }
        }
    }
}

/// Runs a command inside `ns` (the child inherits the spawning thread's namespace).
fn in_ns(ns: &Netns, args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    ns.run(move || {
        Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .expect("spawn in netns")
    })
    .expect("enter netns")
}

/// One echo request, retried twice: on this shared 2-core machine a first ARP exchange can
/// take longer than busybox's one-second wait. Bounded: at most three packets.
fn ping(ns: &Netns, ip: Ipv4Addr) -> bool {
    (0..3).any(|_| {
        in_ns(ns, &[BUSYBOX, "ping", "-c1", "-W1", &ip.to_string()])
            .status
            .success()
    })
}

/// One echo request with a one-second wait: for addresses that must not answer (a positive
/// check uses [`ping`], which retries).
fn answers_ping(ns: &Netns, ip: Ipv4Addr) -> bool {
    in_ns(ns, &[BUSYBOX, "ping", "-c1", "-W1", &ip.to_string()])
        .status
        .success()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

/// A one-shot TCP server inside `ns` on `port` that answers `reply` to the first client.
fn serve_once(ns: &Netns, port: u16, reply: &'static str) -> std::thread::JoinHandle<()> {
    let listener = ns
        .run(move || TcpListener::bind(("0.0.0.0", port)))
        .expect("enter netns")
        .expect("bind in netns");
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(reply.as_bytes());
        }
    })
}

fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(1500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------------------------

fn two_namespaces_ping_each_other_by_ip() {
    let mut f = Fixture::new(1);
    let (a, b) = (f.netns("a"), f.netns("b"));
    let aa = f.nets.attach("t", "a", &a, &[]).expect("attach a");
    let ab = f.nets.attach("t", "b", &b, &[]).expect("attach b");
    assert_ne!(aa.ip, ab.ip);
    assert!(f.net.subnet.contains(aa.ip) && f.net.subnet.contains(ab.ip));
    assert!(ping(&a, ab.ip), "a cannot ping b at {}", ab.ip);
    assert!(ping(&b, aa.ip), "b cannot ping a at {}", aa.ip);
    assert!(ping(&a, f.net.gateway), "a cannot ping the gateway");
    // Inside: exactly lo and eth0, with the leased address and a default route.
    let out = in_ns(&a, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{}/24", aa.ip)), "{text}");
    let out = in_ns(&a, &["ip", "route", "show", "default"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("via {}", f.net.gateway)), "{text}");
    let mut inside = RealNetlink::open_in(a.as_fd()).expect("netlink in a");
    let mut names = inside.link_names().expect("names");
    names.sort();
    assert_eq!(names, ["eth0", "lo"]);
}

fn published_port_is_reachable_from_host_loopback() {
    let mut f = Fixture::new(2);
    let ns = f.netns("web");
    let host_port = free_port();
    let p: PortMapping = format!("{host_port}:8080").parse().expect("spec");
    let att = f.nets.attach("t", "web", &ns, &[p]).expect("attach");
    assert_eq!(att.ports, [p]);
    let server = serve_once(&ns, 8080, "hello from the container\n");
    let got = fetch(SocketAddr::from((Ipv4Addr::LOCALHOST, host_port))).expect("fetch");
    assert_eq!(got, "hello from the container\n");
    server.join().expect("server");
    // An address-bound mapping answers on that address too.
    let host_port2 = free_port();
    let ns2 = f.netns("web2");
    let q: PortMapping = format!("127.0.0.1:{host_port2}:81").parse().expect("spec");
    f.nets.attach("t", "web2", &ns2, &[q]).expect("attach 2");
    let server = serve_once(&ns2, 81, "second\n");
    let got = fetch(SocketAddr::from((Ipv4Addr::LOCALHOST, host_port2))).expect("fetch 2");
    assert_eq!(got, "second\n");
    server.join().expect("server 2");
    assert!(f.table_text().contains(&format!("dnat to {}:8080", att.ip)));
    // -P: the allocator picks the host port.
    let ns3 = f.netns("web3");
    let any = PortMapping::any_host_port(82, Proto::Tcp);
    let a3 = f.nets.attach("t", "web3", &ns3, &[any]).expect("attach -P");
    let picked = a3.ports[0].host_port;
    assert_ne!(picked, 0);
    let server = serve_once(&ns3, 82, "third\n");
    let got = fetch(SocketAddr::from((Ipv4Addr::LOCALHOST, picked))).expect("fetch 3");
    assert_eq!(got, "third\n");
    server.join().expect("server 3");
}

fn user_network_create_attach_and_rm_removes_its_bridge() {
    let mut f = Fixture::new(6);
    let pid = std::process::id();
    let name = format!("kt{pid}user");
    // 10.89.240-249.0/24: above every Fixture subnet of this run.
    let third = 240 + u8::try_from(pid % 10).expect("below 10");
    let subnet = Subnet::new(Ipv4Addr::new(10, 89, third, 0), 24).expect("subnet");
    let net = f
        .nets
        .ipam()
        .define_network(&name, Some(subnet), &[])
        .expect("define");
    let ns = f.netns("u");
    let a = f.nets.attach(&name, "u", &ns, &[]).expect("attach");
    assert_eq!(a.bridge, net.bridge);
    assert!(ping(&ns, net.gateway));
    let e = f.nets.remove_network(&name).expect_err("in use");
    assert!(e.to_string().contains("1 attached container"), "{e}");
    assert!(f.nets.detach(&name, "u").expect("detach"));
    f.nets.remove_network(&name).expect("rm");
    assert_eq!(
        f.nets.netlink().link_index(&net.bridge).expect("lookup"),
        None
    );
    assert!(f.nets.ipam().network(&name).is_err());
}

fn container_cannot_reach_a_host_loopback_service() {
    let mut f = Fixture::new(3);
    let ns = f.netns("probe");
    f.nets.attach("t", "probe", &ns, &[]).expect("attach");
    let host = TcpListener::bind("127.0.0.1:0").expect("host listener");
    let port = host.local_addr().expect("addr").port();
    // The CVE-2020-8558 attack: the container routes 127.0.0.0/8 to the bridge, hoping the
    // host (whose bridge has route_localnet=1 for published ports) accepts it.
    let gw = f.net.gateway.to_string();
    for cmd in [
        vec![
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet",
        ],
        // 127.0.0.1 must not be a local address in the container either, or its kernel drops
        // the host's SYN-ACK as a martian source.
        vec!["ip", "addr", "flush", "dev", "lo"],
        vec![
            "ip",
            "route",
            "add",
            "127.0.0.0/8",
            "via",
            &gw,
            "dev",
            "eth0",
        ],
    ] {
        let out = in_ns(&ns, &cmd);
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let connect = || {
        ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(700)))
            .expect("enter netns")
    };
    assert!(
        connect().is_err(),
        "the container reached the host's 127.0.0.1:{port}"
    );
    let table = f.table_text();
    let guard = table
        .lines()
        .find(|l| l.contains("127.0.0.0/8") && l.contains("drop") && l.contains(&f.net.bridge))
        .unwrap_or_default()
        .to_string();
    assert!(
        guard.contains("counter") && !guard.contains("packets 0 "),
        "the guard rule saw nothing, so the probe proved nothing: {guard}"
    );
    // Control: without the guard the same probe connects, so the guard is what stops it.
    let st = Command::new("nft")
        .args(["flush", "chain", "ip", &f.table, "guard"])
        .status()
        .expect("nft");
    assert!(st.success());
    let control = connect();
    f.nets.resync_rules().expect("restore rules");
    assert!(
        control.is_ok(),
        "control probe failed, the test setup is wrong: {control:?}"
    );
    assert!(connect().is_err(), "guard restored by resync_rules");
    drop(host);
}

fn port_in_use_gives_a_clear_error_and_leaks_nothing() {
    let mut f = Fixture::new(4);
    let ns = f.netns("c");
    // Make the bridge and table exist first so the counts include them.
    let first = f.netns("first");
    f.nets
        .attach("t", "first", &first, &[])
        .expect("attach first");
    let (links, leases, rules) = (f.host_links(), f.leases(), f.rules());
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let p: PortMapping = format!("127.0.0.1:{port}:80").parse().expect("spec");
    let e = f.nets.attach("t", "c", &ns, &[p]).expect_err("port in use");
    assert_eq!(
        e.to_string(),
        format!("host port 127.0.0.1:{port}:80/tcp is already in use on the host")
    );
    // A port another container publishes is refused too.
    let q: PortMapping = format!("{}:80", free_port()).parse().expect("spec");
    let ns2 = f.netns("d");
    f.nets.attach("t", "d", &ns2, &[q]).expect("publish");
    let e = f
        .nets
        .attach("t", "c", &ns, &[q])
        .expect_err("published twice");
    assert!(
        e.to_string().contains("already published by container d"),
        "{e}"
    );
    f.nets.detach("t", "d").expect("detach d");
    assert_eq!(
        (f.host_links(), f.leases(), f.rules()),
        (links, leases, rules)
    );
}

fn ipam_two_processes_allocate_without_collisions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = NetworkConfig::user("p", "10.89.250.0/24".parse().expect("cidr"));
    Ipam::open(dir.path())
        .expect("open")
        .create_network(&net)
        .expect("create");
    let exe = std::env::current_exe().expect("exe");
    let children: Vec<_> = ["x", "y"]
        .iter()
        .map(|tag| {
            Command::new(&exe)
                .args(["--ipam-child", &dir.path().display().to_string(), tag])
                .spawn()
                .expect("spawn child")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().expect("wait").success(), "child failed");
    }
    let leases = Ipam::open(dir.path())
        .expect("open")
        .leases("p")
        .expect("leases");
    assert_eq!(leases.len(), 100);
    let ips: std::collections::HashSet<_> = leases.iter().map(|l| l.ip).collect();
    assert_eq!(ips.len(), 100, "two processes were handed the same address");
}

fn ipam_child(dir: &str, tag: &str) {
    let ipam = Ipam::open(dir).expect("open");
    let net = ipam.network("p").expect("network");
    for i in 0..50 {
        ipam.allocate(&net, &format!("{tag}{i}"), &[])
            .expect("allocate");
    }
}

fn fifty_attach_detach_cycles_leave_links_leases_and_rules_as_they_were() {
    let mut f = Fixture::new(5);
    // Warm up: the bridge and the network's NAT rules exist from here on (like docker0 and
    // its rules); only published ports come and go with containers.
    let w = f.netns("warm");
    f.nets.attach("t", "warm", &w, &[]).expect("warm attach");
    f.nets.detach("t", "warm").expect("warm detach");
    w.remove().expect("rm netns");
    let base = f.rules();
    assert!(base > 0, "the network's rules stay without containers");
    // A resident container keeps the table, as a long-running `kiln run -d` would.
    let keeper = f.netns("keeper");
    f.nets.attach("t", "keeper", &keeper, &[]).expect("keeper");
    let before = (f.host_links(), f.leases(), f.rules());
    let (mut attach, mut detach, mut detach_gone, mut sync) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..50 {
        let ns = f.netns(&format!("c{i}"));
        let p: PortMapping = format!("{}:80", free_port()).parse().expect("spec");
        let t = Instant::now();
        f.nets
            .attach("t", &format!("c{i}"), &ns, &[p])
            .expect("attach");
        attach.push(t.elapsed());
        assert_eq!(f.leases(), 2);
        // Half the cycles detach while the namespace lives (`kiln network disconnect`), half
        // after it is gone (the usual `rm` of an exited container: the kernel has then started
        // tearing the veth pair down itself).
        if i % 2 == 0 {
            let t = Instant::now();
            assert!(f.nets.detach("t", &format!("c{i}")).expect("detach"));
            detach.push(t.elapsed());
            ns.remove().expect("rm netns");
        } else {
            ns.remove().expect("rm netns");
            let t = Instant::now();
            assert!(f.nets.detach("t", &format!("c{i}")).expect("detach"));
            detach_gone.push(t.elapsed());
        }
        let t = Instant::now();
        f.nets.resync_rules().expect("sync");
        sync.push(t.elapsed());
    }
    // Without published ports the rules do not change, so no nft run is needed.
    let (mut attach_np, mut detach_np) = (Vec::new(), Vec::new());
    for i in 0..10 {
        let ns = f.netns(&format!("n{i}"));
        let t = Instant::now();
        f.nets
            .attach("t", &format!("n{i}"), &ns, &[])
            .expect("attach");
        attach_np.push(t.elapsed());
        let t = Instant::now();
        assert!(f.nets.detach("t", &format!("n{i}")).expect("detach"));
        detach_np.push(t.elapsed());
        ns.remove().expect("rm netns");
    }
    assert_eq!((f.host_links(), f.leases(), f.rules()), before);
    println!(
        "    timing without ports (rules unchanged, nft skipped): attach median {:?}, detach median {:?}",
        median(attach_np),
        median(detach_np)
    );
    assert!(
        !f.nets.detach("t", "c0").expect("detach again"),
        "detach is idempotent"
    );
    f.nets.detach("t", "keeper").expect("keeper detach");
    keeper.remove().expect("rm keeper netns");
    assert_eq!(
        f.rules(),
        base,
        "the last container leaves the network's rules"
    );
    println!(
        "    timing over 50 cycles: attach median {:?}; detach median {:?} with the netns alive, \
         {:?} after it is gone; one nft run (resync_rules) median {:?}",
        median(attach),
        median(detach),
        median(detach_gone),
        median(sync)
    );
}

fn netns_pool_reuses_prepared_namespaces() {
    let mut f = Fixture::new(0);
    let pool = f.pool(4);
    let t = Instant::now();
    pool.prewarm(&mut f.nets, 2).expect("prewarm");
    let warm = t.elapsed();
    assert_eq!(f.leases(), 2);
    let a = pool.acquire(&mut f.nets).expect("acquire");
    let b = pool.acquire(&mut f.nets).expect("acquire 2");
    assert_ne!(a.path(), b.path());
    assert_ne!(a.attachment().ip, b.attachment().ip);
    assert!(
        ping(a.netns(), b.attachment().ip),
        "pooled namespaces reach each other"
    );
    // The sandbox's view: open by path, setns.
    let by_path = Netns::open(a.path()).expect("open by path");
    assert!(ping(&by_path, f.net.gateway));
    drop(by_path);
    let (slot, path) = (a.slot(), a.path().to_path_buf());
    pool.release(a, &mut f.nets).expect("release");
    let (mut acq, mut rel) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t = Instant::now();
        let p = pool.acquire(&mut f.nets).expect("reacquire");
        acq.push(t.elapsed());
        assert_eq!((p.slot(), p.path()), (slot, path.as_path()), "slot reused");
        let t = Instant::now();
        pool.release(p, &mut f.nets).expect("release");
        rel.push(t.elapsed());
    }
    // A namespace that comes back changed is rebuilt, not handed out again as is.
    let p = pool.acquire(&mut f.nets).expect("acquire");
    let out = in_ns(
        p.netns(),
        &[
            "ip", "link", "add", "junk0", "type", "veth", "peer", "name", "junk1",
        ],
    );
    assert!(out.status.success());
    pool.release(p, &mut f.nets).expect("release dirty");
    let p = pool.acquire(&mut f.nets).expect("acquire rebuilt");
    let mut inside = RealNetlink::open_in(p.netns().as_fd()).expect("netlink");
    assert_eq!(inside.link_index("junk0").expect("lookup"), None);
    assert!(ping(p.netns(), f.net.gateway));
    drop(p);
    drop(b);
    assert_eq!(pool.destroy(&mut f.nets).expect("destroy"), 2);
    assert_eq!(f.leases(), 0);
    assert!(!f.table_text().contains("dnat to"), "{}", f.table_text());
    println!(
        "    timing: prewarm of 2 {:?}; pooled acquire median {:?}, release median {:?}",
        warm,
        median(acq),
        median(rel)
    );
}

// --- Coexistence with host firewalls (issue 12) -------------------------------------------
//
// These run twice: in the machine's own namespace, with whatever firewall it has (in CI,
// dockerd's FORWARD DROP, br_netfilter and DOCKER-USER), and inside a private "host"
// namespace with no firewall at all, which is a machine without dockerd.

/// Runs `f` inside a fresh network namespace standing in for a second host (its own
/// iptables tables, sysctls and links), then removes the namespace.
fn in_private_host<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = Netns::create(dir.path().join("host")).expect("private host namespace");
    let out = host.run(|| {
        // A host has its loopback up.
        let mut nl = RealNetlink::open().expect("netlink in the private host");
        let lo = nl.link_index("lo").expect("lookup").expect("lo");
        nl.set_up(lo).expect("lo up");
        f()
    });
    let _ = host.remove();
    match out {
        Ok(v) => v,
        Err(e) => panic!("the test body failed inside the private host: {e}"),
    }
}

/// `iptables-*-save -t filter` in the calling thread's namespace (empty when absent).
fn saved(backend: &str) -> String {
    Command::new(format!("{backend}-save"))
        .args(["-t", "filter"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn iptables(backend: &str, args: &[&str]) {
    let out = Command::new(backend).args(args).output().expect(backend);
    assert!(out.status.success(), "{backend} {args:?}: {out:?}");
}

/// A second network in the fixture's state, on its own bridge and /24 (10.89.250-254: above
/// every other test subnet of both test binaries).
fn second_network(f: &mut Fixture) -> NetworkConfig {
    let pid = std::process::id();
    let third = 250 + u8::try_from(pid % 5).expect("below 5");
    let subnet = Subnet::new(Ipv4Addr::new(10, 89, third, 0), 24).expect("subnet");
    f.nets
        .ipam()
        .define_network(&format!("kt{pid}other"), Some(subnet), &[])
        .expect("define a second network")
}

/// A namespace outside every bridge, standing in for a host on the internet: a veth pair
/// whose host end gets `.1` and whose far end (`eth0` inside) gets `.2` of a /30 of
/// 192.0.2.0/24 (TEST-NET-1, documentation addresses, created here only).
struct Outside {
    ns: Option<Netns>,
    host_link: String,
    host_ip: Ipv4Addr,
    ip: Ipv4Addr,
}

impl Outside {
    fn new(f: &mut Fixture) -> Outside {
        let pid = std::process::id();
        let base = u8::try_from(pid % 64 * 4).expect("fits");
        let (host_ip, ip) = (
            Ipv4Addr::new(192, 0, 2, base + 1),
            Ipv4Addr::new(192, 0, 2, base + 2),
        );
        let ns = f.netns("outside");
        let host_link = format!("kt{pid}out");
        let nl = f.nets.netlink();
        let i = nl
            .create_veth(&host_link, "eth0", Some(NetnsTarget::Fd(ns.as_fd())))
            .expect("veth to the outside");
        nl.add_address(i, host_ip, 30).expect("host address");
        nl.set_up(i).expect("up");
        let mut inside = RealNetlink::open_in(ns.as_fd()).expect("netlink outside");
        for l in ["lo", "eth0"] {
            let j = inside.link_index(l).expect("lookup").expect(l);
            inside.set_up(j).expect("up inside");
        }
        let j = inside.link_index("eth0").expect("lookup").expect("eth0");
        inside.add_address(j, ip, 30).expect("outside address");
        // No route back to the containers: only NAT (the host's address as source) lets the
        // answers find their way.
        Outside {
            ns: Some(ns),
            host_link,
            host_ip,
            ip,
        }
    }

    /// A one-shot server on the outside that answers with the address the client came from.
    fn serve_peer_address(&self, port: u16) -> std::thread::JoinHandle<()> {
        let listener = self
            .ns
            .as_ref()
            .expect("alive")
            .run(move || TcpListener::bind(("0.0.0.0", port)))
            .expect("enter netns")
            .expect("bind outside");
        std::thread::spawn(move || {
            if let Ok((mut s, peer)) = listener.accept() {
                let _ = s.write_all(peer.ip().to_string().as_bytes());
            }
        })
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if let Ok(mut nl) = RealNetlink::open()
            && let Ok(Some(i)) = nl.link_index(&self.host_link)
        {
            let _ = nl.delete_link(i);
        }
        if let Some(ns) = self.ns.take() {
            let _ = ns.remove();
        }
    }
}

/// Connects from inside `ns` to `addr` and reads the answer.
fn fetch_in(ns: &Netns, addr: SocketAddr) -> std::io::Result<String> {
    ns.run(move || fetch(addr)).expect("enter netns")
}

fn bridges_isolated_and_open_inside(where_: &str) {
    let mut f = Fixture::new(1);
    let other = second_network(&mut f);
    let (a, b, c) = (f.netns("a"), f.netns("b"), f.netns("c"));
    let _aa = f.nets.attach("t", "a", &a, &[]).expect("attach a");
    let ab = f.nets.attach("t", "b", &b, &[]).expect("attach b");
    let ac = f.nets.attach(&other.name, "c", &c, &[]).expect("attach c");
    assert!(ping(&a, ab.ip), "{where_}: a cannot ping b on one network");
    let port = 8300 + u16::try_from(std::process::id() % 100).expect("fits");
    let server = serve_once(&b, port, "tcp-on-one-network\n");
    let got = fetch_in(&a, SocketAddr::from((ab.ip, port))).expect("TCP a -> b");
    assert_eq!(got, "tcp-on-one-network\n", "{where_}");
    server.join().expect("server b");
    // Across networks: neither ping nor TCP, either way.
    // (The three probes wait for their timeouts at the same time.)
    let _server = serve_once(&c, port, "leak\n");
    let (a_to_c, c_to_b, tcp) = std::thread::scope(|sc| {
        let p1 = sc.spawn(|| answers_ping(&a, ac.ip));
        let p2 = sc.spawn(|| answers_ping(&c, ab.ip));
        let t = sc.spawn(|| fetch_in(&a, SocketAddr::from((ac.ip, port))));
        (p1.join(), p2.join(), t.join().expect("fetch thread"))
    });
    assert_eq!(
        a_to_c.ok(),
        Some(false),
        "{where_}: a reaches c on another network"
    );
    assert_eq!(
        c_to_b.ok(),
        Some(false),
        "{where_}: c reaches b on another network"
    );
    assert!(tcp.is_err(), "{where_}: TCP across networks: {tcp:?}");
    // The bridge-level rules name both bridges; with the second network gone, only ours.
    let table = f.table_text();
    assert!(
        table.contains(&format!("isolate {}", other.name)),
        "{table}"
    );
    let chain = firewall::chain_name(&f.table);
    let nft_save = saved("iptables-nft");
    assert!(
        nft_save.contains(&format!("-A {chain} -i {} -j ACCEPT", other.bridge)),
        "{where_}: {nft_save}"
    );
    let hook = if nft_save.contains(":DOCKER-USER") {
        "DOCKER-USER"
    } else {
        "FORWARD"
    };
    assert_eq!(
        nft_save
            .lines()
            .filter(|l| *l == format!("-A {hook} -j {chain}"))
            .count(),
        1,
        "{where_}: one jump from {hook}: {nft_save}"
    );
    assert!(f.nets.detach(&other.name, "c").expect("detach c"));
    f.nets.remove_network(&other.name).expect("rm other");
    let nft_save = saved("iptables-nft");
    assert!(
        !nft_save.contains(&other.bridge)
            && nft_save.contains(&format!("-A {chain} -i {} ", f.net.bridge)),
        "{where_}: the removed network's rules stay: {nft_save}"
    );
    let table = f.table_text();
    assert!(
        !table.contains(&other.bridge) && !table.contains(&format!("isolate {}", other.name)),
        "{table}"
    );
    println!(
        "    {where_}: FORWARD policy {:?}, jump from {hook}",
        policy(&saved("iptables-nft"))
    );
}

fn policy(save: &str) -> Option<String> {
    save.lines()
        .find_map(|l| l.strip_prefix(":FORWARD "))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_owned)
}

fn outside_through_nat(where_: &str) {
    let mut f = Fixture::new(2);
    let out = Outside::new(&mut f);
    let a = f.netns("a");
    let host_port = free_port();
    let published: PortMapping = format!("{host_port}:80").parse().expect("port");
    let aa = f.nets.attach("t", "a", &a, &[published]).expect("attach a");
    assert!(ping(&a, out.ip), "{where_}: a cannot ping the outside host");
    let port = 8400 + u16::try_from(std::process::id() % 100).expect("fits");
    let server = out.serve_peer_address(port);
    let seen = fetch_in(&a, SocketAddr::from((out.ip, port))).expect("TCP to the outside");
    server.join().expect("outside server");
    assert_eq!(
        seen,
        out.host_ip.to_string(),
        "{where_}: the outside saw {seen}, not the host's address (container {})",
        aa.ip
    );
    // Inward: the outside host reaches a's published port at the host's address (DNAT, then
    // FORWARD into the bridge, which a firewall's drop would stop without kiln's chain).
    let server = serve_once(&a, 80, "published\n");
    let outside = out.ns.as_ref().expect("alive");
    let got = fetch_in(outside, SocketAddr::from((out.host_ip, host_port)));
    assert_eq!(
        got.ok().as_deref(),
        Some("published\n"),
        "{where_}: the outside host cannot reach a published port"
    );
    server.join().expect("published server");
}

fn private_host_without_firewall() {
    in_private_host(|| {
        bridges_isolated_and_open_inside("host without a firewall");
        outside_through_nat("host without a firewall");
    });
}

fn this_host_with_its_firewall() {
    bridges_isolated_and_open_inside("this host");
    outside_through_nat("this host");
}

/// A host with ufw enabled (Debian's package, its shipped rules: FORWARD policy DROP, INPUT
/// DROP, its ufw-* chains): ufw runs in the private host's network namespace and a private
/// mount namespace over a copy of /etc/ufw, so the machine's own firewall and config stay
/// as they are.
fn ufw_host_passes_kiln_bridges() {
    if Command::new("ufw").arg("version").output().is_err() {
        assert!(
            std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() != Ok("1"),
            "ufw missing (apt-get install ufw) and REQUIRE_PRIVILEGED_TESTS=1"
        );
        println!("    skipped: ufw missing (apt-get install ufw)");
        return;
    }
    in_private_host(|| {
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-ec"])
            .arg(
                "d=$(mktemp -d); cp -a /etc/ufw/. \"$d\"/; mount --bind \"$d\" /etc/ufw; \
                 ufw --force enable",
            )
            .output()
            .expect("unshare");
        assert!(out.status.success(), "ufw enable: {out:?}");
        let s = saved("iptables-nft");
        assert!(
            s.contains(":FORWARD DROP") && s.contains("-A FORWARD -j ufw-before-forward"),
            "{s}"
        );
        bridges_isolated_and_open_inside("host with ufw");
        outside_through_nat("host with ufw");
        // And ufw does block kiln's bridges without kiln's chain (TCP: ufw's before.rules
        // accept ICMP echo requests in FORWARD).
        let mut f = Fixture::new(4);
        let (a, b) = (f.netns("a"), f.netns("b"));
        f.nets.attach("t", "a", &a, &[]).expect("attach a");
        let ab = f.nets.attach("t", "b", &b, &[]).expect("attach b");
        let port = 8500 + u16::try_from(std::process::id() % 100).expect("fits");
        let server = serve_once(&b, port, "with-chain\n");
        let got = fetch_in(&a, SocketAddr::from((ab.ip, port)));
        assert_eq!(got.ok().as_deref(), Some("with-chain\n"));
        server.join().expect("server");
        firewall::sync(&mut XtablesCommand::default(), &f.table, &[]).expect("remove");
        let _server = serve_once(&b, port + 1, "without\n");
        let got = fetch_in(&a, SocketAddr::from((ab.ip, port + 1)));
        assert!(
            got.is_err(),
            "ufw lets kiln's TCP through by itself: {got:?}"
        );
    });
}

/// Both iptables backends dropping forwarded traffic (as a legacy firewall beside dockerd's
/// nft rules would): kiln's chain goes into each, traffic passes, and it is the chain that
/// makes it pass.
fn forward_drop_in_nft_and_legacy_iptables_is_passed_by_kiln_chains() {
    in_private_host(|| {
        iptables("iptables-nft", &["-P", "FORWARD", "DROP"]);
        iptables("iptables-legacy", &["-P", "FORWARD", "DROP"]);
        let br = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
            .unwrap_or_default();
        assert_eq!(
            br.trim(),
            "1",
            "br_netfilter must be loaded for this test to mean anything"
        );
        let mut f = Fixture::new(3);
        let (a, b) = (f.netns("a"), f.netns("b"));
        f.nets.attach("t", "a", &a, &[]).expect("attach a");
        let ab = f.nets.attach("t", "b", &b, &[]).expect("attach b");
        let chain = firewall::chain_name(&f.table);
        for backend in ["iptables-nft", "iptables-legacy"] {
            let s = saved(backend);
            assert!(
                s.contains(&format!("-A FORWARD -j {chain}")),
                "{backend}: {s}"
            );
        }
        assert!(ping(&a, ab.ip), "kiln's chains do not pass the traffic");
        // Without the chains (a firewall reload flushing them), the drop wins...
        firewall::sync(&mut XtablesCommand::default(), &f.table, &[]).expect("remove");
        for backend in ["iptables-nft", "iptables-legacy"] {
            assert!(!saved(backend).contains(&chain), "{backend}");
        }
        assert!(
            !answers_ping(&a, ab.ip),
            "traffic passes without kiln's chains"
        );
        // ... and a resync (what `kiln system check --fix` does) brings them back.
        f.nets.resync_rules().expect("resync");
        assert!(ping(&a, ab.ip), "after the resync");
        // dockerd arriving: DOCKER-USER appears, the jump moves there on the next resync.
        iptables("iptables-nft", &["-N", "DOCKER-USER"]);
        iptables("iptables-nft", &["-A", "DOCKER-USER", "-j", "RETURN"]);
        iptables("iptables-nft", &["-I", "FORWARD", "1", "-j", "DOCKER-USER"]);
        f.nets.resync_rules().expect("resync");
        let s = saved("iptables-nft");
        assert!(s.contains(&format!("-A DOCKER-USER -j {chain}")), "{s}");
        assert!(!s.contains(&format!("-A FORWARD -j {chain}")), "{s}");
        assert!(ping(&a, ab.ip), "through DOCKER-USER");
    });
}

// ---------------------------------------------------------------------------------------------

fn preconditions() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not root".into());
    }
    if !Path::new(BUSYBOX).exists() {
        return Err(format!(
            "{BUSYBOX} missing (apt-get install busybox-static)"
        ));
    }
    match Command::new("nft").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Err("nft missing (apt-get install nftables)".into()),
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("ip missing (apt-get install iproute2)".into());
    }
    Ok(())
}

fn leftovers() -> Vec<String> {
    let pid = std::process::id();
    let mut nl = RealNetlink::open().expect("netlink");
    let mut left: Vec<String> = nl
        .link_names()
        .expect("links")
        .into_iter()
        .filter(|n| n.starts_with(&format!("kt{pid}x")))
        .collect();
    if NftCommand::default()
        .list_table(&format!("kiln_t{pid}"))
        .expect("nft")
        .is_some()
    {
        left.push(format!("nft table kiln_t{pid}"));
    }
    let chain = firewall::chain_name(&format!("kiln_t{pid}"));
    for b in ["iptables-nft-save", "iptables-legacy-save"] {
        let saved = Command::new(b).args(["-t", "filter"]).output();
        if saved.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&chain)) {
            left.push(format!("{b}: chain {chain}"));
        }
    }
    left
}

type Test = (&'static str, fn());

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--ipam-child" {
        ipam_child(&args[2], &args[3]);
        return;
    }
    let all: &[Test] = &[
        (
            "two_namespaces_ping_each_other_by_ip",
            two_namespaces_ping_each_other_by_ip,
        ),
        (
            "published_port_is_reachable_from_host_loopback",
            published_port_is_reachable_from_host_loopback,
        ),
        (
            "container_cannot_reach_a_host_loopback_service",
            container_cannot_reach_a_host_loopback_service,
        ),
        (
            "user_network_create_attach_and_rm_removes_its_bridge",
            user_network_create_attach_and_rm_removes_its_bridge,
        ),
        (
            "port_in_use_gives_a_clear_error_and_leaks_nothing",
            port_in_use_gives_a_clear_error_and_leaks_nothing,
        ),
        (
            "ipam_two_processes_allocate_without_collisions",
            ipam_two_processes_allocate_without_collisions,
        ),
        (
            "fifty_attach_detach_cycles_leave_links_leases_and_rules_as_they_were",
            fifty_attach_detach_cycles_leave_links_leases_and_rules_as_they_were,
        ),
        (
            "netns_pool_reuses_prepared_namespaces",
            netns_pool_reuses_prepared_namespaces,
        ),
        ("this_host_with_its_firewall", this_host_with_its_firewall),
        (
            "private_host_without_firewall",
            private_host_without_firewall,
        ),
        ("ufw_host_passes_kiln_bridges", ufw_host_passes_kiln_bridges),
        (
            "forward_drop_in_nft_and_legacy_iptables_is_passed_by_kiln_chains",
            forward_drop_in_nft_and_legacy_iptables_is_passed_by_kiln_chains,
        ),
    ];
    let tests = all
        .iter()
        .map(|&(name, test)| {
            let body = move || {
                test();
                Ok(())
            };
            (
                name,
                Box::new(body) as Box<dyn FnOnce() -> anyhow::Result<()> + Send>,
            )
        })
        .collect();
    let after = || {
        let left = leftovers();
        if left.is_empty() {
            println!("test leaves_nothing_behind ... ok");
            Ok(())
        } else {
            Err(format!("test leaves_nothing_behind ... FAILED: {left:?}"))
        }
    };
    testutil::run(
        "net",
        tests,
        &[concat!(env!("CARGO_MANIFEST_DIR"), "/tests/net.rs")],
        preconditions(),
        Some(Box::new(after)),
    )
}

//! The default network's subnet on a host where podman's default network already holds
//! 10.88.0.0/16 (kiln's first choice): kiln chooses a subnet nothing on the host routes, both
//! tools' containers work side by side, and the choice is kept when the routes change.
//!
//! Isolation: the host's `kiln0` and `/run/kiln` are shared by every test of the suite, so
//! this test runs in a private network and mount namespace (`unshare --net --mount`) with
//! tmpfs over /run/kiln (kiln's host-wide state), /run/netns and /var/lib/cni (podman's), and
//! podman with its own store: the real podman (CNI, its `podman` network) makes its real
//! bridge `cni-podman0` there, and kiln makes a fresh `kiln0` beside it.

use crate::harness::{TestDir, busybox_tar, kiln_bin, privileged, text};
use anyhow::{Context as _, ensure};
use std::process::{Command, Stdio};

/// The value of the first `key=value` line of `out`.
fn value<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

#[test]
fn the_default_network_avoids_podmans_subnet_and_both_work_side_by_side() -> anyhow::Result<()> {
    if !privileged(&["unshare", "ip", "podman", "nft", "runc"]) {
        return Ok(());
    }
    let t = TestDir::new();
    t.import_busybox()?;
    let d = t.dir.path();
    std::fs::write(d.join("bb.tar"), busybox_tar()?)?;
    std::fs::create_dir(d.join("www"))?;
    std::fs::write(d.join("www/index.html"), "hello-from-the-host\n")?;
    // Default ulimits root can set here (podman's own need CAP_SYS_RESOURCE, which root lacks
    // on some CI machines), as tests/it/rootless_kube.rs does.
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(1 << 20);
    std::fs::write(
        d.join("containers.conf"),
        format!(
            "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc=1024:1024\"]\n"
        ),
    )?;
    let script = r#"
cleanup() { set +e; $K rm -f web >/dev/null 2>&1; $P rm -f -t 0 pd >/dev/null 2>&1; kill $HTTPD 2>/dev/null; }
trap cleanup EXIT INT TERM
set -e
ip link set lo up
mkdir -p /run/kiln /run/netns /var/lib/cni
for m in /run/kiln /run/netns /var/lib/cni; do mount -t tmpfs tmpfs $m; done
$P import "$D/bb.tar" localhost/kiln-subnet-bb:1 >/dev/null
# podman's default network first: cni-podman0 with 10.88.0.1/16.
$P run -d --name pd localhost/kiln-subnet-bb:1 sleep 600 >/dev/null
pdip=$($P inspect -f '{{.NetworkSettings.IPAddress}}' pd)
echo podman_ip=$pdip
busybox httpd -f -p 8081 -h "$D/www" </dev/null >/dev/null 2>&1 & HTTPD=$!
# kiln: a detached web server publishing a port, and a container reaching the host (the
# bridge's gateway) and the web server.
$K run -d --name web -p 18080:80 busybox sh -c \
  'mkdir /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www' >/dev/null
webip=$($K inspect -f '{{.NetworkSettings.IPAddress}}' web)
echo web_ip=$webip
$K run --rm busybox sh -c "echo kiln_eth0=\$(ip -4 -o addr show eth0 | awk '{print \$4}'); \
  gw=\$(ip route | awk '/^default/{print \$3}'); echo kiln_gateway=\$gw; \
  echo to_host=\$(timeout 5 wget -qO- http://\$gw:8081/); \
  echo to_web=\$(timeout 5 wget -qO- http://$webip/)"
echo published=$(timeout 5 busybox wget -qO- http://127.0.0.1:18080/)
# podman's containers at the same time: its gateway and its other container.
echo podman_gateway=$($P run --rm localhost/kiln-subnet-bb:1 ping -c1 -W2 10.88.0.1 | grep -c '1 packets received')
echo podman_peer=$($P run --rm localhost/kiln-subnet-bb:1 ping -c1 -W2 $pdip | grep -c '1 packets received')
echo stored=$(tr -d ' \n' < /run/kiln/networks/bridge/network.json)
$K network ls | awk '$1 == "bridge" {print "ls=" $2 " " $3 " " $4}'
ip -4 route | sed 's/^/route: /'
# A user network without --subnet skips a /24 routed elsewhere (here in a policy routing
# table, as VPNs keep theirs); an explicit --subnet over podman's route is taken, as dockerd
# 20.10 takes one.
ip route add 10.90.0.0/24 dev cni-podman0 table 100
$K network create u1 >/dev/null
echo user_auto=$($K network ls | awk '$1 == "u1" {print $3}')
$K network create --subnet 10.88.5.0/24 u2 >/dev/null && echo user_explicit=ok
# `system check` warns about the one network that shares addresses with the host's.
$K system check 2>/dev/null | grep '^warning: network' | sed 's/^/check: /' || true
$K network rm u1 u2 >/dev/null
# Routes change (podman's network and kiln0 gone): the stored choice stays.
$K rm -f web >/dev/null
$P rm -f -t 0 pd >/dev/null
ip link del cni-podman0
ip link del kiln0
echo again=$($K run --rm busybox sh -c "ip -4 -o addr show eth0 | awk '{print \$4}'")
echo done=ok
"#;
    let podman = format!(
        "podman --root {0}/proot --runroot {0}/prun --storage-driver vfs --runtime /usr/sbin/runc",
        d.display()
    );
    // Bounded: with kiln0 on podman's subnet (kiln before this test), a published port
    // answered nothing and the script waited on it.
    let out = Command::new("timeout")
        .args([
            "300",
            "unshare",
            "--net",
            "--mount",
            "--propagation",
            "private",
        ])
        .args(["sh", "-c", script])
        .env("K", kiln_bin())
        .env("P", &podman)
        .env("D", d)
        .env("KILN_ROOT", &t.root)
        .env_remove("KILN_LOG")
        .env("CONTAINERS_CONF", d.join("containers.conf"))
        .stdin(Stdio::null())
        .output()
        .context("unshare")?;
    let all = text(&out);
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success() && value(&s, "done") == Some("ok"),
        "the script failed ({}):\n{all}",
        out.status
    );
    let podman_ip = value(&s, "podman_ip").unwrap_or_default();
    ensure!(podman_ip.starts_with("10.88."), "podman's container: {all}");
    // kiln0 got the pool's next subnet, stored, and shown by `network ls`.
    ensure!(
        value(&s, "stored")
            == Some(
                r#"{"name":"bridge","bridge":"kiln0","subnet":"10.92.0.0/16","gateway":"10.92.0.1"}"#
            )
            && value(&s, "ls") == Some("kiln0 10.92.0.0/16 10.92.0.1"),
        "kiln0's stored subnet: {all}"
    );
    ensure!(
        s.contains("route: 10.88.0.0/16 dev cni-podman0")
            && s.contains("route: 10.92.0.0/16 dev kiln0")
            && s.lines().filter(|l| l.starts_with("route: 10.88.")).count() == 1,
        "the routes: {all}"
    );
    let web = value(&s, "web_ip").unwrap_or_default();
    ensure!(
        web.starts_with("10.92.")
            && value(&s, "kiln_eth0")
                .is_some_and(|a| a.starts_with("10.92.") && a.ends_with("/16"))
            && value(&s, "kiln_gateway") == Some("10.92.0.1"),
        "kiln's addresses: {all}"
    );
    ensure!(
        value(&s, "to_host") == Some("hello-from-the-host")
            && value(&s, "to_web") == Some("hello-from-web")
            && value(&s, "published") == Some("hello-from-web"),
        "kiln's traffic: {all}"
    );
    // podman's containers reach their gateway, and each other.
    ensure!(
        value(&s, "podman_gateway") == Some("1") && value(&s, "podman_peer") == Some("1"),
        "podman's traffic beside kiln0: {all}"
    );
    ensure!(
        value(&s, "user_auto") == Some("10.90.1.0/24") && value(&s, "user_explicit") == Some("ok"),
        "user networks: {all}"
    );
    let warnings: Vec<&str> = s.lines().filter(|l| l.starts_with("check: ")).collect();
    ensure!(
        warnings.len() == 1
            && warnings[0].starts_with("check: warning: network u2 (10.88.5.0/24 on kiln-")
            && warnings[0].contains(" of cni-podman0; "),
        "system check's warnings: {all}"
    );
    ensure!(
        value(&s, "again").is_some_and(|a| a.starts_with("10.92.") && a.ends_with("/16")),
        "the stored choice after the routes changed: {all}"
    );
    Ok(())
}

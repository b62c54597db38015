//! `RUN --network=host` and `kiln build --network host`.

use crate::harness::{TestDir, privileged, stdout, text};
use anyhow::ensure;
use std::process::{Command, Output, Stdio};

/// Runs `kiln args...` in a private network namespace holding `lo` and a veth pair `iface`
/// (`kt...`, up) / `kp...`, so that "the host's interfaces" are known and never only `lo`,
/// whatever the machine.
fn kiln_in_netns(t: &TestDir, iface: &str, args: &[&str]) -> anyhow::Result<Output> {
    let kiln = t.cmd(args);
    let mut c = Command::new("unshare");
    c.args([
        "--net",
        "--",
        "sh",
        "-c",
        "ip link set lo up && ip link add \"$0\" type veth peer name \"kp${0#kt}\" && \
         ip link set \"$0\" up && exec \"$@\"",
        iface,
    ])
    .arg(kiln.get_program())
    .args(kiln.get_args())
    .stdin(Stdio::null());
    for (k, v) in kiln.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let out = c.output()?;
    ensure!(
        out.status.success(),
        "kiln {args:?} in a private netns failed ({}):\n{}",
        out.status,
        text(&out)
    );
    Ok(out)
}

#[test]
fn run_network_host_and_build_network_flag_see_the_host_interfaces() -> anyhow::Result<()> {
    if !privileged(&["unshare", "ip"]) {
        return Ok(());
    }
    // The build runs in its own network namespace with a known extra link: the test means the
    // same on a host with only `lo` as on one with many.
    let iface = format!("kt{}h", std::process::id());
    let t = TestDir::new();
    t.import_busybox()?;
    t.write(
        "Dockerfile",
        "FROM busybox\nRUN --network=host ls /sys/class/net > /host\nRUN ls /sys/class/net > /dflt\n",
    );
    let ctx = t.ctx.to_str().expect("utf-8 path");
    kiln_in_netns(
        &t,
        &iface,
        &[
            "build",
            "--progress",
            "rawjson",
            "--allow",
            "network.host",
            "-t",
            "net:1",
            ctx,
        ],
    )?;
    let out = t.ok(&["run", "--rm", "net:1", "cat", "/host", "/dflt"])?;
    let s = stdout(&out);
    ensure!(s.matches(iface.as_str()).count() == 1, "{iface} in {s}");
    kiln_in_netns(
        &t,
        &iface,
        &[
            "build",
            "--progress",
            "rawjson",
            "-t",
            "net:2",
            "--network",
            "host",
            "--no-cache",
            ctx,
        ],
    )?;
    let out = t.ok(&["run", "--rm", "net:2", "cat", "/dflt"])?;
    ensure!(stdout(&out).contains(iface.as_str()), "{}", text(&out));
    Ok(())
}

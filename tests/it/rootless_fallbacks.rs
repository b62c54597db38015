//! Rootless fallbacks measured against the tools they fall back to: a store the kernel's
//! overlayfs refuses (on FUSE) goes through fuse-overlayfs by itself; and what pasta can and
//! cannot do for `-p` (why kiln refuses `-p` under KILN_ROOTLESS_NET=pasta).

use crate::harness::{privileged, text};
use crate::rootless::{RANGE, USER, example_dir, rootless};
use anyhow::ensure;
use std::path::PathBuf;
use std::process::{Command, Output};

/// A FUSE mount made by root, unmounted on drop.
struct FuseMount(PathBuf);

impl Drop for FuseMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn rootless_store_on_fuse_falls_back_to_fuse_overlayfs_by_itself() -> anyhow::Result<()> {
    let Some(r) = rootless(USER, Some(RANGE))? else {
        return Ok(());
    };
    ensure!(
        privileged(&["fuse-overlayfs", "bindfs"]),
        "fuse-overlayfs or bindfs is not installed"
    );
    // A store on a FUSE filesystem (bindfs here, as sshfs, rclone or s3fs homes would be): the
    // kernel's overlayfs refuses it as an upper dir in a user namespace ("upper fs does not
    // support RENAME_WHITEOUT ... missing required features"), fuse-overlayfs takes it.
    let backing = r.t.dir.path().join("fuse-backing");
    let mnt = r.t.dir.path().join("fuse-store");
    for d in [&backing, &mnt] {
        std::fs::create_dir(d)?;
        std::os::unix::fs::chown(d, Some(r.uid), Some(r.gid))?;
    }
    let out = Command::new("bindfs")
        .args(["-o", "allow_other"])
        .arg(&backing)
        .arg(&mnt)
        .output()?;
    ensure!(out.status.success(), "bindfs: {}", text(&out));
    let _mounted = FuseMount(mnt.clone());
    let store = r.store_with_busybox(&mnt)?;
    r.t.write(
        "Dockerfile",
        "FROM busybox\n\
         RUN grep ' / / ' /proc/self/mountinfo > /root-mount\n\
         RUN mkdir /d && echo one > /d/a && echo gone > /d/b && chown 1000:1000 /d/a\n\
         RUN rm /d/b && echo two >> /d/a\n",
    );
    let build = |tag: &str, overlay: Option<&str>| -> anyhow::Result<Output> {
        let mut c = r.cmd(&store, &["build", "--progress", "plain", "-t", tag]);
        if let Some(o) = overlay {
            c.env("KILN_ROOTLESS_OVERLAY", o);
        }
        Ok(c.arg(&r.t.ctx).output()?)
    };
    // The kernel's overlayfs alone refuses, and says so.
    let out = build("fuse:native", Some("native"))?;
    ensure!(
        !out.status.success()
            && text(&out).contains("overlayfs refused it")
            && text(&out).contains("not tried (KILN_ROOTLESS_OVERLAY=native)"),
        "the kernel's overlayfs took a FUSE upper dir:\n{}",
        text(&out)
    );
    // Unforced: the build goes through fuse-overlayfs.
    let out = build("fuse:auto", None)?;
    ensure!(out.status.success(), "automatic fallback: {}", text(&out));
    let ctx = r.t.ctx.clone();
    let example = example_dir();
    let out = r
        .cmd(
            &store,
            &["build", "--progress", "plain", "-t", "hello:auto"],
        )
        .arg(&example)
        .output()?;
    ensure!(out.status.success(), "the example: {}", text(&out));
    let out = r.cmd(&store, &["run", "--rm", "hello:auto"]).output()?;
    ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("HELLO FROM A KILN BUILD"),
        "run: {}",
        text(&out)
    );
    let run_out = |args: &[&str]| -> anyhow::Result<String> {
        let out = r.cmd(&store, args).output()?;
        ensure!(out.status.success(), "kiln {args:?}: {}", text(&out));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mount = run_out(&["run", "--rm", "fuse:auto", "cat", "/root-mount"])?;
    ensure!(
        mount.contains(" - fuse.fuse-overlayfs "),
        "the RUN root was not fuse-overlayfs: {mount}"
    );
    let a = run_out(&[
        "run",
        "--rm",
        "fuse:auto",
        "sh",
        "-c",
        "cat /d/a; ls /d; stat -c %u /d/a",
    ])?;
    ensure!(
        a == "one\ntwo\na\n1000\n",
        "the layers through fuse-overlayfs: {a:?}"
    );
    // Neither: without fuse-overlayfs on PATH, one error names both causes.
    let bin = r.t.dir.path().join("bin-without-fuse-overlayfs");
    std::fs::create_dir(&bin)?;
    for tool in ["setpriv", "newuidmap", "newgidmap", "slirp4netns"] {
        std::os::unix::fs::symlink(format!("/usr/bin/{tool}"), bin.join(tool))?;
    }
    let out = r
        .cmd(
            &store,
            &[
                "build",
                "--no-cache",
                "--progress",
                "plain",
                "-t",
                "fuse:none",
            ],
        )
        .env("PATH", &bin)
        .arg(&ctx)
        .output()?;
    let all = text(&out);
    ensure!(
        !out.status.success()
            && all.contains("overlayfs refused it")
            && all.contains("running fuse-overlayfs (Debian package fuse-overlayfs)"),
        "{all}"
    );
    eprintln!("root mount of the RUN steps: {mount}");
    Ok(())
}

/// A process of the test user in a new user and network namespace, killed on drop (with the
/// pasta attached to it).
struct UserNetns {
    holder: std::process::Child,
    pasta_pid: PathBuf,
}

impl Drop for UserNetns {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pasta_pid)
            && let Ok(pid) = pid.trim().parse::<i32>()
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Whether a TCP socket listens on `port` in the network namespace of `/proc/PID` (`self`:
/// the host's).
fn listening(pid: &str, port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["tcp", "tcp6"].iter().any(|f| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).is_ok_and(|t| {
            t.lines()
                .any(|l| l.split_whitespace().nth(3) == Some("0A") && l.contains(&needle))
        })
    })
}

/// Polls `cond` for up to `secs` seconds.
fn within(secs: u64, cond: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    cond()
}

#[test]
fn pasta_forwards_ports_at_run_time_only_with_its_scan_which_kiln_does_not_use()
-> anyhow::Result<()> {
    if !privileged(&["pasta", "setpriv", "unshare", "nsenter"]) {
        return Ok(());
    }
    let (uid, gid) = crate::rootless::ensure_user(USER, Some(RANGE))?;
    let dir = tempfile::tempdir()?;
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
    let as_user = |prog: &str| {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args(["--clear-groups", "--", prog]);
        c
    };
    // pasta with `args`, on a fresh namespace of the user; the namespace's pid.
    let start = |args: &[&str]| -> anyhow::Result<(UserNetns, String)> {
        let holder = as_user("unshare").args(["-Urn", "sleep", "60"]).spawn()?;
        let pid = holder.id().to_string();
        let pasta_pid = dir.path().join(format!("pasta-{pid}.pid"));
        let ns = UserNetns {
            holder,
            pasta_pid: pasta_pid.clone(),
        };
        let host_ns = std::fs::read_link("/proc/self/ns/net")?;
        ensure!(
            within(5, || std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|n| n != host_ns)),
            "unshare did not make a network namespace"
        );
        let out = as_user("pasta")
            .args(["--config-net", "--quiet", "--pid"])
            .arg(&pasta_pid)
            .args(args)
            .arg("--netns")
            .arg(format!("/proc/{pid}/ns/net"))
            .arg("--userns")
            .arg(format!("/proc/{pid}/ns/user"))
            .output()?;
        ensure!(out.status.success(), "pasta {args:?}: {}", text(&out));
        Ok((ns, pid))
    };
    let listen_in = |pid: &str, port: u16| -> anyhow::Result<std::process::Child> {
        Ok(as_user("nsenter")
            .args(["--preserve-credentials", "-U", "-n", "-t", pid])
            .args(["busybox", "nc", "-l", "-p", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()?)
    };
    let port = crate::harness::free_port()?;

    // `-t auto` with `-T none` (host loopback kept out, as kiln's pasta session has it): a
    // port bound in the namespace is never forwarded.
    let (ns, pid) = start(&["-t", "auto", "-u", "none", "-T", "none", "-U", "none"])?;
    let mut nc = listen_in(&pid, port)?;
    ensure!(
        within(5, || listening(&pid, port)),
        "nc did not listen in the namespace"
    );
    let forwarded = within(3, || listening("self", port));
    let _ = nc.kill();
    let _ = nc.wait();
    drop(ns);
    ensure!(
        !forwarded,
        "pasta now forwards with -t auto -T none: kiln could publish ports through it \
         (see executor::rootless::net) and README's Rootless section is out of date"
    );

    // `-t auto` alone: forwarded within its one-second scan, and the host's loopback
    // services answer on the namespace's loopback (what slirp4netns keeps out).
    let (ns, pid) = start(&["-t", "auto"])?;
    let mut nc = listen_in(&pid, port)?;
    ensure!(
        within(5, || listening(&pid, port)),
        "nc did not listen in the namespace"
    );
    let t0 = std::time::Instant::now();
    let forwarded = within(5, || listening("self", port));
    let took = t0.elapsed();
    let _ = nc.kill();
    let _ = nc.wait();
    ensure!(
        forwarded,
        "pasta -t auto did not forward port {port} from the namespace"
    );
    let host = std::net::TcpListener::bind("127.0.0.1:0")?;
    let host_port = host.local_addr()?.port();
    host.set_nonblocking(true)?;
    ensure!(
        within(5, || listening(&pid, host_port)),
        "pasta -T auto did not bind the host's loopback port {host_port} in the namespace"
    );
    let mut client = as_user("nsenter")
        .args(["--preserve-credentials", "-U", "-n", "-t", &pid])
        .args(["busybox", "nc", "127.0.0.1", &host_port.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let reached = within(3, || host.accept().is_ok());
    let _ = client.kill();
    let _ = client.wait();
    drop(ns);
    ensure!(
        reached,
        "the host's loopback was not reached from the namespace"
    );
    eprintln!("pasta -t auto forwarded a namespace port after {took:?}");
    Ok(())
}

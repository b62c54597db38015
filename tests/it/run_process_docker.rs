//! `kiln run --init`, `--stop-signal`, `--stop-timeout`, `--device`, `--privileged` and
//! `kiln exec --env-file/-d/--privileged`, run by kiln and by docker 20.10 on the same busybox
//! image (see [`Both`]) and compared: PID 1 and its reaping, what `stop` sends and how long it
//! waits, the device node and the device cgroup's answer, exec's environment and detaching.

use crate::harness::text;
use crate::network::Reaper;
use crate::run_flags_docker::{Both, DOCKER, docker, stdout};
use anyhow::{Context as _, ensure};
use std::process::Output;
use std::time::{Duration, Instant};

/// `stop NAME` by `who`; how long it took.
fn timed_stop(b: &Both, who: &str, name: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = match who {
        "docker" => docker(&["stop", name]),
        _ => b.t.kiln(&["stop", name]),
    };
    ensure!(out.status.success(), "{who} stop {name}: {}", text(&out));
    Ok(start.elapsed())
}

fn exit_codes(b: &Both, name: &str) -> anyhow::Result<(String, String)> {
    b.inspect("{{.State.ExitCode}}", name)
}

#[test]
fn init_reaps_zombies_and_forwards_sigterm_as_dockers() -> anyhow::Result<()> {
    let Some(b) = Both::new("init")? else {
        return Ok(());
    };
    let _reap = Reaper::new(&b.t);
    // PID 1 is the init, not the command.
    let (d, k) = b.run(&["--rm", "--init"], &["cat", "/proc/1/comm"]);
    ensure!(
        stdout(&d) == "docker-init\n" && stdout(&k) == "kiln-init\n",
        "docker {} kiln {}",
        text(&d),
        text(&k)
    );
    // Its command line is docker-init's, `INIT -- CMD...` (not kiln's `__init` spec).
    let (d, k) = b.run(
        &["--rm", "--init"],
        &["sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline"],
    );
    let line = |o: &Output| {
        let s = stdout(o);
        s.trim_end()
            .split_once(' ')
            .map(|(_, rest)| rest.to_owned())
            .unwrap_or_default()
    };
    ensure!(
        line(&d) == line(&k) && line(&k).starts_with("-- sh -c tr"),
        "docker {:?} kiln {:?}",
        stdout(&d),
        stdout(&k)
    );
    let (d, k) = b.run(&["--rm", "--init"], &["sh", "-c", "echo $$; exit 7"]);
    ensure!(
        d.status.code() == Some(7)
            && k.status.code() == Some(7)
            && stdout(&d) != "1\n"
            && stdout(&k) != "1\n",
        "the command is not PID 1 and its status is the container's: docker {} kiln {}",
        text(&d),
        text(&k)
    );

    // An orphan that exits is reaped by the init; without one, `sleep` as PID 1 leaves a
    // zombie (the same in both).
    let zombies = ["sh", "-c", "ps -o stat | grep -c '^Z' || true"];
    for (flag, want) in [("--init", "0\n"), ("--rm", "1\n")] {
        let name = b.name(&format!("z{}", flag.trim_start_matches('-')));
        let (d, k) = b.run(
            &["-d", flag, "--name", &name],
            &["sh", "-c", "(sleep 0.2 &); exec sleep 60"],
        );
        ensure!(d.status.success() && k.status.success(), "{}", text(&k));
        std::thread::sleep(Duration::from_millis(1500));
        let dz = stdout(&docker(
            &["exec", &name]
                .iter()
                .chain(&zombies)
                .copied()
                .collect::<Vec<_>>(),
        ));
        let kz = stdout(
            &b.t.kiln(
                &["exec", &name]
                    .iter()
                    .chain(&zombies)
                    .copied()
                    .collect::<Vec<_>>(),
            ),
        );
        ensure!(
            dz == want && kz == want,
            "{flag}: zombies docker {dz:?} kiln {kz:?}"
        );
        if flag == "--init" {
            // SIGTERM reaches the command through the init: a quick stop, exit 143.
            for who in ["docker", "kiln"] {
                let took = timed_stop(&b, who, &name)?;
                ensure!(took < Duration::from_secs(5), "{who} stop took {took:?}");
            }
            let (dc, kc) = exit_codes(&b, &name)?;
            ensure!(
                dc == kc && kc == "143\n",
                "exit codes docker {dc:?} kiln {kc:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn stop_signal_and_stop_timeout_are_used_by_stop() -> anyhow::Result<()> {
    let Some(b) = Both::new("stop")? else {
        return Ok(());
    };
    let _reap = Reaper::new(&b.t);
    let usr1 = b.name("usr1");
    let (d, k) = b.run(
        &["-d", "--name", &usr1, "--stop-signal", "SIGUSR1"],
        &[
            "sh",
            "-c",
            "trap 'exit 3' USR1; trap '' TERM; while :; do sleep 0.2; done",
        ],
    );
    ensure!(d.status.success() && k.status.success(), "{}", text(&k));
    std::thread::sleep(Duration::from_millis(500));
    for who in ["docker", "kiln"] {
        let took = timed_stop(&b, who, &usr1)?;
        ensure!(took < Duration::from_secs(5), "{who} stop took {took:?}");
    }
    let (dc, kc) = exit_codes(&b, &usr1)?;
    ensure!(
        dc == kc && kc == "3\n",
        "exit codes docker {dc:?} kiln {kc:?}"
    );

    // `sleep` as PID 1 ignores SIGTERM: stop waits --stop-timeout, then SIGKILL.
    let slow = b.name("slow");
    let (d, k) = b.run(
        &["-d", "--name", &slow, "--stop-timeout", "2"],
        &["sleep", "60"],
    );
    ensure!(d.status.success() && k.status.success(), "{}", text(&k));
    for who in ["docker", "kiln"] {
        let took = timed_stop(&b, who, &slow)?;
        ensure!(
            took >= Duration::from_millis(1800) && took < Duration::from_secs(8),
            "{who} stop took {took:?}, not the 2 s of --stop-timeout"
        );
    }
    let (dc, kc) = exit_codes(&b, &slow)?;
    ensure!(
        dc == kc && kc == "137\n",
        "exit codes docker {dc:?} kiln {kc:?}"
    );
    Ok(())
}

#[test]
fn device_nodes_are_present_and_usable_as_dockers() -> anyhow::Result<()> {
    let Some(b) = Both::new("dev")? else {
        return Ok(());
    };
    let _reap = Reaper::new(&b.t);
    // A character device outside the default list that opening read-write does not change.
    let dev = ["/dev/fuse", "/dev/loop-control"]
        .into_iter()
        .find(|d| std::path::Path::new(d).exists())
        .context("the host has neither /dev/fuse nor /dev/loop-control")?;
    let probe = |p: &str| {
        format!(
            "stat -c '%F %t:%T %a' {p}; exec 3<{p} && echo r-ok; exec 4<>{p} && echo rw-ok; \
             mknod /dev/made c 1 3 && echo mknod-ok"
        )
    };
    let out = b.same(&["--rm", "--device", dev], &["sh", "-c", &probe(dev)])?;
    ensure!(out.ends_with("r-ok\nrw-ok\nmknod-ok\n"), "{out}");
    // Elsewhere and read-only: the write open is refused by the device cgroup (exit 1).
    let flag = format!("{dev}:/dev/mine:r");
    let (d, k) = b.run(
        &["--rm", "--device", &flag],
        &["sh", "-c", &probe("/dev/mine")],
    );
    ensure!(
        d.status.code() == Some(1) && k.status.code() == Some(1) && stdout(&d) == stdout(&k),
        "docker {} kiln {}",
        text(&d),
        text(&k)
    );
    ensure!(
        stdout(&k).ends_with("r-ok\n") && text(&k).contains("Operation not permitted"),
        "{}",
        text(&k)
    );
    // Without --device a node made with mknod cannot be opened.
    let script = format!("stat -c '%t:%T' {dev} >/dev/null 2>&1 || echo absent");
    let out = b.same(&["--rm"], &["sh", "-c", &script])?;
    ensure!(out == "absent\n", "{out}");
    let name = b.name("dev");
    let (d, k) = b.run(
        &["-d", "--name", &name, "--device", &flag],
        &["sleep", "60"],
    );
    ensure!(d.status.success() && k.status.success(), "{}", text(&k));
    let f = "{{range .HostConfig.Devices}}{{.PathOnHost}} {{.PathInContainer}} {{.CgroupPermissions}}{{end}}";
    let (dv, kv) = b.inspect(f, &name)?;
    ensure!(
        dv == kv && kv == format!("{dev} /dev/mine r\n"),
        "inspect Devices: docker {dv} kiln {kv}"
    );
    // Bad values: docker's messages (docker's daemon exits 127 for a missing host node,
    // kiln refuses it before creating the container: 125).
    for (v, msg) in [
        (
            "/dev/nosuch",
            "error gathering device information while adding custom device \"/dev/nosuch\": no such file or directory",
        ),
        ("/dev/fuse:/dev/f:xyz", "bad mode specified: xyz"),
        ("fuse", "fuse is not an absolute path"),
    ] {
        let (d, k) = b.run(&["--rm", "--device", v], &["true"]);
        ensure!(
            text(&d).contains(msg) && text(&k).contains(msg) && k.status.code() == Some(125),
            "--device {v}: docker {} kiln {}",
            text(&d),
            text(&k)
        );
    }
    Ok(())
}

#[test]
fn exec_env_file_and_detach_match_docker() -> anyhow::Result<()> {
    let Some(b) = Both::new("exec")? else {
        return Ok(());
    };
    let _reap = Reaper::new(&b.t);
    let name = b.name("ex");
    let (d, k) = b.run(&["-d", "--name", &name], &["sleep", "60"]);
    ensure!(d.status.success() && k.status.success(), "{}", text(&k));
    let envf = b.t.dir.path().join("x.env");
    std::fs::write(&envf, "# c\nA=1\nB=two words\nRF_CALLER\n")?;
    let envf = envf.to_str().context("utf-8")?;
    let both = |args: &[&str]| -> anyhow::Result<(String, String)> {
        let mut kargs = vec!["exec"];
        kargs.extend(args);
        let mut d = std::process::Command::new(DOCKER);
        d.args(&kargs).env("RF_CALLER", "c");
        let d = d.output()?;
        let k = b.t.cmd(&kargs).env("RF_CALLER", "c").output()?;
        ensure!(
            d.status.code() == k.status.code(),
            "exec {args:?}: docker {} kiln {}",
            text(&d),
            text(&k)
        );
        Ok((stdout(&d), stdout(&k)))
    };
    let (d, k) = both(&[
        "--env-file",
        envf,
        "-e",
        "A=from-e",
        &name,
        "sh",
        "-c",
        "echo $A/$B/$RF_CALLER",
    ])?;
    ensure!(
        d == k && k == "from-e/two words/c\n",
        "docker {d:?} kiln {k:?}"
    );
    // -d returns at once and prints nothing; the command runs on in the container.
    let start = Instant::now();
    let (d, k) = both(&["-d", &name, "sh", "-c", "sleep 3; echo done > /detached"])?;
    ensure!(
        d.is_empty() && k.is_empty() && start.elapsed() < Duration::from_secs(3),
        "docker {d:?} kiln {k:?} after {:?}",
        start.elapsed()
    );
    let (d, k) = both(&[&name, "cat", "/detached"])?;
    ensure!(
        d.is_empty() && k.is_empty(),
        "not yet: docker {d:?} kiln {k:?}"
    );
    std::thread::sleep(Duration::from_millis(3500));
    let (d, k) = both(&[&name, "cat", "/detached"])?;
    ensure!(d == k && k == "done\n", "docker {d:?} kiln {k:?}");
    Ok(())
}

/// docker's privileged mode cannot be compared here when dockerd itself runs without every
/// capability (runc then fails `unable to apply caps`); kiln's is checked against the host:
/// kiln's own capabilities, no seccomp filter, the host's devices, writable /sys and cgroupfs.
#[test]
fn privileged_gets_every_capability_devices_and_writable_sys() -> anyhow::Result<()> {
    let Some(b) = Both::new("priv")? else {
        return Ok(());
    };
    let _reap = Reaper::new(&b.t);
    let own = std::fs::read_to_string("/proc/self/status")?;
    let prm = own
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .context("CapPrm")?
        .trim()
        .to_owned();
    // A host device the default set does not give.
    let dev = ["kmsg", "loop-control", "fuse", "net/tun"]
        .into_iter()
        .find(|d| std::path::Path::new("/dev").join(d).exists())
        .context("the host has none of /dev/kmsg, loop-control, fuse, net/tun")?;
    let script = format!(
        "grep -E '^(CapEff|Seccomp):' /proc/self/status; test -c /dev/{dev} && echo dev; \
         awk '$2 == \"/sys\" {{print $4}}' /proc/mounts | cut -d, -f1; \
         touch /sys/fs/cgroup/x 2>/dev/null; ls -d /sys/fs/cgroup/* >/dev/null && echo cg"
    );
    let k = b.t.kiln(&[
        "run",
        "--rm",
        "--privileged",
        "busybox",
        "sh",
        "-c",
        &script,
    ]);
    ensure!(k.status.success(), "{}", text(&k));
    let out = stdout(&k);
    ensure!(
        out.starts_with(&format!("CapEff:\t{prm}\nSeccomp:\t0\ndev\nrw\ncg\n")),
        "privileged (host CapPrm {prm}, /dev/{dev}):\n{out}"
    );
    // exec --privileged in a container that is not: every capability, no filter.
    let name = b.name("privexec");
    b.t.ok(&["run", "-d", "--name", &name, "busybox", "sleep", "60"])?;
    let k = b.t.kiln(&[
        "exec",
        "--privileged",
        &name,
        "grep",
        "-E",
        "^(CapEff|Seccomp):",
        "/proc/self/status",
    ]);
    ensure!(
        stdout(&k) == format!("CapEff:\t{prm}\nSeccomp:\t0\n"),
        "exec --privileged: {}",
        text(&k)
    );
    // Without it: docker's default set, the filter, no such device, read-only /sys.
    let k = b.t.kiln(&["run", "--rm", "busybox", "sh", "-c", &script]);
    let out = stdout(&k);
    ensure!(
        out.starts_with("CapEff:\t00000000a80425fb\nSeccomp:\t2\nro\n"),
        "{out}"
    );
    // docker, where it can: the same shape.
    let d = docker(&["run", "--rm", "--privileged", &b.image, "sh", "-c", &script]);
    if d.status.success() {
        let out = stdout(&d);
        ensure!(
            out.contains("Seccomp:\t0\ndev\nrw\n"),
            "docker privileged:\n{out}"
        );
    } else {
        eprintln!("docker --privileged cannot run here: {}", text(&d));
    }
    Ok(())
}

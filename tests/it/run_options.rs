//! RUN step options of `kiln build` (buildx's flags): `--add-host`, `--shm-size`, `--ulimit`,
//! the `--allow` entitlements for `RUN --network=host` and `RUN --security=insecure`,
//! `--cgroup-parent` (refused), and `--call check|targets`. What docker 20.10's `docker
//! build` (BuildKit) also has is compared with it.

use crate::harness::{TestDir, busybox_dir, busybox_tar, stdout, text};
use anyhow::{Context as _, ensure};
use std::process::Command;

const PROBE: &str = "FROM busybox\n\
RUN grep -w db.example /etc/hosts > /hosts; \
df -k /dev/shm | awk 'NR==2 {print $2}' > /shm; \
ulimit -Sn > /nofile; ulimit -Hn >> /nofile\n";

const FLAGS: &[&str] = &[
    "--add-host",
    "db.example:10.9.8.7",
    "--shm-size",
    "128m",
    "--ulimit",
    "nofile=1024:2048",
];

fn kiln_probe(t: &TestDir) -> anyhow::Result<String> {
    t.write("Dockerfile", PROBE);
    t.build("probe:1", FLAGS)?;
    Ok(stdout(&t.ok(&[
        "run", "--rm", "probe:1", "cat", "/hosts", "/shm", "/nofile",
    ])?))
}

#[test]
fn add_host_shm_size_and_ulimit_reach_run_steps_as_in_docker_buildkit() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let ours = kiln_probe(&t)?;
    assert_eq!(ours, "10.9.8.7\tdb.example\n131072\n1024\n2048\n");
    // Without the flags: docker's defaults (64 MiB /dev/shm, no extra host).
    t.write("Dockerfile", &PROBE.replace("grep -w", "grep -c -w"));
    t.build("probe:2", &[])?;
    let out = t.kiln(&["run", "--rm", "probe:2", "cat", "/hosts", "/shm"]);
    assert_eq!(stdout(&out), "0\n65536\n", "{}", text(&out));

    // docker's BuildKit, the same Dockerfile and flags on the same busybox.
    if !docker_ready() {
        return Ok(());
    }
    let base = format!("kiln-it-runopts-base-{}", std::process::id());
    let name = format!("kiln-it-runopts-{}", std::process::id());
    let tar = t.dir.path().join("busybox.tar");
    std::fs::write(&tar, busybox_tar()?)?;
    docker(&["import", tar.to_str().context("utf-8")?, &base])?;
    let dctx = TestDir::new();
    dctx.write(
        "Dockerfile",
        &PROBE.replace("FROM busybox", &format!("FROM {base}")),
    );
    let mut args = vec!["build", "-q", "-t", name.as_str()];
    args.extend_from_slice(FLAGS);
    let ctx = dctx.ctx.to_str().context("utf-8")?;
    args.push(ctx);
    let res = docker(&args).and_then(|_| docker(&["run", "--rm", &name, "cat", "/hosts"]));
    let _ = docker(&["rmi", "-f", &name, &base]);
    // docker 20.10's BuildKit (0.8) honours --add-host only: it ignores --shm-size and
    // --ulimit, which BuildKit honours since buildx 0.8 and kiln follows.
    assert_eq!(
        ours.lines().next(),
        res?.lines().next(),
        "--add-host differs from docker's BuildKit"
    );
    Ok(())
}

#[test]
fn network_host_and_insecure_steps_need_allow_as_in_buildkit() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let ctx = t.ctx.to_str().expect("utf-8").to_owned();
    t.write("Dockerfile", "FROM busybox\nRUN --network=host true\n");
    let out = t.kiln(&["build", "-t", "h:1", &ctx]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Dockerfile:2: RUN --network=host true: network.host is not allowed"),
        "{}",
        text(&out)
    );
    t.ok(&["build", "--allow", "network.host", "-t", "h:1", &ctx])?;
    // buildx grants network.host itself for `--network host`.
    t.ok(&["build", "--network", "host", "-t", "h:2", &ctx])?;

    // An insecure step: refused without the entitlement, and with it the process has every
    // capability (CapEff all ones up to the last cap) where a sandboxed step has docker's 14.
    t.write(
        "Dockerfile",
        "FROM busybox\nRUN --security=insecure grep CapEff /proc/self/status > /insecure\n\
         RUN grep CapEff /proc/self/status > /sandbox\n",
    );
    let out = t.kiln(&["build", "-t", "i:1", &ctx]);
    assert!(
        text(&out).contains("security.insecure is not allowed"),
        "{}",
        text(&out)
    );
    t.ok(&["build", "--allow", "security.insecure", "-t", "i:1", &ctx])?;
    let caps = stdout(&t.ok(&["run", "--rm", "i:1", "cat", "/insecure", "/sandbox"])?);
    // kiln's own capabilities (as root; a container around the tests may hold fewer than the
    // kernel knows), which this test process shares.
    let own = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .context("CapEff")?
        .to_owned();
    assert_eq!(
        caps,
        format!("{own}\nCapEff:\t00000000a80425fb\n"),
        "insecure: every capability; sandboxed: docker's default set"
    );
    let bad = t.kiln(&["build", "--allow", "device", "-t", "i:2", &ctx]);
    assert!(
        text(&bad).contains("invalid entitlement: device"),
        "{}",
        text(&bad)
    );
    Ok(())
}

#[test]
fn cgroup_parent_is_refused_and_call_check_and_targets_answer_without_building()
-> anyhow::Result<()> {
    let t = TestDir::new();
    let ctx = t.ctx.to_str().expect("utf-8").to_owned();
    t.write(
        "Dockerfile",
        "# base the shared base\nFROM busybox AS base\n\n# build compiles it\nFROM base AS build\nRUN true\n\nFROM base\nCOPY --from=build / /\n",
    );
    // No busybox in this store and nothing runs: these only read the Dockerfile.
    let out = t.ok(&["build", "--call", "targets", &ctx])?;
    assert_eq!(
        stdout(&out),
        "TARGET    DESCRIPTION\nbase      the shared base\nbuild     compiles it\n(default) \n"
    );
    let out = t.ok(&["build", "--call", "check", &ctx])?;
    let check = t.ok(&["build", "--check", &ctx])?;
    assert_eq!(stdout(&out), stdout(&check));
    let out = t.kiln(&["build", "--cgroup-parent", "ci.slice", "-t", "x", &ctx]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--cgroup-parent ci.slice: not supported"),
        "{}",
        text(&out)
    );
    Ok(())
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("/usr/bin/docker")
        .env("DOCKER_BUILDKIT", "1")
        .args(args)
        .output()
        .context("running docker")?;
    ensure!(out.status.success(), "docker {args:?}: {}", text(&out));
    Ok(stdout(&out))
}

fn docker_ready() -> bool {
    if docker(&["version", "--format", "{{.Server.Version}}"]).is_ok() {
        return true;
    }
    if std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        panic!("docker reference test required but dockerd does not answer");
    }
    eprintln!("skipped: dockerd is not answering");
    false
}

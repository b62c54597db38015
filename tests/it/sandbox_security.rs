//! Issue 10, items 2 and 3: the device policy and the seccomp filter of RUN steps and
//! containers, checked from inside with busybox, a static probe program and docker itself.

use crate::harness::{TestDir, busybox_dir, privileged, text};
use anyhow::{Context as _, ensure};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::process::Command;

/// A block device of the host that root may open here, so that inside a sandbox only the
/// device policy can refuse it (on this project's VMs the main disk is refused to root
/// itself; an unbound loop device is not).
fn openable_block_device() -> anyhow::Result<(u32, u32)> {
    for e in std::fs::read_dir("/dev")?.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.file_type().is_block_device() && std::fs::File::open(e.path()).is_ok() {
            let rdev = m.rdev();
            return Ok((rustix::fs::major(rdev), rustix::fs::minor(rdev)));
        }
    }
    anyhow::bail!("no block device on the host that root can open (e.g. /dev/loop0)")
}

/// The shell script of the device test: mknod a node for the host's block device, try to
/// open it, and check that the allowed devices still work.
pub(crate) fn device_script() -> anyhow::Result<String> {
    let (major, minor) = openable_block_device()?;
    Ok(format!(
        "mkdir -p /tmp; mknod /tmp/disk b {major} {minor} && echo mknod=ok || echo mknod=denied; \
         {{ true </tmp/disk; }} 2>/dev/null && echo disk=open || echo disk=denied; \
         echo x >/dev/null && head -c 4 /dev/zero | wc -c | tr -d ' ' && \
         head -c 4 /dev/urandom | wc -c | tr -d ' '"
    ))
}

/// Like docker: mknod is allowed (`b *:* m`), opening the node is not; null, zero and
/// urandom work.
pub(crate) const DEVICE_CONFINED: &str = "mknod=ok\ndisk=denied\n4\n4\n";

/// The output lines of a build's RUN step (rawjson events carry them as `log` lines).
fn build_output(t: &TestDir, extra: &[&str]) -> anyhow::Result<String> {
    let ctx = t.ctx.to_str().context("utf-8 path")?;
    let mut args = vec!["build", "--no-cache", "--progress", "plain"];
    args.extend_from_slice(extra);
    args.push(ctx);
    let out = t.ok(&args)?;
    // `#N 0.123 line` for the step's own output.
    let lines: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
        .filter_map(|l| {
            let mut f = l.splitn(3, ' ');
            let (n, time, rest) = (f.next()?, f.next()?, f.next()?);
            (n.starts_with('#') && time.parse::<f64>().is_ok() && !rest.starts_with("cache "))
                .then(|| rest.to_string())
        })
        .collect();
    Ok(lines.join("\n") + "\n")
}

fn run_output(t: &TestDir, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["run", "--rm", "--network", "none"];
    all.extend_from_slice(args);
    let out = t.ok(&all)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn run_steps_and_containers_may_mknod_but_not_open_a_host_disk() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let script = device_script()?;
    t.write("Dockerfile", &format!("FROM busybox\nRUN {script}\n"));
    let build = build_output(&t, &[])?;
    ensure!(build == DEVICE_CONFINED, "RUN:\n{build}");
    let run = run_output(&t, &["busybox", "sh", "-c", &script])?;
    ensure!(run == DEVICE_CONFINED, "kiln run:\n{run}");
    Ok(())
}

const SECCOMP_SCRIPT: &str = "grep '^Seccomp:' /proc/self/status; \
     unshare -U true 2>/dev/null && echo userns=ok || echo userns=denied; \
     mkdir -p /mnt; unshare -U -r -m mount -t tmpfs none /mnt 2>/dev/null \
     && echo mount=ok || echo mount=denied";

#[test]
fn seccomp_filters_run_steps_and_containers_unless_unconfined() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let filtered = "Seccomp:\t2\nuserns=denied\nmount=denied\n";
    t.write(
        "Dockerfile",
        &format!("FROM busybox\nRUN {SECCOMP_SCRIPT}\n"),
    );
    let build = build_output(&t, &[])?;
    ensure!(build == filtered, "RUN:\n{build}");
    let run = run_output(&t, &["busybox", "sh", "-c", SECCOMP_SCRIPT])?;
    ensure!(run == filtered, "kiln run:\n{run}");

    // The explicit way out, on both commands.
    let open = "Seccomp:\t0\nuserns=ok\nmount=ok\n";
    let run = run_output(
        &t,
        &[
            "--security-opt",
            "seccomp=unconfined",
            "busybox",
            "sh",
            "-c",
            SECCOMP_SCRIPT,
        ],
    )?;
    ensure!(
        run == open,
        "kiln run --security-opt seccomp=unconfined:\n{run}"
    );
    let build = build_output(&t, &["--security-opt", "seccomp=unconfined"])?;
    ensure!(build == open, "RUN with seccomp=unconfined:\n{build}");
    Ok(())
}

#[test]
fn a_custom_profile_denying_mkdir_fails_it_with_the_profiles_errno() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let profile = t.dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1,
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 13}]}"#,
    )?;
    let opt = format!("seccomp={}", profile.display());
    // EACCES (13) reads "Permission denied"; the default EPERM would read otherwise.
    let script = "mkdir /made 2>&1; echo rc=$?; grep '^Seccomp:' /proc/self/status";
    let want = "mkdir: can't create directory '/made': Permission denied\nrc=1\nSeccomp:\t2\n";
    let run = run_output(&t, &["--security-opt", &opt, "busybox", "sh", "-c", script])?;
    ensure!(run == want, "kiln run:\n{run}");
    t.write("Dockerfile", &format!("FROM busybox\nRUN {script}\n"));
    let build = build_output(&t, &["--security-opt", &opt])?;
    ensure!(build == want, "RUN:\n{build}");

    let bad = t.dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#)?;
    let out = t.kiln(&[
        "run",
        "--rm",
        "--security-opt",
        &format!("seccomp={}", bad.display()),
        "busybox",
        "true",
    ]);
    ensure!(!out.status.success(), "a bad profile is refused");
    ensure!(text(&out).contains("bad.json"), "{}", text(&out));
    Ok(())
}

/// Builds the static probe (tests/it/testdata/seccomp_probe.c) into `dir`.
fn build_probe(dir: &std::path::Path) -> anyhow::Result<()> {
    let src = dir.join("probe.c");
    std::fs::write(&src, include_str!("testdata/seccomp_probe.c"))?;
    let out = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(dir.join("probe"))
        .arg(&src)
        .output()?;
    ensure!(out.status.success(), "gcc: {}", text(&out));
    Ok(())
}

#[test]
fn keyctl_add_key_and_perf_event_open_are_refused_as_docker_refuses_them() -> anyhow::Result<()> {
    if !privileged(&["gcc", "docker"]) {
        return Ok(());
    }
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    build_probe(&t.ctx)?;
    t.write("Dockerfile", "FROM busybox\nCOPY probe /probe\n");
    t.build("probe", &[])?;
    let kiln = run_output(&t, &["probe", "/probe"])?;
    for line in [
        "add_key errno 1",
        "keyctl errno 1",
        "request_key errno 1",
        "perf_event_open errno 1",
        "unshare user errno 1",
        "clone newuser errno 1",
        "clone3 errno 38",
        "socket vsock errno 1",
        "personality 1 errno 1",
        "clone plain ok",
        "socket unix ok",
    ] {
        ensure!(kiln.lines().any(|l| l == line), "no {line:?} in:\n{kiln}");
    }

    // Docker, given the same profile file (its libseccomp compiling it; the daemon's own
    // built-in profile is an older copy), answers every call the same way.
    let profile = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../executor/src/seccomp/default.json"
    );
    let tag = format!("kiln-it-probe-{}", std::process::id());
    std::fs::write(
        t.ctx.join("Dockerfile.docker"),
        "FROM scratch\nCOPY probe /probe\n",
    )?;
    let built = Command::new("docker")
        .args(["build", "-q", "-f", "Dockerfile.docker", "-t", &tag, "."])
        .current_dir(&t.ctx)
        .env("DOCKER_BUILDKIT", "0")
        .output()?;
    ensure!(built.status.success(), "docker build: {}", text(&built));
    let docker = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "--security-opt"])
        .arg(format!("seccomp={profile}"))
        .args([&tag, "/probe"])
        .output();
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    let docker = docker?;
    ensure!(docker.status.success(), "docker run: {}", text(&docker));
    let docker = String::from_utf8_lossy(&docker.stdout);
    ensure!(kiln == docker, "kiln:\n{kiln}\ndocker:\n{docker}");
    Ok(())
}

#[test]
fn kiln_exec_gets_the_containers_filter_and_device_policy() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let _reap = crate::network::Reaper::new(&t);
    let name = format!("it-exec-sec-{}", std::process::id());
    t.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &name,
        "busybox",
        "sleep",
        "30",
    ])?;
    let script = format!("grep '^Seccomp:' /proc/self/status; {}", device_script()?);
    // A detached container may still be starting: exec waits for it.
    let out = t.ok(&["exec", &name, "sh", "-c", &script])?;
    let out = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out == format!("Seccomp:\t2\n{DEVICE_CONFINED}"),
        "kiln exec:\n{out}"
    );
    Ok(())
}

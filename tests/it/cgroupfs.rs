//! What a sandbox sees of its cgroups (README "Containers" and "Security"): /sys/fs/cgroup
//! read-only with the container's own cgroup in each hierarchy, as docker's runc mounts it,
//! compared with docker 20.10 on this (cgroup v1) host: `kiln run` against `docker run`, a
//! RUN step against `docker build` (BuildKit 0.8). The cgroup v2 view (a cgroup namespace, a
//! read-only cgroup2) is compared with podman's in the qemu guest ([`crate::vm`]).

use crate::harness::{TestDir, busybox_dir, busybox_tar, kiln_bin, text};
use crate::vm;
use anyhow::{Context as _, ensure};
use std::process::{Command, Stdio};

/// Prints the cgroup view as `KEY=value` lines: the names under /sys/fs/cgroup, the memory
/// limit (v1 or v2 file), whether writing it and making a directory fail with EROFS, every
/// /proc/self/cgroup line, and every mount at or below /sys/fs/cgroup (mount point, its
/// per-mount options, fstype).
const PROBE: &str = r#"echo ls=$(ls /sys/fs/cgroup | tr '\n' ' ')
m=/sys/fs/cgroup/memory/memory.limit_in_bytes; [ -e $m ] || m=/sys/fs/cgroup/memory.max
echo mem=$(cat $m)
echo write_erofs=$( (echo 1 > $m) 2>&1 | grep -c 'Read-only file system')
echo mkdir_erofs=$(mkdir /sys/fs/cgroup/kiln-probe 2>&1 | grep -c 'Read-only file system')
sed 's/^/cg=/' /proc/self/cgroup
awk '$5 ~ /^\/sys\/fs\/cgroup/ { for (i = 7; $i != "-"; i++); print "mnt=" $5 " " $6 " " $(i+1) }' /proc/self/mountinfo
"#;

/// Whether dockerd answers; fails when REQUIRE_PRIVILEGED_TESTS=1 and it does not.
fn docker_ready() -> bool {
    let answered = Command::new("/usr/bin/docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !answered && std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        panic!("docker reference test required but dockerd does not answer");
    }
    if !answered {
        eprintln!("skipped: dockerd is not answering");
    }
    answered
}

/// `/usr/bin/docker args...` (BuildKit on for `build`), which must succeed.
fn docker(args: &[&str]) -> anyhow::Result<std::process::Output> {
    let out = Command::new("/usr/bin/docker")
        .env("DOCKER_BUILDKIT", "1")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running docker")?;
    ensure!(
        out.status.success(),
        "docker {args:?} failed ({}):\n{}",
        out.status,
        text(&out)
    );
    Ok(out)
}

/// The test's busybox imported into dockerd as `kiln-it-cgroupfs:<pid>`, removed on drop.
struct DockerBase(String);

impl DockerBase {
    fn import(t: &TestDir) -> anyhow::Result<DockerBase> {
        let tar = t.dir.path().join("docker-base.tar");
        std::fs::write(&tar, busybox_tar()?)?;
        let name = format!("kiln-it-cgroupfs:{}", std::process::id());
        docker(&["import", tar.to_str().context("utf-8")?, &name])?;
        Ok(DockerBase(name))
    }
}

impl Drop for DockerBase {
    fn drop(&mut self) {
        let _ = Command::new("/usr/bin/docker")
            .args(["rmi", "-f", &self.0])
            .output();
    }
}

/// The probe's lines with a container's own cgroup path (docker's `/docker/<id>`, kiln's
/// `/kiln/<id>` where a limit put it, `<kiln's own cgroup>/kiln-<id>` otherwise) made `/ID`.
fn normalized(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.contains('='))
        .map(|l| {
            let Some((head, path)) = l.rsplit_once(':') else {
                return l.to_owned();
            };
            let id = path.rsplit(['/', '-']).next().unwrap_or_default();
            let own = id.len() == 64
                && id.chars().all(|c| c.is_ascii_hexdigit())
                && ["/docker/", "/kiln/", "/kiln-"]
                    .iter()
                    .any(|p| path.ends_with(&format!("{p}{id}")));
            match own {
                true => format!("{head}:/ID"),
                false => l.to_owned(),
            }
        })
        .collect()
}

/// kiln's answer, with its two known differences from docker's made docker's after they are
/// checked: the `devices` cgroup is the device policy's shared `kiln/sandbox` (docker's is
/// the container's own), and the tmpfs holding the hierarchies is read-only (docker's is
/// writable, so a `mkdir` there succeeds).
fn kiln_as_docker(kiln: &[String]) -> anyhow::Result<Vec<String>> {
    ensure!(
        kiln.iter()
            .any(|l| l.starts_with("cg=") && l.ends_with(":devices:/kiln/sandbox")),
        "{kiln:#?}"
    );
    ensure!(
        kiln.iter()
            .any(|l| l == "mnt=/sys/fs/cgroup ro,nosuid,nodev,noexec,relatime tmpfs"),
        "{kiln:#?}"
    );
    ensure!(kiln.iter().any(|l| l == "mkdir_erofs=1"), "{kiln:#?}");
    Ok(kiln
        .iter()
        .map(|l| match l.as_str() {
            "mnt=/sys/fs/cgroup ro,nosuid,nodev,noexec,relatime tmpfs" => {
                "mnt=/sys/fs/cgroup rw,nosuid,nodev,noexec,relatime tmpfs".to_owned()
            }
            "mkdir_erofs=1" => "mkdir_erofs=0".to_owned(),
            _ => l.replace(":devices:/kiln/sandbox", ":devices:/ID"),
        })
        .collect())
}

#[test]
fn kiln_run_sees_its_own_cgroups_read_only_as_docker_run() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    if !docker_ready() {
        return Ok(());
    }
    ensure!(
        !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        "this comparison needs a cgroup v1 (hybrid) host, as CI's; the v2 view is compared \
         with podman's in the guest (cgroup_v2_sandboxes_get_a_cgroup_namespace_...)"
    );
    let base = DockerBase::import(&t)?;
    for limits in [&["--memory", "64m"][..], &[]] {
        let mut args = vec!["run", "--rm", "--network", "none"];
        args.extend_from_slice(limits);
        let docker_out = docker(&[&args[..], &[&base.0, "sh", "-c", PROBE]].concat())?;
        let kiln_out = t.ok(&[&args[..], &["busybox", "sh", "-c", PROBE]].concat())?;
        let (docker_view, kiln_view) = (
            normalized(&String::from_utf8_lossy(&docker_out.stdout)),
            normalized(&String::from_utf8_lossy(&kiln_out.stdout)),
        );
        let want_mem = match limits.is_empty() {
            true => "mem=9223372036854771712",
            false => "mem=67108864",
        };
        // The probe really ran on this v1 host: the memory hierarchy with the limit, a
        // write to it refused.
        ensure!(
            docker_view.iter().any(|l| l == want_mem),
            "{docker_view:#?}"
        );
        ensure!(
            docker_view.iter().any(|l| l == "write_erofs=1"),
            "{docker_view:#?}"
        );
        ensure!(
            kiln_as_docker(&kiln_view)? == docker_view,
            "kiln run {limits:?}:\n{kiln_view:#?}\ndocker run:\n{docker_view:#?}"
        );
    }
    // `kiln exec` runs in the container's cgroups, as `docker exec` (runc joins them).
    t.ok(&[
        "run",
        "-d",
        "--name",
        "ex",
        "--network",
        "none",
        "--memory",
        "64m",
        "busybox",
        "sleep",
        "60",
    ])?;
    let exec = t.ok(&["exec", "ex", "sh", "-c", PROBE]);
    t.ok(&["rm", "-f", "ex"])?;
    let exec = normalized(&String::from_utf8_lossy(&exec?.stdout));
    ensure!(exec.iter().any(|l| l == "mem=67108864"), "{exec:#?}");
    ensure!(exec.iter().any(|l| l.ends_with(":memory:/ID")), "{exec:#?}");
    Ok(())
}

#[test]
fn a_run_step_sees_its_cgroups_read_only_as_a_buildkit_step() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    if !docker_ready() {
        return Ok(());
    }
    let base = DockerBase::import(&t)?;
    t.write("probe.sh", PROBE);
    let step = "COPY probe.sh /\nRUN sh /probe.sh | sed 's/^/view:/'\n";
    t.write("Dockerfile", &format!("FROM busybox\n{step}"));
    let ctx = t.ctx.to_str().context("utf-8")?;
    let kiln = text(&t.ok(&["build", "--no-cache", "--progress", "plain", ctx])?);
    let docker_dockerfile = t.dir.path().join("Dockerfile.docker");
    std::fs::write(&docker_dockerfile, format!("FROM {}\n{step}", base.0))?;
    let docker_out = docker(&[
        "build",
        "--no-cache",
        "--progress",
        "plain",
        "-f",
        docker_dockerfile.to_str().context("utf-8")?,
        ctx,
    ])?;
    let view = |log: &str| -> Vec<String> {
        log.lines()
            .filter_map(|l| Some(l.split_once("view:")?.1.to_owned()))
            .collect()
    };
    let (kiln, docker) = (view(&kiln), view(&text(&docker_out)));
    let lines = |v: &[String], key: &str| -> Vec<String> {
        v.iter()
            .filter_map(|l| Some(l.strip_prefix(key)?.to_owned()))
            .collect()
    };
    // BuildKit 0.8 mounts the step's cgroups read-only: every cgroup mount is `ro`, and so
    // are kiln's (its tmpfs too).
    for (who, v) in [("docker build", &docker), ("kiln build", &kiln)] {
        let mounts = lines(v, "mnt=");
        ensure!(
            mounts
                .iter()
                .any(|m| m.ends_with(" cgroup") || m.ends_with(" cgroup2")),
            "{who}: no cgroup mount:\n{v:#?}"
        );
        ensure!(
            mounts
                .iter()
                .filter(|m| !m.ends_with(" tmpfs"))
                .all(|m| m.split(' ').nth(1).is_some_and(|o| o.starts_with("ro,"))),
            "{who}: a writable cgroup mount:\n{v:#?}"
        );
    }
    ensure!(
        lines(&kiln, "mnt=")
            .iter()
            .all(|m| m.split(' ').nth(1).is_some_and(|o| o.starts_with("ro,"))),
        "{kiln:#?}"
    );
    // A step shares the build's cgroups, so it sees only the hierarchies where that cgroup
    // is a leaf (the device policy's `kiln/sandbox` at least), never a tree of other
    // cgroups: a subset of BuildKit's (which gives each step its own everywhere).
    let names = |v: &[String]| -> Vec<String> {
        lines(v, "ls=")
            .concat()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let (kiln_names, docker_names) = (names(&kiln), names(&docker));
    ensure!(
        kiln_names.contains(&"devices".to_owned())
            && kiln_names.iter().all(|n| docker_names.contains(n)),
        "kiln {kiln_names:?}, BuildKit {docker_names:?}"
    );
    for n in &kiln_names {
        let dir = std::path::Path::new("/sys/fs/cgroup").join(n);
        ensure!(dir.is_dir(), "{n} is no hierarchy of this host");
    }
    ensure!(lines(&kiln, "mkdir_erofs=") == ["1"], "{kiln:#?}");
    Ok(())
}

/// On a pure cgroup v2 host, as podman there (runc's cgroup v2 mount, `cgroupns=private`):
/// /proc/self/cgroup is `0::/`, /sys/fs/cgroup is the container's own cgroup2 directory,
/// read-only, showing its memory.max, for `kiln run` (with and without limits), `kiln exec`
/// and a RUN step (BuildKit also unshares the cgroup namespace on v2).
#[test]
fn cgroup_v2_sandboxes_get_a_cgroup_namespace_and_read_only_cgroup2_as_podman() -> anyhow::Result<()>
{
    if !vm::available(&["podman"]) {
        return Ok(());
    }
    let script = format!(
        r#"K={kiln}
export KILN_ROOT=/tmp/kiln
$K import --change 'CMD ["sh"]' /run/vm/busybox.tar busybox >/dev/null || exit 90
P="podman --root /tmp/podman --runroot /run/podman --cgroup-manager cgroupfs --events-backend file --storage-driver overlay"
$P import /run/vm/busybox.tar localhost/busybox >/dev/null 2>/tmp/pimport.log || {{ cat /tmp/pimport.log; exit 91; }}
PROBE=$(cat /run/vm/probe.sh)
$K run --rm --network none --memory 64m busybox sh -c "$PROBE" | sed 's/^/kiln./' || exit 92
$K run --rm --network none busybox sh -c "$PROBE" | sed 's/^/kiln_unlimited./' || exit 93
$P run --rm --network none --memory 64m localhost/busybox sh -c "$PROBE" | sed 's/^/podman./' || exit 94
$K run -d --name ex --network none --memory 64m busybox sleep 60 >/dev/null || exit 95
$K exec ex sh -c 'echo cg=$(cat /proc/self/cgroup); echo mem=$(cat /sys/fs/cgroup/memory.max)' \
  | sed 's/^/exec./' || exit 96
$K rm -f ex >/dev/null
mkdir /tmp/ctx && cp /run/vm/probe.sh /tmp/ctx/ && printf 'FROM busybox\nCOPY probe.sh /\nRUN sh /probe.sh | sed s/^/step./\n' > /tmp/ctx/Dockerfile
$K build --progress plain --network none /tmp/ctx >/tmp/build.log 2>&1 || {{ cat /tmp/build.log; exit 97; }}
grep -o 'step\..*' /tmp/build.log
"#,
        kiln = kiln_bin().display()
    );
    let g = vm::run(
        &script,
        &[
            ("busybox.tar", &busybox_tar()?),
            ("probe.sh", PROBE.as_bytes()),
        ],
    )?
    .ok()?;
    let out = &g.output;
    let v = |k: &str| g.value(k).map(str::to_owned);
    for who in ["podman", "kiln", "exec", "kiln_unlimited", "step"] {
        ensure!(
            v(&format!("{who}.cg")).as_deref() == Some("0::/"),
            "{who}:\n{out}"
        );
    }
    ensure!(v("podman.mem").as_deref() == Some("67108864"), "{out}");
    ensure!(v("kiln.mem") == v("podman.mem"), "{out}");
    ensure!(v("exec.mem") == v("podman.mem"), "{out}");
    ensure!(v("kiln_unlimited.mem").as_deref() == Some("max"), "{out}");
    // The same mount as podman's: the cgroup2 at /sys/fs/cgroup, read-only, nosuid, nodev,
    // noexec; writes refused.
    ensure!(
        v("podman.mnt").as_deref()
            == Some("/sys/fs/cgroup ro,nosuid,nodev,noexec,relatime cgroup2"),
        "{out}"
    );
    for who in ["kiln", "kiln_unlimited", "step"] {
        ensure!(v(&format!("{who}.mnt")) == v("podman.mnt"), "{who}:\n{out}");
        ensure!(
            v(&format!("{who}.write_erofs")) == v("podman.write_erofs")
                && v("podman.write_erofs").as_deref() == Some("1"),
            "{who}:\n{out}"
        );
    }
    // The container's own cgroup with the limit files podman's shows (`max` when unlimited),
    // none of another container's.
    for who in ["podman", "kiln", "kiln_unlimited"] {
        let ls = v(&format!("{who}.ls")).unwrap_or_default();
        for f in ["memory.max", "cpu.max", "pids.max", "cgroup.procs"] {
            ensure!(ls.split(' ').any(|x| x == f), "{who} lacks {f}:\n{out}");
        }
    }
    Ok(())
}

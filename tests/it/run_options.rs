//! RUN step options of `kiln build` (buildx's flags): `--add-host`, `--shm-size`, `--ulimit`,
//! the `--allow` entitlements for `RUN --network=host` and `RUN --security=insecure`,
//! `--cgroup-parent` (RUN steps under the parent, relative or absolute, the device policy
//! kept), `RUN --security=insecure` against BuildKit v0.24, and `--call check|targets|outline`. What docker 20.10's `docker
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

/// What an insecure step and a default one report (files in the current directory): the
/// capabilities, seccomp, whether /proc/timer_list (masked by default) reads, whether a tmpfs
/// mounts, /dev, whether /dev/kmsg reads, the /sys and cgroup mounts, the cgroup filesystem's
/// hierarchies and whether it takes a new cgroup, whether /proc/sys is writable.
const INSECURE_PROBE: &str = "grep CapEff /proc/self/status > caps; \
grep Seccomp: /proc/self/status > seccomp; \
(head -c 16 /proc/timer_list | wc -c) > timer_list; \
(mkdir -p /m && mount -t tmpfs none /m && echo yes || echo no) > mount; umount /m 2>/dev/null; \
ls /dev | tr '\\n' ' ' > devs; \
(dd if=/dev/kmsg bs=8192 count=1 2>/dev/null | wc -c) > kmsg; \
grep -E ' /sys | /sys/fs/cgroup' /proc/mounts | cut -d' ' -f2-4 > sysmounts; \
ls /sys/fs/cgroup > cgls 2>&1; \
(mkdir /sys/fs/cgroup/devices/kiln-probe && rmdir /sys/fs/cgroup/devices/kiln-probe \
 && echo yes || echo no) > cgwrite 2>/dev/null; \
(echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo yes || echo no) > procsys; true";

/// BuildKit v0.24.0's answers to [`INSECURE_PROBE`] in an insecure step on this project's
/// machines (cgroup v1 hybrid host, buildkitd run as root with `--allow-insecure-entitlement
/// security.insecure` and the probe as one `llb.Security(llb.SecurityModeInsecure)` RUN on the
/// oracle's busybox base; the LLB program is `tests/it/testdata/insecure_llb.go`). docker
/// 20.10 cannot be asked: its `docker build` has no `--allow` and the CI has no buildx.
/// `caps` is buildkitd's own set (`cap.Current()`), compared with kiln's own below.
const V024_INSECURE: &[(&str, &str)] = &[
    ("seccomp", "Seccomp:\t0\n"),
    ("timer_list", "16\n"),
    ("mount", "yes\n"),
    ("cgwrite", "yes\n"),
    ("procsys", "yes\n"),
];

/// BuildKit v0.24.0's /dev in the same step: its device list made with mknod (kiln binds the
/// ones the host has, so `cuse` is missing where the host has none).
const V024_INSECURE_DEVS: &str = "cuse fd full fuse kmsg kvm loop-control loop0 loop1 loop2 \
loop3 loop4 loop5 loop6 loop7 mqueue net null ptmx pts random shm stderr stdin stdout tty \
urandom zero";

#[test]
fn an_insecure_step_is_unconfined_as_buildkit_and_a_default_step_is_not() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        &format!(
            "FROM busybox AS insecure\nRUN --security=insecure mkdir /out && cd /out && {p}\n\
             FROM busybox AS sandbox\nRUN mkdir /out && cd /out && {p}\n\
             FROM busybox AS nobody\nRUN mkdir -m 777 /out\nUSER nobody\n\
             RUN --security=insecure grep Cap /proc/self/status > /out/caps\n\
             FROM scratch\nCOPY --from=insecure /out /insecure\nCOPY --from=sandbox /out /sandbox\n\
             COPY --from=nobody /out /nobody\n",
            p = INSECURE_PROBE
        ),
    );
    let out = t.dir.path().join("out");
    t.ok(&[
        "build",
        "--allow",
        "security.insecure",
        "-o",
        &format!("type=local,dest={}", out.display()),
        t.ctx.to_str().context("utf-8")?,
    ])?;
    let read = |step: &str, f: &str| std::fs::read_to_string(out.join(step).join(f));
    let own_caps = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .context("CapEff")?
        .to_owned();

    // Insecure: as BuildKit v0.24.
    ensure!(read("insecure", "caps")? == format!("{own_caps}\n"));
    // Another user keeps them too: BuildKit v0.24 gives `USER nobody` every capability in
    // all five sets (inheritable and ambient included).
    let own = own_caps.trim_start_matches("CapEff:\t");
    let want: String = ["Inh", "Prm", "Eff", "Bnd", "Amb"]
        .iter()
        .map(|s| format!("Cap{s}:\t{own}\n"))
        .collect();
    ensure!(
        read("nobody", "caps")? == want,
        "{}",
        read("nobody", "caps")?
    );
    for (f, want) in V024_INSECURE {
        let got = read("insecure", f)?;
        // BuildKit's answer was made where /proc/timer_list exists.
        if *f == "timer_list" && !std::path::Path::new("/proc/timer_list").exists() {
            continue;
        }
        ensure!(
            got == *want,
            "insecure {f}: kiln {got:?}, BuildKit v0.24 {want:?}"
        );
    }
    // /sys/fs/cgroup: runc's layout of a v1 container, one directory per v1 hierarchy named
    // as its mount point, the cgroup2 one left out. BuildKit v0.24's on the project's
    // machines: blkio cpu cpuacct cpuset devices freezer memory pids systemd, which are this
    // host's hierarchies there.
    let mut names: Vec<String> = v1_hierarchies()?
        .iter()
        .filter_map(|h| Some(h.file_name()?.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    let want: String = names.iter().map(|n| format!("{n}\n")).collect();
    let got = read("insecure", "cgls")?;
    // A cgroup v2 host: the step's own cgroup2 directory.
    let v2 = names.is_empty() && got.lines().any(|l| l == "cgroup.procs");
    ensure!(
        got == want || v2,
        "insecure /sys/fs/cgroup: {got:?}, host {want:?}"
    );
    let devs = read("insecure", "devs")?;
    let host_has = |d: &str| std::path::Path::new("/dev").join(d).exists();
    for d in V024_INSECURE_DEVS.split(' ') {
        // otel-grpc.sock, BuildKit's tracing socket, is left out of the stored list.
        ensure!(
            devs.split(' ').any(|x| x == d) || !host_has(d),
            "insecure /dev lacks {d} (BuildKit's has it): {devs}"
        );
    }
    ensure!(
        read("insecure", "kmsg")?.trim().parse::<u64>()? > 0,
        "/dev/kmsg"
    );
    let mounts = read("insecure", "sysmounts")?;
    ensure!(
        mounts.lines().next() == Some("/sys sysfs rw,nosuid,nodev,noexec,relatime"),
        "{mounts}"
    );
    ensure!(
        mounts
            .lines()
            .skip(1)
            .all(|l| l.starts_with("/sys/fs/cgroup") && l.contains(" rw,")),
        "{mounts}"
    );

    // The default step: as strict as ever (docker's 14 capabilities, the seccomp filter,
    // timer_list masked, no mount, no extra device, read-only /sys, its cgroups read-only:
    // tests/it/cgroupfs.rs compares them with BuildKit's).
    for (f, want) in [
        ("caps", "CapEff:\t00000000a80425fb\n"),
        ("seccomp", "Seccomp:\t2\n"),
        ("timer_list", "0\n"),
        ("mount", "no\n"),
        ("kmsg", "0\n"),
        ("cgwrite", "no\n"),
        ("procsys", "no\n"),
    ] {
        let got = read("sandbox", f)?;
        ensure!(got == want, "default {f}: {got:?}, want {want:?}");
    }
    let cgls = read("sandbox", "cgls")?;
    ensure!(
        cgls.lines().all(|n| names.iter().any(|h| h == n)) || v2,
        "default /sys/fs/cgroup: {cgls:?}, host {names:?}"
    );
    let mounts = read("sandbox", "sysmounts")?;
    ensure!(
        mounts.lines().next() == Some("/sys sysfs ro,nosuid,nodev,noexec,relatime")
            && mounts
                .lines()
                .skip(1)
                .all(|l| l.starts_with("/sys/fs/cgroup") && l.contains(" ro,")),
        "{mounts}"
    );
    let devs = read("sandbox", "devs")?;
    for d in ["kmsg", "fuse", "kvm", "loop-control", "loop0", "net"] {
        ensure!(
            !devs.split(' ').any(|x| x == d),
            "default /dev has {d}: {devs}"
        );
    }
    Ok(())
}

#[test]
fn call_check_and_targets_answer_without_building() -> anyhow::Result<()> {
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
    Ok(())
}

/// The v1 cgroup directories of `rel` below this process's own cgroup, one per hierarchy
/// (`/sys/fs/cgroup/<controller>/<own path>/<rel>`).
fn own_cgroup_dirs(rel: &str) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    Ok(own
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, cs, p) = (f.next()?, f.next()?, f.next()?);
            let first = cs.split(',').next().filter(|c| !c.is_empty())?;
            let name = first.strip_prefix("name=").unwrap_or(first);
            let mut dir = std::path::PathBuf::from("/sys/fs/cgroup").join(name);
            dir.extend(p.split('/').filter(|s| !s.is_empty()));
            Some(dir.join(rel))
        })
        .collect())
}

#[test]
fn cgroup_parent_holds_run_steps_under_the_device_policy() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let script = crate::sandbox_security::device_script()?;
    t.write(
        "Dockerfile",
        &format!("FROM busybox\nRUN cat /proc/self/cgroup > /cg; ({script}) > /dev.txt\n"),
    );
    // Relative, as runc reads it: below kiln's own cgroup in each hierarchy.
    let parent = format!("kiln-test-{}", std::process::id());
    let out = t.dir.path().join("out");
    let built = t.kiln(&[
        "build",
        "--cgroup-parent",
        &parent,
        "-o",
        &format!("type=local,dest={}", out.display()),
        t.ctx.to_str().context("utf-8")?,
    ]);
    let dirs = own_cgroup_dirs(&parent)?;
    let left: Vec<String> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kiln-"))
        .collect();
    for d in &dirs {
        let _ = std::fs::remove_dir(d);
    }
    ensure!(built.status.success(), "{}", text(&built));
    ensure!(left.is_empty(), "cgroups left behind: {left:?}");
    let cg = std::fs::read_to_string(out.join("cg"))?;
    // Every v1 hierarchy names the parent, the devices one included.
    let v1: Vec<&str> = cg
        .lines()
        .filter(|l| l.split(':').nth(1).is_some_and(|c| !c.is_empty()))
        .collect();
    ensure!(v1.iter().any(|l| l.contains(":devices:")), "{cg}");
    for l in &v1 {
        ensure!(l.contains(&format!("/{parent}/kiln-")), "{l} in\n{cg}");
    }
    // The device policy still holds: mknod works, opening the host's disk does not.
    ensure!(
        std::fs::read_to_string(out.join("dev.txt"))? == crate::sandbox_security::DEVICE_CONFINED,
        "{}",
        std::fs::read_to_string(out.join("dev.txt"))?
    );
    // `..` is refused before anything is made.
    let bad = t.kiln(&[
        "build",
        "--cgroup-parent",
        "../up",
        t.ctx.to_str().context("utf-8")?,
    ]);
    ensure!(!bad.status.success(), "{}", text(&bad));
    ensure!(
        text(&bad).contains("--cgroup-parent ../up"),
        "{}",
        text(&bad)
    );
    Ok(())
}

/// The mount points of this host's cgroup v1 hierarchies, from /proc/self/mountinfo.
fn v1_hierarchies() -> anyhow::Result<Vec<std::path::PathBuf>> {
    Ok(std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount = left.split(' ').nth(4)?;
            right
                .starts_with("cgroup ")
                .then(|| std::path::PathBuf::from(mount))
        })
        .collect())
}

/// Removes `dir`'s empty cgroups, deepest first, then `dir` itself.
fn remove_cgroup_tree(dir: &std::path::Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// An absolute `--cgroup-parent` is read from each hierarchy's root, as runc reads it: RUN
/// steps land in `<hierarchy>/<parent>/kiln-<pid>` of every v1 hierarchy, the device policy
/// holds there, and the `kiln-<pid>` cgroups are gone after the build.
#[test]
fn an_absolute_cgroup_parent_is_read_from_each_hierarchys_root() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let hierarchies = v1_hierarchies()?;
    ensure!(
        !hierarchies.is_empty(),
        "--cgroup-parent needs a cgroup v1 host; this one has no v1 hierarchy"
    );
    let script = crate::sandbox_security::device_script()?;
    t.write(
        "Dockerfile",
        &format!("FROM busybox\nRUN cat /proc/self/cgroup > /cg; ({script}) > /dev.txt\n"),
    );
    let name = format!("kiln-test-parent-{}", std::process::id());
    let parent = format!("/{name}");
    let out = t.dir.path().join("out");
    let built = t.kiln(&[
        "build",
        "--cgroup-parent",
        &parent,
        "-o",
        &format!("type=local,dest={}", out.display()),
        t.ctx.to_str().context("utf-8")?,
    ]);
    let dirs: Vec<std::path::PathBuf> = hierarchies.iter().map(|h| h.join(&name)).collect();
    // What the build left under the parent, then the parent itself removed.
    let made: Vec<bool> = dirs.iter().map(|d| d.is_dir()).collect();
    let left: Vec<String> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path().display().to_string())
        .collect();
    for d in &dirs {
        remove_cgroup_tree(d);
    }
    ensure!(built.status.success(), "{}", text(&built));
    ensure!(left.is_empty(), "cgroups left behind: {left:?}");
    ensure!(
        made.iter().all(|m| *m),
        "{parent} missing from the root of some hierarchy: {dirs:?} {made:?}"
    );
    let cg = std::fs::read_to_string(out.join("cg"))?;
    let v1: Vec<&str> = cg
        .lines()
        .filter(|l| l.split(':').nth(1).is_some_and(|c| !c.is_empty()))
        .collect();
    ensure!(v1.len() == hierarchies.len(), "{cg}");
    ensure!(v1.iter().any(|l| l.contains(":devices:")), "{cg}");
    for l in &v1 {
        let path = l.splitn(3, ':').nth(2).unwrap_or_default();
        let leaf = path.strip_prefix(&format!("{parent}/kiln-"));
        ensure!(
            leaf.is_some_and(|pid| pid.parse::<u32>().is_ok()),
            "{l}: not {parent}/kiln-<pid> in\n{cg}"
        );
    }
    ensure!(
        std::fs::read_to_string(out.join("dev.txt"))? == crate::sandbox_security::DEVICE_CONFINED,
        "{}",
        std::fs::read_to_string(out.join("dev.txt"))?
    );
    Ok(())
}

#[test]
fn call_outline_prints_the_targets_args_secrets_and_ssh_as_buildx() -> anyhow::Result<()> {
    let t = TestDir::new();
    let ctx = t.ctx.to_str().expect("utf-8").to_owned();
    t.write(
        "Dockerfile",
        "# GO_VERSION sets the Go toolchain version\n\
ARG GO_VERSION=1.22\n\
ARG UNUSED=x\n\
FROM busybox:${GO_VERSION} AS base\n\
# PKG the package to build\n\
ARG PKG=./cmd/app\n\
ARG TARGETARCH\n\
RUN --mount=type=secret,id=github_token,required=true --mount=type=ssh true\n\
\n\
# app builds the application\n\
FROM base AS app\n\
ARG GO_VERSION\n\
# EXTRA more flags\n\
ARG EXTRA\n\
RUN --mount=type=secret,id=npmrc true\n\
\n\
FROM busybox AS other\n\
ARG OTHER=1\n",
    );
    // Nothing is built or pulled: the store stays empty.
    let out = t.ok(&[
        "build",
        "--call",
        "outline",
        "--target",
        "app",
        "--build-arg",
        "EXTRA=-v",
        &ctx,
    ])?;
    // buildx's text: tabwriter tables (padding 1 for the target, 3 for the others), the
    // args the target's stages use in Dockerfile order with --build-arg values applied,
    // the platform args left out, a blank line after each table.
    assert_eq!(
        stdout(&out),
        "TARGET:      app\n\
DESCRIPTION: builds the application\n\
\n\
BUILD ARG    VALUE       DESCRIPTION\n\
GO_VERSION   1.22        sets the Go toolchain version\n\
PKG          ./cmd/app   the package to build\n\
EXTRA        -v          more flags\n\
\n\
SECRET         REQUIRED\n\
github_token   true\n\
npmrc          \n\
\n\
SSH       REQUIRED\n\
default   \n\
\n"
    );
    // The default target: the last stage, which uses none of the others' args.
    let out = t.ok(&["build", "--call", "outline", &ctx])?;
    assert_eq!(
        stdout(&out),
        "TARGET: other\n\nBUILD ARG   VALUE   DESCRIPTION\nOTHER       1       \n\n"
    );
    let out = t.kiln(&["build", "--call", "outline", "--target", "nope", &ctx]);
    assert!(!out.status.success());
    assert!(text(&out).contains("\"nope\""), "{}", text(&out));
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

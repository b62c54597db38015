//! Names, ids and Dockerfile limits validated where they enter (issue 10), with the real
//! `kiln` and, as the reference, the real docker (dockerd runs in CI): container names that
//! are paths, uids that wrap to root, `-e =x`, `-w rel`, `--memory 0`, a Latin-1 comment,
//! 20,000 nested `${a:-`, a 1 MB line, a registry that never answers.

use crate::harness::{TestDir, busybox_dir, busybox_tar, text};
use anyhow::{Context as _, ensure};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Docker with busybox imported as a unique tag, removed on drop.
struct Docker {
    image: String,
}

/// A test dir with busybox and the docker reference, or None when either skips the test.
fn busybox_and_docker() -> anyhow::Result<Option<(TestDir, Docker)>> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(None);
    };
    Ok(Docker::start()?.map(|docker| (t, docker)))
}

impl Docker {
    /// None (test skipped, reason printed) when docker or dockerd is missing; panics instead
    /// when REQUIRE_PRIVILEGED_TESTS=1.
    fn start() -> anyhow::Result<Option<Docker>> {
        let up = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !up {
            if std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
                panic!("docker reference test required but `docker info` fails (no dockerd?)");
            }
            eprintln!("skipped: docker (with dockerd) is needed as the reference");
            return Ok(None);
        }
        // One tag per test: tests run in parallel and each removes its own on drop.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let image = format!("kiln-it-validation:{}-{n}", std::process::id());
        let mut child = Command::new("docker")
            .args(["import", "-", &image])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        child
            .stdin
            .take()
            .context("docker import stdin")?
            .write_all(&busybox_tar()?)?;
        ensure!(child.wait()?.success(), "docker import failed");
        Ok(Some(Docker { image }))
    }

    fn run(&self, flags: &[&str], cmd: &[&str]) -> Output {
        Command::new("docker")
            .args(["run", "--rm", "--network", "none"])
            .args(flags)
            .arg(&self.image)
            .args(cmd)
            .output()
            .expect("docker runs")
    }

    /// `docker build` with the classic builder (Debian's docker.io has no buildx here).
    fn build(&self, ctx: &Path) -> Output {
        Command::new("docker")
            .args(["build", "-q", "--no-cache"])
            .arg(ctx)
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .expect("docker build runs")
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `kiln run --network none FLAGS busybox CMD`.
fn kiln_run(t: &crate::harness::TestDir, flags: &[&str], cmd: &[&str]) -> Output {
    let mut args = vec!["run", "--network", "none"];
    args.extend_from_slice(flags);
    args.push("busybox");
    args.extend_from_slice(cmd);
    t.kiln(&args)
}

/// Both refuse `flags` before running anything, with `message` on stderr; kiln exits 125
/// (docker's code for its own failures).
fn both_refuse(
    t: &crate::harness::TestDir,
    docker: &Docker,
    flags: &[&str],
    message: &str,
) -> anyhow::Result<()> {
    let out = kiln_run(t, flags, &["true"]);
    ensure!(
        out.status.code() == Some(125) && stderr(&out).contains(message),
        "kiln run {flags:?}: want exit 125 and {message:?}:\n{}",
        text(&out)
    );
    let d = docker.run(flags, &["true"]);
    ensure!(
        !d.status.success() && stderr(&d).contains(message),
        "docker run {flags:?} no longer says {message:?}:\n{}",
        stderr(&d)
    );
    Ok(())
}

#[test]
fn container_names_that_are_paths_are_refused_as_docker_refuses_them() -> anyhow::Result<()> {
    let Some((t, docker)) = busybox_and_docker()? else {
        return Ok(());
    };
    // KILN_ROOT is <dir>/root, so `../../x` would be <dir>/x: outside the store.
    for name in ["../../x", "a/b", "..", "a", ".hidden"] {
        both_refuse(
            &t,
            &docker,
            &["--name", name],
            &format!("Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"),
        )?;
    }
    ensure!(
        !t.dir.path().join("x").exists(),
        "--name ../../x wrote state outside KILN_ROOT"
    );
    let containers = t.root.join("containers");
    let left: Vec<_> = std::fs::read_dir(&containers)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    ensure!(left.is_empty(), "refused runs left containers: {left:?}");
    // Lookups by such names find nothing instead of reaching outside the directory.
    let out = t.kiln(&["rm", ".."]);
    ensure!(
        !out.status.success() && stderr(&out).contains("no such container"),
        "{}",
        text(&out)
    );
    // Docker's pattern itself is accepted.
    let out = kiln_run(&t, &["--rm", "--name", "ok-1.x_Y"], &["true"]);
    ensure!(out.status.success(), "{}", text(&out));
    Ok(())
}

/// Docker accepts any network name (it never makes a path of one); kiln's lease store does,
/// so kiln holds network names to the container name characters.
#[test]
fn network_names_that_are_paths_are_refused() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let escape = format!("it-escape-{}", std::process::id());
    // The lease store is /run/kiln/networks: `../NAME` would be /run/kiln/NAME.
    let outside = Path::new("/run/kiln").join(&escape);
    let name = format!("../{escape}");
    for args in [
        vec!["network", "create", name.as_str()],
        vec!["network", "rm", name.as_str()],
        vec!["network", "create", "a/b"],
    ] {
        let out = t.kiln(&args);
        ensure!(
            !out.status.success() && stderr(&out).contains("invalid network name"),
            "kiln {args:?}:\n{}",
            text(&out)
        );
    }
    ensure!(
        !outside.exists(),
        "{} was created outside the lease store",
        outside.display()
    );
    let out = t.kiln(&["run", "--rm", "--network", &name, "busybox", "true"]);
    ensure!(
        !out.status.success() && stderr(&out).contains("invalid network name"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn uids_outside_0_to_2147483647_are_refused_as_docker_refuses_them() -> anyhow::Result<()> {
    let Some((t, docker)) = busybox_and_docker()? else {
        return Ok(());
    };
    // 4294967295 is (uid_t)-1, "unchanged" to setresuid: it must never mean root.
    for user in ["4294967295", "2147483648", "0:4294967295", "-1:0"] {
        both_refuse(
            &t,
            &docker,
            &["-u", user],
            "uids and gids must be in range 0-2147483647",
        )?;
    }
    // The top of the range runs, as that uid, in both.
    let out = kiln_run(&t, &["--rm", "-u", "2147483647:2147483647"], &["id"]);
    ensure!(out.status.success(), "{}", text(&out));
    let d = docker.run(&["-u", "2147483647:2147483647"], &["id"]);
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == String::from_utf8_lossy(&d.stdout).trim(),
        "kiln: {}\ndocker: {}",
        text(&out),
        text(&d)
    );
    Ok(())
}

#[test]
fn user_and_chown_outside_the_range_fail_the_step_that_uses_them() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let ctx = t.ctx.to_str().context("utf-8")?;
    let cases = [
        (
            "FROM busybox\nUSER 4294967295\nRUN id\n",
            "Dockerfile:3: RUN id: uids and gids must be in range 0-2147483647: 4294967295",
        ),
        (
            "FROM busybox\nUSER 2147483648\nRUN id\n",
            "Dockerfile:3: RUN id: uids and gids must be in range 0-2147483647: 2147483648",
        ),
        // An /etc/passwd entry of the image with such a uid, used by name.
        (
            "FROM busybox\nRUN echo 'evil:x:4294967295:0::/:/bin/sh' >> /etc/passwd\nUSER evil\nRUN id\n",
            "uids and gids must be in range 0-2147483647: 4294967295 (/etc/passwd entry \"evil\")",
        ),
        (
            "FROM busybox\nCOPY --chown=4294967295 f /f\n",
            "uids and gids must be in range 0-2147483647",
        ),
    ];
    t.write("f", "x\n");
    for (dockerfile, want) in cases {
        t.write("Dockerfile", dockerfile);
        let out = t.kiln(&["build", "--progress", "plain", "-t", "u:1", ctx]);
        ensure!(
            !out.status.success() && stderr(&out).contains(want),
            "{dockerfile}: want {want:?}:\n{}",
            text(&out)
        );
    }
    Ok(())
}

#[test]
fn env_without_a_name_and_a_relative_workdir_are_refused_as_docker_does() -> anyhow::Result<()> {
    let Some((t, docker)) = busybox_and_docker()? else {
        return Ok(());
    };
    both_refuse(
        &t,
        &docker,
        &["-e", "=x"],
        "invalid environment variable: =x",
    )?;
    both_refuse(&t, &docker, &["-e", "="], "invalid environment variable: =")?;
    both_refuse(
        &t,
        &docker,
        &["-w", "rel"],
        "the working directory 'rel' is invalid, it needs to be an absolute path",
    )?;
    // `-e K` without a value still passes the caller's K, as in docker.
    let out = t
        .cmd(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-e",
            "KILN_IT_K",
            "busybox",
            "sh",
            "-c",
            "echo $KILN_IT_K",
        ])
        .env("KILN_IT_K", "v")
        .output()?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "v\n",
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn memory_zero_is_unlimited_as_in_docker() -> anyhow::Result<()> {
    let Some((t, docker)) = busybox_and_docker()? else {
        return Ok(());
    };
    // kiln used to write 0 as the limit: the container was OOM-killed at once (137).
    let out = kiln_run(&t, &["--rm", "-m", "0"], &["echo", "hi"]);
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == "hi\n",
        "{}",
        text(&out)
    );
    let d = docker.run(&["-m", "0"], &["echo", "hi"]);
    ensure!(d.status.success(), "{}", text(&d));
    both_refuse(
        &t,
        &docker,
        &["-m", "1k"],
        "Minimum memory limit allowed is 6MB",
    )?;
    Ok(())
}

#[test]
fn a_latin1_comment_builds_as_with_docker() -> anyhow::Result<()> {
    let Some((t, docker)) = busybox_and_docker()? else {
        return Ok(());
    };
    let ctx = t.ctx.to_str().context("utf-8")?;
    let df = |from: &str| {
        let mut b = format!("FROM {from}\n").into_bytes();
        b.extend_from_slice(b"# caf\xe9 cr\xe8me \xff\n");
        b.extend_from_slice(b"RUN echo ok > /ok\n");
        b
    };
    std::fs::write(t.ctx.join("Dockerfile"), df(&docker.image))?;
    let d = docker.build(&t.ctx);
    ensure!(d.status.success(), "docker: {}", text(&d));
    std::fs::write(t.ctx.join("Dockerfile"), df("busybox"))?;
    t.build("latin1:1", &[])?;
    let out = t.ok(&["run", "--rm", "--network", "none", "latin1:1", "cat", "/ok"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "ok\n",
        "{}",
        text(&out)
    );
    // Outside a comment kiln refuses the byte (docker would pass it to the shell) and says
    // where it is.
    std::fs::write(
        t.ctx.join("Dockerfile"),
        b"FROM busybox\nRUN echo caf\xe9\n",
    )?;
    let out = t.kiln(&["build", "-t", "latin1:2", ctx]);
    ensure!(
        !out.status.success() && stderr(&out).contains("Dockerfile:2:13: invalid UTF-8 byte 0xe9"),
        "{}",
        text(&out)
    );
    // With -f the message names the file given.
    let other = t.ctx.join("build.Dockerfile");
    std::fs::write(&other, b"FROM busybox\n# \xe9\nRUN echo \xe9\n")?;
    let other = other.to_str().context("utf-8")?;
    let out = t.kiln(&["build", "-t", "latin1:3", "-f", other, ctx]);
    ensure!(
        !out.status.success()
            && stderr(&out).contains(&format!("{other}:3:10: invalid UTF-8 byte 0xe9")),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn parser_limits_give_file_line_errors_in_real_builds() -> anyhow::Result<()> {
    let Some((t, docker)) = busybox_and_docker()? else {
        return Ok(());
    };
    let ctx = t.ctx.to_str().context("utf-8")?;
    let refused = |want: &str| -> anyhow::Result<()> {
        let out = t.kiln(&["build", "-t", "limits:1", ctx]);
        // A crash (stack overflow: SIGABRT) has no exit code.
        ensure!(
            out.status.code() == Some(1) && stderr(&out).contains(want),
            "want exit 1 and {want:?}:\n{}",
            &text(&out)[..text(&out).len().min(4000)]
        );
        ensure!(
            out.stderr.len() < 4096,
            "the error quotes too much: {} bytes",
            out.stderr.len()
        );
        Ok(())
    };
    let levels = 20_000;
    let too_long = "Dockerfile:2:1: dockerfile line greater than max allowed size of 65535";
    // 20,000 nested expansions on one line: over BuildKit's line limit.
    t.write(
        "Dockerfile",
        &format!(
            "FROM busybox\nENV X={}x{}\n",
            "${a:-".repeat(levels),
            "}".repeat(levels)
        ),
    );
    refused(too_long)?;
    // The same over continuation lines reaches the expander, which stops at 64 levels.
    t.write(
        "Dockerfile",
        &format!(
            "FROM busybox\nENV X={}x{}\n",
            "${a:-\\\n".repeat(levels),
            "}".repeat(levels)
        ),
    );
    refused("Dockerfile:2:5: failed to process")?;
    refused("substitutions nested more than 64 deep")?;
    // A 1 MB line.
    t.write(
        "Dockerfile",
        &format!("FROM busybox\nRUN echo {}\n", "x".repeat(1 << 20)),
    );
    refused(too_long)?;
    // The limit is docker's, to the byte: 65,535 builds, 65,536 does not, same message.
    let label = |n: usize| format!("LABEL k={}\n", "v".repeat(n - "LABEL k=".len()));
    for (len, ok) in [(65_535, true), (65_536, false)] {
        std::fs::write(
            t.ctx.join("Dockerfile"),
            format!("FROM {}\n{}", docker.image, label(len)),
        )?;
        let d = docker.build(&t.ctx);
        ensure!(
            d.status.success() == ok,
            "docker, {len} bytes: {}",
            &text(&d)[..text(&d).len().min(2000)]
        );
        if !ok {
            ensure!(
                stderr(&d).contains("dockerfile line greater than max allowed size of 65535"),
                "{}",
                stderr(&d)
            );
        }
        t.write("Dockerfile", &format!("FROM busybox\n{}", label(len)));
        if ok {
            t.build("limits:2", &[])?;
        } else {
            refused(too_long)?;
        }
    }
    Ok(())
}

/// A registry that accepts the connection and never answers: `kiln pull` gives up after
/// KILN_REGISTRY_TIMEOUT and says which registry, request and timeout. No root needed.
#[test]
fn pull_from_a_registry_that_never_answers_times_out() -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let t = crate::harness::TestDir::new();
    let reference = format!("127.0.0.1:{port}/silent/app:1");
    let child = t
        .cmd(&["pull", &reference])
        .env("KILN_REGISTRY_TIMEOUT", "300ms")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let start = Instant::now();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    // kiln without timeouts would hang here: kill it and fail rather than hang the suite.
    let Ok(out) = rx.recv_timeout(Duration::from_secs(20)) else {
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
        anyhow::bail!("kiln pull hung for 20 s against a silent registry");
    };
    let out = out?;
    let want = format!(
        "127.0.0.1:{port}: GET manifest silent/app:1: no answer (waiting for the response headers) within 0.3s"
    );
    ensure!(
        !out.status.success() && stderr(&out).contains(&want),
        "want {want:?}:\n{}",
        text(&out)
    );
    ensure!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    Ok(())
}

//! Issue 3's execution side: `kiln build --check`, RUN mounts, ADD of a URL.

use crate::harness::{TestDir, busybox_dir, executed_runs, privileged, text};
use anyhow::ensure;
use std::path::Path;

/// The real-world corpus shared by the project: `<repo>/../shared/conformance/real-world`, or
/// under `KILN_SHARED_DIR` (as frontend/tests/conformance.rs). Says where it looked when absent.
fn real_world() -> std::path::PathBuf {
    let shared = match std::env::var_os("KILN_SHARED_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    };
    let dir = shared.join("conformance/real-world");
    assert!(
        dir.is_dir(),
        "the real-world Dockerfile corpus is missing: no directory {} (put the project's shared/ \
         beside the checkout or set KILN_SHARED_DIR)",
        dir.display()
    );
    dir
}

#[test]
fn check_prints_warnings_with_location_and_rule_and_needs_no_store() -> anyhow::Result<()> {
    let t = TestDir::new();
    t.write(
        "Dockerfile",
        "FROM busybox as Build\nMAINTAINER someone\nCMD echo hi\n",
    );
    let out = t.ok(&["build", "--check", t.ctx.to_str().expect("utf-8")])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "Dockerfile:1:1: [StageNameCasing] Stage name 'Build' should be lowercase",
        "Dockerfile:1:1: [FromAsCasing]",
        "Dockerfile:2:1: [MaintainerDeprecated]",
        "Dockerfile:3:1: [JSONArgsRecommended]",
    ] {
        ensure!(
            stdout.contains(want),
            "missing {want:?} in:\n{}",
            text(&out)
        );
    }
    // busybox was never imported and KILN_ROOT was never created: --check needs no store.
    ensure!(!t.root.exists(), "--check created KILN_ROOT");
    Ok(())
}

#[test]
fn check_fails_on_errors_with_location() -> anyhow::Result<()> {
    let t = TestDir::new();
    t.write("Dockerfile", "FROM busybox\nRUN true\nEXPOSE abc\n");
    let out = t.kiln(&["build", "--check", t.ctx.to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(!out.status.success(), "an error must fail: {}", text(&out));
    ensure!(
        stdout.contains("Dockerfile:3:") && stdout.contains("[BuildError]"),
        "{}",
        text(&out)
    );

    t.write("Dockerfile", "FROM busybox\nFROBNICATE x\n");
    let out = t.kiln(&["build", "--check", t.ctx.to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        !out.status.success(),
        "a parse error must fail: {}",
        text(&out)
    );
    ensure!(
        stdout.contains("Dockerfile:2:1: [ParseError]"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn check_honours_target_build_arg_and_file() -> anyhow::Result<()> {
    let t = TestDir::new();
    t.write(
        "sub/Build.df",
        "ARG BASE\nFROM ${BASE} AS one\nRUN true\nFROM busybox AS two\nEXPOSE abc\n",
    );
    let ctx = t.ctx.to_str().expect("utf-8");
    let file = t.ctx.join("sub/Build.df");
    let file = file.to_str().expect("utf-8");
    // Only stage `one` is checked with --target one, so the bad EXPOSE in `two` is not reached.
    t.ok(&[
        "build",
        "--check",
        "-f",
        file,
        "--target",
        "one",
        "--build-arg",
        "BASE=busybox",
        ctx,
    ])?;
    let out = t.kiln(&["build", "--check", "-f", file, "--target", "two", ctx]);
    ensure!(!out.status.success(), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains(":5:"),
        "{}",
        text(&out)
    );
    let out = t.kiln(&["build", "--check", "--target", "nosuch", "-f", file, ctx]);
    ensure!(
        !out.status.success(),
        "an unknown target must fail: {}",
        text(&out)
    );
    Ok(())
}

#[test]
fn check_accepts_every_real_world_dockerfile() -> anyhow::Result<()> {
    let dir = real_world();
    let t = TestDir::new();
    let mut failures = Vec::new();
    let mut n = 0;
    for e in std::fs::read_dir(&dir)? {
        let p = e?.path();
        if !p.join("Dockerfile").is_file() {
            continue;
        }
        n += 1;
        let out = t.kiln(&["build", "--check", p.to_str().expect("utf-8")]);
        if !out.status.success() {
            failures.push(format!("{}:\n{}", p.display(), text(&out)));
        }
    }
    ensure!(n >= 60, "only {n} Dockerfiles under {}", dir.display());
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn cache_mount_persists_across_builds_and_stays_out_of_the_image() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox\nARG N\nRUN --mount=type=cache,target=/cache,id=c1,sharing=locked,mode=0750 \
         echo run$N >> /cache/log && cat /cache/log > /seen && stat -c %a /cache > /mode\n",
    );
    t.build("cache:1", &["--build-arg", "N=1"])?;
    t.build("cache:2", &["--build-arg", "N=2"])?;
    let out = t.ok(&["run", "--rm", "cache:2", "cat", "/seen", "/mode"])?;
    ensure!(stdout(&out) == "run1\nrun2\n750\n", "{}", text(&out));
    let out = t.ok(&[
        "run",
        "--rm",
        "cache:2",
        "sh",
        "-c",
        "test -e /cache/log || echo absent",
    ])?;
    ensure!(
        stdout(&out) == "absent\n",
        "the cache leaked into the image: {}",
        text(&out)
    );
    // The directory lives under KILN_ROOT/cachemounts.
    let dirs: Vec<_> = std::fs::read_dir(t.root.join("cachemounts"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .collect();
    ensure!(dirs.len() == 1, "{dirs:?}");
    Ok(())
}

#[test]
fn secret_mount_is_readable_absent_from_the_image_and_not_in_the_cache_key() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=secret,id=tok,required=true \
         stat -c %a /run/secrets/tok > /mode && wc -c < /run/secrets/tok > /len\n\
         RUN --mount=type=secret,id=tok,env=TOK sh -c 'test -n \"$TOK\" && echo ok > /env'\n",
    );
    let secret = t.dir.path().join("secret.txt");
    std::fs::write(&secret, "s3cr3t-value")?;
    let arg = format!("id=tok,src={}", secret.display());
    let ev = t.build("secret:1", &["--secret", &arg])?;
    ensure!(executed_runs(&ev).len() == 2, "{:?}", executed_runs(&ev));
    let out = t.ok(&["run", "--rm", "secret:1", "cat", "/mode", "/len", "/env"])?;
    ensure!(stdout(&out) == "400\n12\nok\n", "{}", text(&out));
    // Neither the file nor its content is anywhere in the image's filesystem.
    let out = t.ok(&[
        "run",
        "--rm",
        "secret:1",
        "sh",
        "-c",
        "test -e /run/secrets/tok && echo file-left; \
         find / -xdev -type f | xargs grep -l s3cr3t-value; echo checked",
    ])?;
    ensure!(
        stdout(&out) == "checked\n",
        "secret left in the image: {}",
        text(&out)
    );
    // A changed secret does not invalidate the cache.
    std::fs::write(&secret, "another-value-entirely")?;
    let ev = t.build("secret:2", &["--secret", &arg])?;
    ensure!(
        executed_runs(&ev).is_empty(),
        "re-ran: {:?}",
        executed_runs(&ev)
    );
    // A required secret that is not given fails the build.
    let out = t.kiln(&[
        "build",
        "--no-cache",
        "-t",
        "secret:3",
        t.ctx.to_str().expect("utf-8"),
    ]);
    ensure!(
        !out.status.success() && text(&out).contains("tok"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn bind_mount_from_a_stage_tmpfs_and_network_none() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox AS src\nRUN mkdir /data && echo one > /data/a\nRUN echo two > /data/b\n\
         FROM busybox\n\
         RUN --mount=type=bind,from=src,source=/data,target=/mnt cat /mnt/a /mnt/b > /got \
         && (touch /mnt/x 2>/dev/null && echo writable || echo readonly) >> /got\n\
         RUN --mount=type=tmpfs,target=/scratch echo t > /scratch/f && grep -c tmpfs /proc/mounts > /tmpfs\n\
         RUN --network=none sh -c 'ls /sys/class/net > /nets'\n",
    );
    t.build("bind:1", &[])?;
    let out = t.ok(&["run", "--rm", "bind:1", "cat", "/got"])?;
    ensure!(stdout(&out) == "one\ntwo\nreadonly\n", "{}", text(&out));
    let out = t.ok(&[
        "run",
        "--rm",
        "bind:1",
        "sh",
        "-c",
        "ls -A /mnt /scratch; cat /nets",
    ])?;
    let s = stdout(&out);
    ensure!(
        !s.contains("a\n") && !s.contains("f\n"),
        "a mount leaked into the image: {s}"
    );
    ensure!(s.lines().any(|l| l == "lo") && !s.contains("eth"), "{s}");
    Ok(())
}

#[test]
fn run_network_host_and_build_network_flag_see_the_host_interfaces() -> anyhow::Result<()> {
    if !privileged(&[]) {
        return Ok(());
    }
    let host: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    let Some(iface) = host.first() else {
        eprintln!("skipped: the host has only lo");
        return Ok(());
    };
    let t = TestDir::new();
    t.import_busybox()?;
    t.write(
        "Dockerfile",
        "FROM busybox\nRUN --network=host ls /sys/class/net > /host\nRUN ls /sys/class/net > /dflt\n",
    );
    t.build("net:1", &[])?;
    let out = t.ok(&["run", "--rm", "net:1", "cat", "/host", "/dflt"])?;
    let s = stdout(&out);
    ensure!(s.matches(iface.as_str()).count() == 1, "{iface} in {s}");
    t.build("net:2", &["--network", "host", "--no-cache"])?;
    let out = t.ok(&["run", "--rm", "net:2", "cat", "/dflt"])?;
    ensure!(stdout(&out).contains(iface.as_str()), "{}", text(&out));
    Ok(())
}

/// A one-file HTTP/1.1 server on 127.0.0.1 (a thread; serves until the process ends).
/// Returns the base URL.
fn serve(
    body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    last_modified: &'static str,
) -> anyhow::Result<String> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(match conn.try_clone() {
                Ok(c) => c,
                Err(_) => continue,
            });
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            let found = first.starts_with("GET /files/hello.txt ");
            let body = body.lock().map(|b| b.clone()).unwrap_or_default();
            let head = if found {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: {last_modified}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = conn.write_all(head.as_bytes());
            if found {
                let _ = conn.write_all(&body);
            }
        }
    });
    Ok(format!("http://{addr}"))
}

#[test]
fn add_url_checksum_last_modified_content_keyed_cache_and_errors() -> anyhow::Result<()> {
    if !privileged(&[]) {
        return Ok(());
    }
    const BODY: &[u8] = b"hello from the web\n";
    let body = std::sync::Arc::new(std::sync::Mutex::new(BODY.to_vec()));
    let base = serve(body.clone(), "Sun, 06 Nov 1994 08:49:37 GMT")?;
    let sum = cache::oci::Digest::of(BODY);
    let t = TestDir::new();
    t.import_busybox()?;
    t.write(
        "Dockerfile",
        &format!(
            "FROM busybox\nADD --checksum=sha256:{} {base}/files/hello.txt /dl/\n\
             ADD {base}/files/hello.txt /named.txt\n",
            sum.hex()
        ),
    );
    t.build("url:1", &[])?;
    let out = t.ok(&[
        "run",
        "--rm",
        "url:1",
        "sh",
        "-c",
        "cat /dl/hello.txt && stat -c '%Y %a' /dl/hello.txt /named.txt",
    ])?;
    ensure!(
        stdout(&out) == "hello from the web\n784111777 600\n784111777 600\n",
        "{}",
        text(&out)
    );

    // Unchanged content: cached. Changed content: the checksum-less ADD runs again (the key
    // follows the content), the pinned one fails its checksum.
    let ev = t.build("url:1b", &[])?;
    ensure!(crate::harness::cached(&ev).len() >= 2, "{ev:?}");
    t.write(
        "Dockerfile",
        &format!("FROM busybox\nADD {base}/files/hello.txt /named.txt\n"),
    );
    t.build("url:4", &[])?;
    let ev = t.build("url:4", &[])?;
    ensure!(crate::harness::cached(&ev).len() == 1, "not cached: {ev:?}");
    *body.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = b"new content\n".to_vec();
    let ev = t.build("url:5", &[])?;
    ensure!(
        crate::harness::cached(&ev).is_empty(),
        "stale cache: {ev:?}"
    );
    let out = t.ok(&["run", "--rm", "url:5", "cat", "/named.txt"])?;
    ensure!(stdout(&out) == "new content\n", "{}", text(&out));

    let wrong = cache::oci::Digest::of(b"something else");
    t.write(
        "Dockerfile",
        &format!(
            "FROM busybox\nADD --checksum=sha256:{} {base}/files/hello.txt /x\n",
            wrong.hex()
        ),
    );
    let out = t.kiln(&["build", "-t", "url:2", t.ctx.to_str().expect("utf-8")]);
    ensure!(
        !out.status.success() && text(&out).contains("checksum mismatch"),
        "{}",
        text(&out)
    );
    t.write(
        "Dockerfile",
        &format!("FROM busybox\nADD {base}/files/missing /x\n"),
    );
    let out = t.kiln(&["build", "-t", "url:3", t.ctx.to_str().expect("utf-8")]);
    ensure!(
        !out.status.success() && text(&out).contains("404"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn check_warns_about_ignored_and_missing_copy_sources() -> anyhow::Result<()> {
    let t = TestDir::new();
    t.write(".dockerignore", "ignored.txt\n");
    t.write("ignored.txt", "x");
    t.write("present.txt", "x");
    t.write(
        "Dockerfile",
        "FROM busybox\nCOPY present.txt /p\nCOPY ignored.txt /i\nADD missing.txt /m\nCOPY *.nomatch /n/\n",
    );
    let out = t.ok(&["build", "--check", t.ctx.to_str().expect("utf-8")])?;
    let s = stdout(&out);
    ensure!(
        s.contains("Dockerfile:3:1: [CopyIgnoredFile]")
            && s.contains("Dockerfile:4:1: [CopyMissingSource]"),
        "{}",
        text(&out)
    );
    ensure!(
        !s.contains("present.txt") && !s.contains("nomatch") && s.matches("[Copy").count() == 2,
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn writable_bind_mounts_never_change_the_context_or_the_stage() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write("in.txt", "context\n");
    t.write(
        "Dockerfile",
        "FROM busybox AS src\nRUN echo stage > /s.txt\n\
         FROM busybox\n\
         RUN --mount=type=bind,rw,target=/ctx sh -c 'echo changed > /ctx/in.txt && touch /ctx/new && cat /ctx/in.txt > /got'\n\
         RUN --mount=type=bind,from=src,rw,target=/st sh -c 'echo changed > /st/s.txt && cat /st/s.txt >> /got'\n\
         COPY --from=src /s.txt /s.txt\n",
    );
    t.build("rw:1", &[])?;
    ensure!(std::fs::read_to_string(t.ctx.join("in.txt"))? == "context\n");
    ensure!(!t.ctx.join("new").exists(), "a write reached the context");
    let out = t.ok(&["run", "--rm", "rw:1", "cat", "/got", "/s.txt"])?;
    ensure!(
        stdout(&out) == "changed\nchanged\nstage\n",
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn locked_cache_mounts_serialize_parallel_steps_without_stalling() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let mut df = String::new();
    for s in ["a", "b", "c"] {
        df.push_str(&format!(
            "FROM busybox AS {s}\nRUN --mount=type=cache,target=/c,id=L,sharing=locked \
             sh -c 'test ! -e /c/busy && touch /c/busy && sleep 1 && rm /c/busy && echo {s} >> /c/log && cp /c/log /log-{s}'\n"
        ));
    }
    df.push_str(
        "FROM busybox\nCOPY --from=a /log-a /\nCOPY --from=b /log-b /\nCOPY --from=c /log-c /\n",
    );
    t.write("Dockerfile", &df);
    t.build("locked:1", &["--jobs", "3"])?;
    let out = t.ok(&["run", "--rm", "locked:1", "sh", "-c", "cat /log-a /log-b /log-c | sort | uniq -c | wc -l; wc -l < /log-a; wc -l < /log-b; wc -l < /log-c"])?;
    // Each step saw nobody else inside (`busy` absent), and the logs grew one at a time:
    // lengths 1, 2 and 3 in some order.
    let lines: Vec<String> = stdout(&out).lines().map(|l| l.trim().to_owned()).collect();
    let mut lens = lines[1..].to_vec();
    lens.sort();
    ensure!(lines[0] == "3" && lens == ["1", "2", "3"], "{}", text(&out));
    Ok(())
}

#[test]
fn cache_mount_from_a_stage_seeds_a_new_cache_only() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox AS seed\nRUN mkdir -p /s && echo seeded > /s/first\n\
         FROM busybox\nARG N\n\
         RUN --mount=type=cache,target=/c,id=S,from=seed,source=/s \
         sh -c 'echo run$N >> /c/log; ls /c > /ls; cat /c/log > /log; rm /c/first || true'\n",
    );
    t.build("seed:1", &["--build-arg", "N=1"])?;
    t.build("seed:2", &["--build-arg", "N=2"])?;
    let out = t.ok(&["run", "--rm", "seed:1", "cat", "/ls"])?;
    ensure!(stdout(&out) == "first\nlog\n", "{}", text(&out));
    // The first build removed `first`; an existing cache is not seeded again.
    let out = t.ok(&["run", "--rm", "seed:2", "cat", "/ls", "/log"])?;
    ensure!(stdout(&out) == "log\nrun1\nrun2\n", "{}", text(&out));
    Ok(())
}

#[test]
fn check_reports_copy_sources_of_every_stage_the_target_reaches_only() -> anyhow::Result<()> {
    let t = TestDir::new();
    t.write(".dockerignore", "ign.txt\n");
    t.write("ign.txt", "x");
    t.write(
        "Dockerfile",
        "FROM busybox AS a\nCOPY missing-a /x\nFROM a AS b\nCOPY ign.txt /y\n\
         FROM busybox AS c\nCOPY missing-c /z\nFROM busybox AS d\nCOPY missing-d /w\n\
         FROM busybox AS e\nCOPY missing-e /v\nFROM b\nCOPY --from=c /z /z\n\
         RUN --mount=from=e,target=/m true\nCOPY <<EOF /inline\nhi\nEOF\n",
    );
    let ctx = t.ctx.to_str().expect("utf-8");
    let out = t.ok(&["build", "--check", ctx])?;
    let s = stdout(&out);
    for want in [
        "Dockerfile:2:1: [CopyMissingSource]",
        "Dockerfile:4:1: [CopyIgnoredFile]",
        "Dockerfile:6:1: [CopyMissingSource]",
        "Dockerfile:10:1: [CopyMissingSource]",
    ] {
        ensure!(s.contains(want), "{want} missing:\n{}", text(&out));
    }
    ensure!(
        !s.contains("missing-d"),
        "unreachable stage d checked:\n{s}"
    );
    let out = t.ok(&["build", "--check", "--target", "c", ctx])?;
    let s = stdout(&out);
    ensure!(
        s.matches("[Copy").count() == 1 && s.contains("missing-c"),
        "{}",
        text(&out)
    );
    Ok(())
}

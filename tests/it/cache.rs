//! The build cache seen from the CLI: why steps missed (`--explain`), the stat cache.

use crate::harness::{TestDir, busybox_dir, cached, executed_runs, text};
use anyhow::ensure;

const DOCKERFILE: &str =
    "FROM busybox\nARG V=1\nCOPY src /src\nRUN cat /src/a.txt > /out && echo $V\n";

fn plain_build(t: &TestDir, extra: &[&str]) -> anyhow::Result<String> {
    let ctx = t.ctx.to_str().expect("utf-8 path");
    let mut args = vec!["build", "--progress", "plain", "--explain", "-t", "x:1"];
    args.extend_from_slice(extra);
    args.push(ctx);
    let out = t.ok(&args)?;
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A busybox test dir with [`DOCKERFILE`] and `src/a.txt`, or `None` when the test is skipped.
fn project() -> anyhow::Result<Option<TestDir>> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(None);
    };
    t.write("Dockerfile", DOCKERFILE);
    t.write("src/a.txt", "one\n");
    Ok(Some(t))
}

#[test]
fn explain_says_which_file_or_arg_made_a_step_miss() -> anyhow::Result<()> {
    let Some(t) = project()? else {
        return Ok(());
    };
    t.write("src/b.txt", "b\n");
    let first = plain_build(&t, &[])?;
    ensure!(first.contains("cache miss: no cache entry"), "{first}");

    let again = plain_build(&t, &[])?;
    ensure!(again.contains("cache misses: 0"), "no-op rebuild: {again}");

    t.write("src/a.txt", "two\n");
    let edited = plain_build(&t, &[])?;
    ensure!(
        edited.contains("cache misses: 2")
            && edited.contains("COPY src /src: file changed: src/a.txt")
            && edited.contains("parent step changed")
            && !edited.contains("src/b.txt"),
        "{edited}"
    );
    // The plain progress line of the step itself.
    ensure!(
        edited
            .lines()
            .any(|l| l.starts_with('#') && l.ends_with("cache miss: file changed: src/a.txt")),
        "{edited}"
    );

    let arg = plain_build(&t, &["--build-arg", "V=2"])?;
    ensure!(
        arg.contains("cache misses: 1") && arg.contains("ARG or ENV V changed"),
        "{arg}"
    );
    let out = t.kiln(&[
        "build",
        "--progress",
        "plain",
        "--no-cache",
        t.ctx.to_str().expect("utf-8"),
    ]);
    ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("cache miss: --no-cache"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn build_writes_a_stat_cache_and_a_touched_file_stays_cached() -> anyhow::Result<()> {
    let Some(t) = project()? else {
        return Ok(());
    };
    plain_build(&t, &[])?;
    ensure!(
        std::fs::read_dir(t.root.join("statcache"))?.count() == 1,
        "KILN_ROOT/statcache has the context's cache"
    );
    // Touching the mtime alone changes the stat but not the content: still all cached.
    let f = std::fs::File::options()
        .write(true)
        .open(t.ctx.join("src/a.txt"))?;
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))?;
    let touched = plain_build(&t, &[])?;
    ensure!(touched.contains("cache misses: 0"), "{touched}");
    Ok(())
}

#[test]
fn system_df_counts_images_layers_and_cache_records() -> anyhow::Result<()> {
    let Some(t) = project()? else {
        return Ok(());
    };
    plain_build(&t, &[])?;
    let out = t.ok(&["system", "df"])?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let count = |kind: &str| -> Option<u64> {
        stdout
            .lines()
            .find(|l| l.starts_with(kind))?
            .strip_prefix(kind)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    ensure!(count("Images") == Some(2), "busybox and x:1: {stdout}");
    ensure!(
        count("Snapshots") == Some(3),
        "busybox, COPY and RUN layers: {stdout}"
    );
    ensure!(
        count("Build cache") == Some(2),
        "COPY and RUN records: {stdout}"
    );
    ensure!(count("Blobs").is_some_and(|n| n >= 6), "{stdout}");
    Ok(())
}

/// The `cache misses: N` count and the miss lines of an `--explain` build.
fn misses(stderr: &str) -> (usize, Vec<String>) {
    let mut lines = stderr
        .lines()
        .skip_while(|l| !l.starts_with("cache misses: "));
    let n = lines
        .next()
        .and_then(|l| l.strip_prefix("cache misses: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(usize::MAX);
    let list = lines
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.trim().to_owned())
        .collect();
    (n, list)
}

/// Issue 5, "Keys": a file's content, mode and owner each change exactly the keys of the steps
/// that depend on it; an mtime alone and an ignored file change none.
#[test]
fn keys_change_exactly_for_content_mode_and_owner_never_for_mtime_or_ignored_files()
-> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox AS other\nCOPY b.txt dir /other/\n\
         FROM busybox\nCOPY a.txt /a.txt\nRUN cat /a.txt > /out\nCOPY --from=other /other /other\n",
    );
    t.write(".dockerignore", "dir/*.log\n");
    t.write("a.txt", "a\n");
    t.write("b.txt", "b\n");
    t.write("dir/keep.txt", "keep\n");
    t.write("dir/skip.log", "ignored\n");
    plain_build(&t, &[])?;
    let dependent = |what: &str, out: &str| -> anyhow::Result<()> {
        let (n, list) = misses(out);
        ensure!(
            n == 3
                && list[0].ends_with("COPY a.txt /a.txt: file changed: a.txt")
                && list.iter().all(|l| !l.starts_with("[other")),
            "{what}: COPY a.txt, the RUN after it and the COPY --from after that miss, the \
             other stage does not:\n{out}"
        );
        Ok(())
    };
    let nothing = |what: &str, out: &str| -> anyhow::Result<()> {
        ensure!(misses(out).0 == 0, "{what} changes no key:\n{out}");
        Ok(())
    };
    let a = t.ctx.join("a.txt");

    t.write("a.txt", "A\n");
    dependent("content", &plain_build(&t, &[])?)?;
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o755))?;
    dependent("mode", &plain_build(&t, &[])?)?;
    std::os::unix::fs::chown(&a, Some(1234), Some(1234))?;
    dependent("owner", &plain_build(&t, &[])?)?;
    std::fs::File::options()
        .write(true)
        .open(&a)?
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(86400))?;
    nothing("an mtime", &plain_build(&t, &[])?)?;
    t.write("dir/skip.log", "still ignored, other content\n");
    std::fs::set_permissions(
        t.ctx.join("dir/skip.log"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    nothing("an ignored file", &plain_build(&t, &[])?)?;
    // And the other stage's own file misses only there (and in the COPY --from of it).
    t.write("dir/keep.txt", "changed\n");
    let out = plain_build(&t, &[])?;
    let (n, list) = misses(&out);
    ensure!(
        n == 2 && list[0].contains("file changed: dir/keep.txt") && list[1].contains("--from"),
        "{out}"
    );
    Ok(())
}

/// The builder's layer (with /scratch) is held by its cache record only.
const TWO_STAGES: &str = "FROM busybox AS builder\nRUN echo built > /artifact && echo x > /scratch\n\
    FROM busybox\nCOPY --from=builder /artifact /artifact\nRUN cat /artifact > /copy\n";

fn count_dir(p: &std::path::Path) -> usize {
    std::fs::read_dir(p).map_or(0, |d| d.count())
}

/// The store paths of cache records, with an mtime `secs` in the past (their last use).
fn age_records(t: &TestDir, secs: u64) -> anyhow::Result<()> {
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
    for e in std::fs::read_dir(t.root.join("cachekeys"))? {
        std::fs::File::options()
            .write(true)
            .open(e?.path())?
            .set_modified(then)?;
    }
    Ok(())
}

#[test]
fn prune_removes_build_cache_and_tagged_images_still_run() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write("Dockerfile", TWO_STAGES);
    t.build("x:1", &[])?;
    ensure!(count_dir(&t.root.join("cachekeys")) == 3);
    let snapshots = count_dir(&t.root.join("snapshots"));

    // Without -f and with no answer on stdin, nothing happens.
    let out = t.kiln(&["prune"]);
    ensure!(out.status.success() && count_dir(&t.root.join("cachekeys")) == 3);

    let out = t.ok(&["prune", "-f"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.contains("Deleted build cache objects:")
            && stdout.contains("Total reclaimed space: "),
        "{}",
        text(&out)
    );
    ensure!(count_dir(&t.root.join("cachekeys")) == 0);
    ensure!(
        count_dir(&t.root.join("snapshots")) == snapshots - 1,
        "only the builder stage's layer was held by nothing but its record"
    );
    let run = t.ok(&["run", "--rm", "x:1", "cat", "/artifact", "/copy"])?;
    ensure!(
        String::from_utf8_lossy(&run.stdout) == "built\nbuilt\n",
        "{}",
        text(&run)
    );
    // The cache is gone: the next build runs both steps again.
    let ev = t.build("x:1", &[])?;
    ensure!(executed_runs(&ev).len() == 2, "{ev:?}");
    Ok(())
}

#[test]
fn prune_all_removes_untagged_images_and_keeps_tagged_ones() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write("Dockerfile", TWO_STAGES);
    let out = t.ok(&[
        "build",
        "--progress",
        "plain",
        t.ctx.to_str().expect("utf-8"),
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("writing image ")?.strip_suffix(" done"))
        .expect("image id")
        .to_owned();
    // Plain prune keeps the untagged image: it is still runnable by ID.
    t.ok(&["prune", "-f"])?;
    t.ok(&["run", "--rm", &id, "cat", "/copy"])?;
    t.ok(&["prune", "--all", "--force"])?;
    let gone = t.kiln(&["run", "--rm", &id, "true"]);
    ensure!(!gone.status.success(), "{}", text(&gone));
    ensure!(
        count_dir(&t.root.join("snapshots")) == 1,
        "busybox's layer only"
    );
    t.ok(&["run", "--rm", "busybox", "true"])?;
    Ok(())
}

#[test]
fn prune_waits_for_a_running_build_which_succeeds() -> anyhow::Result<()> {
    use std::io::{BufRead as _, Read as _, Write as _};
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    // The build's last RUN blocks on a gate the test holds (an HTTP server on the host's
    // loopback that answers only when told), so prune surely starts while the build runs, and
    // the build ends only after prune has said it waits: events, not a time window.
    let gate = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = gate.local_addr()?.port();
    let (open, opened) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut c, _) = gate.accept()?;
        let mut buf = [0u8; 1024];
        let _ = c.read(&mut buf)?;
        let _ = opened.recv();
        c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nopen\n")
    });
    t.write(
        "Dockerfile",
        &format!(
            "FROM busybox AS builder\nRUN echo built > /artifact\n\
             FROM busybox\nCOPY --from=builder /artifact /artifact\n\
             RUN --network=host wget -q -O /gate http://127.0.0.1:{port}/ && cat /artifact > /copy\n"
        ),
    );
    let mut build = t
        .cmd(&[
            "build",
            "--progress",
            "rawjson",
            "--allow",
            "network.host",
            "-t",
            "x:1",
            t.ctx.to_str().expect("utf-8"),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut lines = std::io::BufReader::new(build.stderr.take().expect("piped")).lines();
    // Wait until the gated RUN has started: the build holds the store then.
    let mut seen = Vec::new();
    for l in lines.by_ref() {
        let l = l?;
        let slow = l.contains("\"started\"") && l.contains("wget");
        seen.push(l);
        if slow {
            break;
        }
    }
    // Keep draining the build's progress so that it never blocks on a full pipe.
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let mut prune = t
        .cmd(&["prune", "-f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut prune_err = Vec::new();
    for l in std::io::BufReader::new(prune.stderr.take().expect("piped")).lines() {
        let l = l?;
        let waiting = l.contains("waiting for running builds");
        prune_err.push(l);
        if waiting {
            // Prune waits for the build: now let the build finish.
            let _ = open.send(());
        }
    }
    let _ = open.send(());
    let prune = prune.wait_with_output()?;
    let rest = rest.join().expect("reader thread");
    let status = build.wait()?;
    ensure!(
        status.success(),
        "build broke: {}\n{}",
        seen.join("\n"),
        rest.join("\n")
    );
    server.join().expect("gate thread")?;
    ensure!(
        prune.status.success()
            && prune_err
                .iter()
                .any(|l| l.contains("waiting for running builds")),
        "prune did not wait for the build ({}): {}",
        prune.status,
        prune_err.join("\n")
    );
    let run = t.ok(&["run", "--rm", "x:1", "cat", "/copy"])?;
    ensure!(String::from_utf8_lossy(&run.stdout) == "built\n");
    Ok(())
}

#[test]
fn prune_until_and_keep_storage_remove_the_least_recently_used_cache() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    // Each build's first stage makes a layer only its cache record holds.
    let df = |bytes: u64| {
        format!(
            "FROM busybox AS s\nRUN head -c {bytes} /dev/zero > /f && echo {bytes} > /g\n\
             FROM busybox\nCOPY --from=s /g /g\n"
        )
    };
    t.write("big.Dockerfile", &df(3_000_000));
    t.write("small.Dockerfile", &df(1000));
    let build = |name: &str| {
        let f = t.ctx.join(name);
        t.build("x:1", &["-f", f.to_str().expect("utf-8")])
    };
    build("big.Dockerfile")?;
    age_records(&t, 7200)?;
    build("small.Dockerfile")?;
    let records = count_dir(&t.root.join("cachekeys"));
    ensure!(records == 4, "{records}");

    t.ok(&["prune", "-f", "--filter", "until=3h"])?;
    ensure!(
        count_dir(&t.root.join("cachekeys")) == 4,
        "all used within 3h"
    );
    t.ok(&["prune", "-f", "--filter", "until=1h"])?;
    ensure!(
        count_dir(&t.root.join("cachekeys")) == 2,
        "the big build's went"
    );
    let ev = build("small.Dockerfile")?;
    ensure!(executed_runs(&ev).is_empty(), "small still cached: {ev:?}");
    let ev = build("big.Dockerfile")?;
    ensure!(executed_runs(&ev).len() == 1, "big runs again: {ev:?}");

    // Make small's cache the most recently used one, big's older.
    age_records(&t, 7200)?;
    build("small.Dockerfile")?;
    t.ok(&["prune", "-f", "--keep-storage", "10GB"])?;
    ensure!(count_dir(&t.root.join("cachekeys")) == 4, "everything fits");
    t.ok(&["prune", "-f", "--keep-storage", "1MB"])?;
    // Big's two records were used at the same moment; the larger (its 3 MB RUN layer) goes
    // first, and then the cache fits: its small COPY record stays.
    ensure!(count_dir(&t.root.join("cachekeys")) == 3);
    let ev = build("small.Dockerfile")?;
    ensure!(executed_runs(&ev).is_empty(), "small was kept: {ev:?}");
    // The COPY record that stayed answers big's final step, so its stage is not needed.
    let ev = build("big.Dockerfile")?;
    ensure!(
        executed_runs(&ev).is_empty(),
        "big's COPY record stayed: {ev:?}"
    );
    t.ok(&["prune", "-f", "--keep-storage", "0"])?;
    ensure!(count_dir(&t.root.join("cachekeys")) == 0);
    Ok(())
}

#[test]
fn stale_temp_entries_of_killed_builds_are_cleaned() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write("Dockerfile", "FROM busybox\nRUN true\n");
    // What a killed build leaves: its pid (which no process has) in the name.
    let dead = t.root.join("tmp/step--99999999-3-1f");
    std::fs::create_dir_all(dead.join("upper/usr"))?;
    std::fs::write(dead.join("upper/usr/half-written"), b"x")?;
    let unknown = t.root.join("tmp/not-ours");
    std::fs::write(&unknown, b"?")?;
    t.build("x:1", &[])?;
    ensure!(!dead.exists(), "removed at the start of a build");
    ensure!(unknown.exists(), "an entry without a pid is left to GC");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400);
    std::fs::File::options()
        .write(true)
        .open(&unknown)?
        .set_modified(old)?;
    let out = t.ok(&["prune", "-f"])?;
    ensure!(!unknown.exists(), "{}", text(&out));
    Ok(())
}

#[test]
fn no_cache_filter_reruns_the_stage_and_its_users_only_when_its_result_changed()
-> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox AS same\nRUN echo same > /same\n\
         FROM busybox AS stamp\nRUN cat /proc/sys/kernel/random/uuid > /stamp\n\
         FROM busybox\nCOPY --from=same /same /same\nRUN cat /same > /seen\n\
         COPY --from=stamp /stamp /stamp\n",
    );
    let first = t.build("x:1", &[])?;
    ensure!(executed_runs(&first).len() == 3);
    let runs = |ev: &[serde_json::Value]| executed_runs(ev).join(" | ");

    // The re-run gives the same layer: the steps that use it keep their cache.
    let ev = t.build("x:1", &["--no-cache-filter", "SAME"])?;
    ensure!(
        executed_runs(&ev) == ["[same 2/2] RUN echo same > /same"],
        "{}",
        runs(&ev)
    );
    ensure!(cached(&ev).iter().any(|n| n.contains("RUN cat /same")));

    // A different result: the COPY --from of it runs again.
    let ev = t.build("x:1", &["--no-cache-filter", "stamp"])?;
    ensure!(
        executed_runs(&ev) == ["[stamp 2/2] RUN cat /proc/sys/kernel/random/uuid > /stamp"],
        "{}",
        runs(&ev)
    );
    let c = cached(&ev);
    ensure!(
        !c.iter().any(|n| n.contains("COPY --from=stamp"))
            && c.iter().any(|n| n.contains("RUN cat /same")),
        "{c:?}"
    );

    // Both, comma-separated.
    let ev = t.build("x:1", &["--no-cache-filter", "same,stamp"])?;
    ensure!(executed_runs(&ev).len() == 2, "{}", runs(&ev));
    Ok(())
}

#[test]
fn prune_all_keeps_a_pulled_image_runnable() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["docker-registry"])? else {
        return Ok(());
    };
    let reg = crate::registry::start_registry(t.dir.path())?;
    let remote = format!("127.0.0.1:{}/kiln/busybox:1", reg.port);
    t.ok(&["push", "busybox", &remote])?;
    // A pulled layer is kept as the registry's compressed blob (no tar): prune keeps that.
    let other = TestDir::new();
    other.ok(&["pull", &remote])?;
    other.ok(&["prune", "--all", "--force"])?;
    let out = other.ok(&["run", "--rm", &remote, "echo", "still here"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "still here\n",
        "{}",
        text(&out)
    );
    // And it still builds on it and pushes it (the tar comes from the compressed blob).
    other.write(
        "Dockerfile",
        &format!("FROM {remote}\nRUN echo built > /x\n"),
    );
    other.build("on-pulled:1", &[])?;
    other.ok(&[
        "push",
        &remote,
        &format!("127.0.0.1:{}/kiln/copy:1", reg.port),
    ])?;
    Ok(())
}

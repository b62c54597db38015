//! Container lifecycle beyond networking: graceful stop, cgroup limits.

use crate::harness::{TestDir, busybox_dir, ok_within, text};
use crate::network::Reaper;
use anyhow::{Context as _, ensure};
use std::time::{Duration, Instant};

/// Turns a hung `kiln stop` into a failure; far above any stop these tests wait for.
const WATCHDOG: Duration = Duration::from_secs(120);

fn name(tag: &str) -> String {
    format!("it-{tag}-{}", std::process::id())
}

fn inspect(t: &TestDir, name: &str) -> anyhow::Result<serde_json::Value> {
    let out = t.ok(&["inspect", name])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v.get(0).cloned().context("inspect gives an array")
}

/// Waits until the container's log holds `needle` (its trap is installed).
fn wait_log(t: &TestDir, n: &str, needle: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = t.ok(&["logs", n])?;
        if String::from_utf8_lossy(&out.stdout).contains(needle) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "no {needle:?} in the log of {n}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stop_sends_term_to_pid_1_and_kills_after_the_timeout() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let (graceful, stubborn) = (name("graceful"), name("stubborn"));
    // `sleep & wait`: a trapped signal interrupts `wait` at once, so the trap runs on delivery.
    for (n, trap) in [(&graceful, "exit 7"), (&stubborn, "echo got TERM")] {
        let script =
            format!("trap '{trap}' TERM; echo ready; while true; do sleep 1 & wait $!; done");
        t.ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            n,
            "busybox",
            "sh",
            "-c",
            &script,
        ])?;
        wait_log(&t, n, "ready")?;
    }

    // A trapped TERM ends the container and stop returns then, not after its timeout: with
    // `-t 600`, a stop that waited the timeout out would trip the (much shorter) watchdog.
    ok_within(&t, &["stop", "-t", "600", &graceful], WATCHDOG)?;
    let c = inspect(&t, &graceful)?;
    ensure!(
        c["State"]["Status"] == "exited" && c["State"]["ExitCode"] == 7,
        "the trap's exit code is lost: {c}"
    );

    // A TERM that does not end PID 1: it is delivered first (its trap logs it, so stop did not
    // KILL straight away), then KILL ends the container (137) once the timeout has passed.
    ok_within(&t, &["stop", "-t", "1", &stubborn], WATCHDOG)?;
    let c = inspect(&t, &stubborn)?;
    ensure!(c["State"]["ExitCode"] == 137, "{c}");
    let logs = t.ok(&["logs", &stubborn])?;
    ensure!(
        String::from_utf8_lossy(&logs.stdout).contains("got TERM"),
        "KILL came before TERM was delivered: {}",
        text(&logs)
    );
    t.ok(&["rm", &graceful, &stubborn])?;

    // The image's STOPSIGNAL replaces TERM.
    t.write("Dockerfile", "FROM busybox\nSTOPSIGNAL SIGUSR1\n");
    t.build("usr1:1", &[])?;
    let n = name("usr1");
    t.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &n,
        "usr1:1",
        "sh",
        "-c",
        "trap 'exit 9' USR1; trap '' TERM; echo ready; while true; do sleep 0.1; done",
    ])?;
    wait_log(&t, &n, "ready")?;
    t.ok(&["stop", "-t", "10", &n])?;
    let c = inspect(&t, &n)?;
    ensure!(
        c["State"]["ExitCode"] == 9 && c["Config"]["StopSignal"] == "SIGUSR1",
        "STOPSIGNAL not used: {c}"
    );
    t.ok(&["rm", &n])?;
    Ok(())
}

#[test]
fn pids_limit_stops_forks_and_memory_limit_is_in_the_cgroup() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let out = t.kiln(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--pids-limit",
        "5",
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait",
    ]);
    ensure!(
        text(&out).contains("can't fork"),
        "forks were not limited: {}",
        text(&out)
    );

    let n = name("limits");
    t.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &n,
        "--memory",
        "64m",
        "--cpus",
        "0.5",
        "busybox",
        "sleep",
        "1000",
    ])?;
    let id = crate::network::id_of(&t, &n)?;
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(
        t.root.join("containers").join(&id).join("state.json"),
    )?)?;
    let dirs: Vec<std::path::PathBuf> = state["cgroups"]
        .as_array()
        .context("cgroups in state.json")?
        .iter()
        .filter_map(|d| d.as_str().map(Into::into))
        .collect();
    ensure!(!dirs.is_empty(), "no cgroup: {state}");
    let read = |f: &str| {
        dirs.iter()
            .find_map(|d| std::fs::read_to_string(d.join(f)).ok())
            .map(|s| s.trim().to_owned())
    };
    let memory = read("memory.limit_in_bytes").or_else(|| read("memory.max"));
    ensure!(
        memory.as_deref() == Some("67108864"),
        "memory limit {memory:?}"
    );
    let cpu = read("cpu.cfs_quota_us").or_else(|| read("cpu.max"));
    ensure!(
        cpu.as_deref().is_some_and(|c| c.starts_with("50000")),
        "cpu {cpu:?}"
    );
    let pid = inspect(&t, &n)?["State"]["Pid"].as_i64().context("Pid")?;
    let procs = read("cgroup.procs").unwrap_or_default();
    ensure!(
        procs.lines().any(|p| p == pid.to_string()),
        "pid {pid} not in the cgroup: {procs}"
    );
    t.ok(&["rm", "-f", &n])?;
    for d in &dirs {
        ensure!(!d.exists(), "{} left after rm", d.display());
    }
    Ok(())
}

/// Runs `kiln ARGS` on a fresh pty (`script` from bsdutils is the harness's terminal).
fn on_a_terminal(t: &TestDir, args: &str) -> anyhow::Result<std::process::Output> {
    let line = format!("{} {args}", crate::harness::kiln_bin().display());
    Ok(std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("KILN_ROOT", &t.root)
        .stdin(std::process::Stdio::null())
        .output()?)
}

#[test]
fn run_and_exec_with_t_get_a_terminal_of_the_container() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["script"])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let out = on_a_terminal(
        &t,
        "run --rm -it --network none busybox sh -c 'tty; exit 3'",
    )?;
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        s.contains("/dev/pts/0"),
        "no terminal in the container: {}",
        text(&out)
    );
    ensure!(
        out.status.code() == Some(3),
        "exit code lost: {}",
        text(&out)
    );
    // Without -t the same command has no terminal.
    let out = t.kiln(&["run", "--rm", "--network", "none", "busybox", "tty"]);
    ensure!(
        !out.status.success() && text(&out).contains("not a tty"),
        "{}",
        text(&out)
    );
    let n = name("tty");
    t.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &n,
        "busybox",
        "sleep",
        "1000",
    ])?;
    let out = on_a_terminal(&t, &format!("exec -it {n} sh -c 'tty; exit 5'"))?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("/dev/pts/"),
        "exec -t: {}",
        text(&out)
    );
    ensure!(
        out.status.code() == Some(5),
        "exec exit code lost: {}",
        text(&out)
    );
    t.ok(&["rm", "-f", &n])?;
    Ok(())
}

#[test]
fn foreground_containers_are_listed_kept_until_rm_and_their_layers_survive_prune()
-> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    // An untagged image (reachable only by id) run in the foreground: `prune -a` removes
    // untagged images, but not the layers a live container stands on.
    t.write("Dockerfile", "FROM busybox\nRUN echo layer > /made\n");
    t.build("fg:1", &[])?;
    let id = inspect(&t, "fg:1")?["Id"]
        .as_str()
        .context("image id")?
        .to_owned();
    t.ok(&["rmi", "fg:1"])?;
    let long = name("fg-long");
    let child = t
        .cmd(&[
            "run",
            "--name",
            &long,
            "--network",
            "none",
            &id,
            "sh",
            "-c",
            "sleep 2; cat /made",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&t.ok(&["ps"])?.stdout).contains(&long) {
        ensure!(
            Instant::now() < deadline,
            "a running foreground container is not in ps"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t.ok(&["prune", "-a", "-f"])?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("layer"),
        "the container lost its layers to prune: {:?}",
        out
    );

    // Without --rm an exited foreground container stays (docker's behaviour) until rm.
    let short = name("fg-exit");
    let out = t.kiln(&[
        "run",
        "--name",
        &short,
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "exit 3",
    ]);
    ensure!(out.status.code() == Some(3), "{}", text(&out));
    let ps = t.ok(&["ps", "-a"])?;
    ensure!(
        String::from_utf8_lossy(&ps.stdout)
            .lines()
            .any(|l| l.ends_with(&short) && l.contains("Exited (3)")),
        "{}",
        text(&ps)
    );
    ensure!(inspect(&t, &short)?["State"]["ExitCode"] == 3);
    t.ok(&["rm", &short, &long])?;
    let left = std::fs::read_dir(t.root.join("containers"))?.count();
    ensure!(left == 0, "{left} container dirs left after rm");
    // With --rm nothing stays.
    t.ok(&["run", "--rm", "--network", "none", "busybox", "true"])?;
    let left = std::fs::read_dir(t.root.join("containers"))?.count();
    ensure!(left == 0, "--rm left {left} container dirs");
    Ok(())
}

#[test]
fn cp_works_on_a_stopped_container_as_dockers_does() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let n = name("cpstopped");
    t.ok(&[
        "run",
        "--network",
        "none",
        "--name",
        &n,
        "busybox",
        "sh",
        "-c",
        "echo from-the-container > /made; ln -s /made /link",
    ])?;
    ensure!(inspect(&t, &n)?["State"]["Status"] == "exited");
    let host = t.dir.path().join("cp-out");
    std::fs::create_dir(&host)?;
    let hs = |p: &std::path::Path| p.display().to_string();
    // Out of it: its writable layer over the image's.
    t.ok(&["cp", &format!("{n}:/made"), &hs(&host.join("made"))])?;
    ensure!(std::fs::read_to_string(host.join("made"))? == "from-the-container\n");
    t.ok(&["cp", &format!("{n}:/bin/busybox"), &hs(&host.join("bb"))])?;
    ensure!(std::fs::metadata(host.join("bb"))?.len() > 100_000);
    // A symlink is copied as one, and one in the path resolves inside the container.
    t.ok(&["cp", &format!("{n}:/link"), &hs(&host.join("link"))])?;
    ensure!(std::fs::read_link(host.join("link"))? == std::path::Path::new("/made"));
    // Into it: in its writable layer, where the next mount finds it.
    std::fs::write(host.join("in"), "from-the-host\n")?;
    t.ok(&["cp", &hs(&host.join("in")), &format!("{n}:/root/in")])?;
    let out = t.kiln(&["cp", &format!("{n}:/nosuch"), &hs(&host.join("x"))]);
    ensure!(!out.status.success(), "{}", text(&out));
    t.ok(&["cp", &format!("{n}:/root/in"), &hs(&host.join("back"))])?;
    ensure!(std::fs::read_to_string(host.join("back"))? == "from-the-host\n");
    t.ok(&["rm", "-f", &n])?;
    Ok(())
}

/// Whether `n` looks like a made-up name: `adjective_surname`, perhaps with a digit added.
fn made_up(n: &str) -> bool {
    let base = n.trim_end_matches(|c: char| c.is_ascii_digit());
    base.split_once('_').is_some_and(|(a, s)| {
        !a.is_empty()
            && !s.is_empty()
            && a.bytes().all(|b| b.is_ascii_lowercase())
            && s.bytes().all(|b| b.is_ascii_lowercase())
    })
}

#[test]
fn unnamed_containers_get_a_made_up_name_that_ps_shows_and_every_command_takes()
-> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let out = t.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo up; sleep 1000",
    ])?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(id.len() == 64, "run -d prints the id: {id:?}");
    let ps = t.ok(&["ps", "--format", "{{.ID}} {{.Names}}"])?;
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    let n = ps
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{} ", &id[..12])))
        .with_context(|| format!("{id} not in ps: {ps}"))?
        .to_owned();
    ensure!(made_up(&n), "not a docker-style name: {n:?}");
    // The default table's NAMES column shows it.
    let table = t.ok(&["ps"])?;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let header = table.lines().next().unwrap_or_default();
    ensure!(header.trim_end().ends_with("NAMES"), "{table}");
    ensure!(
        table
            .lines()
            .any(|l| l.starts_with(&id[..12]) && l.trim_end().ends_with(&n)),
        "{table}"
    );
    // Every command takes the name.
    let c = inspect(&t, &n)?;
    ensure!(c["Id"] == id && c["Name"] == format!("/{n}"), "{c}");
    wait_log(&t, &n, "up")?;
    let out = t.ok(&["exec", &n, "echo", "in"])?;
    ensure!(text(&out).contains("in"), "{}", text(&out));
    let out = t.ok(&["top", &n])?;
    ensure!(text(&out).contains("sleep 1000"), "{}", text(&out));
    ok_within(&t, &["stop", "-t", "1", &n], WATCHDOG)?;
    ensure!(inspect(&t, &n)?["State"]["Status"] == "exited");
    t.ok(&["start", &n])?;
    ensure!(inspect(&t, &n)?["State"]["Status"] == "running");
    ok_within(&t, &["restart", "-t", "1", &n], WATCHDOG)?;
    t.ok(&["kill", &n])?;
    // The name is held while the container exists, and given back by rm.
    let link = t.root.join("names").join(&n);
    ensure!(
        std::fs::read_link(&link)? == std::path::Path::new(&id),
        "{} does not name {id}",
        link.display()
    );
    t.ok(&["rm", &n])?;
    ensure!(
        !link.exists() && link.symlink_metadata().is_err(),
        "{n} still reserved"
    );
    // A foreground --rm container gives its name back too.
    t.ok(&["run", "--rm", "--network", "none", "busybox", "true"])?;
    let left: Vec<_> = std::fs::read_dir(t.root.join("names"))?
        .flatten()
        .map(|e| e.file_name())
        .filter(|f| f != ".lock")
        .collect();
    ensure!(left.is_empty(), "names left: {left:?}");
    Ok(())
}

#[test]
fn concurrent_runs_of_one_name_let_exactly_one_win_with_dockers_conflict() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let n = name("race");
    let args = [
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &n,
        "busybox",
        "sleep",
        "1000",
    ];
    let children = (0..4)
        .map(|_| {
            t.cmd(&args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outs = children
        .into_iter()
        .map(|c| c.wait_with_output())
        .collect::<Result<Vec<_>, _>>()?;
    let (won, lost): (Vec<_>, Vec<_>) = outs.iter().partition(|o| o.status.success());
    ensure!(
        won.len() == 1,
        "{} of 4 runs got {n}: {:?}",
        won.len(),
        outs.iter().map(text).collect::<Vec<_>>()
    );
    let id = String::from_utf8_lossy(&won[0].stdout).trim().to_owned();
    let conflict = format!(
        "Conflict. The container name \"/{n}\" is already in use by container \"{id}\". \
         You have to remove (or rename) that container to be able to reuse that name."
    );
    for o in &lost {
        ensure!(
            o.status.code() == Some(125),
            "exit {:?}: {}",
            o.status,
            text(o)
        );
        ensure!(text(o).contains(&conflict), "{}", text(o));
    }
    // The losers left nothing: one container, the winner.
    let dirs: Vec<_> = std::fs::read_dir(t.root.join("containers"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ensure!(dirs == [id.clone()], "containers: {dirs:?}");
    // Once removed, the name is free again.
    t.ok(&["rm", "-f", &n])?;
    let out = t.ok(&args)?;
    ensure!(String::from_utf8_lossy(&out.stdout).trim() != id);
    t.ok(&["rm", "-f", &n])?;
    Ok(())
}

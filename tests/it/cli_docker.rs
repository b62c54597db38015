//! The docker commands people type, against real kiln containers and images, and compared
//! with the real docker's output for the same image where the format matters.

use crate::harness::{busybox_dir, busybox_tar, text};
use crate::network::Reaper;
use anyhow::{Context as _, ensure};
use std::process::{Command, Output, Stdio};

fn name(tag: &str) -> String {
    format!("it-cli-{tag}-{}", std::process::id())
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn ps_images_inspect_and_friends_on_real_containers() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let named = name("named");
    let out = t.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &named,
        "busybox",
        "sleep",
        "30",
    ])?;
    // docker's: run -d prints the 64-digit id, also for a named container.
    let named_id = stdout(&out).trim().to_owned();
    ensure!(is_hex(&named_id, 64), "{}", text(&out));
    let out = t.ok(&["run", "-d", "--network", "none", "busybox", "sleep", "31"])?;
    let id = stdout(&out).trim().to_owned();
    ensure!(
        id.bytes().all(|b| b.is_ascii_hexdigit()),
        "run -d printed {id:?}"
    );

    // ps -q: one id per line, docker's 12-digit short form for generated ids; usable as a
    // prefix everywhere a container is named.
    let q = stdout(&t.ok(&["ps", "-q"])?);
    let ids: Vec<&str> = q.lines().collect();
    ensure!(ids.len() == 2, "ps -q: {q:?}");
    ensure!(ids.contains(&&named_id[..12]), "{q}");
    let short = ids
        .iter()
        .find(|l| **l != &named_id[..12])
        .context("the generated id")?;
    ensure!(
        is_hex(short, 12) && id.starts_with(short),
        "{short} of {id}"
    );
    let running = t.ok(&["inspect", "-f", "{{.State.Running}}", short])?;
    ensure!(stdout(&running) == "true\n", "{}", text(&running));

    // An unnamed container has a made-up name (docker's `adjective_surname`), not its id.
    let made_up = stdout(&t.ok(&["inspect", "-f", "{{.Name}}", short])?);
    let made_up = made_up.trim().trim_start_matches('/').to_owned();
    ensure!(
        made_up.contains('_') && !id.starts_with(&made_up),
        "name of {id}: {made_up:?}"
    );

    // The default listing has docker's columns, NAMES and CREATED included.
    let ps = stdout(&t.ok(&["ps"])?);
    let header = ps.lines().next().unwrap_or_default();
    for col in [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ] {
        ensure!(header.contains(col), "no {col} in {header:?}");
    }
    ensure!(
        ps.lines().any(|l| l.starts_with(short)
            && l.contains("\"sleep 31\"")
            && l.contains(" ago ")
            && l.contains("Up ")
            && l.ends_with(&made_up)),
        "{ps}"
    );

    // --format with docker's field names, plain and as a table.
    let f = stdout(&t.ok(&[
        "ps",
        "--format",
        "{{.ID}}|{{.Names}}|{{.Image}}|{{.Command}}|{{.State}}|{{.Ports}}",
    ])?);
    ensure!(
        f.lines()
            .any(|l| l == format!("{}|{named}|busybox|\"sleep 30\"|running|", &named_id[..12])),
        "{f}"
    );
    let tbl = stdout(&t.ok(&["ps", "--format", "table {{.Names}}\\t{{.Status}}"])?);
    let head = tbl.lines().next().unwrap_or_default();
    ensure!(
        head.starts_with("NAMES ") && head.ends_with("STATUS"),
        "{tbl}"
    );
    let row = tbl
        .lines()
        .find(|l| l.starts_with(&named))
        .context("named row")?;
    // docker's tabwriter: the widest cell plus 3, at least 10.
    let width = (named.len().max(made_up.len()) + 3).max(10);
    ensure!(
        head.find("STATUS") == Some(width) && row.find("Up ") == Some(width),
        "columns not aligned:\n{tbl}"
    );
    let created = stdout(&t.ok(&["ps", "--format", "{{.CreatedAt}}"])?);
    ensure!(
        created
            .lines()
            .all(|l| l.ends_with(" +0000 UTC") && l.len() == 29),
        "CreatedAt as docker prints it: {created}"
    );

    // inspect -f: field paths, json, index, range over maps and slices, literal text.
    let f = t.ok(&[
        "inspect",
        "-f",
        "cmd={{json .Config.Cmd}} first={{index .Config.Cmd 0}} net={{.HostConfig.NetworkMode}}{{range .Config.Cmd}} [{{.}}]{{end}}",
        &named,
        short,
    ])?;
    ensure!(
        stdout(&f)
            == "cmd=[\"sleep\",\"30\"] first=sleep net=none [sleep] [30]\n\
                cmd=[\"sleep\",\"31\"] first=sleep net=none [sleep] [31]\n",
        "{}",
        text(&f)
    );
    let bad = t.kiln(&["inspect", "-f", "{{.Nope}}", &named]);
    ensure!(
        bad.status.code() == Some(1) && text(&bad).contains("no entry for key \"Nope\""),
        "{}",
        text(&bad)
    );
    let bad = t.kiln(&["inspect", "-f", "{{range .Config.Cmd}}", &named]);
    ensure!(!bad.status.success(), "an unclosed range rendered");

    // The container namespace.
    let ls = stdout(&t.ok(&["container", "ls", "-q"])?);
    ensure!(ls == q, "container ls -q {ls:?} vs ps -q {q:?}");
    t.ok(&["container", "inspect", &named])?;
    ensure!(
        !t.kiln(&["container", "inspect", "busybox"])
            .status
            .success(),
        "container inspect fell back to an image"
    );

    // top: the container's processes, by PID namespace.
    let top = stdout(&t.ok(&["top", &named])?);
    ensure!(
        top.starts_with("UID") && top.lines().any(|l| l.ends_with("sleep 30")),
        "{top}"
    );
    ensure!(
        !top.contains("sleep 31"),
        "top shows another container: {top}"
    );

    // Images: -q, REPO[:TAG], --format, the image namespace, history.
    t.ok(&["tag", "busybox", "busybox:other"])?;
    t.ok(&["tag", "busybox", "elsewhere:1"])?;
    let digest = stdout(&t.ok(&["image", "inspect", "-f", "{{.Id}}", "busybox"])?);
    let hex = digest
        .trim()
        .strip_prefix("sha256:")
        .context("an image id")?;
    let iq = stdout(&t.ok(&["images", "-q"])?);
    ensure!(
        iq == format!("{}\n", &hex[..12]),
        "one image, listed once: {iq:?}"
    );
    let repo = stdout(&t.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}", "busybox"])?);
    ensure!(repo == "busybox:latest\nbusybox:other\n", "{repo}");
    let one = stdout(&t.ok(&["image", "ls", "--format", "{{.Tag}}", "busybox:other"])?);
    ensure!(one == "other\n", "{one}");
    let none = stdout(&t.ok(&["images", "nosuch"])?);
    ensure!(
        none.lines().count() == 1 && none.starts_with("REPOSITORY"),
        "{none}"
    );
    let tbl = stdout(&t.ok(&[
        "images",
        "--format",
        "table {{.Repository}}\\t{{.ID}}",
        "elsewhere",
    ])?);
    ensure!(
        tbl == format!("REPOSITORY   IMAGE ID\nelsewhere    {}\n", &hex[..12]),
        "{tbl}"
    );
    let cmd = stdout(&t.ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Cmd}}",
        "busybox",
    ])?);
    ensure!(cmd == "[\"sh\"]\n", "{cmd}");
    t.ok(&["image", "rm", "elsewhere:1"])?;
    ensure!(
        !t.kiln(&["image", "inspect", "elsewhere:1"])
            .status
            .success()
    );
    let hist = stdout(&t.ok(&["history", "busybox"])?);
    let mut hl = hist.lines();
    ensure!(
        hl.next()
            .is_some_and(|h| h.starts_with("IMAGE") && h.contains("CREATED BY")),
        "{hist}"
    );
    ensure!(
        hl.next()
            .is_some_and(|l| l.starts_with(&hex[..12]) && l.contains("kiln import")),
        "{hist}"
    );
    let hq = stdout(&t.ok(&["image", "history", "-q", "busybox"])?);
    ensure!(hq == format!("{}\n", &hex[..12]), "{hq}");

    // system df weighs images by their layers, not by their index files.
    let df = stdout(&t.ok(&["system", "df"])?);
    let line = df
        .lines()
        .find(|l| l.starts_with("Images"))
        .context("Images row")?;
    let cols: Vec<&str> = line.split_whitespace().collect();
    ensure!(
        cols.get(1) == Some(&"1"),
        "one image under three names: {df}"
    );
    let size = cols.get(2).context("SIZE")?;
    let (num, unit) = size.split_at(
        size.find(|c: char| c.is_ascii_alphabetic())
            .context("unit")?,
    );
    let mult = match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        u => anyhow::bail!("unit {u}"),
    };
    let df_bytes = num.parse::<f64>()? * mult;
    let want = stdout(&t.ok(&["image", "inspect", "-f", "{{.Size}}", "busybox"])?)
        .trim()
        .parse::<f64>()?;
    ensure!(
        (df_bytes - want).abs() <= want * 0.05,
        "system df says {size} for images of {want} bytes: {df}"
    );

    // version.
    let v = stdout(&t.ok(&["version", "--format", "{{.Client.Version}}"])?);
    ensure!(v.trim() == env!("CARGO_PKG_VERSION"), "{v}");
    ensure!(stdout(&t.ok(&["version"])?).contains(env!("CARGO_PKG_VERSION")));

    t.ok(&["container", "rm", "-f", &named, short])?;
    ensure!(stdout(&t.ok(&["ps", "-a", "-q"])?).is_empty());
    Ok(())
}

#[test]
fn exec_tty_term_network_mode_and_hostname() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let n = name("exec");
    t.ok(&[
        "run",
        "-d",
        "--network",
        "host",
        "--name",
        &n,
        "busybox",
        "sleep",
        "30",
    ])?;
    // -it with stdin not a terminal: refused at once, docker's message and status.
    let started = std::time::Instant::now();
    let out = t.kiln(&["exec", "-it", &n, "true"]);
    ensure!(
        out.status.code() == Some(1) && text(&out).contains("the input device is not a TTY"),
        "{}",
        text(&out)
    );
    ensure!(started.elapsed() < std::time::Duration::from_secs(5));
    // -t sets TERM=xterm unless given.
    let term = stdout(&t.ok(&["exec", "-t", &n, "sh", "-c", "echo $TERM"])?);
    ensure!(term.trim() == "xterm", "{term:?}");
    let term = stdout(&t.ok(&[
        "exec",
        "-t",
        "-e",
        "TERM=vt100",
        &n,
        "sh",
        "-c",
        "echo $TERM",
    ])?);
    ensure!(term.trim() == "vt100", "{term:?}");
    let term = stdout(&t.ok(&["exec", &n, "sh", "-c", "echo ${TERM:-unset}"])?);
    ensure!(term.trim() == "unset", "{term:?}");
    let term = stdout(&t.ok(&[
        "run",
        "--rm",
        "-t",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo $TERM",
    ])?);
    ensure!(term.trim() == "xterm", "run -t: {term:?}");

    // --network host: the host's name and NetworkMode; container:X names its peer.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    let h = stdout(&t.ok(&["exec", &n, "hostname"])?);
    ensure!(h.trim() == host.trim(), "{h:?} vs {host:?}");
    let mode = stdout(&t.ok(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", &n])?);
    ensure!(mode == "host\n", "{mode:?}");
    let peer = name("peer");
    t.ok(&[
        "run",
        "-d",
        "--network",
        &format!("container:{n}"),
        "--name",
        &peer,
        "busybox",
        "sleep",
        "30",
    ])?;
    let mode = stdout(&t.ok(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", &peer])?);
    ensure!(mode == format!("container:{n}\n"), "{mode:?}");

    // Usage errors: 125 as docker; help is not an error.
    for args in [
        &["run", "--bogus", "busybox"][..],
        &["ps", "--bogus"],
        &["nosuch"],
    ] {
        let out = t.kiln(args);
        ensure!(out.status.code() == Some(125), "{args:?}: {}", text(&out));
    }
    ensure!(t.kiln(&["ps", "--help"]).status.success());
    // The command alone prints its help and succeeds, as docker and `docker image` do.
    for args in [&[][..], &["image"], &["container"]] {
        let out = t.kiln(args);
        ensure!(
            out.status.success() && text(&out).contains("Usage"),
            "{args:?}: {}",
            text(&out)
        );
    }
    Ok(())
}

/// Whether dockerd answers; fails when REQUIRE_PRIVILEGED_TESTS=1 and it does not.
pub(crate) fn docker_ready() -> bool {
    let answered = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !answered && std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        panic!("docker reference test required but `docker version` gets no answer from dockerd");
    }
    if !answered {
        eprintln!("skipped: dockerd is not answering");
    }
    answered
}

pub(crate) fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("docker runs")
}

/// Removes the docker container and image of the test.
struct DockerReaper(String, String);

impl Drop for DockerReaper {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
        let _ = docker(&["rmi", "-f", &self.1]);
    }
}

#[test]
fn formats_and_exit_codes_match_docker() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    if !docker_ready() {
        return Ok(());
    }
    let _reap = Reaper::new(&t);
    let image = format!("kiln-it-cli-{}:1", std::process::id());
    let ctr = name("docker");
    let _dreap = DockerReaper(ctr.clone(), image.clone());
    let tar = t.dir.path().join("bb.tar");
    std::fs::write(&tar, busybox_tar()?)?;
    let tar = tar.to_str().context("utf-8 path")?;
    let out = docker(&["import", "-c", "CMD [\"sh\"]", tar, &image]);
    ensure!(out.status.success(), "{}", text(&out));
    t.ok(&["import", "-c", "CMD [\"sh\"]", tar, &image])?;
    let run = [
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &ctr,
        &image,
        "sleep",
        "30",
    ];
    let out = docker(&run);
    ensure!(out.status.success(), "{}", text(&out));
    t.ok(&run)?;

    let same = |args: &[&str]| -> anyhow::Result<(String, String)> {
        let d = docker(args);
        let k = t.kiln(args);
        ensure!(
            d.status.success() == k.status.success(),
            "{args:?}: docker {} kiln {}",
            text(&d),
            text(&k)
        );
        Ok((stdout(&d), stdout(&k)))
    };
    for f in [
        "{{.State.Running}} {{json .Config.Cmd}} {{.HostConfig.NetworkMode}} {{.Name}}",
        "{{.Path}}{{range .Args}} <{{.}}>{{end}}",
        "{{index .Config.Cmd 1}} {{len .Args}} {{upper .State.Status}}",
        "{{if .State.Running}}up{{else}}down{{end}} {{.State.ExitCode}}",
    ] {
        let (d, k) = same(&["inspect", "-f", f, &ctr])?;
        ensure!(d == k, "inspect -f {f:?}: docker {d:?} kiln {k:?}");
    }
    for f in [
        "{{json .Config.Cmd}} {{.Os}} {{.Architecture}}",
        "{{range .RepoTags}}[{{.}}]{{end}}",
    ] {
        let (d, k) = same(&["image", "inspect", "-f", f, &image])?;
        ensure!(d == k, "image inspect -f {f:?}: docker {d:?} kiln {k:?}");
    }
    let (d, k) = same(&["inspect", "-f", "{{.Nope}}", &ctr])?;
    ensure!(d.trim().is_empty() && k.trim().is_empty(), "{d:?} {k:?}");

    let f = "table {{.Image}}\\t{{.Command}}\\t{{.Names}}\\t{{.Ports}}";
    let dps = stdout(&docker(&[
        "ps",
        "--filter",
        &format!("name={ctr}"),
        "--format",
        f,
    ]));
    let kps = stdout(&t.ok(&["ps", "--format", f])?);
    ensure!(dps == kps, "ps --format table: docker\n{dps}kiln\n{kps}");

    let (d, k) = same(&[
        "images",
        "--format",
        "table {{.Repository}}\\t{{.Tag}}",
        &image,
    ])?;
    ensure!(d == k, "images --format: docker\n{d}kiln\n{k}");
    let dq = stdout(&docker(&["images", "-q", &image]));
    let kq = stdout(&t.ok(&["images", "-q", &image])?);
    ensure!(
        dq.lines().count() == 1
            && kq.lines().count() == 1
            && is_hex(dq.trim(), 12)
            && is_hex(kq.trim(), 12),
        "images -q: docker {dq:?} kiln {kq:?}"
    );

    // Exit codes and messages.
    for args in [&["run", "--bogus", &image][..], &["ps", "--bogus"]] {
        let (d, k) = (docker(args), t.kiln(args));
        ensure!(
            d.status.code() == Some(125) && k.status.code() == Some(125),
            "{args:?}: docker {:?} kiln {:?}",
            d.status,
            k.status
        );
    }
    let (d, k) = (
        docker(&["exec", "-it", &ctr, "true"]),
        t.kiln(&["exec", "-it", &ctr, "true"]),
    );
    ensure!(
        d.status.code() == k.status.code()
            && text(&d).contains("the input device is not a TTY")
            && text(&k).contains("the input device is not a TTY"),
        "docker {} kiln {}",
        text(&d),
        text(&k)
    );
    Ok(())
}

#[test]
fn cp_copies_both_ways_and_stays_inside_the_container() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let n = name("cp");
    t.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &n,
        "busybox",
        "sleep",
        "30",
    ])?;
    let host = t.dir.path().join("h");
    std::fs::create_dir_all(host.join("d/sub"))?;
    std::fs::write(host.join("d/sub/f"), "from the host\n")?;
    std::fs::set_permissions(
        host.join("d/sub/f"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )?;
    std::os::unix::fs::symlink("f", host.join("d/sub/l"))?;
    let hs = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();

    // Host to container: a tree into an existing directory, modes and symlinks kept.
    t.ok(&["cp", &hs(&host.join("d")), &format!("{n}:/tmp/")])?;
    let got = stdout(&t.ok(&[
        "exec",
        &n,
        "sh",
        "-c",
        "cat /tmp/d/sub/f; stat -c %a /tmp/d/sub/f; readlink /tmp/d/sub/l",
    ])?);
    ensure!(got == "from the host\n640\nf\n", "{got:?}");
    // A file to a new name; a missing directory with a trailing `/` is refused (docker).
    t.ok(&[
        "container",
        "cp",
        &hs(&host.join("d/sub/f")),
        &format!("{n}:/root/renamed"),
    ])?;
    ensure!(stdout(&t.ok(&["exec", &n, "cat", "/root/renamed"])?) == "from the host\n");
    let out = t.kiln(&["cp", &hs(&host.join("d/sub/f")), &format!("{n}:/nosuch/")]);
    ensure!(!out.status.success(), "copied into a missing directory");

    // Container to host: a file, and a tree into an existing directory.
    let passwd = host.join("passwd");
    t.ok(&["cp", &format!("{n}:/etc/passwd"), &hs(&passwd)])?;
    let inside = stdout(&t.ok(&["exec", &n, "cat", "/etc/passwd"])?);
    ensure!(std::fs::read_to_string(&passwd)? == inside);
    let back = host.join("back");
    std::fs::create_dir(&back)?;
    t.ok(&["cp", &format!("{n}:/tmp/d"), &hs(&back)])?;
    ensure!(std::fs::read_to_string(back.join("d/sub/f"))? == "from the host\n");
    ensure!(std::fs::read_link(back.join("d/sub/l"))? == std::path::Path::new("f"));
    let out = t.kiln(&["cp", &format!("{n}:/nosuch"), &hs(&back)]);
    ensure!(text(&out).contains("no such file"), "{}", text(&out));

    // A symlink in the container naming a host path resolves inside the container: a
    // write through it lands in the container, a read through it never sees the host's file.
    let probe = host.join("probe");
    std::fs::create_dir(&probe)?;
    std::fs::write(probe.join("secret"), "host secret\n")?;
    let p = hs(&probe);
    t.ok(&[
        "exec",
        &n,
        "sh",
        "-c",
        &format!(
            "mkdir -p {p} && ln -s {p} /tmp/link && ln -s ../../../../../../{p}/secret /tmp/rel"
        ),
    ])?;
    t.ok(&[
        "cp",
        &hs(&host.join("d/sub/f")),
        &format!("{n}:/tmp/link/planted"),
    ])?;
    ensure!(
        !probe.join("planted").exists(),
        "kiln cp followed a container symlink onto the host"
    );
    let inside = stdout(&t.ok(&["exec", &n, "cat", &format!("{p}/planted")])?);
    ensure!(inside == "from the host\n", "{inside:?}");
    for src in ["/tmp/link/secret", "/tmp/link/"] {
        let out = t.kiln(&["cp", &format!("{n}:{src}"), &hs(&host.join("leak"))]);
        let leaked = host.join("leak/secret").symlink_metadata().is_ok()
            || std::fs::read_to_string(host.join("leak")).is_ok();
        ensure!(
            !leaked,
            "kiln cp {src} read the host's file: {}",
            text(&out)
        );
        let _ = std::fs::remove_dir_all(host.join("leak"));
    }
    // A symlink is copied as a symlink, not followed.
    t.ok(&["cp", &format!("{n}:/tmp/rel"), &hs(&host.join("rel"))])?;
    ensure!(
        host.join("rel")
            .symlink_metadata()?
            .file_type()
            .is_symlink()
    );
    Ok(())
}

#[test]
fn start_and_restart_run_the_same_container_again() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ip", "nft"])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let n = name("restart");
    let script =
        "echo run >> /runs; echo started; trap 'exit 0' TERM; while true; do sleep 0.1; done";
    t.ok(&["run", "-d", "--name", &n, "busybox", "sh", "-c", script])?;
    t.ok(&["stop", "-t", "5", &n])?;
    let st = stdout(&t.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"])?);
    ensure!(st == format!("{n} exited\n"), "{st}");
    let out = t.ok(&["start", &n])?;
    ensure!(stdout(&out) == format!("{n}\n"), "{}", text(&out));
    // The writable layer is kept: the second run appended to the first one's file.
    let runs = stdout(&t.ok(&["exec", &n, "cat", "/runs"])?);
    ensure!(runs == "run\nrun\n", "{runs:?}");
    let f = "{{.State.Running}} {{.HostConfig.NetworkMode}} {{.NetworkSettings.IPAddress}}";
    let before = stdout(&t.ok(&["inspect", "-f", f, &n])?);
    ensure!(
        before.starts_with("true bridge 10."),
        "started on its bridge again: {before:?}"
    );
    t.ok(&["container", "restart", "-t", "5", &n])?;
    let runs = stdout(&t.ok(&["exec", &n, "cat", "/runs"])?);
    ensure!(runs == "run\nrun\nrun\n", "{runs:?}");
    let logs = stdout(&t.ok(&["logs", &n])?);
    ensure!(
        logs == "started\nstarted\nstarted\n",
        "the log keeps every run: {logs:?}"
    );
    // Starting a running container is a no-op, as docker's.
    t.ok(&["start", &n])?;
    ensure!(stdout(&t.ok(&["exec", &n, "cat", "/runs"])?) == "run\nrun\nrun\n");
    Ok(())
}

#[test]
fn stats_and_info_read_real_containers() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let (busy, idle) = (name("busy"), name("idle"));
    t.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &busy,
        "busybox",
        "sh",
        "-c",
        "while true; do :; done",
    ])?;
    t.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "-m",
        "64m",
        "--name",
        &idle,
        "busybox",
        "sh",
        "-c",
        "sleep 30 & sleep 30 & wait",
    ])?;
    let out = stdout(&t.ok(&["stats", "--no-stream"])?);
    let head = out.lines().next().unwrap_or_default();
    for col in [
        "CONTAINER ID",
        "NAME",
        "CPU %",
        "MEM USAGE / LIMIT",
        "MEM %",
        "NET I/O",
        "BLOCK I/O",
        "PIDS",
    ] {
        ensure!(head.contains(col), "no {col}: {out}");
    }
    ensure!(out.lines().count() == 3, "{out}");
    let f = "{{.Name}}|{{.CPUPerc}}|{{.MemUsage}}|{{.PIDs}}";
    let row = |n: &str| -> anyhow::Result<Vec<String>> {
        let o = stdout(&t.ok(&["stats", "--no-stream", "--format", f, n])?);
        Ok(o.trim().split('|').map(str::to_owned).collect())
    };
    let b = row(&busy)?;
    let cpu: f64 = b[1].trim_end_matches('%').parse()?;
    ensure!(cpu > 20.0, "a spinning shell uses {cpu}% CPU: {b:?}");
    let i = row(&idle)?;
    ensure!(i[0] == idle && i[3] == "3", "sh and two sleeps: {i:?}");
    ensure!(i[2].ends_with(" / 64MiB"), "the --memory limit: {i:?}");
    let cpu: f64 = i[1].trim_end_matches('%').parse()?;
    ensure!(cpu < 20.0, "sleeping uses {cpu}%: {i:?}");

    let info = stdout(&t.ok(&["info"])?);
    ensure!(info.contains(" Containers: 2\n  Running: 2\n"), "{info}");
    ensure!(info.contains(" Images: 1\n"), "{info}");
    t.ok(&["stop", "-t", "1", &busy])?;
    let f = stdout(&t.ok(&[
        "info",
        "-f",
        "{{.ContainersRunning}} {{.ContainersStopped}} {{.KilnRootDir}}",
    ])?);
    ensure!(f == format!("1 1 {}\n", t.root.display()), "{f}");
    Ok(())
}

#[test]
fn plain_progress_prints_a_failed_steps_output_once() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox\nRUN echo out-$((6*7)); echo err-$((6*7)) >&2; exit 4\n",
    );
    let ctx = t.ctx.to_str().context("utf-8")?;
    let out = t.kiln(&["build", "--progress", "plain", ctx]);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "{}", text(&out));
    for line in ["out-42", "err-42"] {
        ensure!(err.matches(line).count() == 1, "{line} not once:\n{err}");
    }
    ensure!(
        err.lines().last()
            == Some(
                "error: Dockerfile:2: RUN echo out-$((6*7)); echo err-$((6*7)) >&2; exit 4: exit code 4"
            ),
        "{err}"
    );
    // Without streamed output (rawjson), the error still carries the output's last lines.
    let out = t.kiln(&["build", "--progress", "rawjson", ctx]);
    let err = String::from_utf8_lossy(&out.stderr);
    let tail = err.split("error: ").last().unwrap_or_default();
    ensure!(tail.contains("out-42") && tail.contains("err-42"), "{err}");
    Ok(())
}

/// Whether tmux is installed; fails when REQUIRE_PRIVILEGED_TESTS=1 and it is not.
fn tmux_ready() -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        panic!("the tty progress test needs tmux (apt-get install tmux)");
    }
    if !ok {
        eprintln!("skipped: tmux is not installed");
    }
    ok
}

/// A tmux server of a test (its own socket and no configuration); killed on drop.
struct Tmux(std::path::PathBuf);

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.0).args(["-f", "/dev/null"]);
        c.stdin(Stdio::null());
        c
    }

    fn pane(&self) -> anyhow::Result<String> {
        let out = self.cmd().args(["capture-pane", "-p"]).output()?;
        ensure!(out.status.success(), "{}", text(&out));
        Ok(stdout(&out))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

#[test]
fn tty_progress_ticks_and_fits_40x10_and_200x50_terminals() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    if !tmux_ready() {
        return Ok(());
    }
    let mut df = String::from("FROM busybox\nRUN sleep 1.5\n");
    for i in 0..12 {
        df.push_str(&format!(
            "RUN echo step-{i}-{} && echo {}\n",
            "padding".repeat(8),
            "wide-output-".repeat(20)
        ));
    }
    t.write("Dockerfile", &df);
    let kiln = crate::harness::kiln_bin();
    for (cols, rows) in [(40, 10), (200, 50)] {
        let tmux = Tmux(t.dir.path().join(format!("tmux-{cols}")));
        let cmd = format!(
            "env KILN_ROOT={} {} build --no-cache --progress tty {}; echo EXIT=$?; sleep 60",
            t.root.display(),
            kiln.display(),
            t.ctx.display()
        );
        let out = tmux
            .cmd()
            .args([
                "new-session",
                "-d",
                "-x",
                &cols.to_string(),
                "-y",
                &rows.to_string(),
                &cmd,
            ])
            .env("TERM", "xterm")
            .output()?;
        ensure!(out.status.success(), "tmux: {}", text(&out));
        // The silent step's timer advances between two looks at the screen.
        let sleep_line = |pane: &str| {
            pane.lines()
                .find(|l| l.contains("RUN sleep 1.5"))
                .map(str::to_owned)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let first = loop {
            if let Some(l) = sleep_line(&tmux.pane()?) {
                break l;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "no sleep step: {}",
                tmux.pane()?
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        std::thread::sleep(std::time::Duration::from_millis(600));
        let second = sleep_line(&tmux.pane()?).context("the sleep step went away")?;
        ensure!(
            first != second,
            "{cols}x{rows}: the timer froze: {first:?} then {second:?}"
        );
        let pane = loop {
            let p = tmux.pane()?;
            if p.contains("EXIT=") {
                break p;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "build did not end: {p}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        ensure!(pane.contains("EXIT=0"), "{pane}");
        // No frame was left behind: each step shows at most once, and no line wrapped.
        let steps: Vec<&str> = pane.lines().filter(|l| l.starts_with("=> ")).collect();
        let mut seen = std::collections::BTreeSet::new();
        for s in &steps {
            let key = s.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
            ensure!(
                seen.insert(key),
                "{cols}x{rows}: {s:?} drawn twice:\n{pane}"
            );
            ensure!(
                s.chars().count() < cols,
                "{cols}x{rows}: {s:?} fills the line"
            );
        }
        ensure!(
            !steps.is_empty() && steps.len() < rows,
            "{cols}x{rows}:\n{pane}"
        );
        ensure!(
            pane.lines().all(|l| l.is_empty()
                || l.starts_with("=> ")
                || l.starts_with("   > ")
                || l.starts_with("EXIT=")
                || !l.contains("padding")),
            "{cols}x{rows}: a wrapped remainder:\n{pane}"
        );
    }
    Ok(())
}

/// docker 20.10's exit statuses of `run` and `exec`: 125 when the tool itself fails (an image
/// that is not there), the command's own status otherwise; for a command that does not exist
/// in the container 127 from `run` but 126 from `exec` (as dockerd 20.10 answers here), and 1
/// for `exec` of a container that does not exist.
#[test]
fn run_and_exec_exit_with_dockers_codes() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let _reap = Reaper::new(&t);
    let code = |args: &[&str]| t.kiln(args).status.code();
    ensure!(
        code(&["run", "--rm", "--pull", "never", "nosuch-image:1", "true"]) == Some(125),
        "run of a missing image"
    );
    ensure!(
        code(&[
            "run",
            "--rm",
            "--network",
            "none",
            "busybox",
            "sh",
            "-c",
            "exit 3"
        ]) == Some(3)
    );
    let out = t.kiln(&["run", "--rm", "--network", "none", "busybox", "/nosuch-cmd"]);
    ensure!(
        out.status.code() == Some(127),
        "{:?}: {}",
        out.status,
        text(&out)
    );
    let n = name("codes");
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
    ensure!(code(&["exec", &n, "sh", "-c", "exit 5"]) == Some(5));
    let out = t.kiln(&["exec", &n, "/nosuch-cmd"]);
    ensure!(
        out.status.code() == Some(126),
        "{:?}: {}",
        out.status,
        text(&out)
    );
    let out = t.kiln(&["exec", "nosuch-container", "true"]);
    ensure!(
        out.status.code() == Some(1) && text(&out).contains("no such container"),
        "{:?}: {}",
        out.status,
        text(&out)
    );
    t.ok(&["rm", "-f", &n])?;
    Ok(())
}

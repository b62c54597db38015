//! The test harness: a temp dir and KILN_ROOT per test, the real `kiln` binary, a busybox
//! base image built from /bin/busybox, and helpers to read rawjson progress.

use anyhow::{Context as _, ensure};
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `target/<profile>/kiln`, found from this test binary's path (`target/<profile>/deps/it-*`).
/// `cargo test --workspace` builds it (cli has an integration test, which makes cargo build
/// the binary); `cargo test -p kiln-tests` alone needs `cargo build -p kiln-cli` first.
pub fn kiln_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let bin = profile_dir.join("kiln");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p kiln-cli` (or `cargo test --workspace`)",
        bin.display()
    );
    bin
}

/// Checks root, overlayfs, /bin/busybox and `tools`. Returns false (test skipped, reason
/// printed) when one is missing, or panics when REQUIRE_PRIVILEGED_TESTS=1.
pub fn privileged(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    if !std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.contains("overlay")) {
        missing.push("overlayfs".to_owned());
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (busybox-static)".to_owned());
    }
    for t in tools {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()));
        if !found {
            missing.push((*t).to_owned());
        }
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        panic!(
            "privileged test required but missing: {}",
            missing.join(", ")
        );
    }
    eprintln!("skipped: missing {}", missing.join(", "));
    false
}

/// A fresh [`TestDir`] with busybox imported, or `None` when [`privileged`] skips the test
/// (it panics instead when REQUIRE_PRIVILEGED_TESTS=1).
pub fn busybox_dir(tools: &[&str]) -> anyhow::Result<Option<TestDir>> {
    if !privileged(tools) {
        return Ok(None);
    }
    let t = TestDir::new();
    t.import_busybox()?;
    Ok(Some(t))
}

/// One test's world: a temp dir holding `root/` (KILN_ROOT) and `ctx/` (a build context).
pub struct TestDir {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub ctx: PathBuf,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix("kiln-it-")
            .tempdir()
            .expect("a temp dir");
        let root = dir.path().join("root");
        let ctx = dir.path().join("ctx");
        std::fs::create_dir(&ctx).expect("ctx dir");
        TestDir { dir, root, ctx }
    }

    /// Writes `text` at `rel` under the context (creating parents).
    pub fn write(&self, rel: &str, text: &str) {
        let p = self.ctx.join(rel);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }

    /// A `kiln` command with this test's KILN_ROOT.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(kiln_bin());
        c.args(args)
            .env("KILN_ROOT", &self.root)
            .env_remove("KILN_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Runs `kiln args...` and returns its output.
    pub fn kiln(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("kiln runs")
    }

    /// Runs `kiln args...`, failing the test with its output unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = self.kiln(args);
        ensure!(
            out.status.success(),
            "kiln {args:?} failed ({}):\n{}",
            out.status,
            text(&out)
        );
        Ok(out)
    }

    /// Builds the context as `tag` with rawjson progress; returns the parsed events.
    pub fn build(&self, tag: &str, extra: &[&str]) -> anyhow::Result<Vec<Value>> {
        events(&self.build_output(tag, extra)?)
    }

    /// `kiln build --progress rawjson -t TAG EXTRA... CONTEXT`, which must succeed.
    pub fn build_output(&self, tag: &str, extra: &[&str]) -> anyhow::Result<Output> {
        let ctx = self.ctx.to_str().expect("utf-8 path");
        let mut args = vec!["build", "--progress", "rawjson", "-t", tag];
        args.extend_from_slice(extra);
        args.push(ctx);
        self.ok(&args)
    }

    /// Imports busybox as `busybox:latest` with `CMD ["sh"]` and a PATH, dated 1970
    /// (`SOURCE_DATE_EPOCH=0`): the same base image digest on every root and at every time, as
    /// a pulled base would be, so that tests comparing builds across roots compare their steps.
    pub fn import_busybox(&self) -> anyhow::Result<()> {
        let tar = self.dir.path().join("busybox.tar");
        std::fs::write(&tar, busybox_tar()?)?;
        let args = [
            "import",
            "--change",
            r#"CMD ["sh"]"#,
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            tar.to_str().expect("utf-8 path"),
            "busybox",
        ];
        let out = self
            .cmd(&args)
            .env("SOURCE_DATE_EPOCH", "0")
            .output()
            .expect("kiln runs");
        ensure!(
            out.status.success(),
            "kiln {args:?} failed ({}):\n{}",
            out.status,
            text(&out)
        );
        Ok(())
    }

    /// Every path under KILN_ROOT except tmp/ and the lock, with sizes: a store fingerprint.
    pub fn store_listing(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                let rel = p
                    .strip_prefix(&self.root)
                    .expect("under root")
                    .to_string_lossy()
                    .into_owned();
                if rel == "tmp"
                    || rel == "lock"
                    || rel.starts_with("snapshots/") && rel.matches('/').count() > 1
                {
                    continue;
                }
                let md = std::fs::symlink_metadata(&p).expect("stat");
                out.insert(rel, if md.is_file() { md.len() } else { 0 });
                if md.is_dir() {
                    stack.push(p);
                }
            }
        }
        out
    }
}

/// Unpacks image `refname` of the OCI layout at `layout` into the bundle dir `bundle` with
/// umoci (the rootfs lands in `bundle/rootfs`).
pub fn umoci_unpack(layout: &Path, refname: &str, bundle: &Path) -> anyhow::Result<()> {
    let out = Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{refname}", layout.display()))
        .arg(bundle)
        .output()?;
    ensure!(out.status.success(), "umoci unpack: {}", text(&out));
    Ok(())
}

/// `/usr/bin/docker args...` (Debian's 20.10 client; BuildKit on for `build`), which must
/// succeed: its output, or an error with what it printed.
pub fn docker_ok(args: &[&str]) -> anyhow::Result<Output> {
    let out = std::process::Command::new("/usr/bin/docker")
        .env("DOCKER_BUILDKIT", "1")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("running docker: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "docker {args:?} failed ({}):\n{}",
        out.status,
        text(&out)
    );
    Ok(out)
}

/// stdout and stderr, for failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The rawjson events on stderr (lines that are not JSON, like the final summary, skipped).
pub fn events(out: &Output) -> anyhow::Result<Vec<Value>> {
    Ok(String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

/// The events of vertices whose name contains `needle`, as (kind, time) pairs.
pub fn kinds<'a>(events: &'a [Value], needle: &str) -> Vec<(&'a str, u64)> {
    events
        .iter()
        .filter(|e| e["name"].as_str().is_some_and(|n| n.contains(needle)))
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or(""),
                e["time"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Names of RUN vertices that actually executed (started, not cached).
pub fn executed_runs(events: &[Value]) -> Vec<String> {
    let mut started = BTreeMap::new();
    for e in events {
        let name = e["name"].as_str().unwrap_or("").to_owned();
        match e["kind"].as_str() {
            Some("started") => {
                started.insert(name, true);
            }
            Some("cached") => {
                started.insert(name, false);
            }
            _ => {}
        }
    }
    started
        .into_iter()
        .filter(|(n, ran)| *ran && n.contains("RUN"))
        .map(|(n, _)| n)
        .collect()
}

/// Names of vertices reported CACHED.
pub fn cached(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "cached")
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect()
}

/// A rootfs tar: /bin/busybox, a symlink per applet, /etc/passwd, /etc/group, /tmp, /root.
pub fn busybox_tar() -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    };
    for (p, m) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("usr", 0o755),
    ] {
        b.append_data(
            &mut header(tar::EntryType::Directory, m, 0),
            p,
            std::io::empty(),
        )?;
    }
    let bb = std::fs::read("/bin/busybox").context("reading /bin/busybox")?;
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o755, bb.len() as u64),
        "bin/busybox",
        bb.as_slice(),
    )?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            b.append_link(
                &mut header(tar::EntryType::Symlink, 0o777, 0),
                format!("bin/{applet}"),
                "busybox",
            )?;
        }
    }
    for (p, text) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ] {
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o644, text.len() as u64),
            p,
            text.as_bytes(),
        )?;
    }
    Ok(b.into_inner()?)
}

/// A command's stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An image read back from `kiln save`.
pub(crate) struct Image {
    /// umoci's unpacked root filesystem.
    pub(crate) rootfs: PathBuf,
    /// The OCI image config (`config`, `history`...).
    pub(crate) config: Value,
}

impl Image {
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.rootfs.join(rel.trim_start_matches('/'))
    }

    pub(crate) fn read(&self, rel: &str) -> anyhow::Result<String> {
        std::fs::read_to_string(self.path(rel)).with_context(|| format!("reading {rel}"))
    }

    /// `(mode & 0o7777, uid, gid)` of a path (not following a final symlink).
    pub(crate) fn meta(&self, rel: &str) -> anyhow::Result<(u32, u32, u32)> {
        let md =
            std::fs::symlink_metadata(self.path(rel)).with_context(|| format!("stat {rel}"))?;
        Ok((md.mode() & 0o7777, md.uid(), md.gid()))
    }

    pub(crate) fn exists(&self, rel: &str) -> bool {
        std::fs::symlink_metadata(self.path(rel)).is_ok()
    }

    pub(crate) fn cfg(&self, key: &str) -> &Value {
        &self.config["config"][key]
    }

    pub(crate) fn history(&self) -> Vec<String> {
        self.config["history"]
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|e| e["created_by"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn env(&self) -> Vec<String> {
        strings(self.cfg("Env"))
    }
}

pub(crate) fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `kiln save TAG`, the tar unpacked as an OCI layout, `umoci unpack` of it, and its config.
pub(crate) fn unpack(t: &TestDir, tag: &str) -> anyhow::Result<Image> {
    let name = tag.replace([':', '/'], "_");
    let tar = t.dir.path().join(format!("{name}.tar"));
    t.ok(&["save", tag, "-o", tar.to_str().context("utf-8")?])?;
    let layout = t.dir.path().join(format!("{name}-layout"));
    std::fs::create_dir(&layout)?;
    tar::Archive::new(std::fs::File::open(&tar)?).unpack(&layout)?;
    let json = |p: PathBuf| -> anyhow::Result<Value> {
        Ok(serde_json::from_slice(
            &std::fs::read(&p).with_context(|| p.display().to_string())?,
        )?)
    };
    let blob = |d: &Value| -> anyhow::Result<PathBuf> {
        let d = d.as_str().context("a digest")?;
        Ok(layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:")))
    };
    let index = json(layout.join("index.json"))?;
    let refname = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .context("index.json names the image")?
        .to_owned();
    let manifest = json(blob(&index["manifests"][0]["digest"])?)?;
    let config = json(blob(&manifest["config"]["digest"])?)?;
    let bundle = t.dir.path().join(format!("{name}-bundle"));
    umoci_unpack(&layout, &refname, &bundle)?;
    Ok(Image {
        rootfs: bundle.join("rootfs"),
        config,
    })
}

/// Builds `ctx` (with `extra` flags) as `tag` and reads the image back.
pub(crate) fn build(t: &TestDir, tag: &str, extra: &[&str]) -> anyhow::Result<Image> {
    t.build(tag, extra)?;
    unpack(t, tag)
}

pub(crate) fn setup() -> anyhow::Result<Option<TestDir>> {
    busybox_dir(&["umoci"])
}

/// Runs `kiln args...` and fails the test with its output unless it succeeds; kills it and fails
/// when it has not returned after `watchdog`. The watchdog only turns a hang into a failure: pick
/// it far above any time the command may take, never as an assertion about timing.
pub fn ok_within(
    t: &TestDir,
    args: &[&str],
    watchdog: std::time::Duration,
) -> anyhow::Result<Output> {
    let child = t
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(watchdog) else {
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
        anyhow::bail!("kiln {args:?} hung for {watchdog:?}");
    };
    let out = out?;
    ensure!(
        out.status.success(),
        "kiln {args:?} failed ({}):\n{}",
        out.status,
        text(&out)
    );
    Ok(out)
}

/// A port on 127.0.0.1 that was free a moment ago (the OS picks it), for a server a test starts.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// Waits until something accepts connections on 127.0.0.1:`port`, polling every `poll`;
/// fails naming `what` once `timeout` has passed. Polling the port is the only readiness signal
/// the servers the tests start (registries, object stores) give.
pub(crate) fn wait_for_port(
    port: u16,
    what: &str,
    timeout: std::time::Duration,
    poll: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            std::time::Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(poll);
    }
    Ok(())
}

/// A `kiln build` of `app:1` (remote cache tests): its rawjson events, image digest and stderr.
pub(crate) struct Built {
    pub(crate) events: Vec<Value>,
    pub(crate) digest: String,
    pub(crate) stderr: String,
}

/// [`TestDir::build_output`] of `app:1`, which must succeed.
pub(crate) fn build_app(t: &TestDir, extra: &[&str]) -> anyhow::Result<Built> {
    parse_built(&t.build_output("app:1", extra)?)
}

/// The [`Built`] of a `kiln build --progress rawjson` that succeeded with output `out`.
pub(crate) fn parse_built(out: &Output) -> anyhow::Result<Built> {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let digest = stderr
        .lines()
        .find_map(|l| l.strip_prefix("writing image ")?.strip_suffix(" done"))
        .with_context(|| format!("no image digest in:\n{}", text(out)))?
        .to_owned();
    Ok(Built {
        events: events(out)?,
        digest,
        stderr,
    })
}

/// A test dir with busybox imported, `dockerfile`, and the context files `a.txt` and `b.txt`
/// that the remote cache tests' Dockerfiles copy.
pub(crate) fn cache_project(dockerfile: &str) -> anyhow::Result<TestDir> {
    let t = TestDir::new();
    t.import_busybox()?;
    t.write("Dockerfile", dockerfile);
    t.write("a.txt", "a\n");
    t.write("b.txt", "b\n");
    Ok(t)
}

/// A server child a test started, killed and reaped when dropped.
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The three-stage Dockerfile of the remote cache tests ([`cache_project`]), with `$final_run`
/// (a string literal) as the final stage's last line: `deps` and `builder` feed the final stage;
/// `a.txt` matters only to `builder`, `b.txt` only to the final stage.
macro_rules! three_stage_dockerfile {
    ($final_run:literal) => {
        concat!(
            "\
FROM busybox AS deps
RUN echo deps > /deps.txt

FROM busybox AS builder
RUN echo building > /built
COPY a.txt /a.txt
RUN cat /a.txt /built > /out

FROM busybox
COPY b.txt /b.txt
COPY --from=deps /deps.txt /deps.txt
COPY --from=builder /out /app/out
",
            $final_run,
            "\n"
        )
    };
}
pub(crate) use three_stage_dockerfile;

//! `kiln push` and `kiln pull` through the real CNCF registry (`docker-registry`, started here on
//! a free 127.0.0.1 port with its own storage): build, push, pull into another store, run.

use crate::harness::{TestDir, busybox_dir, executed_runs, privileged, text};
use anyhow::{Context as _, ensure};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `docker-registry serve` child, killed on drop.
pub(crate) struct Registry {
    child: Child,
    pub(crate) port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_registry(dir: &std::path::Path) -> anyhow::Result<Registry> {
    start_registry_on(dir, "127.0.0.1")
}

/// A registry listening on `ip` (any 127.x.y.z: only 127.0.0.1 counts as loopback for plain
/// HTTP, so another one stands for a remote plain-HTTP registry).
pub(crate) fn start_registry_on(dir: &std::path::Path, ip: &str) -> anyhow::Result<Registry> {
    let port = TcpListener::bind((ip, 0))?.local_addr()?.port();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {ip}:{port}\n  secret: kiln-test\n",
            dir.join("registry-data").display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting docker-registry")?;
    let reg = Registry { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    // Polling the port is the only readiness signal the registry gives.
    while TcpStream::connect((ip, port)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "docker-registry did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(reg)
}

#[test]
fn pushed_image_pulls_into_another_store_and_runs() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["docker-registry"])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox\nRUN echo pushed-and-pulled > /msg\nCMD [\"cat\", \"/msg\"]\n",
    );
    t.build("app:1", &[])?;
    let reg = start_registry(t.dir.path())?;
    let remote = format!("127.0.0.1:{}/kiln/app:1", reg.port);
    let pushed = t.ok(&["push", "app:1", &remote])?;
    let pushed = String::from_utf8_lossy(&pushed.stdout).trim().to_owned();

    // `kiln pull` prints the registry's digest (docker's `Digest:`), not the local manifest's,
    // and inspect and `images --digests` show it as the repo digest.
    let other = TestDir::new();
    let pulled = other.ok(&["pull", &remote])?;
    let printed = String::from_utf8_lossy(&pulled.stdout).trim().to_owned();
    // Not a terminal: plain progress lines, one when a layer starts and one when it is done.
    let progress = String::from_utf8_lossy(&pulled.stderr);
    ensure!(
        progress.contains(": downloading ")
            && progress.contains(": pulled")
            && !progress.contains('\x1b'),
        "{}",
        text(&pulled)
    );
    ensure!(
        printed == pushed && printed.starts_with("sha256:"),
        "pull printed {printed}, push printed {pushed}"
    );
    let inspect = other.ok(&["inspect", &remote])?;
    let doc: serde_json::Value = serde_json::from_slice(&inspect.stdout)?;
    // `inspect` prints an array, like docker's.
    let doc = &doc[0];
    let repo_digest = format!("127.0.0.1:{}/kiln/app@{pushed}", reg.port);
    ensure!(
        doc["RepoDigests"] == serde_json::json!([repo_digest]),
        "{}",
        text(&inspect)
    );
    // The pulled image is the registry's manifest, kept as served: its ID is that digest.
    ensure!(
        doc["Id"].as_str() == Some(pushed.as_str()),
        "{}",
        text(&inspect)
    );
    let images = other.ok(&["images", "--digests"])?;
    ensure!(
        text(&images).contains(&pushed) && text(&images).contains("DIGEST"),
        "{}",
        text(&images)
    );
    let out = other.ok(&["run", "--rm", &remote])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "pushed-and-pulled\n",
        "{}",
        text(&out)
    );
    Ok(())
}

/// Builds `dockerfile` in a fresh busybox root and pushes the result to `remote`.
fn push_image(reg: &Registry, dockerfile: &str, remote: &str) -> anyhow::Result<()> {
    let src = TestDir::new();
    src.import_busybox()?;
    src.write("Dockerfile", dockerfile);
    src.build("src:1", &[])?;
    src.ok(&["push", "src:1", &format!("127.0.0.1:{}/{remote}", reg.port)])?;
    Ok(())
}

#[test]
fn build_pulls_a_registry_only_base_and_pushes_the_result() -> anyhow::Result<()> {
    if !privileged(&["docker-registry"]) {
        return Ok(());
    }
    let t = TestDir::new();
    let reg = start_registry(t.dir.path())?;
    push_image(
        &reg,
        "FROM busybox\nRUN echo from-base > /base\n",
        "kiln/base:1",
    )?;

    // An empty root: busybox is nowhere, the base only in the registry.
    let base = format!("127.0.0.1:{}/kiln/base:1", reg.port);
    let app = format!("127.0.0.1:{}/kiln/app:1", reg.port);
    t.write(
        "Dockerfile",
        &format!(
            "FROM {base}\nCOPY --from={base} /base /copied\nRUN cat /base /copied > /msg\n\
             CMD [\"cat\", \"/msg\"]\n"
        ),
    );
    let ctx = t.ctx.to_str().expect("utf-8 path");
    let out = t.ok(&["build", "--progress", "plain", "--push", "-t", &app, ctx])?;
    let pushed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(pushed.starts_with("sha256:"), "{}", text(&out));

    // Pulling by the printed digest checks that it is the registry's manifest digest.
    let other = TestDir::new();
    other.ok(&["pull", &format!("{app}@{pushed}")])?;
    let run = other.ok(&["run", "--rm", &app])?;
    ensure!(
        String::from_utf8_lossy(&run.stdout) == "from-base\nfrom-base\n",
        "{}",
        text(&run)
    );
    Ok(())
}

#[test]
fn a_moved_tag_invalidates_the_cache_with_pull() -> anyhow::Result<()> {
    if !privileged(&["docker-registry"]) {
        return Ok(());
    }
    let t = TestDir::new();
    let reg = start_registry(t.dir.path())?;
    push_image(&reg, "FROM busybox\nRUN echo one > /v\n", "kiln/moving:1")?;
    let base = format!("127.0.0.1:{}/kiln/moving:1", reg.port);
    t.write(
        "Dockerfile",
        &format!("FROM {base}\nRUN cp /v /msg\nCMD [\"cat\", \"/msg\"]\n"),
    );
    let first = t.build("app:1", &[])?;
    ensure!(executed_runs(&first).len() == 1, "{first:#?}");
    let again = t.build("app:1", &["--pull"])?;
    ensure!(
        executed_runs(&again).is_empty(),
        "same tag, same base: {again:#?}"
    );

    push_image(&reg, "FROM busybox\nRUN echo two > /v\n", "kiln/moving:1")?;
    // Without --pull the local tag still names the old base (docker's rule).
    let local = t.build("app:1", &[])?;
    ensure!(executed_runs(&local).is_empty(), "{local:#?}");
    let moved = t.build("app:1", &["--pull"])?;
    ensure!(executed_runs(&moved).len() == 1, "moved tag: {moved:#?}");
    let run = t.ok(&["run", "--rm", "app:1"])?;
    ensure!(
        String::from_utf8_lossy(&run.stdout) == "two\n",
        "{}",
        text(&run)
    );
    Ok(())
}

#[test]
fn a_base_missing_everywhere_names_the_line_and_the_registry() -> anyhow::Result<()> {
    if !privileged(&["docker-registry"]) {
        return Ok(());
    }
    let t = TestDir::new();
    let reg = start_registry(t.dir.path())?;
    t.write(
        "Dockerfile",
        &format!("FROM 127.0.0.1:{}/kiln/none:1\nRUN true\n", reg.port),
    );
    let ctx = t.ctx.to_str().expect("utf-8 path");
    let out = t.kiln(&["build", "--progress", "plain", ctx]);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{}", text(&out));
    ensure!(
        err.contains("Dockerfile:1") && err.contains("not in the local store"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn a_plain_http_registry_is_used_only_when_named_insecure() -> anyhow::Result<()> {
    if !privileged(&["docker-registry"]) {
        return Ok(());
    }
    let t = TestDir::new();
    let reg = start_registry_on(t.dir.path(), "127.0.0.2")?;
    let host = format!("127.0.0.2:{}", reg.port);
    let src = TestDir::new();
    src.import_busybox()?;
    src.write("Dockerfile", "FROM busybox\nRUN echo insecure > /msg\n");
    src.build("src:1", &[])?;
    let base = format!("{host}/kiln/base:1");
    src.ok(&["push", "--insecure-registry", &host, "src:1", &base])?;

    t.write(
        "Dockerfile",
        &format!("FROM {base}\nCMD [\"cat\", \"/msg\"]\n"),
    );
    let ctx = t.ctx.to_str().expect("utf-8 path");
    let refused = t.kiln(&["build", "--progress", "plain", "-t", "app:1", ctx]);
    ensure!(
        !refused.status.success() && text(&refused).contains(&format!("https://{host}/v2/")),
        "plain HTTP to a non-loopback registry must be refused: {}",
        text(&refused)
    );
    let mut by_env = t.cmd(&["build", "--progress", "plain", "-t", "app:1", ctx]);
    let out = by_env
        .env("KILN_INSECURE_REGISTRIES", format!("other:1,{host}"))
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    let out = t.ok(&[
        "build",
        "--pull",
        "--insecure-registry",
        &host,
        "--progress",
        "plain",
        "-t",
        "app:2",
        ctx,
    ])?;
    let run = t.ok(&["run", "--rm", "app:2"])?;
    ensure!(
        String::from_utf8_lossy(&run.stdout) == "insecure\n",
        "{}\n{}",
        text(&out),
        text(&run)
    );
    Ok(())
}

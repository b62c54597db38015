//! Remote build cache (`--cache-to` / `--cache-from`) through the real CNCF registry, started
//! here with its access log on, so that tests count the blob requests kiln makes.

use crate::harness::{
    Built, KillOnDrop, TestDir, build_app, busybox_dir, cache_project, executed_runs, free_port,
    privileged, text, three_stage_dockerfile, wait_for_port,
};
use anyhow::{Context as _, ensure};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// [`three_stage_dockerfile`] whose final stage only concatenates what the others made.
const DOCKERFILE: &str = three_stage_dockerfile!("RUN cat /app/out /deps.txt > /app/final");

/// A `docker-registry serve` child with its access log in a file, killed on drop.
pub(crate) struct Registry {
    _child: KillOnDrop,
    port: u16,
    log: PathBuf,
}

impl Registry {
    pub(crate) fn start(dir: &Path) -> anyhow::Result<Registry> {
        let port = free_port()?;
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test\n",
                dir.join("registry-data").display()
            ),
        )?;
        let log = dir.join("registry-access.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::fs::File::create(&log)?)
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry")?;
        let reg = Registry {
            _child: KillOnDrop(child),
            port,
            log,
        };
        wait_for_port(
            port,
            "docker-registry",
            Duration::from_secs(10),
            Duration::from_millis(20),
        )?;
        Ok(reg)
    }

    pub(crate) fn reference(&self, repo_tag: &str) -> String {
        format!("127.0.0.1:{}/{repo_tag}", self.port)
    }

    /// Access log lines (combined log format) of `method` requests whose path contains
    /// `path` and that were answered with `status`.
    fn requests(&self, method: &str, path: &str, status: u16) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.contains(&format!("\"{method} /v2/"))
                    && l.contains(path)
                    && l.contains(&format!("\" {status} "))
            })
            .map(str::to_owned)
            .collect()
    }

    /// Blobs uploaded so far (finished uploads: `PUT .../blobs/uploads/...` answered 201).
    fn uploads(&self) -> usize {
        self.requests("PUT", "/blobs/uploads/", 201).len()
    }

    /// Blob downloads so far in `repo`.
    fn blob_gets(&self, repo: &str) -> Vec<String> {
        self.requests("GET", &format!("/v2/{repo}/blobs/sha256:"), 200)
    }
}

/// A test dir with busybox imported and the three-stage Dockerfile.
fn project() -> anyhow::Result<TestDir> {
    cache_project(DOCKERFILE)
}

/// The three-stage [`project`] and a registry in its temp dir, or `None` when [`privileged`]
/// skips the test.
fn project_and_registry() -> anyhow::Result<Option<(TestDir, Registry)>> {
    if !privileged(&["docker-registry"]) {
        return Ok(None);
    }
    let t = project()?;
    let reg = Registry::start(t.dir.path())?;
    Ok(Some((t, reg)))
}

/// Builds `t`, exporting every stage's cache (`mode=max`) to the registry reference `cache`.
fn export_max(t: &TestDir, cache: &str) -> anyhow::Result<Built> {
    build_app(
        t,
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
    )
}

/// A fresh runner: an empty KILN_ROOT with only the base image, the same context.
fn fresh_runner(like: &TestDir) -> anyhow::Result<TestDir> {
    let t = project()?;
    for f in ["Dockerfile", "a.txt", "b.txt"] {
        std::fs::copy(like.ctx.join(f), t.ctx.join(f))?;
    }
    Ok(t)
}

fn snapshots(t: &TestDir) -> usize {
    std::fs::read_dir(t.root.join("snapshots")).map_or(0, |d| d.count())
}

#[test]
fn fresh_runner_builds_from_registry_cache_with_zero_runs_and_same_digest() -> anyhow::Result<()> {
    let Some((t, reg)) = project_and_registry()? else {
        return Ok(());
    };
    let cache = reg.reference("app/cache:main");
    let to = format!("type=registry,ref={cache},mode=max");
    // The first CI run: the cache it imports does not exist yet, which is only a warning.
    let first = build_app(&t, &["--cache-from", &cache, "--cache-to", &to])?;
    ensure!(executed_runs(&first.events).len() == 4, "{}", first.stderr);
    ensure!(
        first.stderr.contains("warning: cache not imported") && first.stderr.contains("not found"),
        "{}",
        first.stderr
    );

    let fresh = fresh_runner(&t)?;
    let from = format!("type=registry,ref={cache}");
    let second = build_app(&fresh, &["--cache-from", &from])?;
    ensure!(
        executed_runs(&second.events).is_empty(),
        "ran: {:?}\n{}",
        executed_runs(&second.events),
        second.stderr
    );
    ensure!(
        second.digest == first.digest,
        "{} vs {}",
        second.digest,
        first.digest
    );
    // The image is complete: it runs.
    let out = fresh.ok(&["run", "--rm", "app:1", "cat", "/app/final"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "a\nbuilding\ndeps\n",
        "{}",
        text(&out)
    );
    // The imported records it used are now local: no --cache-from needed any more.
    let third = build_app(&fresh, &[])?;
    ensure!(
        executed_runs(&third.events).is_empty() && third.digest == first.digest,
        "{}",
        third.stderr
    );
    Ok(())
}

#[test]
fn fresh_runner_with_one_changed_file_runs_only_dependent_steps() -> anyhow::Result<()> {
    let Some((t, reg)) = project_and_registry()? else {
        return Ok(());
    };
    let cache = reg.reference("app/cache:main");
    export_max(&t, &cache)?;

    let fresh = fresh_runner(&t)?;
    fresh.write("a.txt", "changed\n");
    let b = build_app(&fresh, &["--cache-from", &cache])?;
    let ran = executed_runs(&b.events);
    ensure!(
        ran.len() == 2
            && ran.iter().any(|r| r.contains("RUN cat /a.txt"))
            && ran.iter().any(|r| r.contains("RUN cat /app/out")),
        "ran: {ran:?}\n{}",
        b.stderr
    );
    let out = fresh.ok(&["run", "--rm", "app:1", "cat", "/app/final"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "changed\nbuilding\ndeps\n",
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn intermediate_stage_hits_only_with_mode_max() -> anyhow::Result<()> {
    let Some((t, reg)) = project_and_registry()? else {
        return Ok(());
    };
    let (min, max) = (
        reg.reference("app/cache:min"),
        reg.reference("app/cache:max"),
    );
    build_app(
        &t,
        &[
            "--cache-to",
            &format!("type=registry,ref={min},mode=min"),
            "--cache-to",
            &format!("type=registry,ref={max},mode=max"),
        ],
    )?;
    // b.txt changes the final stage's first step: every final step misses, so the stages it
    // copies from are needed.
    for (cache, want) in [(&min, 4), (&max, 1)] {
        let fresh = fresh_runner(&t)?;
        fresh.write("b.txt", "changed\n");
        let b = build_app(&fresh, &["--cache-from", cache])?;
        let ran = executed_runs(&b.events);
        ensure!(
            ran.len() == want,
            "{cache}: ran {ran:?}, expected {want}\n{}",
            b.stderr
        );
        let builder_ran = ran.iter().any(|r| r.contains("RUN echo building"));
        ensure!(builder_ran == (want == 4), "{cache}: ran {ran:?}");
    }
    Ok(())
}

#[test]
fn local_layout_cache_round_trips_and_skopeo_reads_it() -> anyhow::Result<()> {
    if !privileged(&["skopeo"]) {
        return Ok(());
    }
    let t = project()?;
    let dir = t.dir.path().join("cache-layout");
    let d = dir.to_str().expect("utf-8 path");
    let to = format!("type=local,dest={d},mode=max,compression=zstd");
    let first = build_app(&t, &["--cache-to", &to])?;

    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", &format!("oci:{d}:kiln-cache")])
        .output()?;
    ensure!(raw.status.success(), "{}", text(&raw));
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout)?;
    ensure!(
        manifest["artifactType"] == "application/vnd.kiln.cache.v1"
            && manifest["config"]["mediaType"] == "application/vnd.kiln.cache.config.v1+json"
            && manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd",
        "{manifest}"
    );
    let cfg = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--config",
            &format!("oci:{d}:kiln-cache"),
        ])
        .output()?;
    ensure!(cfg.status.success(), "{}", text(&cfg));
    let cfg: serde_json::Value = serde_json::from_slice(&cfg.stdout)?;
    ensure!(
        cfg["version"] == "kiln.cache.v1" && cfg["records"].as_array().map_or(0, Vec::len) == 8,
        "{cfg}"
    );

    let fresh = fresh_runner(&t)?;
    let second = build_app(&fresh, &["--cache-from", &format!("type=local,src={d}")])?;
    ensure!(
        executed_runs(&second.events).is_empty() && second.digest == first.digest,
        "{}",
        second.stderr
    );
    Ok(())
}

#[test]
fn inline_cache_of_a_pushed_image_is_imported_from_the_image() -> anyhow::Result<()> {
    let Some((t, reg)) = project_and_registry()? else {
        return Ok(());
    };
    let image = reg.reference("app/web:1");
    let ctx = t.ctx.to_str().expect("utf-8 path");
    let out = t.ok(&[
        "build",
        "--progress",
        "rawjson",
        "--cache-to",
        "type=inline",
        "--push",
        "-t",
        &image,
        ctx,
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr
        .lines()
        .find_map(|l| l.strip_prefix("writing image ")?.strip_suffix(" done"))
        .with_context(|| text(&out))?
        .to_owned();

    let fresh = fresh_runner(&t)?;
    let b = build_app(
        &fresh,
        &["--cache-from", &image, "--cache-to", "type=inline"],
    )?;
    ensure!(
        executed_runs(&b.events).is_empty(),
        "ran {:?}\n{}",
        executed_runs(&b.events),
        b.stderr
    );
    // Same image, inline cache included.
    ensure!(b.digest == first, "{} vs {first}", b.digest);
    Ok(())
}

const MOUNT_DOCKERFILE: &str = "\
FROM busybox
COPY v.txt /v.txt
RUN --mount=type=cache,id=pkgs,target=/var/cache/pkgs sh -c 'if [ -f /var/cache/pkgs/tool.deb ]; then echo CACHE-HIT; else echo DOWNLOADING; mkdir -p /var/cache/pkgs/sub; echo package-bytes > /var/cache/pkgs/tool.deb; echo index > /var/cache/pkgs/sub/index; fi; cat /v.txt > /installed'
";

/// The cache mount directory of `id` under `t`'s root (`cachemounts/<id>-<hash>`).
fn mount_dir(t: &TestDir, id: &str) -> Option<PathBuf> {
    std::fs::read_dir(t.root.join("cachemounts"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{id}-")))
        })
}

#[test]
fn cache_mount_contents_travel_with_mounts_true() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["docker-registry"])? else {
        return Ok(());
    };
    t.write("Dockerfile", MOUNT_DOCKERFILE);
    t.write("v.txt", "1\n");
    let reg = Registry::start(t.dir.path())?;
    let cache = reg.reference("app/cache:mounts");
    let to = format!("type=registry,ref={cache},mode=max,mounts=true");
    let first = build_app(&t, &["--cache-to", &to])?;
    ensure!(first.stderr.contains("1 mounts"), "{}", first.stderr);

    let fresh = TestDir::new();
    fresh.import_busybox()?;
    fresh.write("Dockerfile", MOUNT_DOCKERFILE);
    // A new v.txt makes the RUN miss, so it runs: it finds the package already downloaded.
    fresh.write("v.txt", "2\n");
    let ctx = fresh.ctx.to_str().expect("utf-8 path");
    let out = fresh.ok(&["build", "--progress", "plain", "--cache-from", &cache, ctx])?;
    let log = String::from_utf8_lossy(&out.stderr);
    // Output lines, not the instruction (which names both words).
    ensure!(
        log.lines().any(|l| l.ends_with(" CACHE-HIT"))
            && !log.lines().any(|l| l.ends_with(" DOWNLOADING")),
        "{log}"
    );
    let dir = mount_dir(&fresh, "pkgs").context("no pkgs cache mount in the fresh root")?;
    ensure!(std::fs::read_to_string(dir.join("tool.deb"))? == "package-bytes\n");
    ensure!(std::fs::read_to_string(dir.join("sub/index"))? == "index\n");
    Ok(())
}

#[test]
fn exporting_an_exported_build_again_uploads_nothing() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["docker-registry"])? else {
        return Ok(());
    };
    t.write("Dockerfile", MOUNT_DOCKERFILE);
    t.write("v.txt", "1\n");
    let reg = Registry::start(t.dir.path())?;
    let to = format!(
        "type=registry,ref={},mode=max,mounts=true",
        reg.reference("app/cache:main")
    );
    build_app(&t, &["--cache-to", &to])?;
    let after_first = reg.uploads();
    ensure!(
        after_first >= 3,
        "layers, chunks and config uploaded: {after_first}"
    );
    let again = build_app(&t, &["--cache-to", &to])?;
    ensure!(executed_runs(&again.events).is_empty(), "{}", again.stderr);
    ensure!(
        reg.uploads() == after_first && again.stderr.contains("(0 uploaded, 0 mounted"),
        "uploads {} -> {}\n{}",
        after_first,
        reg.uploads(),
        again.stderr
    );
    Ok(())
}

#[test]
fn lazy_import_downloads_only_the_final_image_layers() -> anyhow::Result<()> {
    let Some((t, reg)) = project_and_registry()? else {
        return Ok(());
    };
    let cache = reg.reference("lazy/cache:main");
    export_max(&t, &cache)?;
    let before = reg.blob_gets("lazy/cache").len();

    let fresh = fresh_runner(&t)?;
    let base_snapshots = snapshots(&fresh);
    let b = build_app(&fresh, &["--cache-from", &cache])?;
    let gets = reg.blob_gets("lazy/cache");
    // The cache config, then the final stage's four layers (COPY b.txt, two COPY --from, RUN);
    // the deps and builder stages' own layers are never downloaded.
    ensure!(
        gets.len() - before == 5 && b.stderr.contains("remote cache: 4 layers downloaded"),
        "{} blob GETs:\n{}\n{}",
        gets.len() - before,
        gets[before..].join("\n"),
        b.stderr
    );
    ensure!(
        snapshots(&fresh) == base_snapshots + 4,
        "{}",
        snapshots(&fresh)
    );
    Ok(())
}

#[test]
fn export_mounts_layers_already_pushed_to_a_sibling_repository() -> anyhow::Result<()> {
    let Some((t, reg)) = project_and_registry()? else {
        return Ok(());
    };
    build_app(&t, &[])?;
    t.ok(&["push", "app:1", &reg.reference("team/web:1")])?;
    let uploads = reg.uploads();
    let to = format!(
        "type=registry,ref={},mode=min",
        reg.reference("team/cache:main")
    );
    let b = build_app(&t, &["--cache-to", &to])?;
    // The final image's five layers come from team/web by mount; only the config is sent.
    let mounts = reg.requests("POST", "/v2/team/cache/blobs/uploads/?mount=", 201);
    ensure!(
        mounts.len() == 5 && reg.uploads() == uploads + 1,
        "{} mounts, {} uploads\n{}",
        mounts.len(),
        reg.uploads() - uploads,
        b.stderr
    );
    ensure!(
        b.stderr.contains("(1 uploaded, 5 mounted, 0 present)"),
        "{}",
        b.stderr
    );
    Ok(())
}

#[test]
fn a_corrupted_cache_blob_fails_the_build_and_leaves_no_layer() -> anyhow::Result<()> {
    let Some((t, reg)) = project_and_registry()? else {
        return Ok(());
    };
    let cache = reg.reference("bad/cache:main");
    export_max(&t, &cache)?;
    // Flip bytes in the middle of every gzip blob the registry stores (same size).
    let mut corrupted = 0;
    let mut stack = vec![t.dir.path().join("registry-data")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "data") {
                let mut bytes = std::fs::read(&p)?;
                if bytes.starts_with(&[0x1f, 0x8b]) && bytes.len() > 64 {
                    let mid = bytes.len() / 2;
                    for b in &mut bytes[mid..mid + 8] {
                        *b ^= 0xff;
                    }
                    std::fs::write(&p, bytes)?;
                    corrupted += 1;
                }
            }
        }
    }
    ensure!(corrupted > 0, "no gzip blob found in the registry storage");

    let fresh = fresh_runner(&t)?;
    let before = snapshots(&fresh);
    let ctx = fresh.ctx.to_str().expect("utf-8 path");
    let out = fresh.kiln(&["build", "--progress", "plain", "--cache-from", &cache, ctx]);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("digest mismatch") && err.contains("remote cache"),
        "{}",
        text(&out)
    );
    ensure!(
        snapshots(&fresh) == before,
        "a corrupted layer became a snapshot"
    );
    Ok(())
}

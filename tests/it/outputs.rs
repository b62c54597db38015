//! `kiln build -o/--output`, `--load`, `--annotation`: every output type read back by a tool
//! kiln did not write (tar, umoci, skopeo, docker load, the CNCF registry).

use crate::harness::{TestDir, busybox_dir, text};
use crate::registry::start_registry;
use anyhow::{Context as _, ensure};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// A Dockerfile whose result deletes a base file, adds files in two layers and a symlink.
const DOCKERFILE: &str = "FROM busybox\n\
RUN mkdir -p /srv && echo hello > /srv/greeting && ln -s greeting /srv/link && rm /bin/vi\n\
COPY app.txt /srv/app.txt\n";

fn setup(tools: &[&str]) -> anyhow::Result<Option<TestDir>> {
    let Some(t) = busybox_dir(tools)? else {
        return Ok(None);
    };
    t.write("Dockerfile", DOCKERFILE);
    t.write("app.txt", "app\n");
    Ok(Some(t))
}

fn run(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    Ok(out.stdout)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `tar -tf FILE` (GNU tar), names without `./` and trailing `/`.
fn tar_names(file: &Path) -> anyhow::Result<Vec<String>> {
    let out = run(Command::new("tar").arg("-tf").arg(file))?;
    Ok(String::from_utf8(out)?
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_owned())
        .collect())
}

/// Checks a merged root filesystem listing: the build's files in, the deleted one and every
/// whiteout out.
fn check_rootfs_names(names: &[String]) -> anyhow::Result<()> {
    for want in [
        "srv/greeting",
        "srv/link",
        "srv/app.txt",
        "bin/sh",
        "bin/busybox",
    ] {
        ensure!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    ensure!(!names.iter().any(|n| n == "bin/vi"), "bin/vi was deleted");
    ensure!(
        !names.iter().any(|n| n.contains(".wh.")),
        "whiteouts: {names:?}"
    );
    Ok(())
}

#[test]
fn local_and_tar_outputs_in_one_build_hold_the_merged_rootfs() -> anyhow::Result<()> {
    let Some(t) = setup(&["tar"])? else {
        return Ok(());
    };
    let dir = t.dir.path().join("out");
    let tarf = t.dir.path().join("rootfs.tar");
    t.build_output(
        "outs:1",
        &[
            "-o",
            &format!("type=local,dest={}", s(&dir)),
            "-o",
            &format!("type=tar,dest={}", s(&tarf)),
        ],
    )?;
    ensure!(std::fs::read_to_string(dir.join("srv/greeting"))? == "hello\n");
    ensure!(std::fs::read_to_string(dir.join("srv/app.txt"))? == "app\n");
    ensure!(std::fs::read_link(dir.join("srv/link"))? == Path::new("greeting"));
    ensure!(!dir.join("bin/vi").exists() && dir.join("bin/sh").exists());
    check_rootfs_names(&tar_names(&tarf)?)?;
    // The store keeps today's behaviour: -t still names the image there.
    t.ok(&["inspect", "outs:1"])?;

    // `-o -` is a tar on stdout; `-o DIR` is type=local.
    let dir2 = t.dir.path().join("out2");
    let out = t.ok(&["build", "-q", "-o", "-", "-o", s(&dir2), s(&t.ctx)])?;
    let piped = t.dir.path().join("piped.tar");
    std::fs::write(&piped, &out.stdout)?;
    check_rootfs_names(&tar_names(&piped)?)?;
    ensure!(dir2.join("srv/app.txt").is_file());
    // type=oci without dest goes to stdout (not a terminal here), as buildx.
    let out = t.ok(&["build", "-q", "-o", "type=oci", s(&t.ctx)])?;
    let piped = t.dir.path().join("oci.tar");
    std::fs::write(&piped, &out.stdout)?;
    let names = tar_names(&piped)?;
    ensure!(
        names.iter().any(|n| n == "index.json") && names.iter().any(|n| n == "oci-layout"),
        "{names:?}"
    );
    Ok(())
}

/// The manifest an OCI layout's index.json names (following one index level).
fn layout_manifest(layout: &Path) -> anyhow::Result<(Value, Value)> {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let blob = |d: &Value| -> anyhow::Result<Value> {
        let d = d.as_str().context("digest")?;
        let hex = d.strip_prefix("sha256:").context("sha256")?;
        Ok(serde_json::from_slice(&std::fs::read(
            layout.join("blobs/sha256").join(hex),
        )?)?)
    };
    let root = blob(&index["manifests"][0]["digest"])?;
    let manifest = match root["manifests"].as_array() {
        Some(m) => blob(&m[0]["digest"])?,
        None => root,
    };
    Ok((index, manifest))
}

#[test]
fn oci_outputs_are_read_by_umoci_and_skopeo() -> anyhow::Result<()> {
    let Some(t) = setup(&["umoci", "skopeo"])? else {
        return Ok(());
    };
    let archive = t.dir.path().join("img.tar");
    let layout = t.dir.path().join("layout");
    let zstd = t.dir.path().join("zstd.tar");
    t.build_output(
        "oci:1",
        &[
            "-o",
            &format!("type=oci,dest={}", s(&archive)),
            "-o",
            &format!(
                "type=oci,dest={},tar=false,name=example.com/oci:v2",
                s(&layout)
            ),
            "-o",
            &format!(
                "type=oci,dest={},compression=zstd,compression-level=5,force-compression=true",
                s(&zstd)
            ),
            "--annotation",
            "org.opencontainers.image.title=kiln test",
            "--annotation",
            "index-descriptor:com.example.where=layout",
        ],
    )?;
    // umoci unpacks the layout directory by the tag the name gave.
    let bundle = t.dir.path().join("bundle");
    crate::harness::umoci_unpack(&layout, "v2", &bundle)?;
    ensure!(std::fs::read_to_string(bundle.join("rootfs/srv/greeting"))? == "hello\n");
    ensure!(!bundle.join("rootfs/bin/vi").exists());
    let (index, manifest) = layout_manifest(&layout)?;
    ensure!(
        index["manifests"][0]["annotations"]["com.example.where"] == "layout",
        "{index:#}"
    );
    ensure!(
        manifest["annotations"]["org.opencontainers.image.title"] == "kiln test",
        "{manifest:#}"
    );
    // skopeo reads the archive, with the manifest annotation.
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", s(&archive))))?;
    let m: Value = serde_json::from_slice(&raw)?;
    ensure!(
        m["annotations"]["org.opencontainers.image.title"] == "kiln test",
        "{m:#}"
    );
    ensure!(
        m["layers"].as_array().is_some_and(|l| l
            .iter()
            .all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip")),
        "{m:#}"
    );
    // The zstd archive: every layer zstd, and skopeo copies it (reading every blob).
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", s(&zstd))))?;
    let m: Value = serde_json::from_slice(&raw)?;
    ensure!(
        m["layers"].as_array().is_some_and(|l| l
            .iter()
            .all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd")),
        "{m:#}"
    );
    let copy = t.dir.path().join("copy");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci-archive:{}", s(&zstd)))
        .arg(format!("oci:{}:x", s(&copy))))?;
    Ok(())
}

/// Whether dockerd answers; skip, or fail under REQUIRE_PRIVILEGED_TESTS=1.
fn docker_ready() -> bool {
    let answered = Command::new("/usr/bin/docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if answered {
        return true;
    }
    if std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        panic!("docker test required but dockerd does not answer");
    }
    eprintln!("skipped: dockerd is not answering");
    false
}

/// Removes a docker image when dropped.
struct DockerImage(String);

impl Drop for DockerImage {
    fn drop(&mut self) {
        let _ = Command::new("/usr/bin/docker")
            .args(["rmi", "-f", &self.0])
            .output();
    }
}

/// `docker run --rm IMAGE cat /srv/greeting`: the layers docker loaded hold the build.
fn docker_cat(image: &str) -> anyhow::Result<()> {
    let out = run(Command::new("/usr/bin/docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        image,
        "cat",
        "/srv/greeting",
        "/srv/app.txt",
    ]))?;
    ensure!(out == b"hello\napp\n", "{}", String::from_utf8_lossy(&out));
    Ok(())
}

#[test]
fn docker_output_is_read_by_docker_load() -> anyhow::Result<()> {
    let Some(t) = setup(&[])? else {
        return Ok(());
    };
    if !docker_ready() {
        return Ok(());
    }
    let name = format!("kiln-it-outputs-docker:{}", std::process::id());
    let _cleanup = DockerImage(name.clone());
    let file = t.dir.path().join("d.tar");
    t.build_output(
        "dock:1",
        // With an attestation the layout's root is an index; docker reads manifest.json.
        &[
            "-o",
            &format!("type=docker,dest={},name={name}", s(&file)),
            "--provenance=true",
        ],
    )?;
    let out = run(Command::new("/usr/bin/docker")
        .arg("load")
        .arg("-i")
        .arg(&file))?;
    ensure!(
        String::from_utf8_lossy(&out).contains(&name),
        "{}",
        String::from_utf8_lossy(&out)
    );
    docker_cat(&name)
}

#[test]
fn load_puts_the_result_into_the_running_dockerd() -> anyhow::Result<()> {
    let Some(t) = setup(&[])? else {
        return Ok(());
    };
    if !docker_ready() {
        return Ok(());
    }
    let name = format!("kiln-it-outputs-load:{}", std::process::id());
    let _cleanup = DockerImage(name.clone());
    let meta = t.dir.path().join("meta.json");
    t.build_output(&name, &["--load", "--metadata-file", s(&meta)])?;
    let out =
        run(Command::new("/usr/bin/docker")
            .args(["image", "inspect", "--format", "{{.Id}}", &name]))?;
    // docker's id is the config digest kiln wrote.
    let md: Value = serde_json::from_slice(&std::fs::read(&meta)?)?;
    let id = String::from_utf8(out)?;
    ensure!(
        md["containerimage.config.digest"] == id.trim(),
        "{md:#} vs {id}"
    );
    docker_cat(&name)
}

#[test]
fn registry_and_image_outputs_push_and_name() -> anyhow::Result<()> {
    let Some(t) = setup(&["docker-registry", "skopeo"])? else {
        return Ok(());
    };
    let reg = start_registry(t.dir.path())?;
    let remote = format!("127.0.0.1:{}/kiln/outputs:1", reg.port);
    let meta = t.dir.path().join("meta.json");
    t.build_output(
        "local:1",
        &[
            "-o",
            &format!("type=registry,name={remote},oci-mediatypes=true"),
            "-o",
            "type=image,name=other:2,push=false",
            "--annotation",
            "manifest:com.example.k=v",
            "--metadata-file",
            s(&meta),
        ],
    )?;
    // type=image,push=false names the result in the kiln store.
    t.ok(&["inspect", "other:2"])?;
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{remote}"),
    ]))?;
    let m: Value = serde_json::from_slice(&raw)?;
    ensure!(m["annotations"]["com.example.k"] == "v", "{m:#}");
    let digest = cache::oci::Digest::of(&raw);
    let md: Value = serde_json::from_slice(&std::fs::read(&meta)?)?;
    ensure!(
        md["containerimage.digest"] == digest.to_string(),
        "{md:#} vs {digest}"
    );
    // skopeo copies it out (every blob fetched and verified) and umoci-free readers agree.
    let copy = t.dir.path().join("copy");
    run(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{remote}"))
        .arg(format!("oci:{}:x", s(&copy))))?;
    Ok(())
}

#[test]
fn bad_outputs_are_refused_before_the_build() -> anyhow::Result<()> {
    let t = TestDir::new();
    t.write("Dockerfile", "FROM scratch\n");
    for (args, want) in [
        (
            vec!["-o", "-", "-o", "type=oci"],
            "only one output can write to stdout",
        ),
        (vec!["-o", "type=nope,dest=x"], "unknown type"),
        (vec!["-o", "dest=x"], "type is required"),
        (
            vec!["--annotation", "k=v"],
            "--annotation needs an image output",
        ),
        (
            vec!["-o", "type=oci,dest=x", "--annotation", "index:k=v"],
            "index annotations need an index",
        ),
    ] {
        let mut full = vec!["build"];
        full.extend(args.iter().copied());
        full.push(t.ctx.to_str().expect("utf-8"));
        let out = t.kiln(&full);
        ensure!(!out.status.success(), "{full:?} succeeded");
        ensure!(text(&out).contains(want), "{full:?}: {}", text(&out));
    }
    Ok(())
}

/// The newest date (`YYYY-MM-DD HH:MM:SS`, UTC) of any entry in the layers of the OCI layout
/// `layout`'s image, read by GNU tar.
fn newest_layer_date(layout: &Path) -> anyhow::Result<String> {
    let (_, manifest) = layout_manifest(layout)?;
    let mut newest = String::new();
    for l in manifest["layers"].as_array().context("layers")? {
        let hex = l["digest"]
            .as_str()
            .and_then(|d| d.strip_prefix("sha256:"))
            .context("digest")?;
        let out = run(Command::new("tar")
            .env("TZ", "UTC")
            .args(["--full-time", "-tvf"])
            .arg(layout.join("blobs/sha256").join(hex)))?;
        for line in String::from_utf8(out)?.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let date = format!("{} {}", f.get(3).unwrap_or(&""), f.get(4).unwrap_or(&""));
            newest = newest.max(date);
        }
    }
    Ok(newest)
}

#[test]
fn rewrite_timestamp_clamps_layer_dates_at_source_date_epoch() -> anyhow::Result<()> {
    let Some(t) = setup(&["tar", "umoci"])? else {
        return Ok(());
    };
    // With SOURCE_DATE_EPOCH the build itself already dates what RUN and COPY make at the
    // epoch (README "Image dates"); a file a step dates on purpose keeps its date, and that is
    // what `rewrite-timestamp` must clamp.
    t.write(
        "Dockerfile",
        &format!("{DOCKERFILE}RUN touch -d '2020-01-02 03:04:05' /srv/dated\n"),
    );
    let plain = t.dir.path().join("plain");
    let clamped = t.dir.path().join("clamped");
    let out = t
        .cmd(&[
            "build",
            "-q",
            "-o",
            &format!("type=oci,dest={},tar=false", s(&plain)),
            "-o",
            &format!(
                "type=oci,dest={},tar=false,rewrite-timestamp=true,name=x:clamped",
                s(&clamped)
            ),
            s(&t.ctx),
        ])
        .env("SOURCE_DATE_EPOCH", "1000")
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    // The file dated 2020 keeps its date without the rewrite...
    let before = newest_layer_date(&plain)?;
    ensure!(before.as_str() == "2020-01-02 03:04:05", "{before}");
    // ...and nothing is later than the epoch (1970-01-01 00:16:40) with it.
    let after = newest_layer_date(&clamped)?;
    ensure!(after.as_str() <= "1970-01-01 00:16:40", "{after}");
    // The rewritten layers and config still make a whole image for umoci.
    let bundle = t.dir.path().join("bundle");
    crate::harness::umoci_unpack(&clamped, "clamped", &bundle)?;
    ensure!(std::fs::read_to_string(bundle.join("rootfs/srv/app.txt"))? == "app\n");
    Ok(())
}

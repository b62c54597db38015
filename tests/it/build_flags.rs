//! `kiln build` flags CI scripts pass to `docker buildx build`: `--iidfile`,
//! `--metadata-file`, `-q`/`--progress=quiet`, `--label`, stdin contexts, cache flags.

use crate::harness::{busybox_dir, text};
use anyhow::{Context as _, ensure};
use std::process::Command;

/// `sha256:HEX` of a file, computed by coreutils' sha256sum (not by kiln).
fn sha256sum(path: &std::path::Path) -> anyhow::Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    ensure!(out.status.success(), "sha256sum: {}", text(&out));
    let hex = String::from_utf8(out.stdout)?;
    Ok(format!(
        "sha256:{}",
        hex.split_whitespace().next().context("sha256sum output")?
    ))
}

/// The raw manifest and config of `image`, read back by skopeo from a `kiln save` archive.
fn skopeo_raw(t: &crate::harness::TestDir, image: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let tar = t.dir.path().join("saved.tar");
    t.ok(&["save", image, "-o", tar.to_str().context("utf-8")?])?;
    let mut got = Vec::new();
    for extra in [&[][..], &["--config"][..]] {
        let out = Command::new("skopeo")
            .arg("inspect")
            .arg("--raw")
            .args(extra)
            .arg(format!("oci-archive:{}", tar.display()))
            .output()?;
        ensure!(out.status.success(), "skopeo inspect: {}", text(&out));
        got.push(out.stdout);
    }
    let config = got.pop().context("config")?;
    Ok((got.pop().context("manifest")?, config))
}

#[test]
fn iidfile_metadata_file_and_quiet_name_the_image_as_buildx_does() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["skopeo", "sha256sum"])? else {
        return Ok(());
    };
    t.write("Dockerfile", "FROM busybox\nRUN echo meta > /m\n");
    let iid = t.dir.path().join("iid");
    let meta = t.dir.path().join("meta.json");
    // A stale file from an earlier build must not survive a failed one.
    std::fs::write(&iid, "stale")?;
    let bad = t.kiln(&[
        "build",
        "--iidfile",
        iid.to_str().context("utf-8")?,
        "-f",
        "/nonexistent/Dockerfile",
        t.ctx.to_str().context("utf-8")?,
    ]);
    ensure!(!bad.status.success(), "{}", text(&bad));
    ensure!(!iid.exists(), "a failed build left the old --iidfile");

    let out = t.ok(&[
        "build",
        "-q",
        "-t",
        "meta:1",
        "-t",
        "127.0.0.1:5999/team/meta:2",
        "--iidfile",
        iid.to_str().context("utf-8")?,
        "--metadata-file",
        meta.to_str().context("utf-8")?,
        t.ctx.to_str().context("utf-8")?,
    ])?;
    let id = std::fs::read_to_string(&iid)?;
    ensure!(
        id.starts_with("sha256:") && id.len() == 71,
        "iidfile holds only the id, no newline: {id:?}"
    );
    // -q: only the id on stdout, nothing on stderr.
    ensure!(
        String::from_utf8_lossy(&out.stdout) == format!("{id}\n") && out.stderr.is_empty(),
        "{}",
        text(&out)
    );
    // The id is the one kiln's other commands take.
    let inspect: serde_json::Value = serde_json::from_slice(&t.ok(&["inspect", &id])?.stdout)?;
    ensure!(inspect[0]["Id"] == id.as_str(), "{inspect:#}");
    let run = t.ok(&["run", "--rm", &id, "cat", "/m"])?;
    ensure!(
        String::from_utf8_lossy(&run.stdout) == "meta\n",
        "{}",
        text(&run)
    );

    // Every metadata field checked against bytes read without kiln: the manifest blob in the
    // store (its digest by sha256sum), and the config as skopeo reads it from `kiln save`
    // (save recompresses layers, so its manifest differs; the config does not).
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta)?)?;
    let hex = id.strip_prefix("sha256:").context("sha256: id")?;
    let mf = t.root.join("blobs/sha256").join(hex);
    let manifest = std::fs::read(&mf)?;
    let manifest_digest = sha256sum(&mf)?;
    let mv: serde_json::Value = serde_json::from_slice(&manifest)?;
    let (_, config) = skopeo_raw(&t, "meta:1")?;
    let cf = t.dir.path().join("config.json");
    std::fs::write(&cf, &config)?;
    let config_digest = sha256sum(&cf)?;
    ensure!(mv["config"]["digest"] == config_digest.as_str(), "{mv:#}");
    ensure!(
        m["containerimage.digest"] == manifest_digest.as_str(),
        "{m:#}"
    );
    ensure!(
        m["containerimage.config.digest"] == config_digest.as_str(),
        "{m:#}"
    );
    ensure!(
        m["containerimage.descriptor"]
            == serde_json::json!({
                "mediaType": mv["mediaType"],
                "digest": manifest_digest,
                "size": manifest.len(),
            }),
        "{m:#}"
    );
    ensure!(
        m["image.name"] == "meta:1,127.0.0.1:5999/team/meta:2",
        "{m:#}"
    );
    let r = m["buildx.build.ref"].as_str().context("buildx.build.ref")?;
    let parts: Vec<&str> = r.split('/').collect();
    ensure!(
        parts.len() == 3 && parts[2].len() == 25 && parts.iter().all(|p| !p.is_empty()),
        "buildx's BUILDER/NODE/REF shape: {r}"
    );
    ensure!(id == manifest_digest, "iidfile {id} names the image");

    // --progress=quiet is -q.
    let out = t.ok(&[
        "build",
        "--progress=quiet",
        t.ctx.to_str().context("utf-8")?,
    ])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == format!("{id}\n") && out.stderr.is_empty(),
        "{}",
        text(&out)
    );
    let bad = t.kiln(&["build", "--progress=loud", t.ctx.to_str().context("utf-8")?]);
    ensure!(
        !bad.status.success() && text(&bad).contains("--progress") && text(&bad).contains("loud"),
        "{}",
        text(&bad)
    );
    Ok(())
}

#[test]
fn label_flags_join_and_override_dockerfile_labels() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["skopeo"])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox\nLABEL org.example.tier=dockerfile keep=yes\nRUN true\n",
    );
    let ctx = t.ctx.to_str().context("utf-8")?;
    t.ok(&[
        "build",
        "-t",
        "labelled:1",
        "--label",
        "org.example.tier=cli",
        "--label",
        "org.opencontainers.image.revision=abc123",
        "--label",
        "empty",
        ctx,
    ])?;
    let (_, config) = skopeo_raw(&t, "labelled:1")?;
    let c: serde_json::Value = serde_json::from_slice(&config)?;
    ensure!(
        c["config"]["Labels"]
            == serde_json::json!({
                "org.example.tier": "cli",
                "keep": "yes",
                "org.opencontainers.image.revision": "abc123",
                "empty": "",
            }),
        "{c:#}"
    );
    let bad = t.kiln(&["build", "--label", "=v", ctx]);
    ensure!(
        !bad.status.success() && text(&bad).contains("--label \"=v\""),
        "{}",
        text(&bad)
    );
    Ok(())
}

/// Runs `kiln args...` with `input` on stdin.
fn with_stdin(
    t: &crate::harness::TestDir,
    args: &[&str],
    input: &[u8],
) -> anyhow::Result<std::process::Output> {
    use std::io::Write as _;
    let mut child = t
        .cmd(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(input)?;
    drop(stdin);
    Ok(child.wait_with_output()?)
}

fn run_cat(t: &crate::harness::TestDir, image: &str, path: &str) -> anyhow::Result<String> {
    let out = t.ok(&["run", "--rm", image, "cat", path])?;
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn stdin_dockerfile_stdin_contexts_and_lowercase_dockerfile() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["tar", "gzip"])? else {
        return Ok(());
    };
    t.write("data.txt", "from-dir\n");
    let ctx = t.ctx.to_str().context("utf-8")?;

    // -f -: the Dockerfile from stdin, the context a directory.
    let out = with_stdin(
        &t,
        &["build", "-q", "-t", "s:1", "-f", "-", ctx],
        b"FROM busybox\nCOPY data.txt /d\n",
    )?;
    ensure!(out.status.success(), "{}", text(&out));
    ensure!(run_cat(&t, "s:1", "/d")? == "from-dir\n");

    // - : a Dockerfile alone on stdin, with an empty context (COPY finds nothing).
    let out = with_stdin(
        &t,
        &["build", "-q", "-t", "s:2", "-"],
        b"FROM busybox\nRUN echo alone > /a\n",
    )?;
    ensure!(out.status.success(), "{}", text(&out));
    ensure!(run_cat(&t, "s:2", "/a")? == "alone\n");
    let out = with_stdin(&t, &["build", "-"], b"FROM busybox\nCOPY data.txt /d\n")?;
    ensure!(
        !out.status.success() && text(&out).contains("data.txt"),
        "{}",
        text(&out)
    );

    // - : a tar archive (made by GNU tar), plain and gzip, holding a lowercase `dockerfile`.
    let src = t.dir.path().join("tarsrc");
    std::fs::create_dir_all(src.join("sub"))?;
    std::fs::write(src.join("dockerfile"), "FROM busybox\nCOPY sub/f.txt /f\n")?;
    std::fs::write(src.join("sub/f.txt"), "from-tar\n")?;
    for (flags, tag) in [("cf", "s:3"), ("czf", "s:4")] {
        let archive = t.dir.path().join(format!("ctx-{flags}.tar"));
        let out = Command::new("tar")
            .arg(flags)
            .arg(&archive)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .output()?;
        ensure!(out.status.success(), "tar: {}", text(&out));
        let out = with_stdin(
            &t,
            &["build", "-q", "-t", tag, "-"],
            &std::fs::read(&archive)?,
        )?;
        ensure!(out.status.success(), "{tag}: {}", text(&out));
        ensure!(run_cat(&t, tag, "/f")? == "from-tar\n", "{tag}");
    }

    // A directory context with only a lowercase `dockerfile` is found; `Dockerfile` wins
    // when both exist.
    std::fs::write(
        t.ctx.join("dockerfile"),
        "FROM busybox\nRUN echo lower > /w\n",
    )?;
    t.ok(&["build", "-q", "-t", "s:5", ctx])?;
    ensure!(run_cat(&t, "s:5", "/w")? == "lower\n");
    std::fs::write(
        t.ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo upper > /w\n",
    )?;
    t.ok(&["build", "-q", "-t", "s:6", ctx])?;
    ensure!(run_cat(&t, "s:6", "/w")? == "upper\n");

    // A tar whose Dockerfile is a symlink out of the context is refused.
    let evil = t.dir.path().join("evil");
    std::fs::create_dir(&evil)?;
    std::os::unix::fs::symlink("/etc/hostname", evil.join("Dockerfile"))?;
    let archive = t.dir.path().join("evil.tar");
    let out = Command::new("tar")
        .arg("cf")
        .arg(&archive)
        .arg("-C")
        .arg(&evil)
        .arg(".")
        .output()?;
    ensure!(out.status.success(), "tar: {}", text(&out));
    let out = with_stdin(&t, &["build", "-"], &std::fs::read(&archive)?)?;
    ensure!(
        !out.status.success() && text(&out).contains("leads out of the build context"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn cache_to_image_manifest_ignore_error_and_buildkit_inline_cache_arg() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["skopeo"])? else {
        return Ok(());
    };
    t.write("Dockerfile", "FROM busybox\nRUN echo cached > /c\n");
    let ctx = t.ctx.to_str().context("utf-8")?;
    let layout = t.dir.path().join("cache-layout");
    let dest = format!(
        "type=local,dest={},mode=max,image-manifest=true,ignore-error=true",
        layout.display()
    );
    t.ok(&["build", "-t", "c:1", "--cache-to", &dest, ctx])?;
    // The export is an OCI image manifest (what image-manifest=true asks for), read by skopeo.
    let out = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}", layout.display()))
        .output()?;
    ensure!(out.status.success(), "skopeo: {}", text(&out));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        m["mediaType"] == "application/vnd.oci.image.manifest.v1+json",
        "{m:#}"
    );
    // ... and imported by a fresh store: the RUN is a cache hit.
    let fresh = crate::harness::TestDir::new();
    fresh.import_busybox()?;
    fresh.write("Dockerfile", "FROM busybox\nRUN echo cached > /c\n");
    let src = format!("type=local,src={}", layout.display());
    let events = fresh.build("c:2", &["--cache-from", &src])?;
    ensure!(
        crate::harness::executed_runs(&events).is_empty(),
        "{:?}",
        crate::harness::executed_runs(&events)
    );

    // ignore-error=true: an export that cannot be written is a warning, not a failure.
    let blocker = t.dir.path().join("not-a-dir");
    std::fs::write(&blocker, "file")?;
    let unwritable = format!("type=local,dest={}/sub", blocker.display());
    let bad = t.kiln(&["build", "--cache-to", &unwritable, ctx]);
    ensure!(!bad.status.success(), "{}", text(&bad));
    let out = t.ok(&[
        "build",
        "--cache-to",
        &format!("{unwritable},ignore-error=true"),
        ctx,
    ])?;
    ensure!(
        text(&out).contains("warning: exporting cache to") && text(&out).contains("ignore-error"),
        "{}",
        text(&out)
    );
    // -q keeps cache import and export quiet too: only the id on stdout.
    let again = t.dir.path().join("cache-again");
    let out = t.ok(&[
        "build",
        "-q",
        "--cache-from",
        &src,
        "--cache-to",
        &format!("type=local,dest={}", again.display()),
        ctx,
    ])?;
    ensure!(
        out.stderr.is_empty() && String::from_utf8_lossy(&out.stdout).starts_with("sha256:"),
        "{}",
        text(&out)
    );
    ensure!(
        again.join("index.json").is_file(),
        "the -q export was written"
    );
    // Bad values name the flag and the value.
    let bad = t.kiln(&[
        "build",
        "--cache-to",
        "type=local,dest=/x,image-manifest=maybe",
        ctx,
    ]);
    ensure!(
        !bad.status.success()
            && text(&bad).contains("--cache-to")
            && text(&bad).contains("image-manifest=maybe"),
        "{}",
        text(&bad)
    );

    // BUILDKIT_INLINE_CACHE=1 is --cache-to type=inline: the cache is in the image config.
    for (v, inline) in [("1", true), ("0", false)] {
        let tag = format!("inline:{v}");
        let arg = format!("BUILDKIT_INLINE_CACHE={v}");
        t.ok(&["build", "-t", &tag, "--build-arg", &arg, ctx])?;
        let (_, config) = skopeo_raw(&t, &tag)?;
        let c: serde_json::Value = serde_json::from_slice(&config)?;
        ensure!(c.get("kiln.cache.v1").is_some() == inline, "{arg}: {c:#}");
    }
    Ok(())
}

#[test]
fn metadata_file_after_push_names_the_manifest_the_registry_serves() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["skopeo", "sha256sum", "docker-registry"])? else {
        return Ok(());
    };
    let reg = crate::registry::start_registry(t.dir.path())?;
    t.write("Dockerfile", "FROM busybox\nRUN echo pushed > /p\n");
    let name = format!("127.0.0.1:{}/team/pushed:1", reg.port);
    let meta = t.dir.path().join("meta.json");
    t.ok(&[
        "build",
        "-t",
        &name,
        "--push",
        "--metadata-file",
        meta.to_str().context("utf-8")?,
        t.ctx.to_str().context("utf-8")?,
    ])?;
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta)?)?;
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{name}"))
        .output()?;
    ensure!(out.status.success(), "skopeo: {}", text(&out));
    let served = t.dir.path().join("served.json");
    std::fs::write(&served, &out.stdout)?;
    let digest = sha256sum(&served)?;
    let mv: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        m["containerimage.digest"] == digest.as_str()
            && m["containerimage.descriptor"]
                == serde_json::json!({
                    "mediaType": mv["mediaType"],
                    "digest": digest,
                    "size": out.stdout.len(),
                })
            && m["containerimage.config.digest"] == mv["config"]["digest"]
            && m["image.name"] == name.as_str(),
        "metadata {m:#}\nserved {digest} {mv:#}"
    );
    Ok(())
}

/// A tar entry header named `name` (raw bytes, `..` allowed) for a regular file or symlink.
fn raw_header(name: &str, size: u64, link: Option<&str>) -> anyhow::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    let field = &mut h.as_old_mut().name;
    ensure!(name.len() < field.len(), "name too long");
    field[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(size);
    h.set_mode(0o644);
    match link {
        Some(target) => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_link_name(target)?;
        }
        None => h.set_entry_type(tar::EntryType::Regular),
    }
    h.set_cksum();
    Ok(h)
}

#[test]
fn a_hostile_stdin_context_archive_stays_inside_its_context() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    // Names that try to leave the context: `..` entries, and a file written through a
    // symlink to a directory outside it.
    let outside = t.dir.path().join("outside");
    std::fs::create_dir(&outside)?;
    let tag = format!("{}", std::process::id());
    let escape_name = format!("kiln-escape-{tag}.txt");
    let mut b = tar::Builder::new(Vec::new());
    let df = b"FROM busybox\nCOPY . /ctx/\n";
    b.append(&raw_header("Dockerfile", df.len() as u64, None)?, &df[..])?;
    let up = format!("../../../../{escape_name}");
    b.append(&raw_header(&up, 4, None)?, &b"up!\n"[..])?;
    let link_target = outside.to_str().context("utf-8")?;
    b.append(&raw_header("out", 0, Some(link_target))?, &b""[..])?;
    b.append(&raw_header("out/through.txt", 5, None)?, &b"thru\n"[..])?;
    let archive = b.into_inner()?;

    let out = with_stdin(&t, &["build", "-q", "-t", "hostile:1", "-"], &archive)?;
    ensure!(out.status.success(), "{}", text(&out));
    ensure!(
        std::fs::read_dir(&outside)?.next().is_none(),
        "a file was written through the symlink into {}",
        outside.display()
    );
    for dir in [std::env::temp_dir(), std::path::PathBuf::from("/")] {
        ensure!(
            !dir.join(&escape_name).exists(),
            "`..` escaped to {}",
            dir.display()
        );
    }
    // The `..` entry landed inside the context, as ADD places it.
    ensure!(run_cat(&t, "hostile:1", &format!("/ctx/{escape_name}"))? == "up!\n");
    Ok(())
}

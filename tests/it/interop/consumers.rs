//! Other tools as consumers of kiln's images: docker, podman, skopeo and umoci read what
//! kiln pushes and saves; digest references keep working in one store.

use super::*;

/// Builds `FROM base` in `t`, pushes it to `dest`; returns the pushed digest.
fn build_and_push(w: &World, t: &TestDir, dest: &str, msg: &str) -> anyhow::Result<Digest> {
    t.write(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo {msg} > /msg\nCMD [\"cat\", \"/msg\"]\n",
            w.base
        ),
    );
    t.build("app:1", &[])?;
    let out = t.ok(&["push", "app:1", dest])?;
    Ok(stdout(&out).trim().parse()?)
}

/// kiln's pushed image, built on a docker-typed base: docker and podman pull and run it,
/// skopeo inspects it (same digest) and copies it, and kiln pulls the copy with that digest.
#[test]
fn kiln_pushed_images_run_in_docker_and_podman_and_copy_with_skopeo() -> anyhow::Result<()> {
    let Some(w) = world() else { return Ok(()) };
    let t = TestDir::new();
    let dest = format!("{}/kiln/app:{}", w.host, w.tag);
    let digest = build_and_push(w, &t, &dest, "kiln-made")?;
    ensure!(w.registry_digest(&dest)? == digest);

    docker(&["pull", "-q", &dest], false)?;
    let out = docker(&["run", "--rm", "--network", "none", &dest], false);
    docker(&["rmi", "-f", &dest], false)?;
    ensure!(stdout(&out?) == "kiln-made\n");

    let ulimits = [
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ];
    let mut args = vec![
        "run",
        "--runtime",
        RUNC,
        "--network",
        "none",
        "--rm",
        "--tls-verify=false",
    ];
    args.extend(ulimits);
    args.push(&dest);
    let out = w.podman(&args)?;
    ensure!(stdout(&out) == "kiln-made\n", "{}", text(&out));

    let inspect: serde_json::Value = serde_json::from_slice(
        &tool(
            "skopeo",
            &["inspect", "--tls-verify=false", &format!("docker://{dest}")],
        )?
        .stdout,
    )?;
    ensure!(inspect["Digest"] == digest.to_string(), "{inspect}");
    let copy = format!("{}/kiln/copied:1", w.host);
    tool(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{dest}"),
            &format!("docker://{copy}"),
        ],
    )?;
    let other = TestDir::new();
    let pulled = other.ok(&["pull", &copy])?;
    ensure!(
        stdout(&pulled).trim() == digest.to_string(),
        "skopeo's copy has another digest: {}",
        stdout(&pulled)
    );
    let out = other.ok(&["run", "--rm", "--network", "none", &copy])?;
    ensure!(stdout(&out) == "kiln-made\n");
    Ok(())
}

/// `kiln save` of an image built on a docker-typed base and of a pulled docker-typed image:
/// `docker load` and `podman load` run them, umoci unpacks the OCI layout (it refuses Docker
/// media types there), skopeo reads the archive.
#[test]
fn kiln_save_archives_load_in_docker_and_podman_and_unpack_with_umoci() -> anyhow::Result<()> {
    let Some(w) = world() else { return Ok(()) };
    let t = TestDir::new();
    t.write(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo saved > /msg\nCMD [\"cat\", \"/msg\"]\n",
            w.base
        ),
    );
    let built = format!("kiln-interop/saved:{}-built", w.tag);
    t.build(&built, &[])?;
    t.ok(&["pull", &w.base])?;
    let base_name = format!("kiln-interop/base:{}-base", w.tag);
    t.ok(&["tag", &w.base, &base_name])?;
    let archive = t.dir.path().join("images.tar");
    let archive_s = archive.to_str().context("utf-8")?;
    t.ok(&["save", "-o", archive_s, &built, &base_name])?;

    let loaded = docker(&["load", "-i", archive_s], false);
    let run = docker(
        &[
            "run",
            "--rm",
            "--network",
            "none",
            &format!("docker.io/{built}"),
        ],
        false,
    );
    let run_base = docker(
        &[
            "run",
            "--rm",
            "--network",
            "none",
            &format!("docker.io/{base_name}"),
            "cat",
            "/bin/busybox",
        ],
        false,
    );
    docker(
        &[
            "rmi",
            "-f",
            &format!("docker.io/{built}"),
            &format!("docker.io/{base_name}"),
        ],
        false,
    )?;
    loaded?;
    ensure!(stdout(&run?) == "saved\n");
    ensure!(run_base?.stdout == std::fs::read("/bin/busybox")?);

    // podman 4.3 names the images of a multi-image archive `localhost/...`: take its word.
    let loaded = w.podman(&["load", "-i", archive_s])?;
    let name = stdout(&loaded)
        .lines()
        .filter_map(|l| l.strip_prefix("Loaded image: "))
        .find(|n| n.ends_with(&built))
        .with_context(|| format!("podman did not load {built}: {}", text(&loaded)))?
        .to_owned();
    let ulimits = [
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ];
    let mut args = vec!["run", "--runtime", RUNC, "--network", "none", "--rm"];
    args.extend(ulimits);
    args.push(&name);
    ensure!(stdout(&w.podman(&args)?) == "saved\n");

    let layout = t.dir.path().join("layout");
    std::fs::create_dir(&layout)?;
    tar::Archive::new(std::fs::File::open(&archive)?).unpack(&layout)?;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    for m in index["manifests"]
        .as_array()
        .context("index.json lists manifests")?
    {
        let d: Digest = m["digest"].as_str().context("digest")?.parse()?;
        let manifest = std::fs::read_to_string(layout.join("blobs/sha256").join(d.hex()))?;
        ensure!(
            !manifest.contains("vnd.docker"),
            "Docker media types in the OCI layout: {manifest}"
        );
    }
    for (refname, check) in [("built", "msg"), ("base", "bin/busybox")] {
        let bundle = t.dir.path().join(format!("bundle-{refname}"));
        umoci_unpack(&layout, &format!("{}-{refname}", w.tag), &bundle)?;
        ensure!(
            bundle.join("rootfs").join(check).is_file(),
            "{refname}: no /{check}"
        );
    }
    let out = tool(
        "skopeo",
        &[
            "inspect",
            &format!("oci-archive:{archive_s}:{}-built", w.tag),
        ],
    )?;
    ensure!(stdout(&out).contains("\"Layers\""), "{}", text(&out));
    Ok(())
}

/// `FROM x@sha256:` builds again in the same store (the manifest kiln keeps is the one that
/// digest names), and `kiln run x@sha256:` works.
#[test]
fn from_a_digest_reference_builds_twice_in_one_store() -> anyhow::Result<()> {
    let Some(w) = world() else { return Ok(()) };
    let digest = w.registry_digest(&w.base)?;
    let pinned = format!("{}/prod/docker-import@{digest}", w.host);
    let t = TestDir::new();
    t.write(
        "Dockerfile",
        &format!("FROM {pinned}\nRUN echo pinned > /msg\nCMD [\"cat\", \"/msg\"]\n"),
    );
    t.build("pinned:1", &[])?;
    t.write(
        "Dockerfile",
        &format!("FROM {pinned}\nRUN echo pinned again > /msg\nCMD [\"cat\", \"/msg\"]\n"),
    );
    t.build("pinned:2", &[])?;
    let out = t.ok(&["run", "--rm", "--network", "none", "pinned:2"])?;
    ensure!(stdout(&out) == "pinned again\n");
    let out = t.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &pinned,
        "echo",
        "by-digest",
    ])?;
    ensure!(stdout(&out) == "by-digest\n", "{}", text(&out));
    Ok(())
}

//! Interop with the real ecosystem (issue 11), both ways, through one CNCF registry.
//!
//! Producers: images made by docker 20.10 (classic builder, BuildKit, `docker import`,
//! `docker commit`, a `FROM scratch` image with only a LABEL), buildah (docker and OCI formats,
//! from scratch), podman, skopeo copies (OCI, zstd), and hand-written manifests and configs
//! full of `null`s (tests/testdata/interop), pushed to the registry; kiln pulls, inspects,
//! runs and builds `FROM` each, and pushes each back with its digest unchanged.
//!
//! Consumers: kiln's pushed images and `kiln save` archives are pulled or loaded and run by
//! docker and podman, unpacked by umoci, inspected and copied by skopeo.
//!
//! The registry and the produced images are made once ([`world`]) and shared by the tests.
//! Base images come from /bin/busybox (`docker import` of a tar holding it): no Docker Hub.

mod consumers;
mod producers;

use crate::harness::{
    TestDir, busybox_tar, free_port, privileged, text, umoci_unpack, wait_for_port,
};
use anyhow::{Context as _, ensure};
use cache::oci::Digest;
use std::path::Path;
use std::process::{ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Every tool these tests drive; missing ones fail the tests under REQUIRE_PRIVILEGED_TESTS=1.
const TOOLS: &[&str] = &[
    "docker-registry",
    "docker",
    "buildah",
    "podman",
    "skopeo",
    "umoci",
    "runc",
    "curl",
];

/// buildah's and podman's flags here: their own storage under the world's temp dir, Debian's
/// runc (crun fails on this machine's hybrid cgroups), podman's rlimits within the host's.
const RUNC: &str = "/usr/sbin/runc";

/// The produced image whose layer is non-distributable (see [`make_world`]).
const NONDISTRIBUTABLE: &str = "nondistributable";

/// One image a producer made, as pushed to the registry.
struct Produced {
    /// Short name (the test messages use it).
    name: &'static str,
    /// `127.0.0.1:PORT/prod/<name>:1`.
    reference: String,
    /// What running it with no command prints, when its CMD prints something.
    cmd_output: Option<&'static str>,
    /// False for images without files (only a LABEL, or no layers at all).
    has_shell: bool,
}

struct World {
    dir: tempfile::TempDir,
    host: String,
    /// Closing this (when the test process exits) stops the registry: see [`start_registry`].
    _registry: Mutex<ChildStdin>,
    produced: Vec<Produced>,
    /// The `docker import` base: docker types, no PATH, `null`s in its config.
    base: String,
    /// An arm64-only single-platform image (hand-written config).
    arm64: String,
    /// Unique per test process, for docker's and podman's shared image stores.
    tag: String,
}

impl World {
    fn podman(&self, args: &[&str]) -> anyhow::Result<Output> {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(d.join("podman-root"))
            .arg("--runroot")
            .arg(d.join("podman-run"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        run_tool(c)
    }

    fn buildah(&self, args: &[&str]) -> anyhow::Result<Output> {
        let d = self.dir.path();
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(d.join("buildah-root"))
            .arg("--runroot")
            .arg(d.join("buildah-run"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        run_tool(c)
    }

    /// The digest the registry serves `reference` (`host/repo:tag`) under.
    fn registry_digest(&self, reference: &str) -> anyhow::Result<Digest> {
        let raw = tool(
            "skopeo",
            &[
                "inspect",
                "--tls-verify=false",
                "--raw",
                &format!("docker://{reference}"),
            ],
        )?;
        Ok(Digest::of(&raw.stdout))
    }
}

fn run_tool(mut c: Command) -> anyhow::Result<Output> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {c:?}"))?;
    ensure!(
        out.status.success(),
        "{c:?} failed ({}):\n{}",
        out.status,
        text(&out)
    );
    Ok(out)
}

fn tool(bin: &str, args: &[&str]) -> anyhow::Result<Output> {
    let mut c = Command::new(bin);
    c.args(args);
    run_tool(c)
}

/// `docker` (Debian's 20.10 client at /usr/bin; the newer /usr/local/bin one wants buildx).
fn docker(args: &[&str], buildkit: bool) -> anyhow::Result<Output> {
    let mut c = Command::new("/usr/bin/docker");
    c.env("DOCKER_BUILDKIT", if buildkit { "1" } else { "0" })
        .args(args);
    run_tool(c)
}

/// The world, made on first use; `None` when the tools are missing (a skip, or a panic under
/// REQUIRE_PRIVILEGED_TESTS=1).
fn world() -> Option<&'static World> {
    static WORLD: OnceLock<Result<World, String>> = OnceLock::new();
    if !privileged(TOOLS) {
        return None;
    }
    match WORLD.get_or_init(|| make_world().map_err(|e| format!("{e:#}"))) {
        Ok(w) => Some(w),
        Err(e) => panic!("setting up the interop world failed: {e}"),
    }
}

/// Starts `docker-registry` under a shell that kills it, and removes the world's directory
/// `dir` (registry data, buildah's and podman's stores), when its stdin closes: the world is
/// a static, never dropped, and the pipe closes when the test process exits however it exits.
/// Layer URLs are allowed (without an allow list the registry refuses every manifest that
/// has a non-distributable layer with `urls`).
fn start_registry(dir: &Path) -> anyhow::Result<(String, ChildStdin)> {
    let port = free_port()?;
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test\nvalidation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\n",
            dir.join("registry-data").display()
        ),
    )?;
    let mut child = Command::new("sh")
        .args([
            "-c",
            "docker-registry serve \"$1\" >/dev/null 2>&1 & pid=$!; read _ignored; kill $pid; wait $pid; rm -rf \"$2\"",
            "sh",
        ])
        .arg(&config)
        .arg(dir)
        .stdin(Stdio::piped())
        .spawn()
        .context("starting docker-registry")?;
    let stdin = child.stdin.take().context("the registry's stdin")?;
    wait_for_port(
        port,
        "docker-registry",
        Duration::from_secs(10),
        Duration::from_millis(20),
    )?;
    Ok((format!("127.0.0.1:{port}"), stdin))
}

/// Uploads `data` as a blob of `repo` (the two-request monolithic upload of the distribution
/// API) and returns its digest.
fn put_blob(host: &str, repo: &str, data: &[u8], dir: &Path) -> anyhow::Result<Digest> {
    let digest = Digest::of(data);
    let file = dir.join(format!("blob-{}", digest.hex()));
    std::fs::write(&file, data)?;
    let start = tool(
        "curl",
        &[
            "-sf",
            "-X",
            "POST",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("http://{host}/v2/{repo}/blobs/uploads/"),
        ],
    )?;
    let headers = String::from_utf8_lossy(&start.stdout).into_owned();
    let location = headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_owned())
        })
        .with_context(|| format!("no Location in {headers}"))?;
    let location = if location.starts_with('/') {
        format!("http://{host}{location}")
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    tool(
        "curl",
        &[
            "-sf",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{location}{sep}digest={digest}"),
        ],
    )?;
    Ok(digest)
}

/// PUTs `data` as manifest `repo:tag` with `media_type`; returns its digest.
fn put_manifest(
    host: &str,
    repo: &str,
    tag: &str,
    media_type: &str,
    data: &[u8],
    dir: &Path,
) -> anyhow::Result<Digest> {
    let digest = Digest::of(data);
    let file = dir.join(format!("manifest-{}", digest.hex()));
    std::fs::write(&file, data)?;
    tool(
        "curl",
        &[
            "-sf",
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {media_type}"),
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("http://{host}/v2/{repo}/manifests/{tag}"),
        ],
    )?;
    Ok(digest)
}

/// A fixture from tests/testdata/interop with `{{KEY}}`s replaced.
fn fixture(name: &str, vars: &[(&str, String)]) -> anyhow::Result<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/interop")
        .join(name);
    let mut s = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    ensure!(!s.contains("{{"), "{name}: a placeholder is left: {s}");
    Ok(s.into_bytes())
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn make_world() -> anyhow::Result<World> {
    let dir = tempfile::Builder::new().prefix("kiln-interop-").tempdir()?;
    let d = dir.path().to_path_buf();
    let (host, registry) = start_registry(&d)?;
    let tag = format!("kiln-interop-{}", std::process::id());
    let reference = |name: &str| format!("{host}/prod/{name}:1");
    let mut produced = Vec::new();

    // docker import: docker media types, `null`s, no PATH, no CMD.
    let tar = d.join("busybox.tar");
    std::fs::write(&tar, busybox_tar()?)?;
    let base = reference("docker-import");
    docker(&["import", tar.to_str().context("utf-8")?, &base], false)?;
    docker(&["push", "-q", &base], false)?;
    produced.push(Produced {
        name: "docker-import",
        reference: base.clone(),
        cmd_output: None,
        has_shell: true,
    });

    // docker build, classic builder and BuildKit, on that base (no PATH in it).
    let ctx = d.join("docker-ctx");
    std::fs::create_dir(&ctx)?;
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nRUN echo built-by-docker > /msg\nCMD [\"cat\", \"/msg\"]\n"),
    )?;
    std::fs::write(
        ctx.join("Dockerfile.label"),
        "FROM scratch\nLABEL only=label\n",
    )?;
    let ctx_s = ctx.to_str().context("utf-8")?;
    for (name, buildkit) in [("docker-classic", false), ("docker-buildkit", true)] {
        let r = reference(name);
        docker(&["build", "-q", "-t", &r, ctx_s], buildkit)?;
        docker(&["push", "-q", &r], false)?;
        produced.push(Produced {
            name,
            reference: r,
            cmd_output: Some("built-by-docker\n"),
            has_shell: true,
        });
    }
    let r = reference("docker-scratch-label");
    docker(
        &[
            "build",
            "-q",
            "-f",
            &format!("{ctx_s}/Dockerfile.label"),
            "-t",
            &r,
            ctx_s,
        ],
        true,
    )?;
    docker(&["push", "-q", &r], false)?;
    produced.push(Produced {
        name: "docker-scratch-label",
        reference: r,
        cmd_output: None,
        has_shell: false,
    });

    // docker commit of a container of the base.
    let r = reference("docker-commit");
    let container = format!("{tag}-commit");
    docker(
        &[
            "run",
            "--name",
            &container,
            "--network",
            "none",
            &base,
            "sh",
            "-c",
            "echo committed > /msg",
        ],
        false,
    )?;
    docker(
        &[
            "commit",
            "--change",
            "CMD [\"cat\", \"/msg\"]",
            &container,
            &r,
        ],
        false,
    )?;
    docker(&["rm", &container], false)?;
    docker(&["push", "-q", &r], false)?;
    produced.push(Produced {
        name: "docker-commit",
        reference: r,
        cmd_output: Some("committed\n"),
        has_shell: true,
    });

    // Docker's copies are in the registry now; drop them from docker's shared store (and the
    // BuildKit cache keeps nothing of ours that matters).
    let mut rmi = vec!["rmi", "-f"];
    let refs: Vec<String> = produced.iter().map(|p| p.reference.clone()).collect();
    rmi.extend(refs.iter().map(String::as_str));
    docker(&rmi, false)?;

    // buildah and podman, FROM scratch with the busybox tar ADDed (no RUN: no runtime needed).
    let bctx = d.join("scratch-ctx");
    std::fs::create_dir(&bctx)?;
    std::fs::copy(&tar, bctx.join("busybox.tar"))?;
    std::fs::write(
        bctx.join("Dockerfile"),
        "FROM scratch\nADD busybox.tar /\nCMD [\"echo\", \"made-from-scratch\"]\n",
    )?;
    let world = World {
        dir,
        host: host.clone(),
        _registry: Mutex::new(registry),
        produced: Vec::new(),
        base: base.clone(),
        arm64: String::new(),
        tag,
    };
    let bctx_s = bctx.to_str().context("utf-8")?;
    for (name, format) in [("buildah-docker", "docker"), ("buildah-oci", "oci")] {
        let r = reference(name);
        world.buildah(&[
            "build",
            "--runtime",
            RUNC,
            "--format",
            format,
            "-t",
            &r,
            bctx_s,
        ])?;
        world.buildah(&["push", "--tls-verify=false", &r])?;
        produced.push(Produced {
            name,
            reference: r,
            cmd_output: Some("made-from-scratch\n"),
            has_shell: true,
        });
    }
    let r = reference("podman");
    world.podman(&["build", "--runtime", RUNC, "-t", &r, bctx_s])?;
    world.podman(&["push", "--tls-verify=false", &r])?;
    produced.push(Produced {
        name: "podman",
        reference: r,
        cmd_output: Some("made-from-scratch\n"),
        has_shell: true,
    });

    // skopeo copies: docker types to OCI, and gzip to zstd.
    for (name, from, extra) in [
        ("skopeo-oci", "docker-classic", &["--format", "oci"][..]),
        (
            "skopeo-zstd",
            "buildah-oci",
            &["--format", "oci", "--dest-compress-format", "zstd"][..],
        ),
    ] {
        let r = reference(name);
        let mut args = vec!["copy", "--src-tls-verify=false", "--dest-tls-verify=false"];
        args.extend_from_slice(extra);
        let (src, dst) = (
            format!("docker://{}", reference(from)),
            format!("docker://{r}"),
        );
        args.extend([src.as_str(), dst.as_str()]);
        tool("skopeo", &args)?;
        let out = if from == "docker-classic" {
            "built-by-docker\n"
        } else {
            "made-from-scratch\n"
        };
        produced.push(Produced {
            name,
            reference: r,
            cmd_output: Some(out),
            has_shell: true,
        });
    }

    // Hand-written: every optional field `null`, docker types, the import's layer.
    let import_manifest: serde_json::Value = serde_json::from_slice(
        &tool(
            "skopeo",
            &[
                "inspect",
                "--tls-verify=false",
                "--raw",
                &format!("docker://{base}"),
            ],
        )?
        .stdout,
    )?;
    let import_config: serde_json::Value = serde_json::from_slice(
        &tool(
            "skopeo",
            &[
                "inspect",
                "--tls-verify=false",
                "--raw",
                "--config",
                &format!("docker://{base}"),
            ],
        )?
        .stdout,
    )?;
    let layer = &import_manifest["layers"][0];
    let diff_ids = import_config["rootfs"]["diff_ids"].to_string();
    let repo = "prod/docker-import";
    // Puts `config` and a manifest from fixture `manifest` (of `media_type`) naming it and the
    // base's layer, tagged `tag`.
    let hand = |config: &[u8],
                tag: &str,
                manifest: &str,
                media_type: &str|
     -> anyhow::Result<(Digest, usize)> {
        let cd = put_blob(&host, repo, config, &d)?;
        let m = fixture(
            manifest,
            &[
                ("CONFIG_SIZE", config.len().to_string()),
                ("CONFIG_DIGEST", cd.to_string()),
                ("LAYER_SIZE", layer["size"].to_string()),
                (
                    "LAYER_DIGEST",
                    layer["digest"].as_str().unwrap_or_default().to_owned(),
                ),
            ],
        )?;
        let md = put_manifest(&host, repo, tag, media_type, &m, &d)?;
        Ok((md, m.len()))
    };
    let config = fixture(
        "config-null.json",
        &[
            ("ARCH", host_arch().to_owned()),
            ("DIFF_IDS", diff_ids.clone()),
        ],
    )?;
    let (null_manifest, null_size) = hand(
        &config,
        "null",
        "manifest-docker-null.json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )?;
    produced.push(Produced {
        name: "null-fields",
        reference: format!("{host}/{repo}:null"),
        cmd_output: None,
        has_shell: true,
    });

    // The same layer as an OCI non-distributable layer with `urls` (the registry then does not
    // require the blob; this one has it, so kiln can pull it).
    hand(
        &config,
        "nondistributable",
        "manifest-oci-nondistributable.json",
        "application/vnd.oci.image.manifest.v1+json",
    )?;
    produced.push(Produced {
        name: NONDISTRIBUTABLE,
        reference: format!("{host}/{repo}:nondistributable"),
        cmd_output: None,
        has_shell: true,
    });

    // The same for arm64 only: kiln refuses it on this machine unless --platform says so.
    let other = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let config = fixture(
        "config-null.json",
        &[("ARCH", other.to_owned()), ("DIFF_IDS", diff_ids)],
    )?;
    let (arm_manifest, arm_size) = hand(
        &config,
        "other-arch",
        "manifest-docker-null.json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )?;

    // An index nesting an index, with an attestation entry first. The attestation entry claims
    // this machine's platform and points at the other-arch manifest: a client that did not
    // skip attestations would pick it and fail.
    let inner = fixture(
        "index-inner.json",
        &[
            ("ARCH", host_arch().to_owned()),
            ("MANIFEST_DIGEST", null_manifest.to_string()),
            ("MANIFEST_SIZE", null_size.to_string()),
        ],
    )?;
    let inner_digest = put_manifest(
        &host,
        repo,
        "inner",
        "application/vnd.oci.image.index.v1+json",
        &inner,
        &d,
    )?;
    let outer = fixture(
        "index-nested-with-attestation.json",
        &[
            ("ARCH", host_arch().to_owned()),
            ("ATTESTATION_DIGEST", arm_manifest.to_string()),
            ("ATTESTATION_SIZE", arm_size.to_string()),
            ("INNER_DIGEST", inner_digest.to_string()),
            ("INNER_SIZE", inner.len().to_string()),
        ],
    )?;
    put_manifest(
        &host,
        repo,
        "nested",
        "application/vnd.oci.image.index.v1+json",
        &outer,
        &d,
    )?;
    produced.push(Produced {
        name: "nested-index",
        reference: format!("{host}/{repo}:nested"),
        cmd_output: None,
        has_shell: true,
    });

    // No layers at all: `"layers":null`, `"diff_ids":null`, OCI types.
    let config = fixture(
        "config-null.json",
        &[
            ("ARCH", host_arch().to_owned()),
            ("DIFF_IDS", "null".to_owned()),
        ],
    )?;
    let cd = put_blob(&host, repo, &config, &d)?;
    let m = fixture(
        "manifest-oci-no-layers.json",
        &[
            ("CONFIG_SIZE", config.len().to_string()),
            ("CONFIG_DIGEST", cd.to_string()),
        ],
    )?;
    put_manifest(
        &host,
        repo,
        "no-layers",
        "application/vnd.oci.image.manifest.v1+json",
        &m,
        &d,
    )?;
    produced.push(Produced {
        name: "no-layers",
        reference: format!("{host}/{repo}:no-layers"),
        cmd_output: None,
        has_shell: false,
    });

    Ok(World {
        produced,
        arm64: format!("{host}/{repo}:other-arch"),
        ..world
    })
}

/// `kiln` output as text, stdout only.
fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

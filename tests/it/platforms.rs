//! Multi-platform builds: `--platform linux/amd64,linux/arm64` on an amd64 host, arm64 steps
//! running through qemu-user-static's binfmt handler. The arm64 base is Debian's arm64
//! busybox-static (.deb in /var/cache/kiln-ci, put there by .ci/run, or KILN_ARM64_DEB_DIR),
//! imported with `kiln import --platform`; a two-platform index of busybox is pushed to a
//! test registry and builds start FROM it. Read back with skopeo, and compared with docker's
//! BuildKit where docker 20.10 has the flag (one `--platform` at a time).

use crate::harness::{TestDir, busybox_tar, events, privileged, stdout, text};
use crate::registry::{Registry, start_registry};
use anyhow::{Context as _, ensure};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The arm64 busybox-static .deb, or a skip (a panic with REQUIRE_PRIVILEGED_TESTS=1).
pub(crate) fn arm64_deb() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_ARM64_DEB_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/kiln-ci"), PathBuf::from);
    let found = std::fs::read_dir(&dir).ok().and_then(|d| {
        d.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with("busybox-static_") && n.ends_with("_arm64.deb")
        })
    });
    let registered =
        std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").is_ok_and(|s| {
            s.starts_with("enabled")
                && s.lines()
                    .any(|l| l.starts_with("flags:") && l.contains('F'))
        });
    match (found, registered) {
        (Some(p), true) => Some(p),
        (found, registered) => {
            let why = format!(
                "arm64 busybox .deb in {} found: {}; qemu-aarch64 binfmt handler with F: {registered} \
                 (.ci/run installs both)",
                dir.display(),
                found.is_some()
            );
            if std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
                panic!("multi-platform test required but: {why}");
            }
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// busybox_tar() with the arm64 binary of `deb` in place of /bin/busybox.
fn arm64_busybox_tar(deb: &Path, scratch: &Path) -> anyhow::Result<Vec<u8>> {
    let x = scratch.join("deb");
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(&x)
        .output()?;
    ensure!(out.status.success(), "dpkg-deb -x failed: {}", text(&out));
    let arm = std::fs::read(x.join("bin/busybox")).context("the .deb's bin/busybox")?;
    let amd = std::fs::read("/bin/busybox")?;
    // Swap the one regular file of the host busybox tar for the arm64 binary.
    let mut src = tar::Archive::new(std::io::Cursor::new(busybox_tar()?));
    let mut b = tar::Builder::new(Vec::new());
    for e in src.entries()? {
        let mut e = e?;
        let mut h = e.header().clone();
        let path = e.path()?.into_owned();
        if path == Path::new("bin/busybox") {
            h.set_size(arm.len() as u64);
            h.set_cksum();
            b.append_data(&mut h, &path, arm.as_slice())?;
        } else {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data)?;
            b.append(&h, data.as_slice())?;
        }
    }
    ensure!(arm != amd, "the .deb's busybox is the host's");
    Ok(b.into_inner()?)
}

/// A test dir and registry holding `busybox:multi`, an index of an amd64 and an arm64
/// busybox, built by kiln itself (`FROM bb:$TARGETARCH` for two platforms, pushed).
/// Returns the index's reference.
pub(crate) fn multi_base(t: &TestDir, deb: &Path) -> anyhow::Result<(Registry, String)> {
    let reg = start_registry(t.dir.path())?;
    for (arch, tar) in [
        ("amd64", busybox_tar()?),
        ("arm64", arm64_busybox_tar(deb, t.dir.path())?),
    ] {
        let p = t.dir.path().join(format!("bb-{arch}.tar"));
        std::fs::write(&p, tar)?;
        t.ok(&[
            "import",
            "--platform",
            &format!("linux/{arch}"),
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            p.to_str().context("utf-8")?,
            &format!("bb:{arch}"),
        ])?;
    }
    let base = format!("127.0.0.1:{}/kiln/busybox:multi", reg.port);
    let dir = TestDir::new();
    std::fs::write(
        dir.ctx.join("Dockerfile"),
        "ARG TARGETARCH\nFROM bb:$TARGETARCH\n",
    )?;
    t.ok(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64,linux/arm64",
        "--push",
        "-t",
        &base,
        dir.ctx.to_str().context("utf-8")?,
    ])?;
    Ok((reg, base))
}

pub(crate) fn skopeo(args: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new("skopeo").args(args).output()?;
    ensure!(out.status.success(), "skopeo {args:?}: {}", text(&out));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The platforms an index lists, as `os/arch`.
pub(crate) fn index_platforms(index: &Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|d| {
                    format!(
                        "{}/{}",
                        d["platform"]["os"].as_str().unwrap_or("?"),
                        d["platform"]["architecture"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

const APP: &str = "\
FROM --platform=$BUILDPLATFORM BASE AS tool
RUN --mount=type=cache,target=/count echo ran >> /count/tool && uname -m > /buildarch
FROM BASE
ARG TARGETPLATFORM TARGETOS TARGETARCH TARGETVARIANT BUILDPLATFORM BUILDARCH
COPY --from=tool /buildarch /
RUN --mount=type=cache,target=/count uname -m > /arch && cp /count/tool /toolcount && echo \"$TARGETPLATFORM|$TARGETOS|$TARGETARCH|$TARGETVARIANT|$BUILDPLATFORM|$BUILDARCH\" > /args
";

#[test]
fn two_platforms_make_one_index_arm64_runs_through_binfmt_and_push_keeps_it() -> anyhow::Result<()>
{
    if !privileged(&["docker-registry", "skopeo", "dpkg-deb"]) {
        return Ok(());
    }
    let Some(deb) = arm64_deb() else {
        return Ok(());
    };
    let t = TestDir::new();
    let (reg, base) = multi_base(&t, &deb)?;
    // What kiln pushed for the base: an OCI index of both platforms.
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{base}"),
    ])?;
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(index_platforms(&raw), ["linux/amd64", "linux/arm64"]);

    // A fresh store: each platform's base is pulled from the index.
    let app = TestDir::new();
    app.write("Dockerfile", &APP.replace("BASE", &base));
    let out = app.build_output(
        "app:1",
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "--insecure-registry",
            &format!("127.0.0.1:{}", reg.port),
        ],
    )?;
    let ev = events(&out)?;
    // Steps that ran: those with a cache miss (one solve per platform, in order).
    let ran: Vec<&str> = ev
        .iter()
        .filter(|e| e["kind"] == "cache_miss")
        .filter_map(|e| e["name"].as_str())
        .filter(|n| n.contains("RUN"))
        .collect();
    // The build-platform stage ran once for both targets, named for the build platform;
    // each target's RUN ran once.
    assert_eq!(
        ran,
        [
            "[linux/amd64 tool 2/2] RUN --mount=type=cache,target=/count echo ran >> /count/tool && uname -m > /buildarch",
            "[linux/amd64 stage-1 3/3] RUN --mount=type=cache,target=/count uname -m > /arch && cp /count/tool /toolcount && echo \"$TARGETPLATFORM|$TARGETOS|$TARGETARCH|$TARGETVARIANT|$BUILDPLATFORM|$BUILDARCH\" > /args",
            "[linux/arm64 stage-1 3/3] RUN --mount=type=cache,target=/count uname -m > /arch && cp /count/tool /toolcount && echo \"$TARGETPLATFORM|$TARGETOS|$TARGETARCH|$TARGETVARIANT|$BUILDPLATFORM|$BUILDARCH\" > /args",
        ],
        "{}",
        text(&out)
    );

    // A local output of the same build from the pulled bases: one directory per platform,
    // each holding that platform's result.
    let local = app.dir.path().join("local-out");
    app.ok(&[
        "build",
        "--platform",
        "linux/amd64,linux/arm64",
        "--insecure-registry",
        &format!("127.0.0.1:{}", reg.port),
        "--provenance=mode=min",
        "-o",
        &format!("type=local,dest={}", local.display()),
        app.ctx.to_str().context("utf-8")?,
    ])?;
    let mut subs: Vec<String> = std::fs::read_dir(&local)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<_>>()?;
    subs.sort();
    assert_eq!(subs, ["linux_amd64", "linux_arm64"]);
    assert_eq!(
        std::fs::read_to_string(local.join("linux_amd64/arch"))?,
        "x86_64\n"
    );
    assert_eq!(
        std::fs::read_to_string(local.join("linux_arm64/arch"))?,
        "aarch64\n"
    );
    // Each platform's directory has its own provenance, about its own files.
    for (sub, arch) in [("linux_amd64", "x86_64\n"), ("linux_arm64", "aarch64\n")] {
        let stmt: Value =
            serde_json::from_slice(&std::fs::read(local.join(sub).join("provenance.json"))?)?;
        let subject = stmt["subject"].as_array().context("subject")?;
        let want = cache::oci::Digest::of(arch.as_bytes());
        assert!(
            subject
                .iter()
                .any(|s| s["name"] == "arch" && s["digest"]["sha256"] == want.hex()),
            "{sub}: {stmt:#}"
        );
    }

    // Under --no-cache too: the build-platform step the amd64 solve ran is this build's, so
    // the arm64 solve reuses it.
    let again = app.build_output(
        "app:nocache",
        &[
            "--no-cache",
            "--platform",
            "linux/amd64,linux/arm64",
            "--insecure-registry",
            &format!("127.0.0.1:{}", reg.port),
        ],
    )?;
    let tool_runs = events(&again)?
        .iter()
        .filter(|e| e["kind"] == "cache_miss")
        .filter(|e| e["name"].as_str().is_some_and(|n| n.contains("tool 2/2")))
        .count();
    assert_eq!(tool_runs, 1, "{}", text(&again));

    let run = |platform: &str, cmd: &[&str]| -> anyhow::Result<String> {
        let mut args = vec!["run", "--rm", "--platform", platform, "app:1"];
        args.extend_from_slice(cmd);
        Ok(stdout(&app.ok(&args)?))
    };
    assert_eq!(
        run("linux/arm64", &["cat", "/arch", "/args", "/buildarch"])?,
        "aarch64\nlinux/arm64|linux|arm64||linux/amd64|amd64\nx86_64\n"
    );
    assert_eq!(
        run("linux/amd64", &["cat", "/arch", "/args"])?,
        "x86_64\nlinux/amd64|linux|amd64||linux/amd64|amd64\n"
    );
    // The marker the tool stage appends to a cache mount, as the arm64 step (which ran
    // last) saw it: one line per build, so the stage ran once in each.
    assert_eq!(run("linux/arm64", &["cat", "/toolcount"])?, "ran\n");
    let nocache = app.ok(&[
        "run",
        "--rm",
        "--platform",
        "linux/arm64",
        "app:nocache",
        "cat",
        "/toolcount",
    ])?;
    assert_eq!(stdout(&nocache), "ran\nran\n");
    let inspect: Value = serde_json::from_slice(&app.ok(&["inspect", "app:1"])?.stdout)?;
    assert_eq!(
        inspect[0]["Architecture"], "amd64",
        "the host's entry by default"
    );

    // `kiln push` of the name pushes the index with both manifests.
    let dest = format!("127.0.0.1:{}/kiln/app:1", reg.port);
    let pushed = stdout(&app.ok(&["push", "app:1", &dest])?)
        .trim()
        .to_owned();
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{dest}"),
    ])?;
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(index_platforms(&raw), ["linux/amd64", "linux/arm64"]);
    let bytes = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{dest}"),
        ])
        .output()?
        .stdout;
    assert_eq!(pushed, cache::oci::Digest::of(&bytes).to_string());
    // Each entry's config says its platform.
    let arm = skopeo(&[
        "inspect",
        "--config",
        "--tls-verify=false",
        "--override-arch",
        "arm64",
        &format!("docker://{dest}"),
    ])?;
    assert_eq!(
        (arm["architecture"].as_str(), arm["os"].as_str()),
        (Some("arm64"), Some("linux"))
    );

    // `kiln save` keeps the index too (nested under index.json, as docker 25+ saves one);
    // skopeo reads each platform from the archive.
    let archive = app.dir.path().join("app.tar");
    app.ok(&["save", "app:1", "-o", archive.to_str().context("utf-8")?])?;
    let oci = format!("oci-archive:{}", archive.display());
    let raw = skopeo(&["inspect", "--raw", &oci])?;
    assert_eq!(index_platforms(&raw), ["linux/amd64", "linux/arm64"]);
    let arm = skopeo(&["inspect", "--config", "--override-arch", "arm64", &oci])?;
    assert_eq!(arm["architecture"], "arm64");

    // Pulled into another store for arm64 only, it runs there through binfmt too.
    let other = TestDir::new();
    other.ok(&["pull", "--platform", "linux/arm64", &dest])?;
    let out = other.ok(&[
        "run",
        "--rm",
        "--platform",
        "linux/arm64",
        &dest,
        "uname",
        "-m",
    ])?;
    assert_eq!(stdout(&out), "aarch64\n");
    Ok(())
}

/// `docker` (Debian's 20.10 client, BuildKit on), failing with its output.
fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("/usr/bin/docker")
        .env("DOCKER_BUILDKIT", "1")
        .args(args)
        .output()
        .context("running docker")?;
    ensure!(out.status.success(), "docker {args:?}: {}", text(&out));
    Ok(stdout(&out))
}

/// Whether dockerd answers; a skip, or a panic with REQUIRE_PRIVILEGED_TESTS=1.
fn docker_ready() -> bool {
    if docker(&["version", "--format", "{{.Server.Version}}"]).is_ok() {
        return true;
    }
    if std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        panic!("docker reference test required but dockerd does not answer");
    }
    eprintln!("skipped: dockerd is not answering");
    false
}

#[test]
fn one_foreign_platform_is_one_manifest_and_matches_docker_buildkit() -> anyhow::Result<()> {
    if !privileged(&["docker-registry", "skopeo", "dpkg-deb"]) || !docker_ready() {
        return Ok(());
    }
    let Some(deb) = arm64_deb() else {
        return Ok(());
    };
    let t = TestDir::new();
    let (reg, base) = multi_base(&t, &deb)?;
    let app = TestDir::new();
    app.write(
        "Dockerfile",
        &format!(
            "FROM {base}\nARG TARGETPLATFORM TARGETOS TARGETARCH TARGETVARIANT BUILDPLATFORM BUILDOS BUILDARCH BUILDVARIANT\n\
             RUN uname -m > /args && echo \"$TARGETPLATFORM|$TARGETOS|$TARGETARCH|$TARGETVARIANT|$BUILDPLATFORM|$BUILDOS|$BUILDARCH|$BUILDVARIANT\" >> /args\n"
        ),
    );
    let dest = format!("127.0.0.1:{}/kiln/one:1", reg.port);
    app.build_output(&dest, &["--platform", "linux/arm64", "--push"])?;
    // As buildx: one platform is a plain manifest, not an index of one.
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{dest}"),
    ])?;
    assert_eq!(
        raw["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config = skopeo(&[
        "inspect",
        "--config",
        "--tls-verify=false",
        "--override-arch",
        "arm64",
        &format!("docker://{dest}"),
    ])?;
    let kiln_args = stdout(&app.ok(&[
        "run",
        "--rm",
        "--platform",
        "linux/arm64",
        &dest,
        "cat",
        "/args",
    ])?);
    assert!(
        kiln_args.starts_with("aarch64\nlinux/arm64|linux|arm64|"),
        "{kiln_args}"
    );

    // docker's BuildKit, the same Dockerfile and platform, FROM the same index.
    let name = format!("kiln-it-platforms-{}", std::process::id());
    docker(&[
        "build",
        "-q",
        "--platform",
        "linux/arm64",
        "-t",
        &name,
        app.ctx.to_str().context("utf-8")?,
    ])?;
    let res = (|| -> anyhow::Result<()> {
        let docker_args = docker(&[
            "run",
            "--rm",
            "--platform",
            "linux/arm64",
            &name,
            "cat",
            "/args",
        ])?;
        assert_eq!(
            kiln_args, docker_args,
            "TARGET*/BUILD* values differ from docker's BuildKit"
        );
        let fields = docker(&[
            "image",
            "inspect",
            "-f",
            "{{.Os}}|{{.Architecture}}|{{.Variant}}",
            &name,
        ])?;
        let ours = format!(
            "{}|{}|{}\n",
            config["os"].as_str().unwrap_or(""),
            config["architecture"].as_str().unwrap_or(""),
            config["variant"].as_str().unwrap_or("")
        );
        assert_eq!(
            ours, fields,
            "config platform fields differ from docker's BuildKit"
        );
        Ok(())
    })();
    let _ = docker(&["rmi", "-f", &name]);
    res
}

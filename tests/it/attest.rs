//! `--provenance` / `--attest type=provenance`: an in-toto SLSA v1 statement in an attestation
//! manifest of the result's index, as BuildKit attaches it, read back from an OCI layout and
//! from the CNCF registry through skopeo.

use crate::harness::{busybox_dir, text};
use crate::registry::start_registry;
use anyhow::{Context as _, ensure};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    Ok(out.stdout)
}

fn blob(layout: &Path, digest: &Value) -> anyhow::Result<Vec<u8>> {
    let hex = digest
        .as_str()
        .and_then(|d| d.strip_prefix("sha256:"))
        .context("a sha256 digest")?;
    let bytes = std::fs::read(layout.join("blobs/sha256").join(hex))?;
    ensure!(
        cache::oci::Digest::of(&bytes).hex() == hex,
        "blob {hex} does not match its digest"
    );
    Ok(bytes)
}

/// Checks an index holding one image and its attestation manifest; returns the statement
/// and the image manifest's digest.
fn check_index(
    index: &Value,
    read: impl Fn(&Value) -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<(Value, String)> {
    let ms = index["manifests"].as_array().context("an index")?;
    ensure!(ms.len() == 2, "{index:#}");
    let (img, att) = (&ms[0], &ms[1]);
    ensure!(img["platform"]["os"] == "linux", "{index:#}");
    ensure!(att["platform"]["os"] == "unknown" && att["platform"]["architecture"] == "unknown");
    ensure!(att["annotations"]["vnd.docker.reference.type"] == "attestation-manifest");
    ensure!(att["annotations"]["vnd.docker.reference.digest"] == img["digest"]);
    let m: Value = serde_json::from_slice(&read(&att["digest"])?)?;
    let layer = &m["layers"][0];
    ensure!(
        layer["mediaType"] == "application/vnd.in-toto+json",
        "{m:#}"
    );
    ensure!(layer["annotations"]["in-toto.io/predicate-type"] == "https://slsa.dev/provenance/v1");
    let stmt: Value = serde_json::from_slice(&read(&layer["digest"])?)?;
    let digest = img["digest"].as_str().context("digest")?.to_owned();
    Ok((stmt, digest))
}

#[test]
fn provenance_is_an_in_toto_statement_about_the_image_manifest() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["skopeo"])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox\nARG FLAVOUR\nRUN echo $FLAVOUR > /flavour\n",
    );
    let layout = t.dir.path().join("layout");
    t.build_output(
        "prov:1",
        &[
            "--build-arg",
            "FLAVOUR=mint",
            "--provenance=mode=max",
            "-o",
            &format!("type=oci,dest={},tar=false", layout.display()),
            "--annotation",
            "index:com.example.idx=yes",
        ],
    )?;
    let index_json: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let root = &index_json["manifests"][0];
    ensure!(
        root["mediaType"] == "application/vnd.oci.image.index.v1+json",
        "{index_json:#}"
    );
    let index: Value = serde_json::from_slice(&blob(&layout, &root["digest"])?)?;
    ensure!(
        index["annotations"]["com.example.idx"] == "yes",
        "{index:#}"
    );
    let (stmt, image_digest) = check_index(&index, |d| blob(&layout, d))?;
    ensure!(
        stmt["_type"] == "https://in-toto.io/Statement/v0.1",
        "{stmt:#}"
    );
    ensure!(stmt["predicateType"] == "https://slsa.dev/provenance/v1");
    ensure!(
        format!(
            "sha256:{}",
            stmt["subject"][0]["digest"]["sha256"]
                .as_str()
                .unwrap_or("")
        ) == image_digest,
        "subject {stmt:#} vs {image_digest}"
    );
    let def = &stmt["predicate"]["buildDefinition"];
    ensure!(
        def["externalParameters"]["request"]["args"]["build-arg:FLAVOUR"] == "mint",
        "{def:#}"
    );
    ensure!(def["externalParameters"]["configSource"]["path"] == "Dockerfile");
    // The base image is a material, with the digest the store knows it by.
    let busybox: Value = serde_json::from_slice(&t.ok(&["inspect", "busybox"])?.stdout)?;
    let id = busybox[0]["Id"].as_str().context("busybox id")?;
    let dep = def["resolvedDependencies"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|d| d["uri"].as_str().is_some_and(|u| u.contains("busybox")))
        })
        .context("busybox in resolvedDependencies")?;
    ensure!(
        format!("sha256:{}", dep["digest"]["sha256"].as_str().unwrap_or("")) == id,
        "{dep:#} vs {id}"
    );
    // mode=max carries the Dockerfile.
    let src =
        &stmt["predicate"]["runDetails"]["metadata"]["buildkit_metadata"]["source"]["infos"][0];
    ensure!(src["filename"] == "Dockerfile", "{stmt:#}");
    // skopeo reads the layout's image through the index.
    run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}", layout.display())))?;
    Ok(())
}

#[test]
fn pushed_provenance_is_in_the_registry_index() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["docker-registry", "skopeo"])? else {
        return Ok(());
    };
    t.write("Dockerfile", "FROM busybox\nRUN echo pushed > /p\n");
    let reg = start_registry(t.dir.path())?;
    let remote = format!("127.0.0.1:{}/kiln/attest:1", reg.port);
    t.build_output(
        &remote,
        &[
            "--attest",
            "type=provenance,mode=min",
            "-o",
            "type=registry",
            "--annotation",
            "manifest-descriptor:com.example.entry=image",
        ],
    )?;
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{remote}"),
    ]))?;
    let index: Value = serde_json::from_slice(&raw)?;
    let repo = format!("127.0.0.1:{}/kiln/attest", reg.port);
    let read = |d: &Value| -> anyhow::Result<Vec<u8>> {
        let d = d.as_str().context("digest")?;
        // Manifests through skopeo; blobs straight from the registry's API.
        let out = Command::new("skopeo")
            .args([
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{repo}@{d}"),
            ])
            .output()?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let url = format!("http://127.0.0.1:{}/v2/kiln/attest/blobs/{d}", reg.port);
        run(Command::new("curl").args(["-fsSL", &url]))
    };
    ensure!(
        index["manifests"][0]["annotations"]["com.example.entry"] == "image",
        "{index:#}"
    );
    let (stmt, image_digest) = check_index(&index, read)?;
    ensure!(
        format!(
            "sha256:{}",
            stmt["subject"][0]["digest"]["sha256"]
                .as_str()
                .unwrap_or("")
        ) == image_digest
    );
    ensure!(
        stmt["subject"][0]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with(&format!(
                "pkg:docker/127.0.0.1:{}/kiln/attest@1?platform=linux%2F",
                reg.port
            ))),
        "{stmt:#}"
    );
    // mode=min: no Dockerfile in the statement.
    ensure!(stmt["predicate"]["runDetails"]["metadata"]["buildkit_metadata"].is_null());
    // skopeo resolves the tag to the linux image, passing over the attestation.
    let v: Value = serde_json::from_slice(&run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{remote}"),
    ]))?)?;
    ensure!(v["Os"] == "linux", "{v:#}");
    Ok(())
}

/// A scanner that follows BuildKit's protocol: one SPDX document about the rootfs it was
/// given (listing /srv), naming the extras it saw.
const SCANNER: &str = r#"#!/bin/sh
set -e
name=$(basename "$BUILDKIT_SCAN_SOURCE")
files=$(ls "$BUILDKIT_SCAN_SOURCE/srv" | tr '\n' ' ')
extras=$(ls "$BUILDKIT_SCAN_SOURCE_EXTRAS" | tr '\n' ' ')
ctxfile=$(cat "$BUILDKIT_SCAN_SOURCE_EXTRAS/sbom-context/marker.txt")
cat > "$BUILDKIT_SCAN_DESTINATION/$name.spdx.json" <<SPDX_END
{"spdxVersion":"SPDX-2.3","SPDXID":"SPDXRef-DOCUMENT","name":"$name","dataLicense":"CC0-1.0","packages":[{"SPDXID":"SPDXRef-srv","name":"srv","versionInfo":"$files"}],"comment":"extras: $extras; marker: $ctxfile"}
SPDX_END
"#;

#[test]
fn sbom_generator_runs_with_the_scanner_protocol_and_is_attached() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["skopeo"])? else {
        return Ok(());
    };
    // The scanner image, built by the test.
    t.write(
        "Dockerfile",
        "FROM busybox\nCOPY scan.sh /scan.sh\nENTRYPOINT [\"/bin/sh\", \"/scan.sh\"]\n",
    );
    t.write("scan.sh", SCANNER);
    t.build("scanner:1", &[])?;
    // The image it scans.
    t.write(
        "Dockerfile",
        // The context is scanned too only when asked, as BuildKit.
        "ARG BUILDKIT_SBOM_SCAN_CONTEXT=true\nFROM busybox\nRUN mkdir /srv && touch /srv/alpha /srv/beta\n",
    );
    t.write("marker.txt", "from-the-context");
    let layout = t.dir.path().join("layout");
    t.build_output(
        "scanned:1",
        &[
            "--sbom=generator=scanner:1",
            "--provenance=true",
            "-o",
            &format!("type=oci,dest={},tar=false", layout.display()),
        ],
    )?;
    let index_json: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let index: Value =
        serde_json::from_slice(&blob(&layout, &index_json["manifests"][0]["digest"])?)?;
    let ms = index["manifests"].as_array().context("an index")?;
    ensure!(ms.len() == 2, "{index:#}");
    let att: Value = serde_json::from_slice(&blob(&layout, &ms[1]["digest"])?)?;
    let layers = att["layers"].as_array().context("layers")?;
    let spdx = layers
        .iter()
        .find(|l| l["annotations"]["in-toto.io/predicate-type"] == "https://spdx.dev/Document")
        .context("an SPDX layer")?;
    ensure!(
        layers
            .iter()
            .any(|l| l["annotations"]["in-toto.io/predicate-type"]
                == "https://slsa.dev/provenance/v1"),
        "{att:#}"
    );
    let stmt: Value = serde_json::from_slice(&blob(&layout, &spdx["digest"])?)?;
    ensure!(
        stmt["predicateType"] == "https://spdx.dev/Document",
        "{stmt:#}"
    );
    ensure!(
        Some(
            format!(
                "sha256:{}",
                stmt["subject"][0]["digest"]["sha256"]
                    .as_str()
                    .unwrap_or("")
            )
            .as_str()
        ) == ms[0]["digest"].as_str()
    );
    let doc = &stmt["predicate"];
    ensure!(
        doc["spdxVersion"] == "SPDX-2.3" && doc["name"] == "sbom",
        "{doc:#}"
    );
    ensure!(
        doc["packages"][0]["versionInfo"] == "alpha beta ",
        "{doc:#}"
    );
    ensure!(
        doc["comment"] == "extras: sbom-context ; marker: from-the-context",
        "{doc:#}"
    );
    // type=local: the SBOM statement beside the files, under the scanner's file name.
    let local = t.dir.path().join("local");
    t.build_output(
        "scanned:1",
        &[
            "--sbom=generator=scanner:1",
            "-o",
            &format!("type=local,dest={}", local.display()),
        ],
    )?;
    let stmt: Value = serde_json::from_slice(
        // BuildKit's source path ends in `sbom`: the scanner names its file sbom.spdx.json.
        &std::fs::read(local.join("sbom.spdx.json")).context("sbom.spdx.json")?,
    )?;
    ensure!(
        stmt["predicateType"] == "https://spdx.dev/Document"
            && stmt["predicate"]["packages"][0]["versionInfo"] == "alpha beta ",
        "{stmt:#}"
    );
    let subject = stmt["subject"].as_array().context("subject")?;
    ensure!(
        subject.iter().any(|s| s["name"] == "srv/alpha"
            && s["digest"]["sha256"] == cache::oci::Digest::of(b"").hex()),
        "{stmt:#}"
    );
    ensure!(!local.join("provenance.json").exists());
    Ok(())
}

#[test]
fn push_with_provenance_pushes_the_index_as_buildx_does() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["docker-registry", "skopeo"])? else {
        return Ok(());
    };
    t.write("Dockerfile", "FROM busybox\nRUN echo pushed > /p\n");
    let reg = start_registry(t.dir.path())?;
    let remote = format!("127.0.0.1:{}/kiln/push-attest:1", reg.port);
    let meta = t.dir.path().join("meta.json");
    t.build_output(
        &remote,
        &[
            "--push",
            "--provenance=true",
            "--metadata-file",
            meta.to_str().context("utf-8")?,
        ],
    )?;
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{remote}"),
    ]))?;
    let index: Value = serde_json::from_slice(&raw)?;
    ensure!(
        index["mediaType"] == "application/vnd.oci.image.index.v1+json",
        "{index:#}"
    );
    ensure!(
        index["manifests"][1]["annotations"]["vnd.docker.reference.type"] == "attestation-manifest"
    );
    // --metadata-file names what the registry serves: the index.
    let md: Value = serde_json::from_slice(&std::fs::read(&meta)?)?;
    ensure!(
        md["containerimage.digest"] == cache::oci::Digest::of(&raw).to_string(),
        "{md:#}"
    );
    Ok(())
}

#[test]
fn provenance_lists_add_git_sources_with_their_commit() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["git"])? else {
        return Ok(());
    };
    let server = crate::sources::git_server(&t)?;
    let commit = crate::sources::commit(&server.repo, &[("f", "from git\n")], "one")?;
    t.write(
        "Dockerfile",
        &format!("FROM busybox\nADD {}#main /src\n", server.url),
    );
    let layout = t.dir.path().join("layout");
    t.build_output(
        "gitprov:1",
        &[
            "--provenance=true",
            "-o",
            &format!("type=oci,dest={},tar=false", layout.display()),
        ],
    )?;
    let index_json: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let index: Value =
        serde_json::from_slice(&blob(&layout, &index_json["manifests"][0]["digest"])?)?;
    let (stmt, _) = check_index(&index, |d| blob(&layout, d))?;
    let deps = &stmt["predicate"]["buildDefinition"]["resolvedDependencies"];
    let git = deps
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|d| d["uri"] == format!("{}#main", server.url))
        })
        .with_context(|| format!("the git source in {deps:#}"))?;
    ensure!(
        git["digest"]["sha1"] == commit.as_str(),
        "{git:#} vs {commit}"
    );
    Ok(())
}

/// The subject of a local or tar output's statement: every regular file of the result, by
/// path and SHA-256, without the statement files themselves.
fn check_file_subject(stmt: &Value, files: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    let subject = stmt["subject"].as_array().context("a subject list")?;
    let mut named: Vec<(String, String)> = subject
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("").to_owned(),
                s["digest"]["sha256"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    named.sort();
    let mut want: Vec<(String, String)> = files
        .iter()
        .filter(|(p, _)| !p.ends_with("provenance.json") && !p.ends_with(".spdx.json"))
        .map(|(p, b)| (p.clone(), cache::oci::Digest::of(b).hex().to_owned()))
        .collect();
    want.sort();
    ensure!(named == want, "subject {named:?} vs the files {want:?}");
    ensure!(named.iter().any(|(p, _)| p == "flavour"), "{named:?}");
    Ok(())
}

/// The regular files under `dir`, by path relative to it.
fn tree_files(dir: &Path, rel: &str, out: &mut Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let p = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let kind = e.file_type()?;
        if kind.is_dir() {
            tree_files(&e.path(), &p, out)?;
        } else if kind.is_file() {
            out.push((p, std::fs::read(e.path())?));
        }
    }
    Ok(())
}

#[test]
fn local_and_tar_outputs_carry_provenance_json_beside_the_files() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox\nARG FLAVOUR\nRUN echo $FLAVOUR > /flavour\n",
    );
    let local = t.dir.path().join("local");
    let tarball = t.dir.path().join("out.tar");
    t.build_output(
        "provfiles:1",
        &[
            "--build-arg",
            "FLAVOUR=mint",
            "--provenance=mode=max",
            "-o",
            &format!("type=local,dest={}", local.display()),
            "-o",
            &format!("type=tar,dest={}", tarball.display()),
        ],
    )?;
    // type=local: provenance.json at the root, an indented in-toto statement.
    let raw = std::fs::read(local.join("provenance.json")).context("provenance.json")?;
    ensure!(raw.windows(3).any(|w| w == b"\n  "), "indented JSON");
    let stmt: Value = serde_json::from_slice(&raw)?;
    ensure!(
        stmt["_type"] == "https://in-toto.io/Statement/v0.1",
        "{stmt:#}"
    );
    ensure!(stmt["predicateType"] == "https://slsa.dev/provenance/v1");
    let def = &stmt["predicate"]["buildDefinition"];
    ensure!(
        def["externalParameters"]["request"]["args"]["build-arg:FLAVOUR"] == "mint",
        "{def:#}"
    );
    let src =
        &stmt["predicate"]["runDetails"]["metadata"]["buildkit_metadata"]["source"]["infos"][0];
    ensure!(src["filename"] == "Dockerfile", "{stmt:#}");
    let mut files = Vec::new();
    tree_files(&local, "", &mut files)?;
    check_file_subject(&stmt, &files)?;
    ensure!(std::fs::read_to_string(local.join("flavour"))? == "mint\n");

    // type=tar: the same file in the archive, read with GNU tar.
    let listing = String::from_utf8(run(Command::new("tar").arg("-tf").arg(&tarball))?)?;
    ensure!(listing.lines().any(|l| l == "provenance.json"), "{listing}");
    let mut files = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&tarball)?);
    for e in archive.entries()? {
        let mut e = e?;
        if e.header().entry_type().is_file() {
            let p = e.path()?.to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data)?;
            files.push((p, data));
        }
    }
    let in_tar = files
        .iter()
        .find(|(p, _)| p == "provenance.json")
        .context("provenance.json in the tar")?;
    let stmt: Value = serde_json::from_slice(&in_tar.1)?;
    check_file_subject(&stmt, &files)?;
    Ok(())
}

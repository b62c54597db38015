//! Hostile archives (issue #10, item 5): sparse files in the four GNU formats, entries that
//! replace a symlink (to a file, to a directory, absolute), a directory or a file, and a FIFO
//! with empty device fields, through ADD and through a pulled image's layers.
//!
//! docker is the reference: the same Dockerfile built by dockerd (the classic builder: Debian's
//! docker.io has no buildx) and the same image pulled by dockerd from the same registry, read
//! back with `docker export` and compared with kiln's result entry by entry (type, mode,
//! owner, size, contents, link target). docker 20.10 refuses old GNU sparse entries
//! ("unhandled tar header type 83"), so those are compared with GNU tar's own extraction.

use crate::harness::unpack;
use crate::harness::{TestDir, privileged, text};
use crate::registry::start_registry;
use anyhow::{Context as _, ensure};
use cache::oci::Digest;
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use tar::EntryType;

/// Top-level names docker adds to every container it exports.
const DOCKER_OWN: &[&str] = &[".dockerenv", "dev", "etc", "proc", "sys"];

/// Whether dockerd answers. Without it the test is skipped, or fails when
/// REQUIRE_PRIVILEGED_TESTS=1 (CI starts dockerd).
fn docker_ready() -> bool {
    let answered = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if answered {
        return true;
    }
    if std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        panic!("docker reference test required but `docker version` gets no answer from dockerd");
    }
    eprintln!("skipped: dockerd is not answering");
    false
}

fn run(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    Ok(out.stdout)
}

/// A docker name unique to this test run.
fn docker_name(what: &str) -> String {
    format!("kiln-it-archives-{what}-{}", std::process::id())
}

/// `docker create` + `docker export` of `image`, unpacked by GNU tar into `out`; the image
/// is removed afterwards.
fn docker_rootfs(image: &str, out: &Path) -> anyhow::Result<()> {
    let id = run(Command::new("docker").args(["create", image, "/none"]))?;
    let id = String::from_utf8(id)?.trim().to_owned();
    let tar = out.with_extension("tar");
    let exported = run(Command::new("docker")
        .args(["export", "-o"])
        .arg(&tar)
        .arg(&id));
    run(Command::new("docker").args(["rm", &id]))?;
    run(Command::new("docker").args(["rmi", image]))?;
    exported?;
    std::fs::create_dir_all(out)?;
    run(Command::new("tar").arg("-C").arg(out).arg("-xpf").arg(&tar))?;
    Ok(())
}

/// Every entry under `root` (docker's own top-level names left out) as a line: type, mode,
/// owner, and size with a content digest, or the link target.
fn tree(root: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if rel.is_empty() && DOCKER_OWN.contains(&name.as_str()) {
                continue;
            }
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let m = std::fs::symlink_metadata(e.path())?;
            let ft = m.file_type();
            let what = if ft.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else if ft.is_symlink() {
                format!("symlink -> {}", std::fs::read_link(e.path())?.display())
            } else if ft.is_file() {
                let data = std::fs::read(e.path())?;
                format!("file {} {}", data.len(), Digest::of(&data).short())
            } else if ft.is_fifo() {
                "fifo".to_owned()
            } else {
                format!("other {:o}", m.mode())
            };
            let line = format!("{what} {:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid());
            out.insert(path, line);
        }
    }
    Ok(out)
}

fn ensure_same(kiln: &Path, reference: &Path, what: &str) -> anyhow::Result<()> {
    let (k, r) = (tree(kiln)?, tree(reference)?);
    let mut diff = String::new();
    for p in k
        .keys()
        .chain(r.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        if k.get(p) != r.get(p) {
            diff += &format!(
                "{p}\n  kiln:      {:?}\n  {what}: {:?}\n",
                k.get(p),
                r.get(p)
            );
        }
    }
    ensure!(diff.is_empty(), "kiln and {what} differ:\n{diff}");
    Ok(())
}

fn entry(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(match kind {
        EntryType::Directory => 0o755,
        EntryType::Symlink => 0o777,
        _ => 0o644,
    });
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    h.set_path(name).expect("path");
    if !link.is_empty() {
        h.set_link_name(link).expect("link");
    }
    h.set_cksum();
    b.append(&h, data).expect("append");
}

/// What the image already holds: files, a directory, and symlinks to each (relative and
/// absolute) that the hostile archive then replaces.
fn base_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    entry(&mut b, "realdir/", EntryType::Directory, "", b"");
    entry(&mut b, "realdir/keep", EntryType::Regular, "", b"keep\n");
    entry(&mut b, "t", EntryType::Regular, "", b"target\n");
    entry(&mut b, "l", EntryType::Symlink, "t", b"");
    entry(&mut b, "labs", EntryType::Symlink, "/t", b"");
    entry(&mut b, "ld", EntryType::Symlink, "realdir", b"");
    entry(&mut b, "d/", EntryType::Directory, "", b"");
    entry(&mut b, "d/inner", EntryType::Regular, "", b"inner\n");
    entry(&mut b, "d2/", EntryType::Directory, "", b"");
    entry(&mut b, "d2/inner", EntryType::Regular, "", b"inner\n");
    entry(&mut b, "m/", EntryType::Directory, "", b"");
    entry(&mut b, "m/old", EntryType::Regular, "", b"old\n");
    entry(&mut b, "f", EntryType::Regular, "", b"file\n");
    entry(&mut b, "f2", EntryType::Regular, "", b"file\n");
    b.into_inner().expect("tar")
}

/// Entries replacing what [`base_tar`] left and a FIFO with empty device fields; with
/// `duplicates`, also a link planted and replaced in the same archive (dockerd refuses a
/// layer that names a path twice, "duplicates of file paths not supported", but ADD takes it).
fn hostile_tar(duplicates: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    entry(&mut b, "l", EntryType::Regular, "", b"replaced\n");
    entry(&mut b, "labs", EntryType::Regular, "", b"replaced too\n");
    entry(&mut b, "ld/", EntryType::Directory, "", b"");
    entry(&mut b, "ld/new", EntryType::Regular, "", b"in a new dir\n");
    entry(&mut b, "d", EntryType::Regular, "", b"was a dir\n");
    entry(&mut b, "d2", EntryType::Symlink, "t", b"");
    entry(&mut b, "m/", EntryType::Directory, "", b"");
    entry(&mut b, "m/new", EntryType::Regular, "", b"merged\n");
    entry(&mut b, "f/", EntryType::Directory, "", b"");
    entry(&mut b, "f2", EntryType::Symlink, "realdir", b"");
    if duplicates {
        entry(&mut b, "in", EntryType::Symlink, "t", b"");
        entry(&mut b, "in", EntryType::Regular, "", b"in-archive\n");
        entry(&mut b, "ind", EntryType::Symlink, "realdir", b"");
        entry(&mut b, "ind/", EntryType::Directory, "", b"");
        entry(&mut b, "ind/x", EntryType::Regular, "", b"x\n");
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(EntryType::Fifo);
    h.set_mode(0o640);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    h.set_path("fifo").expect("path");
    h.as_mut_bytes()[329..345].fill(0);
    h.set_cksum();
    b.append(&h, &b""[..]).expect("append");
    b.into_inner().expect("tar")
}

/// A 3 MiB file with two small data runs and real holes, at `dir/<sub>/sp`.
fn sparse_file(dir: &Path, sub: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join(sub))?;
    let f = std::fs::File::create(dir.join(sub).join("sp"))?;
    std::os::unix::fs::FileExt::write_all_at(&f, b"hello", 1 << 20)?;
    std::os::unix::fs::FileExt::write_all_at(&f, b"end", 3_000_000)?;
    f.set_len(3 << 20)?;
    Ok(())
}

/// The four sparse formats GNU tar writes: (archive name, directory inside, tar flags).
const SPARSE: &[(&str, &str, &[&str])] = &[
    ("gnu.tar", "gnu", &["--sparse", "--format=gnu"]),
    (
        "pax00.tar",
        "p00",
        &["--format=posix", "--sparse-version=0.0"],
    ),
    (
        "pax01.tar",
        "p01",
        &["--format=posix", "--sparse-version=0.1"],
    ),
    (
        "pax10.tar",
        "p10",
        &["--format=posix", "--sparse-version=1.0"],
    ),
];

/// Writes the sparse archives of [`SPARSE`] into `into`, each holding `<dir>/sp`.
fn sparse_tars(scratch: &Path, into: &Path) -> anyhow::Result<()> {
    for (name, dir, flags) in SPARSE {
        sparse_file(scratch, dir)?;
        run(Command::new("tar")
            .arg("-C")
            .arg(scratch)
            .args(*flags)
            .arg("-cf")
            .arg(into.join(name))
            .arg(format!("{dir}/sp")))?;
    }
    Ok(())
}

/// What kiln must have made of the archives whatever docker does (so that a change in the
/// reference cannot make a wrong result pass).
fn ensure_expected(root: &Path, duplicates: bool) -> anyhow::Result<()> {
    let tree = tree(root)?;
    let line = |p: &str| tree.get(p).cloned().unwrap_or_default();
    let mut want = vec![
        ("t", format!("file 7 {}", Digest::of(b"target\n").short())),
        ("l", format!("file 9 {}", Digest::of(b"replaced\n").short())),
        ("labs", "file 13".to_owned()),
        ("ld", "dir".to_owned()),
        ("d", "file 10".to_owned()),
        ("d2", "symlink -> t".to_owned()),
        ("f", "dir".to_owned()),
        ("fifo", "fifo 640".to_owned()),
        ("realdir/keep", "file 5".to_owned()),
        ("m/old", "file 4".to_owned()),
        ("m/new", "file 7".to_owned()),
    ];
    if duplicates {
        want.push(("in", "file 11".to_owned()));
        want.push(("ind", "dir".to_owned()));
    }
    for (p, prefix) in want {
        ensure!(
            line(p).starts_with(&prefix),
            "{p}: {:?}, want {prefix}",
            line(p)
        );
    }
    ensure!(
        !tree.contains_key("d/inner") && !tree.contains_key("realdir/new"),
        "{tree:#?}"
    );
    Ok(())
}

fn ensure_sparse(root: &Path, dirs: &[&str]) -> anyhow::Result<()> {
    let mut want = vec![0u8; 3 << 20];
    want[1 << 20..(1 << 20) + 5].copy_from_slice(b"hello");
    want[3_000_000..3_000_003].copy_from_slice(b"end");
    for d in dirs {
        let got = std::fs::read(root.join(d).join("sp")).with_context(|| format!("{d}/sp"))?;
        ensure!(got == want, "{d}/sp: contents differ ({} bytes)", got.len());
        let names: Vec<_> = std::fs::read_dir(root.join(d))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        ensure!(names == ["sp"], "{d}: {names:?}");
    }
    Ok(())
}

#[test]
fn add_of_hostile_archives_matches_docker() -> anyhow::Result<()> {
    if !privileged(&["umoci", "tar"]) || !docker_ready() {
        return Ok(());
    }
    let t = TestDir::new();
    std::fs::write(t.ctx.join("base.tar"), base_tar())?;
    std::fs::write(t.ctx.join("hostile.tar"), hostile_tar(true))?;
    sparse_tars(&t.dir.path().join("sparse-src"), &t.ctx)?;
    // docker 20.10 cannot ADD old GNU sparse entries: the PAX formats only here.
    t.write(
        "Dockerfile",
        "FROM scratch\nADD base.tar /\nADD hostile.tar /\nADD pax00.tar /\nADD pax01.tar /\nADD pax10.tar /\n",
    );
    let image = docker_name("add");
    run(Command::new("docker")
        .args(["build", "-q", "-t", &image])
        .arg(&t.ctx)
        .env("DOCKER_BUILDKIT", "0"))?;
    let reference = t.dir.path().join("docker-rootfs");
    docker_rootfs(&image, &reference)?;

    t.build("hostile:1", &[])?;
    let kiln = unpack(&t, "hostile:1")?;
    ensure_expected(&kiln.rootfs, true)?;
    ensure_sparse(&kiln.rootfs, &["p00", "p01", "p10"])?;
    ensure_same(&kiln.rootfs, &reference, "docker")
}

#[test]
fn add_of_gnu_sparse_archives_matches_gnu_tar() -> anyhow::Result<()> {
    if !privileged(&["umoci", "tar"]) {
        return Ok(());
    }
    let t = TestDir::new();
    sparse_tars(&t.dir.path().join("sparse-src"), &t.ctx)?;
    let reference = t.dir.path().join("gnu-tar");
    std::fs::create_dir(&reference)?;
    let mut dockerfile = "FROM scratch\n".to_owned();
    for (name, _, _) in SPARSE {
        run(Command::new("tar")
            .arg("-C")
            .arg(&reference)
            .arg("-xpf")
            .arg(t.ctx.join(name)))?;
        dockerfile += &format!("ADD {name} /\n");
    }
    t.write("Dockerfile", &dockerfile);
    t.build("sparse:1", &[])?;
    let kiln = unpack(&t, "sparse:1")?;
    ensure_sparse(&kiln.rootfs, &["gnu", "p00", "p01", "p10"])?;
    ensure_same(&kiln.rootfs, &reference, "GNU tar")
}

/// An OCI layout at `dir` whose image has `layers` (uncompressed) as its layers.
fn oci_layout(dir: &Path, layers: &[Vec<u8>]) -> anyhow::Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |data: &[u8]| -> anyhow::Result<serde_json::Value> {
        let d = Digest::of(data);
        std::fs::write(blobs.join(d.hex()), data)?;
        Ok(serde_json::json!({"digest": d.to_string(), "size": data.len()}))
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let mut d = put(l)?;
        d["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
        diff_ids.push(d["digest"].clone());
        descs.push(d);
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let mut config = put(&serde_json::to_vec(&config)?)?;
    config["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": descs,
    });
    let mut manifest = put(&serde_json::to_vec(&manifest)?)?;
    manifest["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    manifest["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "1"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

#[test]
fn pulled_hostile_layers_match_docker() -> anyhow::Result<()> {
    if !privileged(&["docker-registry", "skopeo", "umoci", "tar"]) || !docker_ready() {
        return Ok(());
    }
    let t = TestDir::new();
    let tars = t.dir.path().join("tars");
    std::fs::create_dir(&tars)?;
    sparse_tars(&t.dir.path().join("sparse-src"), &tars)?;
    let mut layers = vec![base_tar(), hostile_tar(false)];
    // docker 20.10 cannot apply old GNU sparse entries: the PAX formats only here (the layer
    // applier's unit tests cover all four).
    for name in ["pax00.tar", "pax01.tar", "pax10.tar"] {
        layers.push(std::fs::read(tars.join(name))?);
    }
    let layout = t.dir.path().join("layout");
    oci_layout(&layout, &layers)?;
    let reg = start_registry(t.dir.path())?;
    let remote = format!("127.0.0.1:{}/hostile/layers:1", reg.port);
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker://{remote}")))?;

    // docker pulls it (127.0.0.0/8 registries are plain HTTP for dockerd by default).
    run(Command::new("docker").args(["pull", "-q", &remote]))?;
    let image = docker_name("pulled");
    run(Command::new("docker").args(["tag", &remote, &image]))?;
    run(Command::new("docker").args(["rmi", &remote]))?;
    let reference = t.dir.path().join("docker-rootfs");
    docker_rootfs(&image, &reference)?;

    // kiln pulls it and copies the applied layers' union into an image of its own, so that
    // what is compared is kiln's extraction, not the pushed blobs re-read by umoci.
    t.ok(&["pull", &remote])?;
    t.write(
        "Dockerfile",
        &format!("FROM scratch\nCOPY --from={remote} / /\n"),
    );
    t.build("copied:1", &[])?;
    let kiln = unpack(&t, "copied:1")?;
    ensure_expected(&kiln.rootfs, false)?;
    ensure_sparse(&kiln.rootfs, &["p00", "p01", "p10"])?;
    ensure_same(&kiln.rootfs, &reference, "docker")
}

/// An entry whose parent is a file cannot be extracted (dockerd fails the same ADD): the error
/// names the Dockerfile line, the archive and the entry.
#[test]
fn add_error_names_the_line_the_archive_and_the_entry() -> anyhow::Result<()> {
    if !privileged(&[]) {
        return Ok(());
    }
    let t = TestDir::new();
    let mut b = tar::Builder::new(Vec::new());
    entry(&mut b, "file", EntryType::Regular, "", b"x");
    entry(&mut b, "file/below", EntryType::Regular, "", b"y");
    std::fs::write(t.ctx.join("bad.tar"), b.into_inner()?)?;
    t.write("Dockerfile", "FROM scratch\nADD bad.tar /\n");
    let out = t.kiln(&["build", "-t", "bad:1", t.ctx.to_str().context("utf-8")?]);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && err.contains("Dockerfile:2")
            && err.contains("bad.tar")
            && err.contains("entry `file/below`"),
        "{}",
        text(&out)
    );
    Ok(())
}

/// A layer entry with a garbage mode field: `kiln pull` fails naming the image, the layer's
/// blob (skopeo compresses it on push, so only its presence is checked) and the entry.
#[test]
fn pull_error_names_the_layer_and_the_entry() -> anyhow::Result<()> {
    if !privileged(&["docker-registry", "skopeo"]) {
        return Ok(());
    }
    let t = TestDir::new();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(0);
    h.set_path("etc/bad-mode")?;
    h.as_mut_bytes()[100..108].copy_from_slice(b"zzzzzzz\0");
    h.set_cksum();
    b.append(&h, &b""[..])?;
    let layout = t.dir.path().join("layout");
    oci_layout(&layout, &[b.into_inner()?])?;
    let reg = start_registry(t.dir.path())?;
    let remote = format!("127.0.0.1:{}/hostile/mode:1", reg.port);
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker://{remote}")))?;
    let out = t.kiln(&["pull", &remote]);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && err.contains(&remote)
            && err.contains("blob sha256:")
            && err.contains("reading tar entry `etc/bad-mode`"),
        "{}",
        text(&out)
    );
    Ok(())
}

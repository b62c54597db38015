//! The differential suite (issue 11): Dockerfiles built by kiln and by docker's BuildKit
//! (dockerd 20.10, BuildKit 0.8), whose images are compared file by file (type, mode, uid,
//! gid, size, content digest, link target, mtime) and config by config.
//!
//! Both sides start from the same base: a busybox rootfs tar (from /bin/busybox, no Docker
//! Hub) that `docker import` and `kiln import` load under the same name. Each group is one
//! Dockerfile with a stage per case, built once per case with `--target`; the images are read
//! back with `docker save` and `kiln save` (both write docker-archive's manifest.json) and
//! their layers flattened (whiteouts applied) in memory.
//!
//! Every difference found must be listed by its case, as `PATH FIELD kiln=X docker=Y` or
//! `config.FIELD kiln=X docker=Y` (or `kiln fails (ERROR LINE), docker builds` for a build
//! kiln refuses on purpose, `both fail (kiln ERROR; docker ERROR)` for one both refuse): an
//! intentional divergence is asserted, never ignored. One
//! rule applies to every case: a file that BuildKit 0.8 stamps with the build's wall clock
//! (a RUN's new files, WORKDIR's new directories) carries the build epoch (0) in kiln's image,
//! as BuildKit does with SOURCE_DATE_EPOCH=0 (0.8 has no SOURCE_DATE_EPOCH); [`compare`]
//! checks both halves of that (docker's time is within the build, kiln's is exactly 0).

mod cases_add;
mod cases_chmod;
mod cases_copy;
mod cases_expand;
mod cases_ignore;
mod cases_links;
mod cases_meta;
mod cases_onto;
mod cases_run;
mod cases_run2;
mod cases_stages;
mod cases_v024;

use crate::harness::{TestDir, busybox_tar, docker_ok as docker, privileged, text};
use anyhow::{Context as _, bail, ensure};
use cache::oci::Digest;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The tools the suite drives; missing ones fail it under REQUIRE_PRIVILEGED_TESTS=1.
const TOOLS: &[&str] = &["docker"];

/// The base image's name on both sides (`FROM base` and `--from=base` in the cases'
/// Dockerfiles become this).
const BASE: &str = "kiln-differential-base:1";

/// The mtime every context file and directory gets (2021-01-01T00:00:00Z): older than any
/// build, so that a kept date and a stamped one are told apart.
pub const CTX_MTIME: i64 = 1_609_459_200;

/// The mtime of every context directory (2020-12-31T00:00:00Z), told apart from the files'.
pub const CTX_DIR_MTIME: i64 = CTX_MTIME - 86_400;

/// One case: a stage of its group's Dockerfile and the divergences it expects.
pub struct Case {
    pub stage: &'static str,
    /// Every difference between kiln's image and BuildKit's, as [`compare`] words them.
    pub expect: &'static [&'static str],
}

/// A group of cases: one Dockerfile, one context, extra build flags for both builders.
pub struct Group {
    pub name: &'static str,
    pub dockerfile: &'static str,
    /// Context files: (path, content); a path ending in `/` is an empty directory, a content
    /// starting with `->` a symlink to the rest, one starting with `=>` a hard link to the
    /// context file the rest names (listed before it).
    pub files: &'static [(&'static str, &'static str)],
    pub args: &'static [&'static str],
    pub cases: &'static [Case],
}

/// Imports the base into docker once per test process; returns the base tar's path.
fn docker_base() -> &'static Result<tempfile::TempDir, String> {
    static BASE_DIR: OnceLock<Result<tempfile::TempDir, String>> = OnceLock::new();
    BASE_DIR.get_or_init(|| {
        let make = || -> anyhow::Result<tempfile::TempDir> {
            let d = tempfile::Builder::new().prefix("kiln-diff-").tempdir()?;
            let tar = d.path().join("base.tar");
            std::fs::write(&tar, busybox_tar()?)?;
            docker(&["import", tar.to_str().context("utf-8")?, BASE])?;
            Ok(d)
        };
        make().map_err(|e| format!("{e:#}"))
    })
}

/// One file of a flattened image.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    kind: String,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    digest: String,
    link: String,
    mtime: i64,
}

/// A read-back image: its config's `config` object and its flattened files.
struct Image {
    config: Value,
    files: BTreeMap<String, Entry>,
}

fn norm(path: &str) -> String {
    path.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_owned()
}

fn decompress(data: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    if data.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(data.as_slice()).read_to_end(&mut out)?;
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(data.as_slice())?.read_to_end(&mut out)?;
    } else {
        return Ok(data);
    }
    Ok(out)
}

/// Reads a docker-archive tar (manifest.json, config, layers) and flattens its layers.
fn read_archive(path: &Path) -> anyhow::Result<Image> {
    let mut members: HashMap<String, Vec<u8>> = HashMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(path)?);
    for e in ar.entries()? {
        let mut e = e?;
        if e.header().entry_type().is_file() {
            let name = norm(&e.path()?.to_string_lossy());
            let mut data = Vec::new();
            e.read_to_end(&mut data)?;
            members.insert(name, data);
        }
    }
    let manifest: Value = serde_json::from_slice(
        members
            .get("manifest.json")
            .context("no manifest.json in the archive")?,
    )?;
    let m = &manifest[0];
    let member = |name: &Value| -> anyhow::Result<Vec<u8>> {
        let n = norm(name.as_str().context("a member name")?);
        members
            .get(&n)
            .cloned()
            .with_context(|| format!("{n} is missing from {}", path.display()))
    };
    let config: Value = serde_json::from_slice(&member(&m["Config"])?)?;
    let mut files: BTreeMap<String, Entry> = BTreeMap::new();
    for layer in m["Layers"].as_array().context("Layers")? {
        let data = decompress(member(layer)?)?;
        let mut ar = tar::Archive::new(data.as_slice());
        let mut whiteouts = Vec::new();
        let mut added = Vec::new();
        for e in ar.entries()? {
            let mut e = e?;
            let p = norm(&e.path()?.to_string_lossy());
            let (dir, base) = match p.rsplit_once('/') {
                Some((d, b)) => (d.to_owned(), b.to_owned()),
                None => (String::new(), p.clone()),
            };
            if base == ".wh..wh..opq" {
                whiteouts.push((dir, true));
                continue;
            }
            if let Some(gone) = base.strip_prefix(".wh.") {
                let gone = if dir.is_empty() {
                    gone.to_owned()
                } else {
                    format!("{dir}/{gone}")
                };
                whiteouts.push((gone, false));
                continue;
            }
            if p.is_empty() {
                continue;
            }
            let h = e.header().clone();
            let kind = h.entry_type();
            let mut data = Vec::new();
            e.read_to_end(&mut data)?;
            let link = e
                .link_name()?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (kind, link) = if kind.is_dir() {
                ("dir", String::new())
            } else if kind.is_symlink() {
                ("symlink", link)
            } else if kind.is_hard_link() {
                ("hardlink", norm(&link))
            } else if kind.is_file() {
                ("file", String::new())
            } else {
                ("special", String::new())
            };
            added.push((
                p,
                Entry {
                    kind: kind.to_owned(),
                    mode: h.mode()? & 0o7777,
                    uid: h.uid()?,
                    gid: h.gid()?,
                    size: data.len() as u64,
                    digest: if kind == "file" {
                        Digest::of(&data).short().to_string()
                    } else {
                        String::new()
                    },
                    link,
                    mtime: h.mtime()? as i64,
                },
            ));
        }
        for (p, opaque) in whiteouts {
            let prefix = format!("{p}/");
            files.retain(|k, _| !k.starts_with(&prefix) && (opaque || *k != p));
        }
        for (p, e) in added {
            if e.kind != "dir" {
                let prefix = format!("{p}/");
                files.retain(|k, _| !k.starts_with(&prefix));
            }
            files.insert(p, e);
        }
    }
    // A hard link is compared by what it points at and by its target's content.
    let snapshot = files.clone();
    for e in files.values_mut() {
        if e.kind == "hardlink"
            && let Some(t) = snapshot.get(&e.link)
        {
            e.size = t.size;
            e.digest = t.digest.clone();
        }
    }
    Ok(Image {
        config: config["config"].clone(),
        files,
    })
}

/// The mtimes of the files of a `kiln save` archive's image, flattened, by path (no leading
/// `/`): what tests/it/timestamps.rs checks.
pub fn read_mtimes(path: &Path) -> anyhow::Result<BTreeMap<String, i64>> {
    Ok(read_archive(path)?
        .files
        .into_iter()
        .map(|(p, e)| (p, e.mtime))
        .collect())
}

/// The config fields compared; `null`, absent and empty are the same.
const CONFIG_FIELDS: &[&str] = &[
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Labels",
    "Volumes",
    "StopSignal",
    "Healthcheck",
    "OnBuild",
    "Shell",
];

fn config_field(c: &Value, k: &str) -> String {
    match &c[k] {
        Value::Null => String::from("-"),
        Value::String(s) if s.is_empty() => String::from("-"),
        Value::Array(a) if a.is_empty() => String::from("-"),
        Value::Object(o) if o.is_empty() => String::from("-"),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Every difference between `kiln` and `docker`, worded as the cases list them.
fn compare(kiln: &Image, docker: &Image) -> Vec<String> {
    let mut out = Vec::new();
    for k in CONFIG_FIELDS {
        let (a, b) = (
            config_field(&kiln.config, k),
            config_field(&docker.config, k),
        );
        if a != b {
            out.push(format!("config.{k} kiln={a} docker={b}"));
        }
    }
    let paths: std::collections::BTreeSet<&String> =
        kiln.files.keys().chain(docker.files.keys()).collect();
    for p in paths {
        let (a, b) = match (kiln.files.get(p), docker.files.get(p)) {
            (Some(a), Some(b)) => (a, b),
            (Some(a), None) => {
                out.push(format!("/{p} exists kiln={} docker=-", a.kind));
                continue;
            }
            (None, Some(b)) => {
                out.push(format!("/{p} exists kiln=- docker={}", b.kind));
                continue;
            }
            (None, None) => continue,
        };
        let mut field = |name: &str, x: String, y: String| {
            if x != y {
                out.push(format!("/{p} {name} kiln={x} docker={y}"));
            }
        };
        field("kind", a.kind.clone(), b.kind.clone());
        field("mode", format!("{:o}", a.mode), format!("{:o}", b.mode));
        field(
            "owner",
            format!("{}:{}", a.uid, a.gid),
            format!("{}:{}", b.uid, b.gid),
        );
        field("size", a.size.to_string(), b.size.to_string());
        field("digest", a.digest.clone(), b.digest.clone());
        field("link", a.link.clone(), b.link.clone());
        // The one rule for all cases: BuildKit's wall-clock stamp is kiln's epoch 0. BuildKit
        // caches its results (and the context it was sent) across builds, so its stamp is the
        // time of whichever build first made the file: any date after [`CTX_MTIME`] (the
        // newest date the cases set on purpose) is one.
        let stamped = b.mtime > CTX_MTIME;
        if !(stamped && a.mtime == 0) && a.mtime != b.mtime {
            let docker_mtime = if stamped {
                String::from("now")
            } else {
                b.mtime.to_string()
            };
            out.push(format!("/{p} mtime kiln={} docker={docker_mtime}", a.mtime));
        }
    }
    out
}

/// The archive that a context file `@tar` holds (gzipped when its name ends in `.gz`): `pkg/`,
/// `pkg/data` (dated 2019-01-01, owned by 11:12, mode 0640) and `pkg/link` -> `data`.
fn sample_tar() -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(11);
        h.set_gid(12);
        h.set_mtime(1_546_300_800);
        h
    };
    b.append_data(
        &mut header(tar::EntryType::Directory, 0o755, 0),
        "pkg/",
        std::io::empty(),
    )?;
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o640, 5),
        "pkg/data",
        &b"data\n"[..],
    )?;
    b.append_link(
        &mut header(tar::EntryType::Symlink, 0o777, 0),
        "pkg/link",
        "data",
    )?;
    Ok(b.into_inner()?)
}

/// Writes the group's context, files dated [`CTX_MTIME`] and directories [`CTX_DIR_MTIME`].
fn write_context(t: &TestDir, g: &Group) -> anyhow::Result<()> {
    std::fs::write(
        t.ctx.join("Dockerfile"),
        g.dockerfile
            .replace("FROM base", &format!("FROM {BASE}"))
            .replace("--from=base ", &format!("--from={BASE} ")),
    )?;
    for (p, content) in g.files {
        let abs = t.ctx.join(p);
        if p.ends_with('/') {
            std::fs::create_dir_all(&abs)?;
            continue;
        }
        std::fs::create_dir_all(abs.parent().context("a parent")?)?;
        if let Some(target) = content.strip_prefix("=>") {
            std::fs::hard_link(t.ctx.join(target), &abs)?;
        } else if let Some(target) = content.strip_prefix("->") {
            std::os::unix::fs::symlink(target, &abs)?;
        } else if *content == "@tar" {
            let tar = sample_tar()?;
            if p.ends_with(".gz") {
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                std::io::Write::write_all(&mut gz, &tar)?;
                std::fs::write(&abs, gz.finish()?)?;
            } else {
                std::fs::write(&abs, tar)?;
            }
        } else {
            std::fs::write(&abs, content)?;
        }
    }
    let out = Command::new("find")
        .arg(&t.ctx)
        .args([
            "-exec",
            "touch",
            "-h",
            "-d",
            &format!("@{CTX_MTIME}"),
            "{}",
            "+",
        ])
        .output()?;
    ensure!(out.status.success(), "touch: {}", text(&out));
    let out = Command::new("find")
        .arg(&t.ctx)
        .args(["-type", "d", "-exec", "touch", "-d"])
        .arg(format!("@{CTX_DIR_MTIME}"))
        .args(["{}", "+"])
        .output()?;
    ensure!(out.status.success(), "touch: {}", text(&out));
    Ok(())
}

/// Builds every case of `g` with both builders and checks the differences are exactly the
/// ones each case lists; reports every case that fails, not only the first.
pub fn run_group(g: &Group) -> anyhow::Result<()> {
    if !privileged(TOOLS) {
        return Ok(());
    }
    let base = match docker_base() {
        Ok(d) => d.path().join("base.tar"),
        Err(e) => bail!("importing the base into docker failed: {e}"),
    };
    let t = TestDir::new();
    t.ok(&["import", base.to_str().context("utf-8")?, BASE])?;
    write_context(&t, g)?;
    let ctx = t.ctx.to_str().context("utf-8")?;
    let mut failures = Vec::new();
    for case in g.cases {
        let tag = format!(
            "kiln-differential-{}-{}:{}",
            g.name,
            case.stage,
            std::process::id()
        );
        let kiln_tar = t.dir.path().join(format!("{}-kiln.tar", case.stage));
        let docker_tar = t.dir.path().join(format!("{}-docker.tar", case.stage));
        let mut args = vec!["build", "--target", case.stage, "-t", &tag];
        args.extend_from_slice(g.args);
        args.push(ctx);
        let kiln_build = t.kiln(&args);
        let mut dargs = vec!["build", "-q", "--no-cache"];
        dargs.extend_from_slice(&args[1..]);
        let built = docker(&dargs);
        if built.is_ok() {
            docker(&["save", "-o", docker_tar.to_str().context("utf-8")?, &tag])?;
        }
        let _ = docker(&["rmi", "-f", &tag]);
        let error_line = |err: &str| {
            err.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("(no output)")
                .to_owned()
        };
        let kiln_error = || {
            let err = String::from_utf8_lossy(&kiln_build.stderr).into_owned();
            err.lines()
                .find(|l| l.starts_with("error: "))
                .unwrap_or("error: (no error line)")
                .to_owned()
        };
        let mut got = match (kiln_build.status.success(), built) {
            // A build both refuse: the case names both errors.
            (false, Err(e)) => vec![format!(
                "both fail (kiln {}; docker {})",
                kiln_error(),
                error_line(&format!("{e:#}"))
            )],
            (true, Err(e)) => return Err(e),
            // A build kiln refuses on purpose: the case names kiln's error.
            (false, Ok(_)) => vec![format!("kiln fails ({}), docker builds", kiln_error())],
            (true, Ok(_)) => {
                t.ok(&["save", "-o", kiln_tar.to_str().context("utf-8")?, &tag])?;
                let kiln = read_archive(&kiln_tar)?;
                let dock = read_archive(&docker_tar)?;
                // Every case's image has files: empty trees would compare equal and prove nothing.
                ensure!(
                    !kiln.files.is_empty() && !dock.files.is_empty(),
                    "{}/{}: an image read back empty",
                    g.name,
                    case.stage
                );
                compare(&kiln, &dock)
            }
        };
        got.sort();
        let mut want: Vec<String> = case.expect.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        if got != want {
            failures.push(format!(
                "{}/{}: differences\n  found:    &{got:?}\n  expected: &{want:?}",
                g.name, case.stage
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// Parses a stored BuildKit v0.24 result (see `cases_v024`): one line per file, `PATH KIND
/// MODE UID:GID SIZE DIGEST LINK MTIME` (`-` for none, `now` for the build's wall clock),
/// then `config JSON`.
fn parse_oracle(text: &str) -> anyhow::Result<Image> {
    let mut files = BTreeMap::new();
    let mut config = Value::Null;
    for line in text.lines() {
        if let Some(json) = line.strip_prefix("config ") {
            config = serde_json::from_str(json)?;
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        ensure!(f.len() == 8, "a stored result line: {line:?}");
        let (uid, gid) = f[3].split_once(':').context("UID:GID")?;
        let dash = |s: &str| {
            if s == "-" {
                String::new()
            } else {
                s.to_owned()
            }
        };
        files.insert(
            norm(f[0]),
            Entry {
                kind: f[1].to_owned(),
                mode: u32::from_str_radix(f[2], 8)?,
                uid: uid.parse()?,
                gid: gid.parse()?,
                size: f[4].parse()?,
                digest: dash(f[5]),
                link: dash(f[6]),
                // Any date after the context's is one BuildKit stamped with its clock.
                mtime: if f[7] == "now" {
                    i64::MAX
                } else {
                    f[7].parse()?
                },
            },
        );
    }
    Ok(Image { config, files })
}

/// Builds every case of `g` with kiln only and compares each image with `oracle`'s stored
/// BuildKit v0.24 result for its stage (`error: ...` for a build BuildKit refuses), as
/// [`run_group`] does with a live docker; `/bin` (the base's busybox links) is left out on
/// both sides, as the stored results leave it out.
pub fn run_oracle_group(g: &Group, oracle: &[(&str, &str)]) -> anyhow::Result<()> {
    if !privileged(&[]) {
        return Ok(());
    }
    let t = TestDir::new();
    let base = t.dir.path().join("base.tar");
    std::fs::write(&base, busybox_tar()?)?;
    t.ok(&["import", base.to_str().context("utf-8")?, BASE])?;
    write_context(&t, g)?;
    let ctx = t.ctx.to_str().context("utf-8")?;
    let mut failures = Vec::new();
    for case in g.cases {
        let stored = oracle
            .iter()
            .find(|(s, _)| *s == case.stage)
            .with_context(|| format!("no stored result for {}", case.stage))?
            .1;
        let tag = format!("kiln-v024-{}-{}:1", g.name, case.stage);
        let mut args = vec!["build", "--target", case.stage, "-t", &tag];
        args.extend_from_slice(g.args);
        args.push(ctx);
        let built = t.kiln(&args);
        let kiln_error = || {
            String::from_utf8_lossy(&built.stderr)
                .lines()
                .find(|l| l.starts_with("error: "))
                .unwrap_or("error: (no error line)")
                .to_owned()
        };
        let mut got = match (built.status.success(), stored.strip_prefix("error: ")) {
            (false, Some(e)) => vec![format!("both fail (kiln {}; buildkit {e})", kiln_error())],
            (true, Some(e)) => vec![format!("kiln builds, buildkit fails ({e})")],
            (false, None) => vec![format!("kiln fails ({}), buildkit builds", kiln_error())],
            (true, None) => {
                let tar = t.dir.path().join(format!("{}.tar", case.stage));
                t.ok(&["save", "-o", tar.to_str().context("utf-8")?, &tag])?;
                let mut kiln = read_archive(&tar)?;
                kiln.files
                    .retain(|p, _| p != "bin" && !p.starts_with("bin/"));
                compare(&kiln, &parse_oracle(stored)?)
            }
        };
        got.sort();
        let mut want: Vec<String> = case.expect.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        if got != want {
            failures.push(format!(
                "{}/{}: differences from BuildKit v0.24\n  found:    &{got:?}\n  expected: &{want:?}",
                g.name, case.stage
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn compare_names_every_field_that_differs() {
    let entry = |kind: &str| Entry {
        kind: kind.to_owned(),
        mode: 0o644,
        uid: 0,
        gid: 0,
        size: 3,
        digest: String::from("abc"),
        link: String::new(),
        mtime: CTX_MTIME,
    };
    let image = |files: Vec<(&str, Entry)>, user: &str| Image {
        config: serde_json::json!({ "User": user, "Env": null }),
        files: files.into_iter().map(|(p, e)| (p.to_owned(), e)).collect(),
    };
    let mut changed = entry("file");
    changed.mode = 0o600;
    changed.uid = 1;
    changed.size = 4;
    changed.digest = String::from("def");
    changed.mtime = 5;
    let mut stamped = entry("dir");
    stamped.mtime = CTX_MTIME + 100;
    let mut epoch = entry("dir");
    epoch.mtime = 0;
    let kiln = image(
        vec![("f", changed), ("only-kiln", entry("file")), ("d", epoch)],
        "1",
    );
    let docker = image(
        vec![
            ("f", entry("file")),
            ("l", entry("symlink")),
            ("d", stamped),
        ],
        "",
    );
    let mut got = compare(&kiln, &docker);
    got.sort();
    assert_eq!(
        got,
        [
            "/f digest kiln=def docker=abc",
            "/f mode kiln=600 docker=644",
            "/f mtime kiln=5 docker=1609459200",
            "/f owner kiln=1:0 docker=0:0",
            "/f size kiln=4 docker=3",
            "/l exists kiln=- docker=symlink",
            "/only-kiln exists kiln=file docker=-",
            "config.User kiln=1 docker=-",
        ]
    );
}

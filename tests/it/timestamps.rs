//! Image dates (issue 13, README "Image dates"): `SOURCE_DATE_EPOCH` (build arg or
//! environment) dates the image, its new history entries and what its steps make; without it a
//! git checkout's HEAD commit time does; otherwise the first build's clock, kept in a cache
//! record, so a fully cached rebuild has the same digest. `kiln inspect` says which.
//!
//! The SOURCE_DATE_EPOCH case is also compared with BuildKit v0.24.0 (dockerfile frontend
//! 1.18, built from its vendored source with Debian's golang-1.23, kept outside the project):
//! docker's BuildKit 0.8 has no SOURCE_DATE_EPOCH, so v0.24's results are stored below as
//! data. They were produced with `buildctl build --frontend dockerfile.v0 --opt
//! build-arg:SOURCE_DATE_EPOCH=1700000000 --output type=oci,rewrite-timestamp=true` on
//! [`SDE_DOCKERFILE`] over the differential suite's busybox base.

use crate::harness::{TestDir, busybox_dir, text};
use crate::sources::git;
use anyhow::{Context as _, ensure};
use serde_json::Value;
use std::path::Path;

/// The Dockerfile of the SOURCE_DATE_EPOCH cases (a RUN that dates one file on purpose, a
/// COPY, a metadata step).
const SDE_DOCKERFILE: &str =
    "FROM busybox\nRUN echo hi > /x && touch -t 202001020000.00 /old\nCOPY a.txt /\nENV A=1\n";

/// 1700000000 as RFC 3339.
const SDE_CREATED: &str = "2023-11-14T22:13:20Z";

/// What BuildKit v0.24.0 made of [`SDE_DOCKERFILE`] with SOURCE_DATE_EPOCH=1700000000 and
/// rewrite-timestamp=true: `created`, every new history entry's date, and the mtimes of the
/// files the steps made (BuildKit's `/dev`, `/proc`, `/sys` mount points left out: kiln's RUN
/// layers do not hold them). Without rewrite-timestamp BuildKit leaves the layers' dates at
/// the wall clock; kiln always clamps (README).
const V024_SDE: (&str, &[(&str, i64)]) = (
    SDE_CREATED,
    &[
        ("a.txt", 1_700_000_000),
        ("old", 1_577_923_200),
        ("x", 1_700_000_000),
    ],
);

fn inspect(t: &TestDir, name: &str) -> anyhow::Result<Value> {
    let out = t.ok(&["inspect", name])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v[0].clone())
}

/// `kiln build -t TAG CTX` with `env` set; fails with its output unless it succeeds.
fn build_with(
    t: &TestDir,
    ctx: &Path,
    tag: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Value> {
    let ctx = ctx.to_str().context("utf-8")?;
    let mut args = vec!["build", "-q", "-t", tag];
    args.extend_from_slice(extra);
    args.push(ctx);
    let mut c = t.cmd(&args);
    c.env_remove("SOURCE_DATE_EPOCH");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output()?;
    ensure!(out.status.success(), "kiln {args:?}: {}", text(&out));
    inspect(t, tag)
}

/// The dates of the history entries after the base image's (busybox has one).
fn new_history_dates(image: &Value) -> Vec<String> {
    image["History"]
        .as_array()
        .map(|h| {
            h.iter()
                .skip(1)
                .map(|e| e["created"].as_str().unwrap_or("-").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// File mtimes of `tag`'s image, flattened, by path.
fn mtimes(t: &TestDir, tag: &str) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
    let tar = t.dir.path().join(format!("{}.tar", tag.replace(':', "-")));
    t.ok(&["save", "-o", tar.to_str().context("utf-8")?, tag])?;
    crate::differential::read_mtimes(&tar)
}

/// Seconds since 1970 of `2021-01-01T00:00:00Z` (second precision, UTC).
fn parse_rfc3339(t: &str) -> Option<i64> {
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Civil date to days (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86400 + hh * 3600 + mm * 60 + ss)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[test]
fn source_date_epoch_gives_the_same_digest_on_two_roots_at_two_times() -> anyhow::Result<()> {
    let Some(a) = busybox_dir(&[])? else {
        return Ok(());
    };
    let b = TestDir::new();
    b.import_busybox()?;
    for t in [&a, &b] {
        t.write("Dockerfile", SDE_DOCKERFILE);
        t.write("a.txt", "alpha\n");
    }
    // The environment on one machine, the build arg on the other, a second apart.
    let first = build_with(
        &a,
        &a.ctx,
        "sde:1",
        &[],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    )?;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    b.write("a.txt", "alpha\n");
    let second = build_with(
        &b,
        &b.ctx,
        "sde:1",
        &["--build-arg", "SOURCE_DATE_EPOCH=1700000000"],
        &[],
    )?;
    ensure!(
        first["Id"] == second["Id"],
        "{} != {}",
        first["Id"],
        second["Id"]
    );
    ensure!(first["Created"] == SDE_CREATED, "{}", first["Created"]);
    let from = |v: &Value| v["CreatedFrom"].as_str().unwrap_or_default().to_owned();
    ensure!(
        from(&first) == "SOURCE_DATE_EPOCH=1700000000 (environment)",
        "{}",
        from(&first)
    );
    ensure!(
        from(&second) == "SOURCE_DATE_EPOCH=1700000000 (build arg)",
        "{}",
        from(&second)
    );

    // As BuildKit v0.24 (stored data, see the module doc): the same `created`, every new
    // history entry at the epoch, and the same file dates as its rewrite-timestamp.
    let (created, files) = V024_SDE;
    ensure!(first["Created"] == created, "{}", first["Created"]);
    let dates = new_history_dates(&first);
    ensure!(
        dates.len() == 3 && dates.iter().all(|d| d == created),
        "{dates:?}"
    );
    let got = mtimes(&a, "sde:1")?;
    for (p, want) in files {
        ensure!(
            got.get(*p) == Some(want),
            "/{p}: kiln {:?}, BuildKit v0.24 {want}",
            got.get(*p)
        );
    }

    // Another epoch is another image: the epoch is part of the steps' keys.
    let other = build_with(
        &a,
        &a.ctx,
        "sde:2",
        &[],
        &[("SOURCE_DATE_EPOCH", "1700000001")],
    )?;
    ensure!(
        other["Id"] != first["Id"],
        "a new epoch gave the same image"
    );
    ensure!(mtimes(&a, "sde:2")?.get("x") == Some(&1_700_000_001));
    Ok(())
}

#[test]
fn a_git_checkout_is_dated_by_its_head_and_two_clones_agree() -> anyhow::Result<()> {
    let Some(a) = busybox_dir(&["git"])? else {
        return Ok(());
    };
    let b = TestDir::new();
    b.import_busybox()?;
    a.write(
        "Dockerfile",
        "FROM busybox\nCOPY src/ /src/\nRUN echo built > /built\nCMD [\"cat\", \"/built\"]\n",
    );
    a.write("src/main.c", "int main(void) { return 0; }\n");
    git(&a.ctx, &["init", "-q"])?;
    git(&a.ctx, &["add", "."])?;
    git(&a.ctx, &["commit", "-q", "-m", "one"])?;
    let head = git(&a.ctx, &["rev-parse", "HEAD"])?;
    // The second machine: a clone, checked out a second later (newer file dates).
    std::fs::remove_dir(&b.ctx)?;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    git(
        a.dir.path(),
        &[
            "clone",
            "-q",
            a.ctx.to_str().context("utf-8")?,
            b.ctx.to_str().context("utf-8")?,
        ],
    )?;
    let first = build_with(&a, &a.ctx, "git:1", &[], &[])?;
    let second = build_with(&b, &b.ctx, "git:1", &[], &[])?;
    ensure!(
        first["Id"] == second["Id"],
        "{} != {}",
        first["Id"],
        second["Id"]
    );
    ensure!(
        first["Created"] == "2020-01-02T03:04:05Z",
        "{}",
        first["Created"]
    );
    ensure!(
        new_history_dates(&first)
            .iter()
            .all(|d| d == "2020-01-02T03:04:05Z"),
        "{:?}",
        new_history_dates(&first)
    );
    let from = first["CreatedFrom"].as_str().unwrap_or_default();
    ensure!(from.contains(&head), "{from}");
    // What the steps made carries the commit's time, the copied files included.
    let got = mtimes(&a, "git:1")?;
    ensure!(
        got.get("built") == Some(&1_577_934_245),
        "{:?}",
        got.get("built")
    );
    ensure!(
        got.get("src/main.c") == Some(&1_577_934_245),
        "{:?}",
        got.get("src/main.c")
    );
    Ok(())
}

#[test]
fn a_plain_directory_is_dated_now_and_its_cached_rebuild_keeps_the_digest() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox\nCOPY a.txt /\nRUN echo x > /x\nLABEL l=1\n",
    );
    t.write("a.txt", "alpha\n");
    let before = now();
    let first = build_with(&t, &t.ctx, "plain:1", &[], &[])?;
    let created = first["Created"].as_str().context("Created")?.to_owned();
    let secs = parse_rfc3339(&created).context("an RFC 3339 date")?;
    ensure!(
        (before - 1..=now() + 1).contains(&secs),
        "created {created} is not the build's time"
    );
    ensure!(
        new_history_dates(&first).iter().all(|d| *d == created),
        "{:?}",
        new_history_dates(&first)
    );
    ensure!(
        first["CreatedFrom"]
            .as_str()
            .is_some_and(|f| f.contains("first build")),
        "{}",
        first["CreatedFrom"]
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = build_with(&t, &t.ctx, "plain:2", &[], &[])?;
    ensure!(
        again["Id"] == first["Id"],
        "{} != {}",
        again["Id"],
        first["Id"]
    );
    // A changed step is a new image with a new date.
    t.write("a.txt", "beta\n");
    let changed = build_with(&t, &t.ctx, "plain:3", &[], &[])?;
    ensure!(changed["Id"] != first["Id"]);
    ensure!(
        changed["Created"].as_str() > Some(created.as_str()),
        "{}",
        changed["Created"]
    );
    Ok(())
}

#[test]
fn an_empty_source_date_epoch_build_arg_is_none_and_hides_the_environments() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write("Dockerfile", "FROM busybox\nRUN echo x > /x\n");
    let before = now();
    let image = build_with(
        &t,
        &t.ctx,
        "empty:1",
        &["--build-arg", "SOURCE_DATE_EPOCH="],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    )?;
    let created = image["Created"].as_str().context("Created")?;
    ensure!(
        parse_rfc3339(created).is_some_and(|s| s >= before - 1),
        "created {created}: not the build's time"
    );
    Ok(())
}

#[test]
fn an_invalid_source_date_epoch_is_refused() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write("Dockerfile", "FROM busybox\nRUN true\n");
    let ctx = t.ctx.to_str().context("utf-8")?;
    let out = t
        .cmd(&["build", "--build-arg", "SOURCE_DATE_EPOCH=yesterday", ctx])
        .output()?;
    ensure!(!out.status.success(), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("invalid SOURCE_DATE_EPOCH (build arg)"),
        "{}",
        text(&out)
    );
    Ok(())
}

fn docker_ready() -> bool {
    let answered = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !answered && std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        panic!("docker reference test required but `docker version` gets no answer from dockerd");
    }
    if !answered {
        eprintln!("skipped: dockerd is not answering");
    }
    answered
}

/// Removes a docker image when the test ends.
struct DockerImage(String);

impl Drop for DockerImage {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", &self.0])
            .output();
    }
}

/// `kiln import` dates its image as `docker import` does: the time of the import, image and
/// history entry alike, not 1970. `SOURCE_DATE_EPOCH` in the environment wins in kiln (as in
/// `kiln build`); dockerd cannot see its client's environment, so docker's date stays the
/// clock (README "Image dates").
#[test]
fn kiln_import_is_dated_at_the_import_as_docker_import() -> anyhow::Result<()> {
    if !crate::harness::privileged(&[]) || !docker_ready() {
        return Ok(());
    }
    let t = TestDir::new();
    let tar = t.dir.path().join("rootfs.tar");
    std::fs::write(&tar, crate::harness::busybox_tar()?)?;
    let tar = tar.to_str().context("utf-8")?;
    let image = format!("kiln-it-import-date-{}:1", std::process::id());
    let _reap = DockerImage(image.clone());
    let created = |out: &std::process::Output| -> anyhow::Result<i64> {
        ensure!(out.status.success(), "{}", text(out));
        let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        parse_rfc3339(&s).with_context(|| format!("created {s:?}"))
    };
    let import = |env: Option<&str>| -> anyhow::Result<(i64, i64)> {
        let mut d = std::process::Command::new("docker");
        d.args(["import", tar, &image]);
        let mut k = t.cmd(&["import", tar, &image]);
        k.env_remove("SOURCE_DATE_EPOCH");
        if let Some(v) = env {
            d.env("SOURCE_DATE_EPOCH", v);
            k.env("SOURCE_DATE_EPOCH", v);
        }
        let out = d.output()?;
        ensure!(out.status.success(), "docker import: {}", text(&out));
        let out = k.output()?;
        ensure!(out.status.success(), "kiln import: {}", text(&out));
        let f = "{{.Created}}";
        let docker = created(
            &std::process::Command::new("docker")
                .args(["image", "inspect", "-f", f, &image])
                .output()?,
        )?;
        let kiln = created(&t.kiln(&["image", "inspect", "-f", f, &image]))?;
        // The one history entry carries the same date as the image, as docker's does.
        let hist = t.ok(&["image", "inspect", "-f", "{{json .History}}", &image])?;
        let hist: Value = serde_json::from_slice(&hist.stdout)?;
        let dates: Vec<Option<i64>> = hist
            .as_array()
            .context("History")?
            .iter()
            .map(|h| h["created"].as_str().and_then(parse_rfc3339))
            .collect();
        ensure!(dates == [Some(kiln)], "history {hist}, created {kiln}");
        Ok((docker, kiln))
    };

    let before = now();
    let (docker, kiln) = import(None)?;
    let after = now();
    for (who, at) in [("docker", docker), ("kiln", kiln)] {
        ensure!(
            (before - 1..=after + 1).contains(&at),
            "{who} import dated {at}, not between {before} and {after}"
        );
    }

    let (docker, kiln) = import(Some("1700000000"))?;
    ensure!(
        kiln == 1_700_000_000,
        "kiln import with SOURCE_DATE_EPOCH: {kiln}"
    );
    ensure!(
        docker >= before - 1,
        "docker import honoured SOURCE_DATE_EPOCH ({docker}): README says it does not"
    );
    Ok(())
}

/// Under `SOURCE_DATE_EPOCH`, kiln clamps the mtimes of COPY'd files at the epoch (issue 13
/// item 5; BuildKit only with `rewrite-timestamp=true`, README "Image dates"): a file newer
/// than the epoch gets the epoch, an older one keeps its own date, in the layer.
#[test]
fn copied_files_are_clamped_at_source_date_epoch_and_older_ones_kept() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write("Dockerfile", "FROM busybox\nCOPY new.txt old.txt /c/\n");
    t.write("new.txt", "new\n");
    t.write("old.txt", "old\n");
    // 2001-09-09T01:46:40Z, before the epoch.
    let old = std::fs::File::options()
        .write(true)
        .open(t.ctx.join("old.txt"))?;
    old.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000))?;
    drop(old);
    build_with(
        &t,
        &t.ctx,
        "clamp:1",
        &[],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    )?;
    let got = mtimes(&t, "clamp:1")?;
    ensure!(got.get("c/new.txt") == Some(&1_700_000_000), "{got:?}");
    ensure!(got.get("c/old.txt") == Some(&1_000_000_000), "{got:?}");
    // The context's own file is untouched.
    let m = std::fs::metadata(t.ctx.join("new.txt"))?.modified()?;
    ensure!(
        m.duration_since(std::time::UNIX_EPOCH)?.as_secs() > 1_700_000_000,
        "the context's new.txt was re-dated"
    );
    Ok(())
}

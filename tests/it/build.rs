//! Builds that succeed: parallel stages, the cache, determinism, failures, concurrency.

use crate::harness::{busybox_dir, cached, executed_runs, kinds, text};
use anyhow::{Context as _, ensure};

const MULTI_STAGE: &str = r#"FROM busybox AS a
RUN sleep 1 && echo from-a > /a.txt

FROM busybox AS b
RUN sleep 1 && echo from-b > /b.txt

FROM busybox AS unused
RUN echo never-built > /unused.txt

FROM busybox
COPY --from=a /a.txt /out/a.txt
COPY --from=b /b.txt /out/b.txt
CMD ["cat", "/out/a.txt", "/out/b.txt"]
"#;

/// (start, end) of the vertex whose name contains `needle`.
fn interval(events: &[serde_json::Value], needle: &str) -> anyhow::Result<(u64, u64)> {
    let k = kinds(events, needle);
    let start = k
        .iter()
        .find(|(kind, _)| *kind == "started")
        .map(|x| x.1)
        .context(format!("{needle} started"))?;
    let end = k
        .iter()
        .find(|(kind, _)| *kind == "done")
        .map(|x| x.1)
        .context(format!("{needle} done"))?;
    Ok((start, end))
}

#[test]
fn parallel_stages_overlap_unused_stage_never_runs_and_image_runs() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write("Dockerfile", MULTI_STAGE);
    let events = t.build("multi:1", &["--jobs", "2"])?;
    let (a0, a1) = interval(&events, "from-a")?;
    let (b0, b1) = interval(&events, "from-b")?;
    ensure!(
        a0 < b1 && b0 < a1,
        "stages a [{a0},{a1}] and b [{b0},{b1}] did not overlap"
    );
    ensure!(
        kinds(&events, "never-built").is_empty(),
        "the unused stage ran: {events:#?}"
    );
    let out = t.ok(&["run", "--rm", "multi:1"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "from-a\nfrom-b\n",
        "{}",
        text(&out)
    );
    // Command override and exit status pass through.
    let out = t.kiln(&["run", "--rm", "multi:1", "sh", "-c", "echo over; exit 7"]);
    ensure!(
        out.status.code() == Some(7) && String::from_utf8_lossy(&out.stdout) == "over\n",
        "{}",
        text(&out)
    );
    Ok(())
}

const EDIT: &str = "FROM busybox
RUN echo base > /base
COPY a.txt /a.txt
RUN cat /a.txt /base > /both
COPY b.txt /b.txt
";

#[test]
fn noop_rebuild_runs_nothing_and_an_edit_reruns_only_steps_after_its_copy() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write("Dockerfile", EDIT);
    t.write("a.txt", "one\n");
    t.write("b.txt", "bee\n");
    let first = t.build("edit:1", &[])?;
    ensure!(executed_runs(&first).len() == 2, "{first:#?}");

    let again = t.build("edit:1", &[])?;
    ensure!(
        executed_runs(&again).is_empty(),
        "a no-op rebuild ran {:?}",
        executed_runs(&again)
    );
    ensure!(
        cached(&again).len() == 4,
        "all four steps are CACHED: {:?}",
        cached(&again)
    );

    t.write("a.txt", "two\n");
    let edited = t.build("edit:1", &[])?;
    let c = cached(&edited);
    ensure!(
        c.len() == 1 && c[0].contains("RUN echo base"),
        "only the step before the COPY is cached: {c:?}"
    );
    ensure!(
        executed_runs(&edited).len() == 1,
        "{:?}",
        executed_runs(&edited)
    );
    let out = t.ok(&["run", "--rm", "edit:1", "cat", "/both"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "two\nbase\n",
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn two_builds_of_the_same_input_give_byte_identical_manifests() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write("Dockerfile", "FROM busybox\nRUN mkdir -p /data && echo x > /data/x\nWORKDIR /app\nCOPY src/ ./src/\nENV A=1\nCMD [\"ls\"]\n");
    t.write("src/main.c", "int main(void) { return 0; }\n");
    t.write("src/lib/util.h", "#define X 1\n");
    t.build("det:1", &[])?;
    let manifest = |name: &str| -> anyhow::Result<String> {
        let out = t.ok(&["inspect", name])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v[0]["Id"].as_str().context("Id")?.to_owned())
    };
    let first = manifest("det:1")?;
    t.build("det:2", &["--no-cache"])?;
    let second = manifest("det:2")?;
    // Same digest means the same manifest bytes (and so config and layers).
    ensure!(first == second, "{first} != {second}");
    Ok(())
}

#[test]
fn failing_run_names_its_line_exits_nonzero_and_the_store_stays_usable() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox\nRUN echo fine\nRUN echo going down; exit 3\n",
    );
    let ctx = t.ctx.to_str().context("utf-8")?;
    let out = t.kiln(&["build", "--progress", "plain", "-t", "bad:1", ctx]);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "{}", text(&out));
    ensure!(
        err.contains("Dockerfile:3: RUN echo going down; exit 3: exit code 3"),
        "{err}"
    );
    ensure!(
        err.contains("going down"),
        "the output tail is shown: {err}"
    );
    ensure!(
        !t.kiln(&["inspect", "bad:1"]).status.success(),
        "a failed build tags nothing"
    );
    // Still usable: fix it, and the step before the failure is cached.
    t.write(
        "Dockerfile",
        "FROM busybox\nRUN echo fine\nRUN echo fixed\n",
    );
    let events = t.build("bad:1", &[])?;
    ensure!(
        cached(&events).iter().any(|n| n.contains("echo fine")),
        "{events:#?}"
    );
    t.ok(&["images"])?;
    Ok(())
}

#[test]
fn two_concurrent_builds_on_one_root_both_succeed() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let ctx2 = t.dir.path().join("ctx2");
    std::fs::create_dir(&ctx2)?;
    t.write(
        "Dockerfile",
        "FROM busybox\nRUN echo one > /one\nRUN echo shared > /s\n",
    );
    std::fs::write(
        ctx2.join("Dockerfile"),
        "FROM busybox\nRUN echo two > /two\nRUN echo shared > /s\n",
    )?;
    let spawn = |ctx: &std::path::Path, tag: &str| {
        t.cmd(&[
            "build",
            "--progress",
            "plain",
            "-t",
            tag,
            ctx.to_str().expect("utf-8"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    };
    let a = spawn(&t.ctx, "conc:a")?;
    let b = spawn(&ctx2, "conc:b")?;
    let (a, b) = (a.wait_with_output()?, b.wait_with_output()?);
    ensure!(a.status.success(), "{}", text(&a));
    ensure!(b.status.success(), "{}", text(&b));
    let out = t.ok(&["run", "--rm", "conc:a", "cat", "/one", "/s"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "one\nshared\n",
        "{}",
        text(&out)
    );
    let out = t.ok(&["run", "--rm", "conc:b", "cat", "/two", "/s"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "two\nshared\n",
        "{}",
        text(&out)
    );
    Ok(())
}

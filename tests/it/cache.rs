//! The build cache seen from the CLI: why steps missed (`--explain`), the stat cache.

use crate::harness::{TestDir, privileged, text};
use anyhow::ensure;

const DOCKERFILE: &str =
    "FROM busybox\nARG V=1\nCOPY src /src\nRUN cat /src/a.txt > /out && echo $V\n";

fn plain_build(t: &TestDir, extra: &[&str]) -> anyhow::Result<String> {
    let ctx = t.ctx.to_str().expect("utf-8 path");
    let mut args = vec!["build", "--progress", "plain", "--explain", "-t", "x:1"];
    args.extend_from_slice(extra);
    args.push(ctx);
    let out = t.ok(&args)?;
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn explain_says_which_file_or_arg_made_a_step_miss() -> anyhow::Result<()> {
    if !privileged(&[]) {
        return Ok(());
    }
    let t = TestDir::new();
    t.import_busybox()?;
    t.write("Dockerfile", DOCKERFILE);
    t.write("src/a.txt", "one\n");
    t.write("src/b.txt", "b\n");
    let first = plain_build(&t, &[])?;
    ensure!(first.contains("cache miss: no cache entry"), "{first}");

    let again = plain_build(&t, &[])?;
    ensure!(again.contains("cache misses: 0"), "no-op rebuild: {again}");

    t.write("src/a.txt", "two\n");
    let edited = plain_build(&t, &[])?;
    ensure!(
        edited.contains("cache misses: 2")
            && edited.contains("COPY src /src: file changed: src/a.txt")
            && edited.contains("parent step changed")
            && !edited.contains("src/b.txt"),
        "{edited}"
    );
    // The plain progress line of the step itself.
    ensure!(
        edited
            .lines()
            .any(|l| l.starts_with('#') && l.ends_with("cache miss: file changed: src/a.txt")),
        "{edited}"
    );

    let arg = plain_build(&t, &["--build-arg", "V=2"])?;
    ensure!(
        arg.contains("cache misses: 1") && arg.contains("ARG or ENV V changed"),
        "{arg}"
    );
    let out = t.kiln(&[
        "build",
        "--progress",
        "plain",
        "--no-cache",
        t.ctx.to_str().expect("utf-8"),
    ]);
    ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("cache miss: --no-cache"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn build_writes_a_stat_cache_and_a_touched_file_stays_cached() -> anyhow::Result<()> {
    if !privileged(&[]) {
        return Ok(());
    }
    let t = TestDir::new();
    t.import_busybox()?;
    t.write("Dockerfile", DOCKERFILE);
    t.write("src/a.txt", "one\n");
    plain_build(&t, &[])?;
    ensure!(
        std::fs::read_dir(t.root.join("statcache"))?.count() == 1,
        "KILN_ROOT/statcache has the context's cache"
    );
    // Touching the mtime alone changes the stat but not the content: still all cached.
    let f = std::fs::File::options()
        .write(true)
        .open(t.ctx.join("src/a.txt"))?;
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))?;
    let touched = plain_build(&t, &[])?;
    ensure!(touched.contains("cache misses: 0"), "{touched}");
    Ok(())
}

#[test]
fn system_df_counts_images_layers_and_cache_records() -> anyhow::Result<()> {
    if !privileged(&[]) {
        return Ok(());
    }
    let t = TestDir::new();
    t.import_busybox()?;
    t.write("Dockerfile", DOCKERFILE);
    t.write("src/a.txt", "one\n");
    plain_build(&t, &[])?;
    let out = t.ok(&["system", "df"])?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let count = |kind: &str| -> Option<u64> {
        stdout
            .lines()
            .find(|l| l.starts_with(kind))?
            .strip_prefix(kind)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    ensure!(count("Images") == Some(2), "busybox and x:1: {stdout}");
    ensure!(
        count("Snapshots") == Some(3),
        "busybox, COPY and RUN layers: {stdout}"
    );
    ensure!(
        count("Build cache") == Some(2),
        "COPY and RUN records: {stdout}"
    );
    ensure!(count("Blobs").is_some_and(|n| n >= 6), "{stdout}");
    Ok(())
}

//! `kiln build --check`: warnings and errors with their location and rule, `--target`,
//! build args and `-f`, and every real-world Dockerfile of the shared corpus.

use crate::harness::{TestDir, stdout, text};
use anyhow::ensure;
use std::path::Path;

/// The real-world corpus shared by the project: `<repo>/../shared/conformance/real-world`, or
/// under `KILN_SHARED_DIR` (as frontend/tests/conformance.rs). Says where it looked when absent.
fn real_world() -> std::path::PathBuf {
    let shared = match std::env::var_os("KILN_SHARED_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    };
    let dir = shared.join("conformance/real-world");
    assert!(
        dir.is_dir(),
        "the real-world Dockerfile corpus is missing: no directory {} (put the project's shared/ \
         beside the checkout or set KILN_SHARED_DIR)",
        dir.display()
    );
    dir
}

#[test]
fn check_prints_warnings_with_location_and_rule_and_needs_no_store() -> anyhow::Result<()> {
    let t = TestDir::new();
    t.write(
        "Dockerfile",
        "FROM busybox as Build\nMAINTAINER someone\nCMD echo hi\n",
    );
    let out = t.ok(&["build", "--check", t.ctx.to_str().expect("utf-8")])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "Dockerfile:1:1: [StageNameCasing] Stage name 'Build' should be lowercase",
        "Dockerfile:1:1: [FromAsCasing]",
        "Dockerfile:2:1: [MaintainerDeprecated]",
        "Dockerfile:3:1: [JSONArgsRecommended]",
    ] {
        ensure!(
            stdout.contains(want),
            "missing {want:?} in:\n{}",
            text(&out)
        );
    }
    // busybox was never imported and KILN_ROOT was never created: --check needs no store.
    ensure!(!t.root.exists(), "--check created KILN_ROOT");
    Ok(())
}

#[test]
fn check_fails_on_errors_with_location() -> anyhow::Result<()> {
    let t = TestDir::new();
    t.write("Dockerfile", "FROM busybox\nRUN true\nEXPOSE abc\n");
    let out = t.kiln(&["build", "--check", t.ctx.to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(!out.status.success(), "an error must fail: {}", text(&out));
    ensure!(
        stdout.contains("Dockerfile:3:") && stdout.contains("[BuildError]"),
        "{}",
        text(&out)
    );

    t.write("Dockerfile", "FROM busybox\nFROBNICATE x\n");
    let out = t.kiln(&["build", "--check", t.ctx.to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        !out.status.success(),
        "a parse error must fail: {}",
        text(&out)
    );
    ensure!(
        stdout.contains("Dockerfile:2:1: [ParseError]"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn check_honours_target_build_arg_and_file() -> anyhow::Result<()> {
    let t = TestDir::new();
    t.write(
        "sub/Build.df",
        "ARG BASE\nFROM ${BASE} AS one\nRUN true\nFROM busybox AS two\nEXPOSE abc\n",
    );
    let ctx = t.ctx.to_str().expect("utf-8");
    let file = t.ctx.join("sub/Build.df");
    let file = file.to_str().expect("utf-8");
    // Only stage `one` is checked with --target one, so the bad EXPOSE in `two` is not reached.
    t.ok(&[
        "build",
        "--check",
        "-f",
        file,
        "--target",
        "one",
        "--build-arg",
        "BASE=busybox",
        ctx,
    ])?;
    let out = t.kiln(&["build", "--check", "-f", file, "--target", "two", ctx]);
    ensure!(!out.status.success(), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains(":5:"),
        "{}",
        text(&out)
    );
    let out = t.kiln(&["build", "--check", "--target", "nosuch", "-f", file, ctx]);
    ensure!(
        !out.status.success(),
        "an unknown target must fail: {}",
        text(&out)
    );
    Ok(())
}

#[test]
fn check_accepts_every_real_world_dockerfile() -> anyhow::Result<()> {
    let dir = real_world();
    let t = TestDir::new();
    let mut failures = Vec::new();
    let mut n = 0;
    for e in std::fs::read_dir(&dir)? {
        let p = e?.path();
        if !p.join("Dockerfile").is_file() {
            continue;
        }
        n += 1;
        let out = t.kiln(&["build", "--check", p.to_str().expect("utf-8")]);
        if !out.status.success() {
            failures.push(format!("{}:\n{}", p.display(), text(&out)));
        }
    }
    ensure!(n >= 60, "only {n} Dockerfiles under {}", dir.display());
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn check_warns_about_ignored_and_missing_copy_sources() -> anyhow::Result<()> {
    let t = TestDir::new();
    t.write(".dockerignore", "ignored.txt\n");
    t.write("ignored.txt", "x");
    t.write("present.txt", "x");
    t.write(
        "Dockerfile",
        "FROM busybox\nCOPY present.txt /p\nCOPY ignored.txt /i\nADD missing.txt /m\nCOPY *.nomatch /n/\n",
    );
    let out = t.ok(&["build", "--check", t.ctx.to_str().expect("utf-8")])?;
    let s = stdout(&out);
    ensure!(
        s.contains("Dockerfile:3:1: [CopyIgnoredFile]")
            && s.contains("Dockerfile:4:1: [CopyMissingSource]"),
        "{}",
        text(&out)
    );
    ensure!(
        !s.contains("present.txt") && !s.contains("nomatch") && s.matches("[Copy").count() == 2,
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn check_reports_copy_sources_of_every_stage_the_target_reaches_only() -> anyhow::Result<()> {
    let t = TestDir::new();
    t.write(".dockerignore", "ign.txt\n");
    t.write("ign.txt", "x");
    t.write(
        "Dockerfile",
        "FROM busybox AS a\nCOPY missing-a /x\nFROM a AS b\nCOPY ign.txt /y\n\
         FROM busybox AS c\nCOPY missing-c /z\nFROM busybox AS d\nCOPY missing-d /w\n\
         FROM busybox AS e\nCOPY missing-e /v\nFROM b\nCOPY --from=c /z /z\n\
         RUN --mount=from=e,target=/m true\nCOPY <<EOF /inline\nhi\nEOF\n",
    );
    let ctx = t.ctx.to_str().expect("utf-8");
    let out = t.ok(&["build", "--check", ctx])?;
    let s = stdout(&out);
    for want in [
        "Dockerfile:2:1: [CopyMissingSource]",
        "Dockerfile:4:1: [CopyIgnoredFile]",
        "Dockerfile:6:1: [CopyMissingSource]",
        "Dockerfile:10:1: [CopyMissingSource]",
    ] {
        ensure!(s.contains(want), "{want} missing:\n{}", text(&out));
    }
    ensure!(
        !s.contains("missing-d"),
        "unreachable stage d checked:\n{s}"
    );
    let out = t.ok(&["build", "--check", "--target", "c", ctx])?;
    let s = stdout(&out);
    ensure!(
        s.matches("[Copy").count() == 1 && s.contains("missing-c"),
        "{}",
        text(&out)
    );
    Ok(())
}

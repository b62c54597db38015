//! `kiln build --check`: warnings and errors with their location and rule, `--target`,
//! build args and `-f`, and every real-world Dockerfile of the shared corpus. (The exact
//! text, compared with buildx's, is `call_v024`'s.)

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

/// The `(rule, "FILE:LINE")` of every warning buildx's text of a check shows.
fn warnings(out: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = out.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let rule = l.strip_prefix("WARNING: ")?.split(' ').next()?;
            let at = lines.get(i + 2)?;
            let at = at.rsplit_once('/').map_or(*at, |x| x.1);
            Some((rule.to_owned(), at.to_owned()))
        })
        .collect()
}

fn has(ws: &[(String, String)], rule: &str, at: &str) -> bool {
    ws.iter().any(|(r, a)| r == rule && a == at)
}

#[test]
fn check_prints_warnings_with_location_and_rule_and_needs_no_store() -> anyhow::Result<()> {
    let t = TestDir::new();
    t.write(
        "Dockerfile",
        "FROM busybox as Build\nMAINTAINER someone\nCMD echo hi\n",
    );
    let out = t.kiln(&["build", "--check", t.ctx.to_str().expect("utf-8")]);
    // Warnings found: status 1, as buildx (BuildKit's status code).
    ensure!(out.status.code() == Some(1), "{}", text(&out));
    let s = stdout(&out);
    ensure!(
        s.starts_with("Check complete, 4 warnings have been found!\n"),
        "{}",
        text(&out)
    );
    let ws = warnings(&s);
    for (rule, at) in [
        ("StageNameCasing", "Dockerfile:1"),
        ("FromAsCasing", "Dockerfile:1"),
        ("MaintainerDeprecated", "Dockerfile:2"),
        ("JSONArgsRecommended", "Dockerfile:3"),
    ] {
        ensure!(
            has(&ws, rule, at),
            "missing {rule} at {at} in:\n{}",
            text(&out)
        );
    }
    ensure!(
        s.contains("Stage name 'Build' should be lowercase\n")
            && s.contains(" https://docs.docker.com/go/dockerfile/rule/stage-name-casing/\n")
            && s.contains("   1 | >>> FROM busybox as Build\n"),
        "{}",
        text(&out)
    );
    // `ignorestatus=true` keeps the text and exits 0.
    let quiet = t.ok(&[
        "build",
        "--call",
        "check,ignorestatus=true",
        t.ctx.to_str().expect("utf-8"),
    ])?;
    ensure!(stdout(&quiet) == s, "{}", text(&quiet));
    // busybox was never imported and KILN_ROOT was never created: --check needs no store.
    ensure!(!t.root.exists(), "--check created KILN_ROOT");
    Ok(())
}

#[test]
fn check_fails_on_errors_with_location() -> anyhow::Result<()> {
    let t = TestDir::new();
    t.write("Dockerfile", "FROM busybox\nRUN true\nEXPOSE abc\n");
    let out = t.kiln(&["build", "--check", t.ctx.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "an error must fail: {}", text(&out));
    // buildx's shape: the message after ERROR:, then the file and line, the line marked.
    ensure!(
        err.starts_with("ERROR: ")
            && err.contains("ctx/Dockerfile:3\n--------------------\n")
            && err.contains("   3 | >>> EXPOSE abc\n"),
        "{}",
        text(&out)
    );

    t.write("Dockerfile", "FROM busybox\nFROBNICATE x\n");
    let out = t.kiln(&["build", "--check", t.ctx.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "a parse error must fail: {}",
        text(&out)
    );
    ensure!(
        err.starts_with(
            "ERROR: dockerfile parse error on line 2: unknown instruction: FROBNICATE\n"
        ) && err.contains("   2 | >>> FROBNICATE x\n"),
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
        String::from_utf8_lossy(&out.stderr).contains("sub/Build.df:5\n"),
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
        // Warnings exit 1 as in buildx; a build error is what must not happen.
        let out = t.kiln(&["build", "--check", p.to_str().expect("utf-8")]);
        let err = String::from_utf8_lossy(&out.stderr);
        if !matches!(out.status.code(), Some(0 | 1)) || err.contains("ERROR:") {
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
    let out = t.kiln(&["build", "--check", t.ctx.to_str().expect("utf-8")]);
    let s = stdout(&out);
    let ws = warnings(&s);
    ensure!(
        has(&ws, "CopyIgnoredFile", "Dockerfile:3")
            && has(&ws, "CopyMissingSource", "Dockerfile:4"),
        "{}",
        text(&out)
    );
    // kiln's own rule has no documentation page on docs.docker.com.
    ensure!(
        s.contains("\nWARNING: CopyMissingSource\n")
            && s.contains(
                "\nWARNING: CopyIgnoredFile - https://docs.docker.com/go/dockerfile/rule/copy-ignored-file/\n"
            ),
        "{}",
        text(&out)
    );
    ensure!(
        // Not present.txt (line 2) nor the wildcard that matches nothing (line 5).
        ws.len() == 2,
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
    let out = t.kiln(&["build", "--check", ctx]);
    let s = stdout(&out);
    let ws = warnings(&s);
    for (rule, at) in [
        ("CopyMissingSource", "Dockerfile:2"),
        ("CopyIgnoredFile", "Dockerfile:4"),
        ("CopyMissingSource", "Dockerfile:6"),
        ("CopyMissingSource", "Dockerfile:10"),
    ] {
        ensure!(
            has(&ws, rule, at),
            "{rule} at {at} missing:\n{}",
            text(&out)
        );
    }
    ensure!(ws.len() == 4, "unreachable stage d (line 8) checked:\n{s}");
    let out = t.kiln(&["build", "--check", "--target", "c", ctx]);
    let s = stdout(&out);
    ensure!(
        warnings(&s).len() == 1 && s.contains("missing-c"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn undefined_var_reads_the_base_environment_from_the_store_and_skips_unknown_bases()
-> anyhow::Result<()> {
    let t = TestDir::new();
    let tar = t.ctx.join("busybox.tar");
    std::fs::write(&tar, crate::harness::busybox_tar()?)?;
    t.ok(&[
        "import",
        "--change",
        "ENV APP_HOME=/srv/app",
        tar.to_str().expect("utf-8"),
        "withenv",
    ])?;
    std::fs::remove_file(&tar)?;
    let df = "FROM withenv\nWORKDIR $APP_HOME\nUSER $APP_HOM\n\
              FROM not-in-the-store AS other\nUSER $WHATEVER\n";
    t.write("Dockerfile", df);
    let out = t.kiln(&["build", "--check", t.ctx.to_str().expect("utf-8")]);
    let s = stdout(&out);
    let ws = warnings(&s);
    // $APP_HOME comes from the image: defined, and the WORKDIR is absolute; the typo gets
    // BuildKit's suggestion from the image's environment.
    ensure!(
        ws == [("UndefinedVar".to_owned(), "Dockerfile:3".to_owned())],
        "{}",
        text(&out)
    );
    ensure!(
        s.contains("Usage of undefined variable '$APP_HOM' (did you mean $APP_HOME?)\n"),
        "{}",
        text(&out)
    );
    // A base the store does not hold is not pulled: its stage gets no UndefinedVar.
    ensure!(!s.contains("variable '$WHATEVER'"), "{}", text(&out));
    Ok(())
}

//! Bad input: a clear error naming file:line, a non-zero exit, and an unchanged store.

use crate::harness::{busybox_dir, text};
use anyhow::ensure;

/// Builds `dockerfile` (or none) and checks the failure mentions every `needles` item, exits 1
/// and leaves the store as it was.
fn fails(dockerfile: Option<&str>, files: &[(&str, &str)], needles: &[&str]) -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    if let Some(d) = dockerfile {
        t.write("Dockerfile", d);
    }
    for (p, text) in files {
        t.write(p, text);
    }
    let before = t.store_listing();
    let ctx = t.ctx.to_str().expect("utf-8 path");
    let out = t.kiln(&["build", "--progress", "plain", "-t", "x:1", ctx]);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "exit 1 expected: {}",
        text(&out)
    );
    for n in needles {
        ensure!(err.contains(n), "missing {n:?} in:\n{err}");
    }
    let after = t.store_listing();
    ensure!(
        before == after,
        "the store changed:\nbefore {before:#?}\nafter {after:#?}"
    );
    Ok(())
}

#[test]
fn missing_dockerfile_is_reported() -> anyhow::Result<()> {
    fails(None, &[], &["Dockerfile"])
}

#[test]
fn unknown_instruction_names_its_line() -> anyhow::Result<()> {
    fails(
        Some("FROM busybox\nRUN true\nFROB the widget\n"),
        &[],
        &["Dockerfile:3", "FROB"],
    )
}

#[test]
fn unknown_stage_in_copy_from_names_its_line() -> anyhow::Result<()> {
    fails(
        Some("FROM busybox AS builder\nRUN true\nFROM busybox\nCOPY --from=bulder /x /x\n"),
        &[],
        &["Dockerfile:4", "bulder"],
    )
}

#[test]
fn missing_copy_source_names_its_line() -> anyhow::Result<()> {
    fails(
        Some("FROM busybox\nRUN true\nCOPY nope.txt /\n"),
        &[],
        &["Dockerfile:3", "nope.txt"],
    )
}

#[test]
fn copy_source_outside_the_context_names_its_line() -> anyhow::Result<()> {
    fails(
        Some("FROM busybox\nCOPY ../secret.txt /\n"),
        &[],
        &["Dockerfile:2", "secret.txt"],
    )
}

#[test]
fn missing_from_image_names_its_line_and_reference() -> anyhow::Result<()> {
    fails(
        Some("FROM busybox AS ok\nRUN true\nFROM no-such-image:1.0\nRUN true\n"),
        &[],
        &["Dockerfile:3", "no-such-image:1.0"],
    )
}

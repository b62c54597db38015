//! Command-line surface checks that need no privileges. (Having an integration test here also
//! makes `cargo test --workspace` build `target/<profile>/kiln`, which tests/it runs.)

use std::process::Command;

fn kiln(root: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_ROOT", root)
        .output()
        .expect("kiln runs")
}

#[test]
fn help_documents_exit_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = kiln(dir.path(), &["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in [
        "125",
        "broken pipe",
        "KILN_ROOT",
        "build",
        "import",
        "save",
        "run",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn unknown_images_fail_with_the_documented_exit_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = kiln(dir.path(), &["inspect", "no-such-image"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such image: no-such-image"));
    let out = kiln(dir.path(), &["run", "no-such-image"]);
    assert_eq!(
        out.status.code(),
        Some(125),
        "kiln's own failure on run is 125"
    );
}

#[test]
fn images_on_an_empty_store_prints_the_header_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = kiln(dir.path(), &["images"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("REPOSITORY"));
}

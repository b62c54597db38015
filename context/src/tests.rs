//! The walk and pattern tests of the crate root (the BuildKit pattern tables are in
//! `buildkit_cases.rs`), declared in lib.rs under `#[cfg(test)]`: the openat2 resolver below
//! is a fixture, not a second resolver of untrusted paths.

use super::*;
use std::os::unix::fs::symlink;

/// The resolver of the walk tests: `openat2(RESOLVE_IN_ROOT)`, as `executor::fsroot` does
/// on kernels that have it.
struct TestRoot;

impl Resolve for TestRoot {
    fn resolve_in(&self, root: std::os::fd::BorrowedFd<'_>, rel: &str) -> std::io::Result<OwnedFd> {
        rustix::fs::openat2(
            root,
            rel,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            rustix::fs::ResolveFlags::IN_ROOT | rustix::fs::ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(Into::into)
    }
}

fn ig(text: &str) -> Ignore {
    Ignore::parse(text)
}

#[test]
fn a_bare_exclamation_mark_is_rejected_with_file_and_line() {
    let file = Path::new("/ctx/.dockerignore");
    let e = Ignore::validate(file, "# c\nbuild\n  !  \n!keep\n").expect_err("bare !");
    assert!(
        matches!(&e, IgnoreError::BareExclusion { line: 3, .. }),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "/ctx/.dockerignore:3: illegal exclusion pattern: \"!\""
    );
    Ignore::validate(file, "build\n!keep\n! spaced\n#!\n").expect("valid");
}

#[test]
fn plain_pattern_matches_the_path_and_everything_below() {
    let i = ig("build\n");
    assert!(i.is_ignored("build", true));
    assert!(i.is_ignored("build/out/x.o", false));
    assert!(!i.is_ignored("src/build", true));
}

#[test]
fn comments_blank_lines_and_leading_slash() {
    let i = ig("# comment\n\n/secret.txt\n./tmp/\n");
    assert!(i.is_ignored("secret.txt", false));
    assert!(i.is_ignored("tmp/a", false));
    assert!(!i.is_ignored("# comment", false));
}

#[test]
fn star_does_not_cross_directories_but_double_star_does() {
    let i = ig("*.log\n**/*.tmp\n");
    assert!(i.is_ignored("a.log", false));
    assert!(!i.is_ignored("dir/a.log", false));
    assert!(i.is_ignored("a.tmp", false));
    assert!(i.is_ignored("x/y/z.tmp", false));
}

#[test]
fn double_star_in_the_middle_and_at_the_end() {
    let i = ig("a/**/z\nlogs/**\n");
    assert!(i.is_ignored("a/z", false));
    assert!(i.is_ignored("a/b/c/z", false));
    assert!(!i.is_ignored("a/b/c/y", false));
    assert!(i.is_ignored("logs/x/y", false));
}

#[test]
fn exceptions_re_include_and_last_match_wins() {
    let i = ig("*.md\n!README.md\ndocs\n!docs/keep\n");
    assert!(i.is_ignored("CHANGES.md", false));
    assert!(!i.is_ignored("README.md", false));
    assert!(i.is_ignored("docs/other", false));
    assert!(!i.is_ignored("docs/keep", false));
    let j = ig("!README.md\n*.md\n");
    assert!(j.is_ignored("README.md", false));
}

#[test]
fn character_classes_and_question_mark() {
    let i = ig("file[0-9].txt\n?.c\nx[!a]\n");
    assert!(i.is_ignored("file3.txt", false));
    assert!(!i.is_ignored("fileA.txt", false));
    assert!(i.is_ignored("a.c", false));
    assert!(!i.is_ignored("ab.c", false));
    // As docker: `!` in a class is literal (`x[!a]` is x followed by `!` or `a`).
    assert!(i.is_ignored("xa", false));
    assert!(i.is_ignored("x!", false));
    assert!(!i.is_ignored("xb", false));
}

#[test]
fn classes_follow_go_filepath_match() {
    assert!(glob_match("x[^1]", "xa"));
    assert!(!glob_match("x[^1]", "x1"));
    assert!(glob_match("x[!1]", "x1"));
    assert!(glob_match("x[!1]", "x!"));
    assert!(!glob_match("x[!1]", "xa"));
    assert!(glob_match("[a-c]", "b"));
    assert!(glob_match("[\\]]", "]"));
    assert!(glob_match("[\\-]", "-"));
    assert!(pattern_is_valid("x[a-c]/[^1]*.txt"));
    assert!(pattern_is_valid("\\[literal"));
    // Bad patterns match nothing, as filepath.Match's ErrBadPattern.
    for bad in ["[]a]", "[a-]", "[-a]", "[]", "[a", "[a-"] {
        for name in ["a", "]", "-", "[a]"] {
            assert!(!glob_match(bad, name), "{bad} matched {name}");
        }
        assert!(!pattern_is_valid(&format!("dir/{bad}")), "{bad} is valid");
    }
}

#[test]
fn clean_makes_paths_relative_and_drops_dotdot() {
    assert_eq!(clean("/a/./b/../c/"), "a/c");
    assert_eq!(clean("../../x"), "x");
    assert_eq!(clean("."), "");
}

fn ctx() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path();
    std::fs::create_dir_all(p.join("src/sub")).expect("mkdir");
    std::fs::write(p.join("src/a.rs"), "a").expect("write");
    std::fs::write(p.join("src/sub/b.rs"), "bb").expect("write");
    std::fs::write(p.join("src/sub/skip.tmp"), "").expect("write");
    std::fs::write(p.join("one.txt"), "1").expect("write");
    std::fs::write(p.join("two.txt"), "2").expect("write");
    std::fs::write(p.join("secret.key"), "k").expect("write");
    symlink("src/a.rs", p.join("link")).expect("symlink");
    symlink("../../../../etc/passwd", p.join("evil")).expect("symlink");
    symlink("a.rs", p.join("src/inner-link")).expect("symlink");
    d
}

fn rels(entries: &[SourceEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.rel.as_str()).collect()
}

#[test]
fn parallel_walk_lists_the_same_entries_in_the_same_order() {
    let d = tempfile::tempdir().expect("tempdir");
    for i in 0..5 {
        for j in 0..4 {
            let p = d.path().join(format!("src/d{i}/e{j}"));
            std::fs::create_dir_all(&p).expect("mkdir");
            std::fs::write(p.join("f"), format!("{i}{j}")).expect("write");
            std::fs::write(p.join("x.tmp"), "ignored").expect("write");
        }
        std::fs::write(d.path().join(format!("src/d{i}.txt")), "file").expect("write");
    }
    let ig = ig("**/*.tmp\n!src/d3/e1/x.tmp\nsrc/d4\n");
    let seq = walk_sources(&TestRoot, d.path(), &["src".into()], &ig, &[]).expect("walk");
    let par = walk_sources_parallel(&TestRoot, d.path(), &["src".into()], &ig, &[]).expect("walk");
    assert_eq!(seq, par);
    assert!(rels(&seq).contains(&"src/d3/e1/x.tmp"));
    assert!(!rels(&seq).iter().any(|r| r.starts_with("src/d4/")));
    assert_eq!(seq.len(), 1 + 5 + 4 * (1 + 4 * 2) + 1);
}

#[test]
fn directory_source_lists_its_tree_sorted_without_ignored_files() {
    let d = ctx();
    let e = walk_sources(&TestRoot, d.path(), &["src".into()], &ig("**/*.tmp"), &[]).expect("walk");
    assert_eq!(
        rels(&e),
        [
            "src",
            "src/a.rs",
            "src/inner-link",
            "src/sub",
            "src/sub/b.rs"
        ]
    );
    assert_eq!(e[2].kind, EntryKind::Symlink);
    assert_eq!(e[2].link_target.as_deref(), Some("a.rs"));
    assert!(e.iter().all(|x| x.matched == "src" && x.source == 0));
    assert_eq!(e[4].size, 2);
}

#[test]
fn wildcards_expand_sorted_and_may_match_nothing() {
    let d = ctx();
    let e = walk_sources(
        &TestRoot,
        d.path(),
        &["*.txt".into(), "*.none".into()],
        &Ignore::default(),
        &[],
    )
    .expect("walk");
    assert_eq!(rels(&e), ["one.txt", "two.txt"]);
}

#[test]
fn missing_and_ignored_plain_sources_are_not_found() {
    let d = ctx();
    let err = walk_sources(
        &TestRoot,
        d.path(),
        &["nope".into()],
        &Ignore::default(),
        &[],
    )
    .expect_err("missing");
    assert_eq!(err.to_string(), "file not found in build context: nope");
    let err = walk_sources(
        &TestRoot,
        d.path(),
        &["secret.key".into()],
        &ig("*.key"),
        &[],
    )
    .expect_err("ignored");
    assert!(matches!(err, ContextError::NotFound { .. }));
}

#[test]
fn dotdot_is_cleaned_and_symlinks_stay_inside_the_root() {
    let d = ctx();
    let e = walk_sources(
        &TestRoot,
        d.path(),
        &["../../one.txt".into()],
        &Ignore::default(),
        &[],
    )
    .expect("walk");
    assert_eq!(rels(&e), ["one.txt"]);
    let real = std::fs::canonicalize(d.path()).expect("canon");
    assert_eq!(e[0].path, real.join("one.txt"));
    // `evil` points far above the root: resolved inside it, it names /etc/passwd of the
    // context, which does not exist.
    let err = walk_sources(
        &TestRoot,
        d.path(),
        &["evil".into()],
        &Ignore::default(),
        &[],
    )
    .expect_err("escape");
    assert!(matches!(err, ContextError::NotFound { .. }));
}

#[test]
fn top_level_symlink_is_followed() {
    let d = ctx();
    let e = walk_sources(
        &TestRoot,
        d.path(),
        &["link".into()],
        &Ignore::default(),
        &[],
    )
    .expect("walk");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].kind, EntryKind::File);
    assert_eq!(e[0].size, 1);
    assert!(e[0].path.ends_with("src/a.rs"));
}

#[test]
fn exclude_patterns_apply_relative_to_the_match() {
    let d = ctx();
    let e = walk_sources(
        &TestRoot,
        d.path(),
        &["src".into(), "*.txt".into()],
        &Ignore::default(),
        &["sub".into(), "two.*".into()],
    )
    .expect("walk");
    assert_eq!(rels(&e), ["src", "src/a.rs", "src/inner-link", "one.txt"]);
    assert_eq!(e[3].source, 1);
}

#[test]
fn ignored_directory_keeps_re_included_children() {
    let d = ctx();
    let e = walk_sources(
        &TestRoot,
        d.path(),
        &["src".into()],
        &ig("src/sub\n!src/sub/b.rs"),
        &[],
    )
    .expect("walk");
    assert_eq!(
        rels(&e),
        [
            "src",
            "src/a.rs",
            "src/inner-link",
            "src/sub",
            "src/sub/b.rs"
        ]
    );
}

#[test]
fn ignored_paths_are_listed_as_high_as_possible() {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in [
        "keep.txt",
        "secret.txt",
        "node_modules/a/b.js",
        "logs/x.log",
        "logs/keep.me",
    ] {
        let p = dir.path().join(f);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, "x").expect("write");
    }
    let ignore = Ignore::parse("secret.txt\nnode_modules\n");
    assert_eq!(
        ignored_paths(dir.path(), &ignore).expect("walk"),
        ["node_modules", "secret.txt"]
    );
    // With an exception, an ignored directory is opened and only its ignored entries listed.
    let ignore = Ignore::parse("logs\n!logs/keep.me\n");
    assert_eq!(
        ignored_paths(dir.path(), &ignore).expect("walk"),
        ["logs/x.log"]
    );
    assert!(
        ignored_paths(dir.path(), &Ignore::default())
            .expect("walk")
            .is_empty()
    );
}

//! BuildKit's `.dockerignore` pattern cases, run against [`Ignore`].
//!
//! The tables below are data taken from moby/patternmatcher at commit
//! 5a6d8429a19bb6948a372ff19e86fe83599a04b7 (`patternmatcher_test.go`: `TestMatches`,
//! `matchTests` of `TestMatch`, `compileTests` of `TestCompile`, the single-case tests;
//! `ignorefile/ignorefile_test.go`: `TestReadAll`). moby/patternmatcher is
//! Copyright 2012-2017 Docker, Inc., licensed under the Apache License, Version 2.0
//! (https://www.apache.org/licenses/LICENSE-2.0); kiln is Apache-2.0 as well. Only the case
//! data is copied; the code that runs it is ours. BuildKit (moby/buildkit, fsutil) reads
//! `.dockerignore` with `ignorefile.ReadAll` and filters the context with these matchers.
//!
//! Intentional divergences, each asserted in [`divergences_are_the_listed_ones`]:
//! - the context root (`/`, `.`, `""`) is never ignored, whatever the patterns: BuildKit's
//!   walker never asks about the root, so `**` against `/` (true in the Go table) is moot;
//! - `matchTests` go through the deprecated `Matches`, which checks only the parent as deep
//!   as the pattern; kiln, like BuildKit's walker (`MatchesOrParentMatches`), checks every
//!   parent. No case of the table differs because of it.

use super::Ignore;
use std::path::Path;

/// `TestMatches` (one pattern): pattern, path, ignored.
const SINGLE: &[(&str, &str, bool)] = &[
    ("**", "file", true),
    ("**", "file/", true),
    ("**/", "file", true), // weird one
    ("**/", "file/", true),
    ("**", "/", true),
    ("**/", "/", true),
    ("**", "dir/file", true),
    ("**/", "dir/file", true),
    ("**", "dir/file/", true),
    ("**/", "dir/file/", true),
    ("**/**", "dir/file", true),
    ("**/**", "dir/file/", true),
    ("dir/**", "dir/file", true),
    ("dir/**", "dir/file/", true),
    ("dir/**", "dir/dir2/file", true),
    ("dir/**", "dir/dir2/file/", true),
    ("**/dir", "dir", true),
    ("**/dir", "dir/file", true),
    ("**/dir2/*", "dir/dir2/file", true),
    ("**/dir2/*", "dir/dir2/file/", true),
    ("**/dir2/**", "dir/dir2/dir3/file", true),
    ("**/dir2/**", "dir/dir2/dir3/file/", true),
    ("**file", "file", true),
    ("**file", "dir/file", true),
    ("**/file", "dir/file", true),
    ("**file", "dir/dir/file", true),
    ("**/file", "dir/dir/file", true),
    ("**/file*", "dir/dir/file", true),
    ("**/file*", "dir/dir/file.txt", true),
    ("**/file*txt", "dir/dir/file.txt", true),
    ("**/file*.txt", "dir/dir/file.txt", true),
    ("**/file*.txt*", "dir/dir/file.txt", true),
    ("**/**/*.txt", "dir/dir/file.txt", true),
    ("**/**/*.txt2", "dir/dir/file.txt", false),
    ("**/*.txt", "file.txt", true),
    ("**/**/*.txt", "file.txt", true),
    ("a**/*.txt", "a/file.txt", true),
    ("a**/*.txt", "a/dir/file.txt", true),
    ("a**/*.txt", "a/dir/dir/file.txt", true),
    ("a/*.txt", "a/dir/file.txt", false),
    ("a/*.txt", "a/file.txt", true),
    ("a/*.txt**", "a/file.txt", true),
    ("a[b-d]e", "ae", false),
    ("a[b-d]e", "ace", true),
    ("a[b-d]e", "aae", false),
    ("a[^b-d]e", "aze", true),
    (".*", ".foo", true),
    (".*", "foo", false),
    ("abc.def", "abcdef", false),
    ("abc.def", "abc.def", true),
    ("abc.def", "abcZdef", false),
    ("abc?def", "abcZdef", true),
    ("abc?def", "abcdef", false),
    ("a\\\\", "a\\", true),
    ("**/foo/bar", "foo/bar", true),
    ("**/foo/bar", "dir/foo/bar", true),
    ("**/foo/bar", "dir/dir2/foo/bar", true),
    ("abc/**", "abc", false),
    ("abc/**", "abc/def", true),
    ("abc/**", "abc/def/ghi", true),
    ("**/.foo", ".foo", true),
    ("**/.foo", "bar.foo", false),
    ("a(b)c/def", "a(b)c/def", true),
    ("a(b)c/def", "a(b)c/xyz", false),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
    (
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        true,
    ),
    (
        "dist/*.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        true,
    ),
    // non-Windows only in the Go test:
    ("a\\*b", "a*b", true),
];

/// `TestMatches` (several patterns): patterns, path, ignored.
const MULTI: &[(&[&str], &str, bool)] = &[
    (&["**", "!util/docker/web"], "util/docker/web/foo", false),
    (
        &["**", "!util/docker/web", "util/docker/web/foo"],
        "util/docker/web/foo",
        true,
    ),
    (
        &[
            "**",
            "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        ],
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        false,
    ),
    (
        &["**", "!dist/*.whl"],
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        false,
    ),
];

/// `matchTests` (Go's `filepath.Match` cases through `Matches`): pattern, path, matched,
/// `ErrBadPattern` expected.
const MATCH: &[(&str, &str, bool, bool)] = &[
    ("abc", "abc", true, false),
    ("*", "abc", true, false),
    ("*c", "abc", true, false),
    ("a*", "a", true, false),
    ("a*", "abc", true, false),
    ("a*", "ab/c", true, false),
    ("a*/b", "abc/b", true, false),
    ("a*/b", "a/c/b", false, false),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", true, false),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true, false),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false, false),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false, false),
    ("a*b?c*x", "abxbbxdbxebxczzx", true, false),
    ("a*b?c*x", "abxbbxdbxebxczzy", false, false),
    ("ab[c]", "abc", true, false),
    ("ab[b-d]", "abc", true, false),
    ("ab[e-g]", "abc", false, false),
    ("ab[^c]", "abc", false, false),
    ("ab[^b-d]", "abc", false, false),
    ("ab[^e-g]", "abc", true, false),
    ("a\\*b", "a*b", true, false),
    ("a\\*b", "ab", false, false),
    ("a?b", "a☺b", true, false),
    ("a[^a]b", "a☺b", true, false),
    ("a???b", "a☺b", false, false),
    ("a[^a][^a][^a]b", "a☺b", false, false),
    ("[a-ζ]*", "α", true, false),
    ("*[a-ζ]", "A", false, false),
    ("a?b", "a/b", false, false),
    ("a*b", "a/b", false, false),
    ("[\\]a]", "]", true, false),
    ("[\\-]", "-", true, false),
    ("[x\\-]", "x", true, false),
    ("[x\\-]", "-", true, false),
    ("[x\\-]", "z", false, false),
    ("[\\-x]", "x", true, false),
    ("[\\-x]", "-", true, false),
    ("[\\-x]", "a", false, false),
    ("[]a]", "]", false, true),
    ("[-]", "-", false, true),
    ("[x-]", "x", false, true),
    ("[x-]", "-", false, true),
    ("[x-]", "z", false, true),
    ("[-x]", "x", false, true),
    ("[-x]", "-", false, true),
    ("[-x]", "a", false, true),
    ("\\", "a", false, true),
    ("[a-b-c]", "a", false, true),
    ("[", "a", false, true),
    ("[^", "a", false, true),
    ("[^bc", "a", false, true),
    ("a[", "a", false, true), // was nil but IMO its wrong
    ("a[", "ab", false, true),
    ("*x", "xxx", true, false),
];

/// `compileTests`: the kind each pattern compiles to (the regexp texts are BuildKit's
/// representation, not checked).
const COMPILE: &[(&str, &str)] = &[
    ("*", "regexp"),
    ("file*", "regexp"),
    ("*file", "regexp"),
    ("a*/b", "regexp"),
    ("**", "suffix"),
    ("**/**", "regexp"),
    ("dir/**", "prefix"),
    ("**/dir", "suffix"),
    ("**/dir2/*", "regexp"),
    ("**/dir2/**", "regexp"),
    ("**file", "suffix"),
    ("**/file*txt", "regexp"),
    ("**/**/*.txt", "regexp"),
    ("a[b-d]e", "regexp"),
    (".*", "regexp"),
    ("abc.def", "exact"),
    ("abc?def", "regexp"),
    ("**/foo/bar", "suffix"),
    ("a(b)c/def", "exact"),
    ("a.|)$(}+{bc", "exact"),
    (
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        "exact",
    ),
];

/// The context root: never ignored (see the module docs).
fn is_root(path: &str) -> bool {
    crate::clean(path).is_empty()
}

#[test]
fn buildkit_single_pattern_cases_pass() {
    let mut failed = Vec::new();
    for &(pattern, path, want) in SINGLE {
        if is_root(path) {
            continue;
        }
        let got = Ignore::from_lines([pattern]).is_ignored(path, false);
        if got != want {
            failed.push(format!(
                "pattern {pattern:?} path {path:?}: got {got}, want {want}"
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn buildkit_multi_pattern_cases_pass() {
    for &(patterns, path, want) in MULTI {
        let got = Ignore::from_lines(patterns.iter().copied()).is_ignored(path, false);
        assert_eq!(got, want, "patterns {patterns:?} path {path:?}");
    }
}

#[test]
fn buildkit_match_cases_pass_and_bad_patterns_are_reported() {
    let file = Path::new(".dockerignore");
    let mut failed = Vec::new();
    for &(pattern, path, want, bad) in MATCH {
        let got = Ignore::from_lines([pattern]).is_ignored(path, false);
        let reported = Ignore::validate(file, pattern).is_err();
        if got != want || reported != bad {
            failed.push(format!(
                "pattern {pattern:?} path {path:?}: matched {got} (want {want}), \
                 reported bad {reported} (want {bad})"
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn buildkit_compile_kinds_match() {
    for &(pattern, kind) in COMPILE {
        assert_eq!(Ignore::from_lines([pattern]).kinds(), [kind], "{pattern:?}");
    }
}

#[test]
fn buildkit_single_cases_of_the_matcher() {
    let m = |path: &str, patterns: &[&str]| {
        Ignore::from_lines(patterns.iter().copied()).is_ignored(path, false)
    };
    // TestWildcardMatches, TestPatternMatches
    assert!(m("fileutils.go", &["*"]));
    assert!(m("fileutils.go", &["*.go"]));
    // TestExclusionPatternMatchesPatternBefore / After
    assert!(m("fileutils.go", &["!fileutils.go", "*.go"]));
    assert!(!m("fileutils.go", &["*.go", "!fileutils.go"]));
    // TestPatternMatchesFolderExclusions, ...WithSlash..., ...Wildcard...
    assert!(!m("docs/README.md", &["docs", "!docs/README.md"]));
    assert!(!m("docs/README.md", &["docs/", "!docs/README.md"]));
    assert!(!m("docs/README.md", &["docs/*", "!docs/README.md"]));
    // TestExclusionPatternMatchesWholeDirectory, TestMatchesWithNoPatterns
    assert!(!m(".", &["*.go"]));
    assert!(!m("/any/path/there", &[]));
    // TestCleanPatterns*: empty patterns dropped, spaces around `!` trimmed.
    assert_eq!(Ignore::from_lines(["docs", "config", ""]).kinds().len(), 2);
    assert!(Ignore::from_lines(["docs", "  !docs/README.md"]).has_exceptions());
    assert!(Ignore::from_lines(["docs", "!docs/README.md  "]).has_exceptions());
    let file = Path::new(".dockerignore");
    // TestSingleExclamationError, TestCleanPatternsErrorSingleException
    assert!(Ignore::validate(file, "!").is_err());
    // TestMatchesWithMalformedPatterns
    assert!(Ignore::validate(file, "[").is_err());
    assert!(!m("/any/path/there", &["["]));
    // TestMatchesOrParentMatchesMalformedPatternDoesNotPanicOnRepeatedCall: the range `l-O`
    // runs backwards; Go's filepath.Match accepts it, BuildKit's regexp does not, so every
    // match fails with ErrBadPattern.
    assert!(Ignore::validate(file, "[Local-Only]/").is_err());
    assert!(!m("x", &["[Local-Only]/"]));
}

#[test]
fn buildkit_read_all_case() {
    // TestReadAll: `/` prefixes dropped, comments and blank lines skipped, `! /x` is `!x`,
    // and the two bare `!` lines are errors (line 8 first).
    let content =
        "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! ";
    let lines: Vec<String> = super::read_lines(content)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(
        lines,
        [
            "test1",
            "test2",
            "a/file/here",
            "lastfile",
            "!inverted/abs/path",
            "!",
            "!"
        ]
    );
    let e = Ignore::validate(Path::new(".dockerignore"), content).expect_err("bare !");
    assert!(
        matches!(e, super::IgnoreError::BareExclusion { line: 8, .. }),
        "{e:?}"
    );
    let i = Ignore::parse(content);
    assert!(i.is_ignored("test2", false));
    assert!(i.is_ignored("a/file/here/x", false));
    // A UTF-8 BOM before the first pattern is not part of it.
    assert!(Ignore::parse("\u{feff}test1\n").is_ignored("test1", false));
    // `#` starts a comment only in column 1; a leading `..` stays and matches nothing.
    assert!(Ignore::parse(" #x\n").is_ignored("#x", false));
    assert!(!Ignore::parse("../x\n").is_ignored("x", false));
}

#[test]
fn divergences_are_the_listed_ones() {
    // The root cases of the Go table, which kiln answers `false` by design.
    let root: Vec<_> = SINGLE.iter().filter(|c| is_root(c.1)).collect();
    assert_eq!(root, [&("**", "/", true), &("**/", "/", true)]);
    for (pattern, path, _) in root {
        assert!(!Ignore::from_lines([*pattern]).is_ignored(path, true));
    }
}

//! COPY and ADD semantics: sources, destinations, wildcards, directories, ownership, modes.
//!
//! Directory mtimes: directories a COPY creates as parents or adds entries to carry the
//! build's time in both (BuildKit's wall clock, kiln's epoch: the global rule). Directories
//! copied from the context keep their own date in kiln (as newer BuildKit does: fsutil's
//! disk writer restores directory times after the transfer); BuildKit 0.8's context transfer
//! loses them, so its copies are stamped with the wall clock: asserted as
//! `DIR mtime kiln=1609372800 docker=now` ([`super::CTX_DIR_MTIME`]).

use super::{Case, Group, run_group};

const FILES: &[(&str, &str)] = &[
    ("a.txt", "alpha\n"),
    ("b.txt", "bravo\n"),
    ("c.md", "charlie\n"),
    ("x1.txt", "x one\n"),
    ("xa.txt", "x a\n"),
    ("dir/one", "1\n"),
    ("dir/sub/two", "2\n"),
    ("dir/sub/deeper/three", "3\n"),
    ("empty/", ""),
    ("link", "->a.txt"),
    ("dirlink", "->dir"),
    ("run.sh", "#!/bin/sh\necho hi\n"),
];

#[test]
fn copy_sources_and_destinations() -> anyhow::Result<()> {
    run_group(&Group {
        name: "copy-paths",
        dockerfile: r#"FROM scratch AS file-to-dir
COPY a.txt /dst/

FROM scratch AS file-rename
COPY a.txt /dst/renamed

FROM scratch AS two-files
COPY a.txt b.txt /dst/

FROM scratch AS dir-contents
COPY dir /dst

FROM scratch AS dir-into-dir
COPY dir /dst/

FROM scratch AS dot
COPY . /all/

FROM scratch AS empty-dir
COPY empty /e

FROM scratch AS symlink-kept
COPY link /l

FROM scratch AS dirlink-kept
COPY dirlink /dl

FROM scratch AS relative-dest
WORKDIR /w
COPY a.txt rel/

FROM scratch AS nested-dest
COPY b.txt /p/q/r/s.txt
"#,
        files: FILES,
        args: &[],
        cases: &[
            Case {
                stage: "file-to-dir",
                expect: &[],
            },
            Case {
                stage: "file-rename",
                expect: &[],
            },
            Case {
                stage: "two-files",
                expect: &[],
            },
            Case {
                stage: "dir-contents",
                expect: &[
                    "/dst mtime kiln=1609372800 docker=now",
                    "/dst/sub mtime kiln=1609372800 docker=now",
                    "/dst/sub/deeper mtime kiln=1609372800 docker=now",
                ],
            },
            Case {
                stage: "dir-into-dir",
                expect: &[
                    "/dst mtime kiln=1609372800 docker=now",
                    "/dst/sub mtime kiln=1609372800 docker=now",
                    "/dst/sub/deeper mtime kiln=1609372800 docker=now",
                ],
            },
            Case {
                stage: "dot",
                expect: &[
                    "/all mtime kiln=1609372800 docker=now",
                    "/all/dir mtime kiln=1609372800 docker=now",
                    "/all/dir/sub mtime kiln=1609372800 docker=now",
                    "/all/dir/sub/deeper mtime kiln=1609372800 docker=now",
                ],
            },
            Case {
                stage: "empty-dir",
                expect: &["/e mtime kiln=1609372800 docker=now"],
            },
            Case {
                stage: "symlink-kept",
                expect: &[],
            },
            Case {
                stage: "dirlink-kept",
                expect: &[
                    "/dl mtime kiln=1609372800 docker=now",
                    "/dl/sub mtime kiln=1609372800 docker=now",
                    "/dl/sub/deeper mtime kiln=1609372800 docker=now",
                ],
            },
            Case {
                stage: "relative-dest",
                expect: &[],
            },
            Case {
                stage: "nested-dest",
                expect: &[],
            },
        ],
    })
}

#[test]
fn copy_wildcards() -> anyhow::Result<()> {
    run_group(&Group {
        name: "copy-wild",
        dockerfile: r#"FROM scratch AS star
COPY *.txt /dst/

FROM scratch AS question
COPY ?.txt /dst/

FROM scratch AS class
COPY x[0-9].txt /dst/

FROM scratch AS class-bang
COPY x[!1].txt /dst/

FROM scratch AS class-caret
COPY x[^1].txt /dst/

FROM scratch AS dir-star
COPY dir/* /dst/

FROM scratch AS class-letters
COPY x[a-z].txt [ab].txt /dst/

FROM scratch AS star-dir-depth
COPY dir/*/two /dst/

FROM scratch AS star-everything
COPY * /dst/

FROM scratch AS bad-class-bracket
COPY x[]a].txt a.txt /dst/

FROM scratch AS bad-class-dash
COPY x[a-].txt x[-a].txt a.txt /dst/
"#,
        files: FILES,
        args: &[],
        cases: &[
            Case {
                stage: "star",
                expect: &[],
            },
            Case {
                stage: "question",
                expect: &[],
            },
            Case {
                stage: "class",
                expect: &[],
            },
            Case {
                stage: "class-bang",
                expect: &[],
            },
            Case {
                stage: "class-caret",
                expect: &[],
            },
            Case {
                stage: "dir-star",
                expect: &["/dst/deeper mtime kiln=1609372800 docker=now"],
            },
            Case {
                stage: "class-letters",
                expect: &[],
            },
            Case {
                stage: "star-dir-depth",
                expect: &[],
            },
            Case {
                stage: "star-everything",
                expect: &[
                    "/dst/sub mtime kiln=1609372800 docker=now",
                    "/dst/sub/deeper mtime kiln=1609372800 docker=now",
                ],
            },
            Case {
                stage: "bad-class-bracket",
                expect: &[
                    "both fail (kiln error: Dockerfile:29: COPY x[]a].txt a.txt /dst/: syntax error in pattern: x[]a].txt; docker failed to compute cache key: syntax error in pattern)",
                ],
            },
            Case {
                stage: "bad-class-dash",
                expect: &[
                    "both fail (kiln error: Dockerfile:32: COPY x[a-].txt x[-a].txt a.txt /dst/: syntax error in pattern: x[a-].txt; docker failed to compute cache key: syntax error in pattern)",
                ],
            },
        ],
    })
}

#[test]
fn copy_ownership_and_modes() -> anyhow::Result<()> {
    run_group(&Group {
        name: "copy-owner",
        dockerfile: r#"FROM base AS chown-ids
COPY --chown=1000:1000 a.txt /dst/

FROM base AS chown-uid-only
COPY --chown=1234 dir /dst

FROM base AS chown-names
COPY --chown=nobody:nogroup a.txt /dst/

FROM base AS exec-bit
COPY run.sh /usr/local/bin/

FROM base AS into-existing
COPY dir /etc/

FROM base AS over-file
COPY b.txt /etc/passwd
"#,
        files: FILES,
        args: &[],
        cases: &[
            Case {
                stage: "chown-ids",
                expect: &[],
            },
            Case {
                stage: "chown-uid-only",
                expect: &[
                    "/dst mtime kiln=1609372800 docker=now",
                    "/dst/sub mtime kiln=1609372800 docker=now",
                    "/dst/sub/deeper mtime kiln=1609372800 docker=now",
                ],
            },
            Case {
                stage: "chown-names",
                expect: &[],
            },
            Case {
                stage: "exec-bit",
                expect: &[],
            },
            Case {
                stage: "into-existing",
                expect: &[
                    "/etc/sub mtime kiln=1609372800 docker=now",
                    "/etc/sub/deeper mtime kiln=1609372800 docker=now",
                ],
            },
            Case {
                stage: "over-file",
                expect: &[],
            },
        ],
    })
}

//! .dockerignore: patterns, classes, exceptions, `**`, what COPY . then sees. Copied
//! directories keep their context date in kiln, not in BuildKit 0.8 (see `cases_copy`).

use super::{Case, Group, run_group};

#[test]
fn dockerignore_patterns() -> anyhow::Result<()> {
    run_group(&Group {
        name: "ignore",
        dockerfile: r#"FROM scratch AS all
COPY . /c/

FROM scratch AS sub
COPY keep /k/
"#,
        files: &[
            (
                ".dockerignore",
                "x[!a]\n*.log\n!important.log\n**/tmp\nkeep/drop*\nsecret/\n",
            ),
            ("xa", "a\n"),
            ("xb", "b\n"),
            ("x!", "bang\n"),
            ("debug.log", "d\n"),
            ("important.log", "i\n"),
            ("deep/er/tmp/f", "t\n"),
            ("deep/er/keep", "k\n"),
            ("keep/dropme", "x\n"),
            ("keep/stay", "s\n"),
            ("secret/key", "k\n"),
        ],
        args: &[],
        cases: &[
            Case {
                stage: "all",
                expect: &[
                    "/c mtime kiln=1609372800 docker=now",
                    "/c/deep mtime kiln=1609372800 docker=now",
                    "/c/deep/er mtime kiln=1609372800 docker=now",
                    "/c/keep mtime kiln=1609372800 docker=now",
                ],
            },
            Case {
                stage: "sub",
                expect: &["/k mtime kiln=1609372800 docker=now"],
            },
        ],
    })
}

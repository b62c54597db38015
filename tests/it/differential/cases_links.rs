//! Hard links in the context and across COPY, and symlinks as sources. Both builders keep
//! a hard-link group as links (one file, the others linked to it); copied directories keep
//! their context date in kiln (see `cases_copy`), RUN cases carry BuildKit 0.8's mount points.

use super::{Case, Group, run_group};

#[test]
fn links() -> anyhow::Result<()> {
    run_group(&Group {
        name: "links",
        dockerfile: r#"FROM scratch AS hardlinks-dir
COPY h /h/

FROM scratch AS hardlink-single
COPY h/second /one

FROM scratch AS symlink-source-wildcard
COPY h/l* /w/

FROM base AS hardlink-run-after-copy
COPY h /h/
RUN ln /h/first /h/third
"#,
        files: &[
            ("h/first", "shared\n"),
            ("h/second", "=>h/first"),
            ("h/link", "->first"),
        ],
        args: &[],
        cases: &[
            Case {
                stage: "hardlinks-dir",
                expect: &["/h mtime kiln=1609372800 docker=now"],
            },
            Case {
                stage: "hardlink-single",
                expect: &[],
            },
            Case {
                stage: "symlink-source-wildcard",
                expect: &[],
            },
            Case {
                stage: "hardlink-run-after-copy",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
        ],
    })
}

//! More RUN effects: directories deleted and made again (opaque), special files, symlink
//! swaps, hard links to base files, modes with special bits, files under WORKDIR and USER.
//! Each case carries BuildKit 0.8's mount points (see `cases_run`); the files dated 2019 by
//! `prep` keep that date through later chmods and links, in both.

use super::{Case, Group, run_group};

#[test]
fn run_more_effects() -> anyhow::Result<()> {
    run_group(&Group {
        name: "run2",
        dockerfile: r#"FROM base AS prep
RUN mkdir -p /d/a /d/b && echo 1 > /d/a/f && echo 2 > /d/b/g && touch -t 201901010000 /d/a/f /d/b/g

FROM prep AS dir-recreated
RUN rm -rf /d && mkdir -p /d/a && echo new > /d/a/n

FROM prep AS fifo
RUN mkfifo -m 640 /d/pipe

FROM prep AS symlink-swap
RUN rm -r /d/b && ln -s a /d/b

FROM prep AS hardlink-to-lower
RUN ln /d/a/f /d/a/f2

FROM prep AS special-bits
RUN chmod 4755 /d/a/f && chmod 2775 /d/b && chmod 1777 /d/a

FROM prep AS chown-run
RUN chown -R 100:101 /d/b

FROM prep AS rename
RUN mv /d/a /d/renamed

FROM prep AS untouched-sibling
RUN echo x > /d/a/new

FROM prep AS workdir-user-run
WORKDIR /work
USER 1000:1000
RUN echo w > /tmp/w
"#,
        files: &[],
        args: &[],
        cases: &[
            Case {
                stage: "prep",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "dir-recreated",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "fifo",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "symlink-swap",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "hardlink-to-lower",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "special-bits",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "chown-run",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "rename",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "untouched-sibling",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "workdir-user-run",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
        ],
    })
}

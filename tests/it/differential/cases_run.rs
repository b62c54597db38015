//! RUN effects: new files, deletions, modes, owners, links, and which mtimes survive.
//!
//! Divergence in every RUN case: BuildKit 0.8's runc leaves the empty mount points `/dev`,
//! `/proc` and `/sys` in the RUN's layer; kiln's layers hold only what the command changed.

use super::{Case, Group, run_group};

#[test]
fn run_effects() -> anyhow::Result<()> {
    run_group(&Group {
        name: "run",
        dockerfile: r#"FROM base AS new-files
RUN mkdir -p /srv/a && echo hi > /srv/a/f && ln -s f /srv/a/l && ln /srv/a/f /srv/a/h

FROM base AS delete
RUN rm /etc/group && rm -r /root

FROM base AS chmod-base
RUN chmod 600 /etc/passwd && chown 1:1 /etc/group

FROM base AS touch-dated
RUN echo x > /dated && touch -t 202001020304 /dated

FROM base AS copied-then-chmod
COPY a.txt /a.txt
RUN chmod 600 /a.txt

FROM base AS replace-dir-with-file
RUN rm -r /root && echo file > /root

FROM base AS env-in-run
ENV GREETING=hello
ARG WHO=world
RUN echo "$GREETING $WHO $PATH" > /out
"#,
        files: &[("a.txt", "alpha\n")],
        args: &[],
        cases: &[
            Case {
                stage: "new-files",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "delete",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "chmod-base",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "touch-dated",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "copied-then-chmod",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "replace-dir-with-file",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "env-in-run",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
        ],
    })
}

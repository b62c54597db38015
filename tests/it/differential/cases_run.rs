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

/// The epoch of the mtime rule comes from SOURCE_DATE_EPOCH (kiln only: BuildKit 0.8 has no
/// SOURCE_DATE_EPOCH): what the RUN dated gets it, older dates stay.
#[test]
fn run_dates_get_source_date_epoch() -> anyhow::Result<()> {
    let Some(t) = crate::harness::busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox\nRUN echo new > /new && touch -t 201901010000 /old && chmod 600 /etc/group\n",
    );
    let ctx = t.ctx.to_str().unwrap_or_default().to_owned();
    let out = t
        .cmd(&["build", "-t", "epoch:1", &ctx])
        .env("SOURCE_DATE_EPOCH", "1234567890")
        .output()?;
    anyhow::ensure!(out.status.success(), "{}", crate::harness::text(&out));
    let tar = t.dir.path().join("epoch.tar");
    t.ok(&["save", "-o", tar.to_str().unwrap_or_default(), "epoch:1"])?;
    let image = super::read_archive(&tar)?;
    let mtime = |p: &str| image.files.get(p).map(|e| e.mtime);
    anyhow::ensure!(mtime("new") == Some(1_234_567_890), "{:?}", mtime("new"));
    anyhow::ensure!(mtime("etc") == Some(1_234_567_890), "{:?}", mtime("etc"));
    // Dated by the step on purpose, and a base file (dated 0) copied up by chmod: kept.
    anyhow::ensure!(mtime("old") == Some(1_546_300_800), "{:?}", mtime("old"));
    anyhow::ensure!(mtime("etc/group") == Some(0), "{:?}", mtime("etc/group"));
    Ok(())
}

//! Multi-stage builds: COPY --from a stage, an image or an index, owners and modes across
//! stages, stages built on stages. RUN stages carry BuildKit 0.8's mount points (see
//! `cases_run`).

use super::{Case, Group, run_group};

#[test]
fn multi_stage() -> anyhow::Result<()> {
    run_group(&Group {
        name: "stages",
        dockerfile: r#"FROM base AS builder
RUN mkdir -p /out/bin && echo tool > /out/bin/tool && chmod 750 /out/bin/tool && chown 5:6 /out/bin/tool && ln -s tool /out/bin/alias

FROM scratch AS from-stage
COPY --from=builder /out /app

FROM scratch AS from-stage-file
COPY --from=builder /out/bin/tool /usr/bin/

FROM scratch AS from-stage-keeps-owner
COPY --from=builder /out/bin/ /b/

FROM scratch AS from-stage-chown
COPY --from=builder --chown=7:8 /out/bin/ /b/

FROM scratch AS from-index
COPY --from=0 /out/bin/alias /alias

FROM scratch AS from-image
COPY --from=base /etc/passwd /etc/group /etc/

FROM builder AS stage-on-stage
RUN echo more >> /out/bin/tool

FROM base AS from-stage-symlink-dir
COPY --from=builder /out/bin/alias /bin/alias2
"#,
        files: &[],
        args: &[],
        cases: &[
            Case {
                stage: "builder",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "from-stage",
                expect: &[],
            },
            Case {
                stage: "from-stage-file",
                expect: &[],
            },
            Case {
                stage: "from-stage-keeps-owner",
                expect: &[],
            },
            Case {
                stage: "from-stage-chown",
                expect: &[],
            },
            Case {
                stage: "from-index",
                expect: &[],
            },
            Case {
                stage: "from-image",
                expect: &[],
            },
            Case {
                stage: "stage-on-stage",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "from-stage-symlink-dir",
                expect: &[],
            },
        ],
    })
}

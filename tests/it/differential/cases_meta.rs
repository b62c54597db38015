//! Metadata instructions and expansion: ENV, ARG, WORKDIR, USER, LABEL, EXPOSE, VOLUME, CMD,
//! ENTRYPOINT, STOPSIGNAL, HEALTHCHECK, SHELL, ONBUILD.

use super::{Case, Group, run_group};

#[test]
fn metadata_instructions() -> anyhow::Result<()> {
    run_group(&Group {
        name: "meta",
        dockerfile: r#"FROM base AS plain

FROM base AS env
ENV A=1 B="two words" C=${A}-x
ENV D $B

FROM base AS labels
LABEL a=1 "b c"="d e"
LABEL a=2

FROM base AS expose
EXPOSE 80 443/tcp 53/udp

FROM base AS volume
VOLUME /data ["/logs", "/cache"]

FROM base AS cmd-exec
CMD ["echo", "hi"]

FROM base AS cmd-shell
CMD echo hi

FROM base AS entrypoint
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo hi"]

FROM base AS entrypoint-resets-cmd
CMD ["x"]
ENTRYPOINT ["/bin/true"]

FROM base AS stopsignal
STOPSIGNAL SIGQUIT

FROM base AS healthcheck
HEALTHCHECK --interval=5s --timeout=2s --retries=4 CMD wget -q localhost

FROM base AS healthcheck-none
HEALTHCHECK NONE

FROM base AS shell
SHELL ["/bin/sh", "-ec"]
CMD echo hi

FROM base AS onbuild
ONBUILD RUN echo later

FROM base AS user
USER nobody:nogroup

FROM base AS workdir
WORKDIR /a
WORKDIR b
WORKDIR ../c
"#,
        files: &[],
        args: &[],
        cases: &[
            Case {
                stage: "plain",
                expect: &[],
            },
            Case {
                stage: "env",
                expect: &[],
            },
            Case {
                stage: "labels",
                expect: &[],
            },
            Case {
                stage: "expose",
                expect: &[],
            },
            Case {
                stage: "volume",
                expect: &[],
            },
            Case {
                stage: "cmd-exec",
                expect: &[],
            },
            Case {
                stage: "cmd-shell",
                expect: &[],
            },
            Case {
                stage: "entrypoint",
                expect: &[],
            },
            Case {
                stage: "entrypoint-resets-cmd",
                expect: &[],
            },
            Case {
                stage: "stopsignal",
                expect: &[],
            },
            Case {
                stage: "healthcheck",
                expect: &[],
            },
            Case {
                stage: "healthcheck-none",
                expect: &[],
            },
            Case {
                stage: "shell",
                expect: &[],
            },
            Case {
                stage: "onbuild",
                expect: &[],
            },
            Case {
                stage: "user",
                expect: &[],
            },
            Case {
                stage: "workdir",
                expect: &[],
            },
        ],
    })
}

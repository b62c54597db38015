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

#[test]
fn metadata_variants() -> anyhow::Result<()> {
    run_group(&Group {
        name: "meta2",
        dockerfile: r#"FROM base AS expose-range
EXPOSE 8000-8002 9000/udp

FROM base AS stopsignal-number
STOPSIGNAL 9

FROM base AS entrypoint-shell
ENTRYPOINT exec top -b

FROM base AS last-cmd-wins
CMD ["first"]
CMD ["second"]

FROM base AS healthcheck-shell
HEALTHCHECK --start-period=3s CMD echo ok || exit 1

FROM base AS healthcheck-exec
HEALTHCHECK CMD ["/bin/true"]

FROM base AS user-uid
USER 1000

FROM base AS label-from-arg
ARG VERSION=1.2.3
LABEL version=$VERSION "multi word"="x y" empty=""

FROM base AS volume-expanded
ENV V=/vol
VOLUME $V ${V}2

FROM base AS workdir-root
WORKDIR /

FROM base AS env-multiline
ENV A=1 \
    B=2 \
    C="three four"

FROM base AS inherited-meta
ENV X=1
LABEL l=1
FROM base AS x-unused
FROM inherited-meta AS child
ENV Y=$X
"#,
        files: &[],
        args: &[],
        cases: &[
            Case {
                stage: "expose-range",
                expect: &[],
            },
            Case {
                stage: "stopsignal-number",
                expect: &[],
            },
            Case {
                stage: "entrypoint-shell",
                expect: &[],
            },
            Case {
                stage: "last-cmd-wins",
                expect: &[],
            },
            Case {
                stage: "healthcheck-shell",
                expect: &[],
            },
            Case {
                stage: "healthcheck-exec",
                expect: &[],
            },
            Case {
                stage: "user-uid",
                expect: &[],
            },
            Case {
                stage: "label-from-arg",
                expect: &[],
            },
            Case {
                stage: "volume-expanded",
                expect: &[],
            },
            Case {
                stage: "workdir-root",
                expect: &[],
            },
            Case {
                stage: "env-multiline",
                expect: &[],
            },
            Case {
                stage: "child",
                expect: &[],
            },
        ],
    })
}

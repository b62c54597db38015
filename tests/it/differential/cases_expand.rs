//! Variable expansion: ARG and ENV in WORKDIR, USER, COPY, LABEL, EXPOSE, ENV; defaults and
//! build-arg overrides; WORKDIR and USER effects on COPY and RUN.
//!
//! RUN cases carry BuildKit 0.8's mount points (see `cases_run`). `USER nobody` runs with
//! supplementary group 65534 in kiln (`id` prints `groups=65534(nogroup)`), with none in
//! BuildKit 0.8 (nobody is no group's member): newer BuildKit adds the primary group to the
//! supplementary ones as kiln does (v0.24 checked in `cases_v024::user-nobody`), so kiln keeps
//! it and this case asserts the difference from 0.8.

use super::{Case, Group, run_group};

#[test]
fn arg_and_env_expansion() -> anyhow::Result<()> {
    run_group(&Group {
        name: "expand",
        dockerfile: r#"ARG GLOBAL=global-default
ARG OVERRIDDEN=default

FROM base AS global-arg
ARG GLOBAL
LABEL g=$GLOBAL o=${OVERRIDDEN:-unset}

FROM base AS overridden
ARG OVERRIDDEN
ENV O=$OVERRIDDEN

FROM base AS defaults
ENV A=${MISSING:-fallback} B=${A:+set} C="${A}_x" D='$A'

FROM base AS workdir-env
ENV DIR=/srv/app
WORKDIR $DIR/sub
COPY a.txt .

FROM base AS user-arg
ARG UID=4321
USER $UID:$UID
WORKDIR /home/u
RUN echo hi > f

FROM base AS expose-arg
ARG PORT=8080
EXPOSE $PORT ${PORT}/udp

FROM base AS copy-dest-env
ENV DEST=/opt/dst
COPY a.txt $DEST/

FROM base AS env-replaced
ENV A=1
ENV A=2 B=$A

FROM base AS workdir-relative-chain
WORKDIR /x
WORKDIR y
WORKDIR ../z
RUN pwd > /pwd

FROM base AS arg-in-run
ARG V=from-arg
RUN echo "$V" > /v

FROM base AS user-name
USER nobody
RUN id > /tmp/id || true

FROM base AS escaped
ENV E=\$notexpanded
LABEL l="a \"quoted\" value"
"#,
        files: &[("a.txt", "alpha\n")],
        args: &["--build-arg", "OVERRIDDEN=given", "--build-arg", "UNUSED=x"],
        cases: &[
            Case {
                stage: "global-arg",
                expect: &[],
            },
            Case {
                stage: "overridden",
                expect: &[],
            },
            Case {
                stage: "defaults",
                expect: &[],
            },
            Case {
                stage: "workdir-env",
                expect: &[],
            },
            Case {
                stage: "user-arg",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "expose-arg",
                expect: &[],
            },
            Case {
                stage: "copy-dest-env",
                expect: &[],
            },
            Case {
                stage: "env-replaced",
                expect: &[],
            },
            Case {
                stage: "workdir-relative-chain",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "arg-in-run",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "user-name",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                    "/tmp/id digest kiln=6527e0b2524b docker=f7f29a7c3d14",
                    "/tmp/id size kiln=59 docker=37",
                ],
            },
            Case {
                stage: "escaped",
                expect: &[],
            },
        ],
    })
}

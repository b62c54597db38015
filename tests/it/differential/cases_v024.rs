//! Cases compared with BuildKit v0.24.0 (dockerfile frontend 1.18) instead of docker's 0.8,
//! for what 0.8 lacks or does differently from newer BuildKit: `COPY --link`, and the
//! supplementary groups of a `USER` that names no group. (docker 20.10's BuildKit 0.8 refuses
//! `--link`: `dockerfile parse error line 2: Unknown flag: link`.)
//!
//! How the stored results ([`ORACLE`]) were produced, outside the project: BuildKit v0.24.0
//! (moby/buildkit tag v0.24.0) built from its vendored sources with Debian's golang-1.23
//! (bookworm-backports), `go build -mod=vendor ./cmd/buildkitd ./cmd/buildctl`; buildkitd
//! with its OCI worker and runc; each stage built with `buildctl build --frontend
//! dockerfile.v0 --opt target=STAGE --no-cache --output type=oci`, `FROM base` being an OCI
//! layout of the same busybox tar as [`super::busybox_tar`] (`--oci-layout` and
//! `context:base=oci-layout://`), the context written as [`super::write_context`] does; each
//! image flattened as [`super::read_archive`] does (`/bin` left out) and its dates after the
//! context's written `now`.
//!
//! What BuildKit v0.24 does with `--link` (and kiln does the same): the copy runs on an empty
//! layer that is stacked on the stage, so a destination without a trailing `/` is a file even
//! where the stage has a directory (`/srv/real` becomes a file), a symlink in the way is
//! replaced rather than followed (`/srv/dirlink/` becomes a directory, `/srv/filelink` a
//! file), and the directories the copy creates (mode 755, owned by `--chown`'s owner, the
//! copied directory's own mode and date for its destination) shadow the stage's: `/tmp` loses
//! its sticky bit, `/root` becomes 755, an existing `/srv/owned` owned 9:9 with mode 700
//! becomes 755 0:0. With `--chmod` BuildKit makes it a plain copy; a `--chown` name fails in
//! both (the empty layer has no /etc/passwd).
//!
//! `USER nobody` (no group): BuildKit v0.24 runs the step with the user's primary group as its
//! supplementary group too (`groups=65534(nogroup)`), as kiln does; BuildKit 0.8 gave none
//! (see `cases_expand`, which asserts that difference from 0.8).
//!
//! Every RUN-based case lists BuildKit's empty `/dev`, `/proc`, `/sys` mount points, which
//! kiln's RUN layers do not hold (as in `cases_run`); files BuildKit dated with its clock
//! carry kiln's epoch (the suite's one rule, see [`super::compare`]).

use super::{Case, Group, run_oracle_group};

#[test]
fn copy_link_and_user_groups_as_buildkit_v024() -> anyhow::Result<()> {
    run_oracle_group(
        &Group {
            name: "v024",
            dockerfile: r#"FROM base AS prep
RUN mkdir -p /srv/owned /srv/real && chown 9:9 /srv/owned && chmod 700 /srv/owned && ln -s real /srv/dirlink && ln -s /etc/passwd /srv/filelink && echo old > /srv/real/keep

FROM prep AS link-onto-owned-dir
COPY --link dir /srv/owned/

FROM prep AS link-onto-owned-dir-chown
COPY --link --chown=1:2 dir /srv/owned/

FROM prep AS link-through-dir-symlink
COPY --link a.txt /srv/dirlink/

FROM prep AS link-dir-through-dir-symlink
COPY --link dir /srv/dirlink/

FROM prep AS link-onto-file-symlink
COPY --link a.txt /srv/filelink

FROM prep AS link-file-over-file
COPY --link a.txt /srv/real/keep

FROM prep AS link-dir-name-no-slash
COPY --link a.txt /srv/real

FROM prep AS link-into-tmp-sticky
COPY --link a.txt /tmp/

FROM prep AS link-into-root-700
COPY --link a.txt /root/

FROM prep AS link-chown-name
COPY --link --chown=nobody a.txt /srv/

FROM prep AS link-chmod
COPY --link --chmod=600 a.txt /srv/owned/

FROM prep AS link-from-stage
COPY --link --from=prep /srv/real /srv/copied

FROM prep AS link-workdir
WORKDIR /srv/owned
COPY --link a.txt .

FROM prep AS link-new-parents
COPY --link a.txt /new/deep/dir/

FROM base AS user-nobody
USER nobody
RUN id > /tmp/id

FROM base AS user-nobody-group
USER nobody:root
RUN id > /tmp/id

FROM base AS link-heredoc
COPY --link <<EOT /srv/owned/h.txt
hello
EOT
"#,
            files: &[
                ("a.txt", "alpha\n"),
                ("dir/one", "1\n"),
                ("dir/sub/two", "2\n"),
            ],
            args: &[],
            cases: &[
                Case {
                    stage: "link-onto-owned-dir",
                    expect: &[
                        "/dev exists kiln=- docker=dir",
                        "/proc exists kiln=- docker=dir",
                        "/sys exists kiln=- docker=dir",
                    ],
                },
                Case {
                    stage: "link-onto-owned-dir-chown",
                    expect: &[
                        "/dev exists kiln=- docker=dir",
                        "/proc exists kiln=- docker=dir",
                        "/sys exists kiln=- docker=dir",
                    ],
                },
                Case {
                    stage: "link-through-dir-symlink",
                    expect: &[
                        "/dev exists kiln=- docker=dir",
                        "/proc exists kiln=- docker=dir",
                        "/sys exists kiln=- docker=dir",
                    ],
                },
                Case {
                    stage: "link-dir-through-dir-symlink",
                    expect: &[
                        "/dev exists kiln=- docker=dir",
                        "/proc exists kiln=- docker=dir",
                        "/sys exists kiln=- docker=dir",
                    ],
                },
                Case {
                    stage: "link-onto-file-symlink",
                    expect: &[
                        "/dev exists kiln=- docker=dir",
                        "/proc exists kiln=- docker=dir",
                        "/sys exists kiln=- docker=dir",
                    ],
                },
                Case {
                    stage: "link-file-over-file",
                    expect: &[
                        "/dev exists kiln=- docker=dir",
                        "/proc exists kiln=- docker=dir",
                        "/sys exists kiln=- docker=dir",
                    ],
                },
                Case {
                    stage: "link-dir-name-no-slash",
                    expect: &[
                        "/dev exists kiln=- docker=dir",
                        "/proc exists kiln=- docker=dir",
                        "/sys exists kiln=- docker=dir",
                    ],
                },
                Case {
                    stage: "link-into-tmp-sticky",
                    expect: &[
                        "/dev exists kiln=- docker=dir",
                        "/proc exists kiln=- docker=dir",
                        "/sys exists kiln=- docker=dir",
                    ],
                },
                Case {
                    stage: "link-into-root-700",
                    expect: &[
                        "/dev exists kiln=- docker=dir",
                        "/proc exists kiln=- docker=dir",
                        "/sys exists kiln=- docker=dir",
                    ],
                },
                Case {
                    stage: "link-chown-name",
                    expect: &[
                        "both fail (kiln error: Dockerfile:32: COPY --link --chown=nobody a.txt /srv/: COPY failed: --chown=nobody: unable to find user nobody: no matching entries in passwd file; buildkit failed to solve: invalid user index: -1)",
                    ],
                },
                Case {
                    stage: "link-chmod",
                    expect: &[
                        "/dev exists kiln=- docker=dir",
                        "/proc exists kiln=- docker=dir",
                        "/sys exists kiln=- docker=dir",
                    ],
                },
                Case {
                    stage: "link-from-stage",
                    expect: &[
                        "/dev exists kiln=- docker=dir",
                        "/proc exists kiln=- docker=dir",
                        "/sys exists kiln=- docker=dir",
                    ],
                },
                Case {
                    stage: "link-workdir",
                    expect: &[
                        "/dev exists kiln=- docker=dir",
                        "/proc exists kiln=- docker=dir",
                        "/sys exists kiln=- docker=dir",
                    ],
                },
                Case {
                    stage: "link-new-parents",
                    expect: &[
                        "/dev exists kiln=- docker=dir",
                        "/proc exists kiln=- docker=dir",
                        "/sys exists kiln=- docker=dir",
                    ],
                },
                Case {
                    stage: "user-nobody",
                    expect: &[
                        "/dev exists kiln=- docker=dir",
                        "/proc exists kiln=- docker=dir",
                        "/sys exists kiln=- docker=dir",
                    ],
                },
                Case {
                    stage: "user-nobody-group",
                    expect: &[
                        "/dev exists kiln=- docker=dir",
                        "/proc exists kiln=- docker=dir",
                        "/sys exists kiln=- docker=dir",
                    ],
                },
                Case {
                    stage: "link-heredoc",
                    expect: &[],
                },
            ],
        },
        ORACLE,
    )
}

/// BuildKit v0.24.0's images of the stages above (see the module doc).
#[rustfmt::skip]
const ORACLE: &[(&str, &str)] = &[
    (
        "link-onto-owned-dir",
        r#"/dev dir 755 0:0 0 - - now
/etc dir 755 0:0 0 - - 0
/etc/group file 644 0:0 27 bc0b500e77f3 - 0
/etc/passwd file 644 0:0 71 1495b4425561 - 0
/proc dir 755 0:0 0 - - now
/root dir 700 0:0 0 - - 0
/srv dir 755 0:0 0 - - now
/srv/dirlink symlink 777 0:0 0 - real now
/srv/filelink symlink 777 0:0 0 - /etc/passwd now
/srv/owned dir 755 0:0 0 - - 1609372800
/srv/owned/one file 644 0:0 2 4355a46b19d3 - 1609459200
/srv/owned/sub dir 755 0:0 0 - - 1609372800
/srv/owned/sub/two file 644 0:0 2 53c234e5e847 - 1609459200
/srv/real dir 755 0:0 0 - - now
/srv/real/keep file 644 0:0 4 01d09d19c213 - now
/sys dir 755 0:0 0 - - now
/tmp dir 1777 0:0 0 - - 0
/usr dir 755 0:0 0 - - 0
config {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}"#,
    ),
    (
        "link-onto-owned-dir-chown",
        r#"/dev dir 755 0:0 0 - - now
/etc dir 755 0:0 0 - - 0
/etc/group file 644 0:0 27 bc0b500e77f3 - 0
/etc/passwd file 644 0:0 71 1495b4425561 - 0
/proc dir 755 0:0 0 - - now
/root dir 700 0:0 0 - - 0
/srv dir 755 1:2 0 - - now
/srv/dirlink symlink 777 0:0 0 - real now
/srv/filelink symlink 777 0:0 0 - /etc/passwd now
/srv/owned dir 755 1:2 0 - - 1609372800
/srv/owned/one file 644 1:2 2 4355a46b19d3 - 1609459200
/srv/owned/sub dir 755 1:2 0 - - 1609372800
/srv/owned/sub/two file 644 1:2 2 53c234e5e847 - 1609459200
/srv/real dir 755 0:0 0 - - now
/srv/real/keep file 644 0:0 4 01d09d19c213 - now
/sys dir 755 0:0 0 - - now
/tmp dir 1777 0:0 0 - - 0
/usr dir 755 0:0 0 - - 0
config {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}"#,
    ),
    (
        "link-through-dir-symlink",
        r#"/dev dir 755 0:0 0 - - now
/etc dir 755 0:0 0 - - 0
/etc/group file 644 0:0 27 bc0b500e77f3 - 0
/etc/passwd file 644 0:0 71 1495b4425561 - 0
/proc dir 755 0:0 0 - - now
/root dir 700 0:0 0 - - 0
/srv dir 755 0:0 0 - - now
/srv/dirlink dir 755 0:0 0 - - now
/srv/dirlink/a.txt file 644 0:0 6 b6a98d9ce9a2 - 1609459200
/srv/filelink symlink 777 0:0 0 - /etc/passwd now
/srv/owned dir 700 9:9 0 - - now
/srv/real dir 755 0:0 0 - - now
/srv/real/keep file 644 0:0 4 01d09d19c213 - now
/sys dir 755 0:0 0 - - now
/tmp dir 1777 0:0 0 - - 0
/usr dir 755 0:0 0 - - 0
config {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}"#,
    ),
    (
        "link-dir-through-dir-symlink",
        r#"/dev dir 755 0:0 0 - - now
/etc dir 755 0:0 0 - - 0
/etc/group file 644 0:0 27 bc0b500e77f3 - 0
/etc/passwd file 644 0:0 71 1495b4425561 - 0
/proc dir 755 0:0 0 - - now
/root dir 700 0:0 0 - - 0
/srv dir 755 0:0 0 - - now
/srv/dirlink dir 755 0:0 0 - - 1609372800
/srv/dirlink/one file 644 0:0 2 4355a46b19d3 - 1609459200
/srv/dirlink/sub dir 755 0:0 0 - - 1609372800
/srv/dirlink/sub/two file 644 0:0 2 53c234e5e847 - 1609459200
/srv/filelink symlink 777 0:0 0 - /etc/passwd now
/srv/owned dir 700 9:9 0 - - now
/srv/real dir 755 0:0 0 - - now
/srv/real/keep file 644 0:0 4 01d09d19c213 - now
/sys dir 755 0:0 0 - - now
/tmp dir 1777 0:0 0 - - 0
/usr dir 755 0:0 0 - - 0
config {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}"#,
    ),
    (
        "link-onto-file-symlink",
        r#"/dev dir 755 0:0 0 - - now
/etc dir 755 0:0 0 - - 0
/etc/group file 644 0:0 27 bc0b500e77f3 - 0
/etc/passwd file 644 0:0 71 1495b4425561 - 0
/proc dir 755 0:0 0 - - now
/root dir 700 0:0 0 - - 0
/srv dir 755 0:0 0 - - now
/srv/dirlink symlink 777 0:0 0 - real now
/srv/filelink file 644 0:0 6 b6a98d9ce9a2 - 1609459200
/srv/owned dir 700 9:9 0 - - now
/srv/real dir 755 0:0 0 - - now
/srv/real/keep file 644 0:0 4 01d09d19c213 - now
/sys dir 755 0:0 0 - - now
/tmp dir 1777 0:0 0 - - 0
/usr dir 755 0:0 0 - - 0
config {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}"#,
    ),
    (
        "link-file-over-file",
        r#"/dev dir 755 0:0 0 - - now
/etc dir 755 0:0 0 - - 0
/etc/group file 644 0:0 27 bc0b500e77f3 - 0
/etc/passwd file 644 0:0 71 1495b4425561 - 0
/proc dir 755 0:0 0 - - now
/root dir 700 0:0 0 - - 0
/srv dir 755 0:0 0 - - now
/srv/dirlink symlink 777 0:0 0 - real now
/srv/filelink symlink 777 0:0 0 - /etc/passwd now
/srv/owned dir 700 9:9 0 - - now
/srv/real dir 755 0:0 0 - - now
/srv/real/keep file 644 0:0 6 b6a98d9ce9a2 - 1609459200
/sys dir 755 0:0 0 - - now
/tmp dir 1777 0:0 0 - - 0
/usr dir 755 0:0 0 - - 0
config {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}"#,
    ),
    (
        "link-dir-name-no-slash",
        r#"/dev dir 755 0:0 0 - - now
/etc dir 755 0:0 0 - - 0
/etc/group file 644 0:0 27 bc0b500e77f3 - 0
/etc/passwd file 644 0:0 71 1495b4425561 - 0
/proc dir 755 0:0 0 - - now
/root dir 700 0:0 0 - - 0
/srv dir 755 0:0 0 - - now
/srv/dirlink symlink 777 0:0 0 - real now
/srv/filelink symlink 777 0:0 0 - /etc/passwd now
/srv/owned dir 700 9:9 0 - - now
/srv/real file 644 0:0 6 b6a98d9ce9a2 - 1609459200
/sys dir 755 0:0 0 - - now
/tmp dir 1777 0:0 0 - - 0
/usr dir 755 0:0 0 - - 0
config {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}"#,
    ),
    (
        "link-into-tmp-sticky",
        r#"/dev dir 755 0:0 0 - - now
/etc dir 755 0:0 0 - - 0
/etc/group file 644 0:0 27 bc0b500e77f3 - 0
/etc/passwd file 644 0:0 71 1495b4425561 - 0
/proc dir 755 0:0 0 - - now
/root dir 700 0:0 0 - - 0
/srv dir 755 0:0 0 - - now
/srv/dirlink symlink 777 0:0 0 - real now
/srv/filelink symlink 777 0:0 0 - /etc/passwd now
/srv/owned dir 700 9:9 0 - - now
/srv/real dir 755 0:0 0 - - now
/srv/real/keep file 644 0:0 4 01d09d19c213 - now
/sys dir 755 0:0 0 - - now
/tmp dir 755 0:0 0 - - now
/tmp/a.txt file 644 0:0 6 b6a98d9ce9a2 - 1609459200
/usr dir 755 0:0 0 - - 0
config {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}"#,
    ),
    (
        "link-into-root-700",
        r#"/dev dir 755 0:0 0 - - now
/etc dir 755 0:0 0 - - 0
/etc/group file 644 0:0 27 bc0b500e77f3 - 0
/etc/passwd file 644 0:0 71 1495b4425561 - 0
/proc dir 755 0:0 0 - - now
/root dir 755 0:0 0 - - now
/root/a.txt file 644 0:0 6 b6a98d9ce9a2 - 1609459200
/srv dir 755 0:0 0 - - now
/srv/dirlink symlink 777 0:0 0 - real now
/srv/filelink symlink 777 0:0 0 - /etc/passwd now
/srv/owned dir 700 9:9 0 - - now
/srv/real dir 755 0:0 0 - - now
/srv/real/keep file 644 0:0 4 01d09d19c213 - now
/sys dir 755 0:0 0 - - now
/tmp dir 1777 0:0 0 - - 0
/usr dir 755 0:0 0 - - 0
config {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}"#,
    ),
    (
        "link-chown-name",
        r#"error: failed to solve: invalid user index: -1"#,
    ),
    (
        "link-chmod",
        r#"/dev dir 755 0:0 0 - - now
/etc dir 755 0:0 0 - - 0
/etc/group file 644 0:0 27 bc0b500e77f3 - 0
/etc/passwd file 644 0:0 71 1495b4425561 - 0
/proc dir 755 0:0 0 - - now
/root dir 700 0:0 0 - - 0
/srv dir 755 0:0 0 - - now
/srv/dirlink symlink 777 0:0 0 - real now
/srv/filelink symlink 777 0:0 0 - /etc/passwd now
/srv/owned dir 700 9:9 0 - - now
/srv/owned/a.txt file 600 0:0 6 b6a98d9ce9a2 - 1609459200
/srv/real dir 755 0:0 0 - - now
/srv/real/keep file 644 0:0 4 01d09d19c213 - now
/sys dir 755 0:0 0 - - now
/tmp dir 1777 0:0 0 - - 0
/usr dir 755 0:0 0 - - 0
config {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}"#,
    ),
    (
        "link-from-stage",
        r#"/dev dir 755 0:0 0 - - now
/etc dir 755 0:0 0 - - 0
/etc/group file 644 0:0 27 bc0b500e77f3 - 0
/etc/passwd file 644 0:0 71 1495b4425561 - 0
/proc dir 755 0:0 0 - - now
/root dir 700 0:0 0 - - 0
/srv dir 755 0:0 0 - - now
/srv/copied dir 755 0:0 0 - - now
/srv/copied/keep file 644 0:0 4 01d09d19c213 - now
/srv/dirlink symlink 777 0:0 0 - real now
/srv/filelink symlink 777 0:0 0 - /etc/passwd now
/srv/owned dir 700 9:9 0 - - now
/srv/real dir 755 0:0 0 - - now
/srv/real/keep file 644 0:0 4 01d09d19c213 - now
/sys dir 755 0:0 0 - - now
/tmp dir 1777 0:0 0 - - 0
/usr dir 755 0:0 0 - - 0
config {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}"#,
    ),
    (
        "link-workdir",
        r#"/dev dir 755 0:0 0 - - now
/etc dir 755 0:0 0 - - 0
/etc/group file 644 0:0 27 bc0b500e77f3 - 0
/etc/passwd file 644 0:0 71 1495b4425561 - 0
/proc dir 755 0:0 0 - - now
/root dir 700 0:0 0 - - 0
/srv dir 755 0:0 0 - - now
/srv/dirlink symlink 777 0:0 0 - real now
/srv/filelink symlink 777 0:0 0 - /etc/passwd now
/srv/owned dir 755 0:0 0 - - now
/srv/owned/a.txt file 644 0:0 6 b6a98d9ce9a2 - 1609459200
/srv/real dir 755 0:0 0 - - now
/srv/real/keep file 644 0:0 4 01d09d19c213 - now
/sys dir 755 0:0 0 - - now
/tmp dir 1777 0:0 0 - - 0
/usr dir 755 0:0 0 - - 0
config {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "WorkingDir": "/srv/owned"}"#,
    ),
    (
        "link-new-parents",
        r#"/dev dir 755 0:0 0 - - now
/etc dir 755 0:0 0 - - 0
/etc/group file 644 0:0 27 bc0b500e77f3 - 0
/etc/passwd file 644 0:0 71 1495b4425561 - 0
/new dir 755 0:0 0 - - now
/new/deep dir 755 0:0 0 - - now
/new/deep/dir dir 755 0:0 0 - - now
/new/deep/dir/a.txt file 644 0:0 6 b6a98d9ce9a2 - 1609459200
/proc dir 755 0:0 0 - - now
/root dir 700 0:0 0 - - 0
/srv dir 755 0:0 0 - - now
/srv/dirlink symlink 777 0:0 0 - real now
/srv/filelink symlink 777 0:0 0 - /etc/passwd now
/srv/owned dir 700 9:9 0 - - now
/srv/real dir 755 0:0 0 - - now
/srv/real/keep file 644 0:0 4 01d09d19c213 - now
/sys dir 755 0:0 0 - - now
/tmp dir 1777 0:0 0 - - 0
/usr dir 755 0:0 0 - - 0
config {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}"#,
    ),
    (
        "user-nobody",
        r#"/dev dir 755 0:0 0 - - now
/etc dir 755 0:0 0 - - 0
/etc/group file 644 0:0 27 bc0b500e77f3 - 0
/etc/passwd file 644 0:0 71 1495b4425561 - 0
/proc dir 755 0:0 0 - - now
/root dir 700 0:0 0 - - 0
/sys dir 755 0:0 0 - - now
/tmp dir 1777 0:0 0 - - now
/tmp/id file 644 65534:65534 59 6527e0b2524b - now
/usr dir 755 0:0 0 - - 0
config {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "User": "nobody"}"#,
    ),
    (
        "user-nobody-group",
        r#"/dev dir 755 0:0 0 - - now
/etc dir 755 0:0 0 - - 0
/etc/group file 644 0:0 27 bc0b500e77f3 - 0
/etc/passwd file 644 0:0 71 1495b4425561 - 0
/proc dir 755 0:0 0 - - now
/root dir 700 0:0 0 - - 0
/sys dir 755 0:0 0 - - now
/tmp dir 1777 0:0 0 - - now
/tmp/id file 644 65534:0 45 3941ef5ea31b - now
/usr dir 755 0:0 0 - - 0
config {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "User": "nobody:root"}"#,
    ),
    (
        "link-heredoc",
        r#"/etc dir 755 0:0 0 - - 0
/etc/group file 644 0:0 27 bc0b500e77f3 - 0
/etc/passwd file 644 0:0 71 1495b4425561 - 0
/root dir 700 0:0 0 - - 0
/srv dir 755 0:0 0 - - now
/srv/owned dir 755 0:0 0 - - now
/srv/owned/h.txt file 644 0:0 6 5891b5b522d5 - now
/tmp dir 1777 0:0 0 - - 0
/usr dir 755 0:0 0 - - 0
config {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}"#,
    ),
];

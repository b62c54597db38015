//! COPY onto what the base already has: existing directories (modes and owners kept or
//! replaced), symlinks to directories and to files, files replaced by directories. The
//! base comes from a RUN, so each case carries BuildKit 0.8's mount points (see `cases_run`);
//! copied directories keep their context date in kiln (see `cases_copy`).

use super::{Case, Group, run_group};

#[test]
fn copy_onto_existing() -> anyhow::Result<()> {
    run_group(&Group {
        name: "onto",
        dockerfile: r#"FROM base AS prep
RUN mkdir -p /srv/owned /srv/real && chown 9:9 /srv/owned && chmod 700 /srv/owned && ln -s real /srv/dirlink && ln -s /etc/passwd /srv/filelink && echo old > /srv/real/keep

FROM prep AS onto-owned-dir
COPY dir /srv/owned/

FROM prep AS onto-owned-dir-chown
COPY --chown=1:2 dir /srv/owned/

FROM prep AS through-dir-symlink
COPY a.txt /srv/dirlink/

FROM prep AS dir-through-dir-symlink
COPY dir /srv/dirlink/

FROM prep AS onto-file-symlink
COPY a.txt /srv/filelink

FROM prep AS file-over-dir-name
COPY a.txt /srv/real/keep

FROM prep AS into-tmp-sticky
COPY a.txt /tmp/

FROM prep AS into-root-700
COPY a.txt /root/
"#,
        files: &[
            ("a.txt", "alpha\n"),
            ("dir/one", "1\n"),
            ("dir/sub/two", "2\n"),
        ],
        args: &[],
        cases: &[
            Case {
                stage: "onto-owned-dir",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/srv/owned/sub mtime kiln=1609372800 docker=now",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "onto-owned-dir-chown",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/srv/owned/sub mtime kiln=1609372800 docker=now",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "through-dir-symlink",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "dir-through-dir-symlink",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/srv/real/sub mtime kiln=1609372800 docker=now",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "onto-file-symlink",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "file-over-dir-name",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "into-tmp-sticky",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
            Case {
                stage: "into-root-700",
                expect: &[
                    "/dev exists kiln=- docker=dir",
                    "/proc exists kiln=- docker=dir",
                    "/sys exists kiln=- docker=dir",
                ],
            },
        ],
    })
}

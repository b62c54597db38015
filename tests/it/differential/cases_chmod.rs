//! COPY --chmod (octal; BuildKit 0.8 has no symbolic modes): files, directories and their
//! contents, the parents a copy creates, files from another stage.
//!
//! Divergences asserted: kiln gives the --chmod mode to the parents a copy creates and to a
//! copied directory itself (as newer BuildKit, since fsutil#228); BuildKit 0.8 leaves them
//! 0755. BuildKit 0.8 drops the special bits of `--chmod=4755` (its Go `os.FileMode`
//! conversion loses 0o4000); kiln keeps them. Copied directories keep their context date in
//! kiln (see `cases_copy`).

use super::{Case, Group, run_group};

#[test]
fn copy_chmod() -> anyhow::Result<()> {
    run_group(&Group {
        name: "chmod",
        dockerfile: r#"FROM scratch AS file
COPY --chmod=600 a.txt /f

FROM scratch AS file-into-new-parents
COPY --chmod=640 a.txt /p/q/

FROM scratch AS dir
COPY --chmod=750 dir /d

FROM scratch AS with-chown
COPY --chmod=604 --chown=5:6 a.txt /o/

FROM base AS from-stage
COPY --chmod=700 --from=base /etc/passwd /copied

FROM scratch AS setuid
COPY --chmod=4755 a.txt /s
"#,
        files: &[
            ("a.txt", "alpha\n"),
            ("dir/one", "1\n"),
            ("dir/sub/two", "2\n"),
        ],
        args: &[],
        cases: &[
            Case {
                stage: "file",
                expect: &[],
            },
            Case {
                stage: "file-into-new-parents",
                expect: &[
                    "/p mode kiln=640 docker=755",
                    "/p/q mode kiln=640 docker=755",
                ],
            },
            Case {
                stage: "dir",
                expect: &[
                    "/d mode kiln=750 docker=755",
                    "/d mtime kiln=1609372800 docker=now",
                    "/d/sub mtime kiln=1609372800 docker=now",
                ],
            },
            Case {
                stage: "with-chown",
                expect: &["/o mode kiln=604 docker=755"],
            },
            Case {
                stage: "from-stage",
                expect: &[],
            },
            Case {
                stage: "setuid",
                expect: &["/s mode kiln=4755 docker=755"],
            },
        ],
    })
}

//! ADD: local archives are extracted (plain and gzip), other files copied; --chown on
//! ADD and COPY with names kiln does not know.
//!
//! Divergences asserted here: kiln refuses `--chown` with a name that the image's
//! /etc/passwd lacks (BuildKit 0.8 builds it), on purpose;
//! `ADD --chown` of a local archive: kiln gives the extracted entries that owner (as newer
//! BuildKit, whose unpack takes the chown), BuildKit 0.8 keeps the archive's owners.

use super::{Case, Group, run_group};

/// A context file holding the sample archive (see `super::write_context`).
const TAR: &str = "@tar";

#[test]
fn add_and_chown() -> anyhow::Result<()> {
    run_group(&Group {
        name: "add",
        dockerfile: r#"FROM scratch AS add-file
ADD a.txt /dst/

FROM scratch AS add-tar
ADD pkg.tar /opt/

FROM scratch AS add-tar-gz
ADD pkg.tar.gz /opt/

FROM scratch AS add-tar-renamed-not-extracted-name
ADD pkg.tar /opt/pkg

FROM base AS add-tar-into-existing
ADD pkg.tar /etc/

FROM base AS copy-tar-not-extracted
COPY pkg.tar /opt/

FROM base AS chown-unknown-name
COPY --chown=nosuchuser a.txt /dst/

FROM base AS add-chown
ADD --chown=3:4 pkg.tar a.txt /dst/
"#,
        files: &[("a.txt", "alpha\n"), ("pkg.tar", TAR), ("pkg.tar.gz", TAR)],
        args: &[],
        cases: &[
            Case {
                stage: "add-file",
                expect: &[],
            },
            Case {
                stage: "add-tar",
                expect: &[],
            },
            Case {
                stage: "add-tar-gz",
                expect: &[],
            },
            Case {
                stage: "add-tar-renamed-not-extracted-name",
                expect: &[],
            },
            Case {
                stage: "add-tar-into-existing",
                expect: &[],
            },
            Case {
                stage: "copy-tar-not-extracted",
                expect: &[],
            },
            Case {
                stage: "chown-unknown-name",
                expect: &[
                    "kiln fails (error: Dockerfile:20: COPY --chown=nosuchuser a.txt /dst/: COPY failed: --chown=nosuchuser: unable to find user nosuchuser: no matching entries in passwd file), docker builds",
                ],
            },
            Case {
                stage: "add-chown",
                expect: &[
                    "/dst/pkg owner kiln=3:4 docker=11:12",
                    "/dst/pkg/data owner kiln=3:4 docker=11:12",
                    "/dst/pkg/link owner kiln=3:4 docker=11:12",
                ],
            },
        ],
    })
}

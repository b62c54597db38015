//! The attestation files of `-o type=local` and `-o type=tar`: their names, modes and places
//! compared with what BuildKit v0.24.0's local and tar exporters wrote for the same builds
//! (one platform, two platforms, `platform-split=true|false`, `attestation-prefix`,
//! provenance alone and with an SBOM).
//!
//! How the listings below were produced, outside the project (CI has no oracle): BuildKit
//! v0.24.0's buildkitd and buildctl built from their vendored sources with Debian's
//! golang-1.23 (as `differential::cases_v024` says); each case built with `buildctl build
//! --frontend dockerfile.v0 --opt attest:provenance=mode=min [--opt
//! attest:sbom=generator=REGISTRY/scanner] [--opt platform=linux/amd64,linux/arm64] --output
//! type=local|tar,...` from the Dockerfiles below (the scanner: [`SCANNER`] on busybox,
//! pushed to a local CNCF registry; `Dockerfile.ctx` declares `ARG
//! BUILDKIT_SBOM_SCAN_CONTEXT=true`, which makes BuildKit scan the context as an extra); a local output listed with `find DEST -mindepth 1
//! -printf '%P %M\n' | sort`, a tar with `tar tvf` (mode and name, in the archive's order).
//!
//! Known difference: BuildKit's tar is one sorted walk of the files and the statements;
//! kiln writes a platform's statements after its files, so where a statement's name sorts
//! before a file's (`provenance.json` before `srv/`) the order differs, and those tars are
//! compared as sets.

use crate::harness::{TestDir, busybox_dir, privileged, text};
use anyhow::{Context as _, ensure};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// `ls -l`'s mode string of a type and permission bits.
fn ls_mode(kind: char, mode: u32) -> String {
    let mut s = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// `PATH MODE` of everything under `dir`, sorted (as `find -printf '%P %M'`).
fn local_listing(dir: &Path) -> anyhow::Result<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> anyhow::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let p = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = std::fs::symlink_metadata(e.path())?;
            let kind = if meta.is_dir() { 'd' } else { '-' };
            out.push(format!(
                "{p} {}",
                ls_mode(kind, meta.permissions().mode() & 0o777)
            ));
            if meta.is_dir() {
                walk(&e.path(), &p, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort();
    Ok(out.join("\n"))
}

/// `MODE NAME` of every entry of the tar `file`, in its order (as `tar tvf`).
fn tar_listing(file: &Path) -> anyhow::Result<Vec<String>> {
    let mut archive = tar::Archive::new(std::fs::File::open(file)?);
    let mut out = Vec::new();
    for e in archive.entries()? {
        let e = e?;
        let kind = if e.header().entry_type().is_dir() {
            'd'
        } else {
            '-'
        };
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        out.push(format!(
            "{} {name}",
            ls_mode(kind, e.header().mode()? & 0o777)
        ));
    }
    Ok(out)
}

/// One build: its name, its `kiln build` arguments (before the context), the Dockerfile
/// (`-f`), and BuildKit's listing.
struct Case {
    name: &'static str,
    args: &'static [&'static str],
    dockerfile: &'static str,
    oracle: &'static str,
}

const TWO: &str = "linux/amd64,linux/arm64";

const PROVENANCE: &[Case] = &[
    Case {
        name: "l1",
        args: &["--platform", "linux/amd64", "-o", "type=local,dest=OUT"],
        dockerfile: "Dockerfile",
        oracle: "hello.txt -rw-r--r--\nprovenance.json -rw-------",
    },
    Case {
        name: "l2",
        args: &["--platform", TWO, "-o", "type=local,dest=OUT"],
        dockerfile: "Dockerfile",
        oracle: "linux_amd64 drwxr-xr-x\nlinux_amd64/hello.txt -rw-r--r--\n\
                 linux_amd64/provenance.json -rw-------\nlinux_arm64 drwxr-xr-x\n\
                 linux_arm64/hello.txt -rw-r--r--\nlinux_arm64/provenance.json -rw-------",
    },
    Case {
        name: "l3",
        args: &[
            "--platform",
            TWO,
            "-o",
            "type=local,dest=OUT,platform-split=false",
        ],
        dockerfile: "Dockerfile.split",
        oracle: "hello-amd64.txt -rw-r--r--\nhello-arm64.txt -rw-r--r--\n\
                 provenance.linux_amd64.json -rw-------\nprovenance.linux_arm64.json -rw-------",
    },
    Case {
        name: "l4",
        args: &["--platform", "linux/arm64", "-o", "type=local,dest=OUT"],
        dockerfile: "Dockerfile",
        oracle: "hello.txt -rw-r--r--\nprovenance.json -rw-------",
    },
    Case {
        name: "l5",
        args: &[
            "--platform",
            TWO,
            "-o",
            "type=local,dest=OUT,attestation-prefix=att-",
        ],
        dockerfile: "Dockerfile.split",
        oracle: "linux_amd64 drwxr-xr-x\nlinux_amd64/att-provenance.json -rw-------\n\
                 linux_amd64/hello-amd64.txt -rw-r--r--\nlinux_arm64 drwxr-xr-x\n\
                 linux_arm64/att-provenance.json -rw-------\nlinux_arm64/hello-arm64.txt -rw-r--r--",
    },
    Case {
        name: "l6",
        args: &[
            "--platform",
            "linux/amd64",
            "-o",
            "type=local,dest=OUT,attestation-prefix=att-",
        ],
        dockerfile: "Dockerfile",
        oracle: "att-provenance.json -rw-------\nhello.txt -rw-r--r--",
    },
    Case {
        name: "l7",
        args: &[
            "--platform",
            TWO,
            "-o",
            "type=local,dest=OUT,platform-split=true,attestation-prefix=x.",
        ],
        dockerfile: "Dockerfile",
        oracle: "linux_amd64 drwxr-xr-x\nlinux_amd64/hello.txt -rw-r--r--\n\
                 linux_amd64/x.provenance.json -rw-------\nlinux_arm64 drwxr-xr-x\n\
                 linux_arm64/hello.txt -rw-r--r--\nlinux_arm64/x.provenance.json -rw-------",
    },
    Case {
        name: "l8",
        args: &[
            "--platform",
            "linux/amd64",
            "-o",
            "type=local,dest=OUT,platform-split=true",
        ],
        dockerfile: "Dockerfile",
        oracle: "linux_amd64 drwxr-xr-x\nlinux_amd64/hello.txt -rw-r--r--\n\
                 linux_amd64/provenance.json -rw-------",
    },
    Case {
        name: "t1",
        args: &["--platform", "linux/amd64", "-o", "type=tar,dest=OUT"],
        dockerfile: "Dockerfile",
        oracle: "-rw-r--r-- hello.txt\n-rw------- provenance.json",
    },
    Case {
        name: "t2",
        args: &["--platform", TWO, "-o", "type=tar,dest=OUT"],
        dockerfile: "Dockerfile",
        oracle: "drwxr-xr-x linux_amd64/\n-rw-r--r-- linux_amd64/hello.txt\n\
                 -rw------- linux_amd64/provenance.json\ndrwxr-xr-x linux_arm64/\n\
                 -rw-r--r-- linux_arm64/hello.txt\n-rw------- linux_arm64/provenance.json",
    },
    Case {
        name: "t3",
        args: &[
            "--platform",
            TWO,
            "-o",
            "type=tar,dest=OUT,platform-split=false",
        ],
        dockerfile: "Dockerfile",
        oracle: "drwxr-xr-x linux_amd64/\n-rw-r--r-- linux_amd64/hello.txt\n\
                 -rw------- linux_amd64/provenance.linux_amd64.json\ndrwxr-xr-x linux_arm64/\n\
                 -rw-r--r-- linux_arm64/hello.txt\n-rw------- linux_arm64/provenance.linux_arm64.json",
    },
    Case {
        name: "t4",
        args: &[
            "--platform",
            "linux/amd64",
            "-o",
            "type=tar,dest=OUT,platform-split=true",
        ],
        dockerfile: "Dockerfile",
        oracle: "-rw-r--r-- hello.txt\n-rw------- provenance.json",
    },
    Case {
        name: "t5",
        args: &[
            "--platform",
            TWO,
            "-o",
            "type=tar,dest=OUT,attestation-prefix=p-",
        ],
        dockerfile: "Dockerfile",
        oracle: "drwxr-xr-x linux_amd64/\n-rw-r--r-- linux_amd64/hello.txt\n\
                 -rw------- linux_amd64/p-provenance.json\ndrwxr-xr-x linux_arm64/\n\
                 -rw-r--r-- linux_arm64/hello.txt\n-rw------- linux_arm64/p-provenance.json",
    },
];

/// Runs `cases` in `t` (context already written) with `extra` arguments; returns what
/// differs from BuildKit's listings. A tar named in `unordered` is compared as a set.
fn run_cases(
    t: &TestDir,
    cases: &[Case],
    extra: &[&str],
    unordered: &[&str],
) -> anyhow::Result<Vec<String>> {
    let mut wrong = Vec::new();
    for c in cases {
        let out = t.dir.path().join(c.name);
        let out_s = out.to_str().context("utf-8")?;
        let df = t.ctx.join(c.dockerfile);
        let mut args: Vec<String> = vec!["build".into(), "-q".into(), "-f".into()];
        args.push(df.to_str().context("utf-8")?.to_owned());
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(c.args.iter().map(|a| a.replace("OUT", out_s)));
        args.push(t.ctx.to_str().context("utf-8")?.to_owned());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let built = t.kiln(&argv);
        ensure!(built.status.success(), "{}: {}", c.name, text(&built));
        let got = if c.name.starts_with('t') || c.name.ends_with(".tar") {
            let mut l = tar_listing(&out)?;
            if unordered.contains(&c.name) {
                l.sort();
                let mut want: Vec<&str> = c.oracle.lines().map(str::trim_start).collect();
                want.sort();
                if l != want {
                    wrong.push(format!(
                        "{}:\n{}\n--- BuildKit\n{}",
                        c.name,
                        l.join("\n"),
                        want.join("\n")
                    ));
                }
                continue;
            }
            l.join("\n")
        } else {
            local_listing(&out)?
        };
        let want: Vec<&str> = c.oracle.lines().map(str::trim_start).collect();
        if got != want.join("\n") {
            wrong.push(format!(
                "{} (kiln {}):\n{got}\n--- BuildKit\n{}",
                c.name,
                c.args.join(" "),
                want.join("\n")
            ));
        }
    }
    Ok(wrong)
}

#[test]
fn provenance_files_are_named_and_placed_as_buildkit_v024_does() -> anyhow::Result<()> {
    if !privileged(&[]) {
        return Ok(());
    }
    let t = TestDir::new();
    t.write("hello.txt", "hello\n");
    t.write("Dockerfile", "FROM scratch\nCOPY hello.txt /hello.txt\n");
    t.write(
        "Dockerfile.split",
        "FROM scratch\nARG TARGETARCH\nCOPY hello.txt /hello-$TARGETARCH.txt\n",
    );
    let wrong = run_cases(&t, PROVENANCE, &["--provenance=mode=min"], &[])?;
    ensure!(wrong.is_empty(), "{}", wrong.join("\n\n"));

    // Not split, two platforms holding one path: BuildKit's error.
    let out = t.dir.path().join("clash");
    let clash = t.kiln(&[
        "build",
        "--provenance=mode=min",
        "--platform",
        TWO,
        "-o",
        &format!("type=local,dest={},platform-split=false", out.display()),
        t.ctx.to_str().context("utf-8")?,
    ]);
    ensure!(
        !clash.status.success()
            && text(&clash).contains(
                "cannot overwrite hello.txt from linux/amd64 with linux/arm64 when split option is disabled"
            ),
        "{}",
        text(&clash)
    );
    // The statement's subject is the platform's files.
    let stmt: serde_json::Value = serde_json::from_slice(
        &std::fs::read(t.dir.path().join("l3/provenance.linux_arm64.json"))
            .context("l3 provenance")?,
    )?;
    ensure!(
        stmt["subject"][0]["name"] == "hello-arm64.txt"
            && stmt["subject"].as_array().map(Vec::len) == Some(1),
        "{stmt:#}"
    );
    Ok(())
}

/// The scanner: for its source and each extra, an in-toto statement holding an SPDX
/// document, named after the source's last path part (as BuildKit's own scanners name
/// their files).
const SCANNER: &str = r#"#!/bin/sh
set -e
for src in "$BUILDKIT_SCAN_SOURCE" ${BUILDKIT_SCAN_SOURCE_EXTRAS:+"$BUILDKIT_SCAN_SOURCE_EXTRAS"/*}; do
name=$(basename "$src")
cat > "$BUILDKIT_SCAN_DESTINATION/$name.spdx.json" <<SPDX_END
{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://spdx.dev/Document","predicate":{"spdxVersion":"SPDX-2.3","SPDXID":"SPDXRef-DOCUMENT","name":"$name","dataLicense":"CC0-1.0","packages":[]}}
SPDX_END
done
"#;

const SBOM: &[Case] = &[
    Case {
        name: "s1",
        args: &[
            "--provenance=mode=min",
            "--platform",
            "linux/amd64",
            "-o",
            "type=local,dest=OUT",
        ],
        dockerfile: "Dockerfile",
        oracle: "provenance.json -rw-------\nsbom.spdx.json -rw-------\nsrv drwxr-xr-x\n\
                 srv/alpha -rw-r--r--\nsrv/beta -rw-r--r--",
    },
    Case {
        name: "s2",
        args: &["--platform", "linux/amd64", "-o", "type=local,dest=OUT"],
        dockerfile: "Dockerfile",
        oracle: "sbom.spdx.json -rw-------\nsrv drwxr-xr-x\nsrv/alpha -rw-r--r--\n\
                 srv/beta -rw-r--r--",
    },
    Case {
        name: "s3",
        args: &[
            "--provenance=mode=min",
            "--platform",
            TWO,
            "-o",
            "type=local,dest=OUT",
        ],
        dockerfile: "Dockerfile",
        oracle: "linux_amd64 drwxr-xr-x\nlinux_amd64/provenance.json -rw-------\n\
                 linux_amd64/sbom.spdx.json -rw-------\nlinux_amd64/srv drwxr-xr-x\n\
                 linux_amd64/srv/alpha -rw-r--r--\nlinux_amd64/srv/beta -rw-r--r--\n\
                 linux_arm64 drwxr-xr-x\nlinux_arm64/provenance.json -rw-------\n\
                 linux_arm64/sbom.spdx.json -rw-------\nlinux_arm64/srv drwxr-xr-x\n\
                 linux_arm64/srv/alpha -rw-r--r--\nlinux_arm64/srv/beta -rw-r--r--",
    },
    Case {
        name: "s4.tar",
        args: &[
            "--provenance=mode=min",
            "--platform",
            TWO,
            "-o",
            "type=tar,dest=OUT,platform-split=false",
        ],
        dockerfile: "Dockerfile",
        oracle: "drwxr-xr-x linux_amd64/\n-rw------- linux_amd64/provenance.linux_amd64.json\n\
                 -rw------- linux_amd64/sbom.spdx.linux_amd64.json\ndrwxr-xr-x linux_amd64/srv/\n\
                 -rw-r--r-- linux_amd64/srv/alpha\n-rw-r--r-- linux_amd64/srv/beta\n\
                 drwxr-xr-x linux_arm64/\n-rw------- linux_arm64/provenance.linux_arm64.json\n\
                 -rw------- linux_arm64/sbom.spdx.linux_arm64.json\ndrwxr-xr-x linux_arm64/srv/\n\
                 -rw-r--r-- linux_arm64/srv/alpha\n-rw-r--r-- linux_arm64/srv/beta",
    },
    Case {
        name: "s6",
        args: &[
            "--provenance=mode=min",
            "--platform",
            "linux/amd64",
            "-o",
            "type=local,dest=OUT",
        ],
        dockerfile: "Dockerfile.ctx",
        oracle: "provenance.json -rw-------\nsbom-context.spdx.json -rw-------\n\
                 sbom.spdx.json -rw-------\nsrv drwxr-xr-x\nsrv/alpha -rw-r--r--\n\
                 srv/beta -rw-r--r--",
    },
    Case {
        name: "s5.tar",
        args: &[
            "--provenance=mode=min",
            "--platform",
            "linux/amd64",
            "-o",
            "type=tar,dest=OUT",
        ],
        dockerfile: "Dockerfile",
        oracle: "-rw------- provenance.json\n-rw------- sbom.spdx.json\ndrwxr-xr-x srv/\n\
                 -rw-r--r-- srv/alpha\n-rw-r--r-- srv/beta",
    },
];

#[test]
fn sbom_and_provenance_files_are_named_and_placed_as_buildkit_v024_does() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox\nCOPY scan.sh /scan.sh\nENTRYPOINT [\"/bin/sh\", \"/scan.sh\"]\n",
    );
    t.write("scan.sh", SCANNER);
    t.build("scanner:1", &[])?;
    t.write("Dockerfile", "FROM scratch\nCOPY srv/ /srv/\n");
    // Asks for the context to be scanned too: one more SBOM, `sbom-context.spdx.json`.
    t.write(
        "Dockerfile.ctx",
        "ARG BUILDKIT_SBOM_SCAN_CONTEXT=true\nFROM scratch\nCOPY srv/ /srv/\n",
    );
    t.write("srv/alpha", "");
    t.write("srv/beta", "");
    std::fs::remove_file(t.ctx.join("scan.sh"))?;
    let wrong = run_cases(
        &t,
        SBOM,
        &["--sbom=generator=scanner:1"],
        &["s4.tar", "s5.tar"],
    )?;
    ensure!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    // The SBOM statement is about the image's files and holds the scanner's document.
    let stmt: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.dir.path().join("s2/sbom.spdx.json"))?)?;
    ensure!(
        stmt["predicateType"] == "https://spdx.dev/Document"
            && stmt["predicate"]["name"] == "sbom"
            && stmt["subject"].as_array().map(Vec::len) == Some(2),
        "{stmt:#}"
    );
    Ok(())
}

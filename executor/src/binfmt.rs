//! Foreign-architecture programs: whether the kernel can run them through a qemu-user binfmt
//! handler that works inside a sandbox.
//!
//! A RUN step or container of another architecture than the host's execs its programs as
//! usual; the kernel hands them to the interpreter registered in binfmt_misc. The sandbox
//! pivots into the image's root, where the interpreter's path does not exist, so the handler
//! must be registered with the `F` (fix binary) flag: the kernel opens the interpreter at
//! registration. Debian's qemu-user-static registers its handlers that way
//! (`update-binfmts --enable`). This module only reads binfmt_misc; the directory is a
//! parameter so tests can point it at a fake one.

use std::path::{Path, PathBuf};

/// Where binfmt_misc is mounted.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// Why a foreign architecture cannot run.
#[derive(Debug, thiserror::Error)]
pub enum BinfmtError {
    /// binfmt_misc is not mounted (no `status` file).
    #[error(
        "cannot run {arch} programs: binfmt_misc is not mounted at {}\n\
         hint: mount -t binfmt_misc binfmt_misc {0}, then {REGISTER_HINT}",
        .dir.display()
    )]
    NotMounted {
        /// The architecture asked for (GOARCH).
        arch: String,
        /// The directory checked.
        dir: PathBuf,
    },
    /// No handler of that name, or it is disabled.
    #[error(
        "cannot run {arch} programs: no enabled binfmt_misc handler {} (qemu-user)\n\
         hint: {REGISTER_HINT}",
        .entry.display()
    )]
    NotRegistered {
        /// The architecture asked for (GOARCH).
        arch: String,
        /// The handler's file.
        entry: PathBuf,
    },
    /// The handler lacks the `F` flag, so the interpreter is looked up inside the image.
    #[error(
        "cannot run {arch} programs in a sandbox: binfmt_misc handler {} has flags {flags:?}, \
         without F (fix binary), so its interpreter would be looked up inside the image\n\
         hint: register it again with the F flag: {REGISTER_HINT}",
        .entry.display()
    )]
    NoFixBinary {
        /// The architecture asked for (GOARCH).
        arch: String,
        /// The handler's file.
        entry: PathBuf,
        /// Its flags as the kernel lists them.
        flags: String,
    },
    /// kiln does not know the qemu name of this architecture.
    #[error("cannot run {arch} programs: unknown architecture (no qemu-user handler name for it)")]
    UnknownArch {
        /// The architecture asked for (GOARCH).
        arch: String,
    },
}

const REGISTER_HINT: &str = "apt-get install qemu-user-static binfmt-support && \
     update-binfmts --enable (Debian registers qemu-user-static's handlers with the F flag)";

/// The qemu-user name of a GOARCH (`arm64` -> `aarch64`), as binfmt handlers are named.
pub fn qemu_arch(goarch: &str) -> Option<&'static str> {
    Some(match goarch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "arm" => "arm",
        "386" => "i386",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "mips64le" => "mips64el",
        "mips64" => "mips64",
        "loong64" => "loongarch64",
        _ => return None,
    })
}

/// Whether the host runs `goarch` programs without a handler (`host` is its GOARCH).
pub fn is_native(goarch: &str, host: &str) -> bool {
    goarch == host || (host == "amd64" && goarch == "386")
}

/// Checks that `goarch` programs run on this host (`host`: its GOARCH), in binfmt_misc at
/// `dir` ([`BINFMT_MISC`]): natively, or through an enabled `qemu-<arch>` handler with the
/// `F` flag.
///
/// `goarch` empty (an image that names no architecture) is taken as native.
///
/// Fails with what is missing and how to register it.
pub fn check(dir: &Path, goarch: &str, host: &str) -> Result<(), BinfmtError> {
    if goarch.is_empty() || is_native(goarch, host) {
        return Ok(());
    }
    let name = qemu_arch(goarch).ok_or_else(|| BinfmtError::UnknownArch {
        arch: goarch.to_owned(),
    })?;
    if !dir.join("status").exists() {
        return Err(BinfmtError::NotMounted {
            arch: goarch.to_owned(),
            dir: dir.to_owned(),
        });
    }
    let entry = dir.join(format!("qemu-{name}"));
    let text = std::fs::read_to_string(&entry).unwrap_or_default();
    let mut lines = text.lines();
    if lines.next() != Some("enabled") {
        return Err(BinfmtError::NotRegistered {
            arch: goarch.to_owned(),
            entry,
        });
    }
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap_or("")
        .trim()
        .to_owned();
    if !flags.contains('F') {
        return Err(BinfmtError::NoFixBinary {
            arch: goarch.to_owned(),
            entry,
            flags,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(entry: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("status"), "enabled\n").expect("status");
        if let Some(e) = entry {
            std::fs::write(d.path().join("qemu-aarch64"), e).expect("entry");
        }
        d
    }

    #[test]
    fn native_needs_no_handler() {
        let d = tempfile::tempdir().expect("tempdir");
        check(d.path(), "amd64", "amd64").expect("native");
        check(d.path(), "386", "amd64").expect("386 runs on amd64");
    }

    #[test]
    fn foreign_needs_an_enabled_fix_binary_handler() {
        let ok =
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n";
        check(fake(Some(ok)).path(), "arm64", "amd64").expect("registered with F");
        let no_f = ok.replace("flags: PF", "flags: P");
        assert!(matches!(
            check(fake(Some(&no_f)).path(), "arm64", "amd64"),
            Err(BinfmtError::NoFixBinary { .. })
        ));
        let off = ok.replace("enabled", "disabled");
        assert!(matches!(
            check(fake(Some(&off)).path(), "arm64", "amd64"),
            Err(BinfmtError::NotRegistered { .. })
        ));
        assert!(matches!(
            check(fake(None).path(), "arm64", "amd64"),
            Err(BinfmtError::NotRegistered { .. })
        ));
        let unmounted = tempfile::tempdir().expect("tempdir");
        let e = check(unmounted.path(), "arm64", "amd64").expect_err("not mounted");
        assert!(e.to_string().contains("mount -t binfmt_misc"), "{e}");
    }
}

//! Integration tests of the cache crate: real files, real tar, real tools (skopeo, umoci).

mod hostile;
mod layers;
mod save;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// True when privileged/tool preconditions must hold (CI): skipping turns into failing.
pub fn required() -> bool {
    std::env::var("REQUIRE_PRIVILEGED_TESTS").is_ok_and(|v| v == "1")
}

/// Returns false (and says why) when the test cannot run here; panics in CI instead.
pub fn precondition(ok: bool, what: &str) -> bool {
    if !ok {
        assert!(!required(), "precondition missing: {what}");
        eprintln!("skipping: {what}");
    }
    ok
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A stable text description of every entry below `root`: type, mode, owner, mtime (seconds),
/// size and content hash or link target or device, and xattrs (overlay ones included).
pub fn describe_tree(root: &Path, with_mtime: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, with_mtime, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, with_mtime: bool, out: &mut BTreeMap<String, String>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let m = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let ft = m.file_type();
        let what = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_file() {
            format!(
                "file {} {}",
                m.len(),
                cache::oci::Digest::of(&fs::read(&p).unwrap()).short()
            )
        } else if ft.is_symlink() {
            format!("symlink {}", fs::read_link(&p).unwrap().display())
        } else if ft.is_char_device() {
            format!("char {}", m.rdev())
        } else if ft.is_block_device() {
            format!("block {}", m.rdev())
        } else if ft.is_fifo() {
            "fifo".to_string()
        } else {
            "other".to_string()
        };
        let mut xattrs = Vec::new();
        if let Ok(list) = xattr_list(&p) {
            for name in list {
                let mut buf = vec![0u8; 1024];
                if let Ok(n) =
                    rustix::fs::lgetxattr(&p, std::ffi::OsStr::from_bytes(&name), &mut buf[..])
                {
                    xattrs.push(format!(
                        "{}={}",
                        String::from_utf8_lossy(&name),
                        String::from_utf8_lossy(&buf[..n])
                    ));
                }
            }
        }
        xattrs.sort();
        let mtime = if with_mtime && !ft.is_symlink() {
            m.mtime().to_string()
        } else {
            "-".into()
        };
        out.insert(
            rel,
            format!(
                "{what} mode={:o} {}:{} mtime={mtime} [{}]",
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                xattrs.join(",")
            ),
        );
        if ft.is_dir() {
            walk(root, &p, with_mtime, out);
        }
    }
}

fn xattr_list(p: &Path) -> rustix::io::Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut buf[..])?;
    Ok(buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| s.to_vec())
        .collect())
}

mod perf;

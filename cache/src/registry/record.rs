//! Where blobs are known to live: `KILN_ROOT/registry/blobs/<registry>/<hex>` holds the last
//! repository of that registry a blob was pushed to or pulled from. Push reads it to mount a
//! blob from a sibling repository instead of uploading it. It is only a hint: a stale record
//! costs one mount request that the registry answers with an upload session.

use crate::oci::Digest;
use std::path::{Path, PathBuf};

fn path(root: &Path, registry: &str, digest: &Digest) -> PathBuf {
    let reg: String = registry
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    root.join("registry")
        .join("blobs")
        .join(reg)
        .join(digest.hex())
}

/// The repository `digest` was last seen in on `registry`, if recorded.
pub(crate) fn lookup(root: &Path, registry: &str, digest: &Digest) -> Option<String> {
    let s = std::fs::read_to_string(path(root, registry, digest)).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// Records that `digest` is in `repository` on `registry`. Best effort: failures are logged,
/// since a missing record only costs an upload later.
pub(crate) fn remember(root: &Path, registry: &str, digest: &Digest, repository: &str) {
    let p = path(root, registry, digest);
    let result = (|| {
        let dir = p
            .parent()
            .expect("record paths have a parent: root/registry/blobs/<registry>");
        std::fs::create_dir_all(dir)?;
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{}.{}.{seq}.tmp",
            digest.hex(),
            std::process::id()
        ));
        std::fs::write(&tmp, repository)?;
        std::fs::rename(&tmp, &p)
    })();
    if let Err(error) = result {
        tracing::debug!(path = ?p, %error, "cannot record blob location");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_per_registry() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"x");
        assert_eq!(lookup(dir.path(), "127.0.0.1:5000", &d), None);
        remember(dir.path(), "127.0.0.1:5000", &d, "a/b");
        remember(dir.path(), "127.0.0.1:5000", &d, "c");
        assert_eq!(
            lookup(dir.path(), "127.0.0.1:5000", &d).as_deref(),
            Some("c")
        );
        assert_eq!(lookup(dir.path(), "other:5000", &d), None);
    }
}

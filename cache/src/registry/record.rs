//! Where blobs are known to live: `KILN_ROOT/registry/blobs/<registry>/<hex>` holds the last
//! repository of that registry a blob was pushed to or pulled from. Push reads it to mount a
//! blob from a sibling repository instead of uploading it. It is only a hint: a stale record
//! costs one mount request that the registry answers with an upload session.
//!
//! `KILN_ROOT/registry/repodigests/<local-manifest-hex>` lists an image's repo digests
//! (`registry/repo@sha256:...`, one per repository, the latest pull or push): the digests
//! the registry knows the image by, which differ from the local manifest's digest because
//! the local manifest lists uncompressed layers.

use crate::oci::Digest;
use std::path::{Path, PathBuf};

fn path(root: &Path, registry: &str, digest: &Digest) -> PathBuf {
    let reg: String = registry
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    kroot::Dir::RegistryBlobs
        .path(root)
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
    if let Err(error) = write(&p, repository) {
        tracing::debug!(path = ?p, %error, "cannot record blob location");
    }
}

fn write(p: &Path, content: &str) -> std::io::Result<()> {
    kroot::write_atomic(p, content.as_bytes())
}

fn repo_digests_path(root: &Path, image: &Digest) -> PathBuf {
    kroot::Dir::RepoDigests.path(root).join(image.hex())
}

/// The repo digests (`registry/repo@sha256:...`) recorded for the local image whose manifest
/// is `image`, sorted; empty when it was never pulled or pushed.
pub(crate) fn repo_digests(root: &Path, image: &Digest) -> Vec<String> {
    let Ok(s) = std::fs::read_to_string(repo_digests_path(root, image)) else {
        return Vec::new();
    };
    let mut v: Vec<String> = s
        .lines()
        .filter(|l| l.contains("@sha256:"))
        .map(str::to_owned)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Records `repo_digest` (`registry/repo@sha256:...`) for the local image `image`, replacing
/// an older digest of the same repository. Best effort, like [`remember`].
pub(crate) fn remember_repo_digest(root: &Path, image: &Digest, repo_digest: &str) {
    let Some((repo, _)) = repo_digest.rsplit_once('@') else {
        return;
    };
    let mut all: Vec<String> = repo_digests(root, image)
        .into_iter()
        .filter(|d| d.rsplit_once('@').map(|(r, _)| r) != Some(repo))
        .collect();
    all.push(repo_digest.to_owned());
    all.sort();
    let p = repo_digests_path(root, image);
    if let Err(error) = write(&p, &(all.join("\n") + "\n")) {
        tracing::debug!(path = ?p, %error, "cannot record repo digest");
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

    #[test]
    fn repo_digests_keep_one_per_repository() {
        let dir = tempfile::tempdir().unwrap();
        let img = Digest::of(b"image");
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        assert!(repo_digests(dir.path(), &img).is_empty());
        remember_repo_digest(dir.path(), &img, &format!("r:5000/x@{a}"));
        remember_repo_digest(dir.path(), &img, &format!("r:5000/y@{a}"));
        remember_repo_digest(dir.path(), &img, &format!("r:5000/x@{b}"));
        assert_eq!(
            repo_digests(dir.path(), &img),
            vec![format!("r:5000/x@{b}"), format!("r:5000/y@{a}")]
        );
    }
}

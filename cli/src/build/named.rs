//! `--build-context NAME=VALUE` (buildx): replaces the stage or image NAME of the Dockerfile
//! (FROM NAME, `COPY --from=NAME`, `RUN --mount=from=NAME`) with
//!
//! - `docker-image://REF`: the image REF (from the store, or pulled, like any base);
//! - a directory, a git URL or an http(s) URL of an archive (fetched as a build context is):
//!   its files, with its own `.dockerignore` applied, as a one-layer image written to the
//!   store (content-addressed, so an unchanged directory gives the same image and cache
//!   keys);
//! - an http(s) URL of a plain file: that one file, named `context` (BuildKit's dockerfile
//!   frontend since 1.24 makes such a context `llb.HTTP(url, llb.Filename("context"))`; before,
//!   it failed every http named context with `invalid argument`), mode 0600 and dated by
//!   `Last-Modified` as ADD's downloads, in a one-layer image the same way;
//! - `oci-layout://DIR@sha256:DIGEST` (or `DIR:TAG`, or `DIR` holding one image): the image
//!   of an OCI layout, imported into the store as it is (`oci_layout.rs`).
//!
//! The frontend gets a name-to-reference map ([`frontend::BuildOptions::named_contexts`]);
//! a store-made image is named by its manifest digest, which `Store::resolve` finds.

use anyhow::{Context as _, bail};
use cache::store::Store;
use std::collections::BTreeMap;
use std::path::Path;

/// Resolves every `--build-context` into the reference the frontend uses for its name.
///
/// Fails on a malformed flag, a context that cannot be fetched, or an import that fails.
pub(super) fn resolve(
    specs: &[String],
    store: &Store,
    platform: &cache::oci::Platform,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let Some((name, value)) = spec.split_once('=') else {
            bail!("--build-context {spec:?}: expected NAME=VALUE");
        };
        let name = name.trim();
        if name.is_empty() || value.is_empty() {
            bail!("--build-context {spec:?}: expected NAME=VALUE");
        }
        let at = || format!("--build-context {name}={value}");
        let reference = if let Some(r) = value.strip_prefix("docker-image://") {
            cache::reference::Reference::parse(r).with_context(at)?;
            r.to_owned()
        } else if let Some(layout) = value.strip_prefix("oci-layout://") {
            super::oci_layout::import(store, layout, platform).with_context(at)?
        } else if let Some(remote) = super::input::fetch_remote(value).with_context(at)? {
            match &remote.file {
                Some(file) => single_file_image(store, file, platform).with_context(at)?,
                None => dir_image(store, &remote.dir, platform).with_context(at)?,
            }
        } else {
            let dir = std::fs::canonicalize(value)
                .with_context(|| format!("{}: no such directory", at()))?;
            if !dir.is_dir() {
                bail!("{}: not a directory", at());
            }
            dir_image(store, &dir, platform).with_context(at)?
        };
        out.insert(name.to_owned(), reference);
    }
    Ok(out)
}

/// The name BuildKit gives the one file of an http(s) named context.
const HTTP_CONTEXT_FILE: &str = "context";

/// A one-layer image holding `file` (a download, kept in its temp dir) alone, as
/// [`HTTP_CONTEXT_FILE`]; returns its manifest digest.
fn single_file_image(
    store: &Store,
    file: &Path,
    platform: &cache::oci::Platform,
) -> anyhow::Result<String> {
    let temp = file
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{} has no temp dir", file.display()))?;
    let dir = temp.join("single-file");
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let to = dir.join(HTTP_CONTEXT_FILE);
    std::fs::rename(file, &to)
        .with_context(|| format!("moving {} to {}", file.display(), to.display()))?;
    dir_image(store, &dir, platform)
}

/// Writes the files of `dir` (minus its `.dockerignore`) as a one-layer image with an empty
/// config; returns its manifest digest.
fn dir_image(store: &Store, dir: &Path, platform: &cache::oci::Platform) -> anyhow::Result<String> {
    let ignore_file = dir.join(".dockerignore");
    let ignore = match std::fs::read_to_string(&ignore_file) {
        Ok(s) => {
            context::Ignore::validate(&ignore_file, &s)?;
            context::Ignore::parse(&s)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => context::Ignore::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", ignore_file.display())),
    };
    let _lock = store.lock_shared().context("locking the store")?;
    let tmp = store.temp_dir("named-context-")?;
    let root = tmp.path().join("root");
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o755)
        .create(&root)
        .with_context(|| format!("creating {}", root.display()))?;
    let dest = executor::copy::root::DestRoot::open(&root)
        .with_context(|| format!("opening {}", root.display()))?;
    let opts = executor::copy::CopyOptions {
        chown: None,
        chmod: None,
        exclude: &[],
        parents: false,
        unpack_archives: false,
        from_context: true,
    };
    executor::copy::copy(&dest, dir, &[".".to_owned()], "/", &ignore, &opts)
        .with_context(|| format!("copying {}", dir.display()))?;
    let layer = store.commit_layer(&root, &cache::snapshot::CommitOptions::default())?;
    let mut config = cache::oci::ImageConfig::empty(platform);
    config.rootfs.diff_ids = layer.into_iter().map(|l| l.diff_id).collect();
    let image = store.write_image(&config)?;
    Ok(image.manifest_digest.to_string())
}

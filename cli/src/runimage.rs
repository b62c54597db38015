//! The image `kiln run` starts: from the store, pulled first when docker would pull it
//! (`--pull missing|always|never`, default `missing`), for `--platform` or this machine's.

use crate::registry::{RegistryConfig, parse_platform};
use anyhow::{Context as _, bail};
use cache::image::Image;
use cache::store::Store;
use std::io::Write as _;

/// When `kiln run` pulls its image (docker's `--pull`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Pull when the store has no such image (or none for the asked platform).
    Missing,
    /// Always resolve the name against the registry again.
    Always,
    /// Never pull; fail when the store lacks the image.
    Never,
}

/// The image named `name`, pulled according to `pull` for `platform` (`os/arch[/variant]`;
/// default: this machine's).
///
/// Fails when the image is missing and may not be pulled, the name is not a valid reference,
/// or the pull fails (no such image, no manifest for the platform, a single-platform image of
/// another platform).
pub fn image(
    store: &Store,
    name: &str,
    pull: PullPolicy,
    platform: Option<&str>,
) -> anyhow::Result<Image> {
    let wanted = platform.map(parse_platform).transpose()?;
    let local = match &wanted {
        Some(p) => store.resolve_for(name, p),
        None => store.resolve(name),
    }
    .with_context(|| format!("looking up image {name}"))?;
    let local = local.filter(|img| {
        wanted
            .as_ref()
            .is_none_or(|p| img.config.os == p.os && img.config.architecture == p.architecture)
    });
    match (local, pull) {
        (Some(img), PullPolicy::Missing | PullPolicy::Never) => return Ok(img),
        (None, PullPolicy::Never) => bail!(
            "no such image: {name}\nhint: `kiln pull {name}`, or drop `--pull never` to let \
             `kiln run` pull it"
        ),
        (None, PullPolicy::Missing) => {
            // docker's words, on stderr, before its pull progress.
            let _ = writeln!(std::io::stderr(), "Unable to find image '{name}' locally");
        }
        (_, PullPolicy::Always) => {}
    }
    let cfg = RegistryConfig::from_env(&[]);
    let pulled = crate::runtime()?.block_on(async {
        let _lock = store.lock_shared().context("locking the store")?;
        crate::registry::pull(store, name, platform, &cfg).await
    });
    let pulled = pulled.with_context(|| {
        format!(
            "no such image in the store: {name}, and pulling it failed\n\
             hint: `kiln import` a root filesystem, `kiln build -t {name}`, or check the \
             registry (plain HTTP needs KILN_INSECURE_REGISTRIES)"
        )
    })?;
    let _ = writeln!(std::io::stderr(), "Digest: {}", pulled.digest);
    Ok(pulled.image)
}

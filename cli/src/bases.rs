//! `kiln build`'s base images: each `FROM` image and `COPY --from` image is taken from the local
//! store, or pulled from its registry when the store does not have it (docker/buildx
//! behaviour). `--pull` always resolves the tag against the registry again. The resolved
//! manifest digest is what the frontend pins in the cache key, so a tag that moved on the
//! registry invalidates the cache.

use crate::registry::RegistryConfig;
use anyhow::Context as _;
use cache::reference::Reference;
use cache::store::Store;
use std::collections::BTreeMap;

/// Resolves every `refs` entry to a base image: from `store`, or (when missing, or always with
/// `always_pull`) by pulling it for the build's `platform`. `dockerfile` names the Dockerfile in
/// messages.
///
/// Fails with the Dockerfile line when a reference is invalid or a needed pull fails.
pub async fn resolve(
    store: &Store,
    refs: &[frontend::BaseImageRef],
    dockerfile: &str,
    platform: &cache::oci::Platform,
    always_pull: bool,
    cfg: &RegistryConfig,
) -> anyhow::Result<BTreeMap<String, frontend::BaseImage>> {
    let mut bases = BTreeMap::new();
    for r in refs {
        let at = || format!("{dockerfile}:{}: FROM {}", r.span.line, r.reference);
        let platform = r.platform.as_ref().unwrap_or(platform);
        // The store's image of that platform (the platform's entry of a stored index) is
        // taken as is. Another platform's image under the name (the tag of a pull for
        // another platform of a multi-platform build) is pulled over for this one; a build
        // for the host's platform falls back to it when that pull fails (an imported image
        // of another architecture, used as docker's builder would).
        let local = store.resolve_for(&r.reference, platform).with_context(at)?;
        let same = local.as_ref().is_some_and(|i| {
            i.config.architecture.is_empty()
                || (i.config.os == platform.os && i.config.architecture == platform.architecture)
        });
        let host = *platform == cache::oci::Platform::host();
        let local = local.filter(|_| same || host);
        let image = match local {
            Some(image) if same && !always_pull => image,
            local => {
                let reference = Reference::parse(&r.reference).with_context(at)?;
                let opts = cfg.options()?;
                match cache::registry::pull(store, &reference, platform, &opts).await {
                    Ok(image) => image,
                    Err(_) if !same && !always_pull && local.is_some() => {
                        local.expect("checked to be some")
                    }
                    Err(e) if local.is_none() => anyhow::bail!(
                        "{}: image not in the local store for {platform}, and pulling it failed: \
                         {:#}\n\
                         hint: `kiln import [--platform {platform}]` a root filesystem, or check \
                         the registry (plain HTTP needs --insecure-registry or \
                         KILN_INSECURE_REGISTRIES)",
                        at(),
                        anyhow::Error::new(e)
                    ),
                    Err(e) => return Err(anyhow::Error::new(e).context(at())),
                }
            }
        };
        bases.insert(
            r.key(),
            frontend::BaseImage {
                manifest: image.manifest_digest.clone(),
                config: image.config.clone(),
            },
        );
    }
    Ok(bases)
}

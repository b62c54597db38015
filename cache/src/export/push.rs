//! `type=image,push=true` and `type=registry`: the result to a registry. Blobs go through the
//! registry client's push path (HEAD, cross-repository mount, streamed upload); then every
//! manifest under its digest, and the root (index or single manifest) under the tag.

use super::{Export, Result};
use crate::reference::Reference;
use crate::registry::client::Client;
use crate::registry::{PushError, RegistryOptions, push_blob, record};
use crate::store::Store;
use futures_util::{StreamExt as _, TryStreamExt as _};

/// Pushes `export` to `reference` and returns the digest the registry knows the result by
/// (the index's, or the single manifest's).
///
/// Fails when the registry cannot be reached or refuses a request, or `reference` carries a
/// digest that is not the root's.
pub async fn push(
    store: &Store,
    export: &Export,
    reference: &Reference,
    opts: &RegistryOptions,
) -> Result<crate::oci::Digest> {
    let name = reference.to_string();
    let repo = reference.repository.as_str();
    let root = export.root();
    if let Some(want) = &reference.digest
        && *want != root.digest
    {
        return Err(PushError::DigestMismatch {
            reference: name,
            actual: root.digest.clone(),
        }
        .into());
    }
    let client = Client::new(
        &reference.registry,
        vec![format!("repository:{repo}:pull,push")],
        &opts.client_config(),
    )
    .map_err(PushError::from)?;
    let client = &client;
    futures_util::stream::iter(export.blobs.values().map(|desc| async move {
        let from =
            record::lookup(store.root(), &reference.registry, &desc.digest).filter(|r| r != repo);
        push_blob(store, client, repo, desc, from.as_deref(), opts).await
    }))
    .buffer_unordered(opts.concurrency.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    // Manifests before the index that lists them; the root last, under the tag.
    for desc in export.manifests() {
        let body = store.read_blob(&desc.digest)?;
        let target = match desc.digest == root.digest {
            true => reference
                .tag
                .clone()
                .unwrap_or_else(|| desc.digest.to_string()),
            false => desc.digest.to_string(),
        };
        client
            .put_manifest(repo, &target, &desc.media_type, &body)
            .await
            .map_err(PushError::from)?;
    }
    for p in &export.images {
        record::remember_repo_digest(
            store.root(),
            &p.image.manifest_digest,
            &format!("{}@{}", reference.name(), p.descriptor.digest),
        );
    }
    Ok(root.digest.clone())
}

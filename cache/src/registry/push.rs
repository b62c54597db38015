//! `push`: store -> registry. Blobs the registry has are skipped, blobs in a sibling
//! repository are mounted, the rest are streamed from disk.

use super::client::{Client, ClientError, UploadStart};
use super::{Progress, RegistryOptions, record};
use crate::image::Image;
use crate::oci::{self, Descriptor, Digest, ImageManifest};
use crate::reference::Reference;
use crate::store::{Store, StoreError};
use futures_util::{StreamExt as _, TryStreamExt as _};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Talking to the registry failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A layer could not be compressed, or a blob read, from the store.
    #[error("{reference}: cannot read {digest} from the store")]
    Store {
        /// The destination.
        reference: String,
        /// The blob or diff_id.
        digest: Digest,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// The destination names a digest that is not the pushed manifest's.
    #[error("{reference}: the pushed manifest has digest {actual}")]
    DigestMismatch {
        /// The destination.
        reference: String,
        /// The manifest's digest.
        actual: Digest,
    },
}

type Result<T> = std::result::Result<T, PushError>;

/// Pushes `image` from `store` to `reference` and returns the pushed manifest's digest.
///
/// An image kiln built is pushed as an OCI manifest listing the compressed layers (compressed
/// with `opts.compression`, memoized by the store) and the image's config blob as stored. A
/// pulled or loaded image is pushed exactly as stored (manifest, config and layer blobs, so
/// its digest does not change, as with `skopeo copy`); its foreign and non-distributable
/// layers are not uploaded, as docker does.
///
/// Fails when a layer cannot be compressed, the registry cannot be reached or refuses a
/// request (after retries for transient errors), or `reference` carries a digest that is
/// not the manifest's.
pub async fn push(
    store: &Store,
    image: &Image,
    reference: &Reference,
    opts: &RegistryOptions,
) -> Result<Digest> {
    let name = reference.to_string();
    let repo = reference.repository.as_str();
    let registry = reference.registry.as_str();
    let diff_ids: Vec<Digest> = image.config.rootfs.diff_ids.clone();

    // Blobs we may mount from a sibling repository need that repository's pull scope in the
    // token. Compressed layer digests are known only after compression, so only the config
    // (and layers, looked up again below) can be planned here; a mount the token does not
    // cover is answered with an upload session, which push_blob uses.
    let config_digest = image.config_digest.clone();
    let mut scopes = vec![format!("repository:{repo}:pull,push")];
    let config_from = record::lookup(store.root(), registry, &config_digest).filter(|r| r != repo);
    if let Some(from) = &config_from {
        scopes.push(format!("repository:{from}:pull"));
    }
    let client = Arc::new(Client::new(registry, scopes, &opts.client_config())?);
    if !Store::is_local_form(image) {
        return push_as_stored(
            store,
            image,
            reference,
            &client,
            config_from.as_deref(),
            opts,
        )
        .await;
    }

    let layer_jobs = diff_ids.iter().map(|diff_id| {
        let (client, name) = (client.clone(), name.clone());
        async move {
            opts.report(Progress::Compress {
                diff_id: diff_id.clone(),
            });
            let (store2, d, c) = (store.clone(), diff_id.clone(), opts.compression);
            let desc = crate::blocking::unblock(move || store2.compressed_layer(&d, c))
                .await
                .map_err(|source| PushError::Store {
                    reference: name.clone(),
                    digest: diff_id.clone(),
                    source,
                })?;
            let from = record::lookup(store.root(), registry, &desc.digest).filter(|r| r != repo);
            push_blob(store, &client, repo, &desc, from.as_deref(), opts).await?;
            // A blob pulled from a Docker schema2 image keeps its bytes but is listed with the
            // OCI media type, as the manifest is OCI.
            let media_type = match desc.media_type.as_str() {
                oci::MEDIA_TYPE_DOCKER_LAYER_GZIP => oci::MEDIA_TYPE_LAYER_GZIP,
                m => m,
            };
            Ok::<Descriptor, PushError>(Descriptor::new(media_type, desc.digest, desc.size))
        }
    });
    let config_job = {
        let client = client.clone();
        let desc = Descriptor::new(
            oci::MEDIA_TYPE_CONFIG,
            config_digest.clone(),
            image.manifest.config.size,
        );
        async move {
            push_blob(store, &client, repo, &desc, config_from.as_deref(), opts).await?;
            Ok::<Descriptor, PushError>(desc)
        }
    };
    // Layers keep their order: `buffered` (not `buffer_unordered`) yields results in order
    // while running up to `concurrency` jobs at once.
    let (layers, config) = futures_util::future::try_join(
        futures_util::stream::iter(layer_jobs)
            .buffered(opts.concurrency.max(1))
            .try_collect::<Vec<_>>(),
        config_job,
    )
    .await?;

    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_MANIFEST.to_owned()),
        config,
        layers,
        annotations: BTreeMap::new(),
        extra: Default::default(),
    };
    let bytes = oci::to_canonical_json(&manifest).expect("manifests always serialise to JSON");
    let digest = Digest::of(&bytes);
    if let Some(want) = &reference.digest
        && *want != digest
    {
        return Err(PushError::DigestMismatch {
            reference: name,
            actual: digest,
        });
    }
    let target = reference.tag.clone().unwrap_or_else(|| digest.to_string());
    client
        .put_manifest(repo, &target, oci::MEDIA_TYPE_MANIFEST, &bytes)
        .await?;
    record::remember_repo_digest(
        store.root(),
        &image.manifest_digest,
        &format!("{}@{digest}", reference.name()),
    );
    tracing::debug!(reference = %name, %digest, "pushed");
    Ok(digest)
}

/// PUTs the image index `bytes` (`application/vnd.oci.image.index.v1+json`) to `reference`
/// (its tag, else its digest) and returns its digest. Every manifest it lists must already be
/// in the repository (pushed by digest with [`push`]), or the registry refuses it.
///
/// Fails when the registry cannot be reached or refuses the index.
pub async fn push_index(
    reference: &Reference,
    bytes: &[u8],
    opts: &RegistryOptions,
) -> Result<Digest> {
    let repo = reference.repository.as_str();
    let client = Client::new(
        &reference.registry,
        vec![format!("repository:{repo}:pull,push")],
        &opts.client_config(),
    )?;
    let digest = Digest::of(bytes);
    let target = reference.tag.clone().unwrap_or_else(|| digest.to_string());
    client
        .put_manifest(repo, &target, oci::MEDIA_TYPE_INDEX, bytes)
        .await?;
    Ok(digest)
}

/// Pushes a pulled or loaded image byte for byte: its layer blobs, config and manifest.
async fn push_as_stored(
    store: &Store,
    image: &Image,
    reference: &Reference,
    client: &Client,
    config_from: Option<&str>,
    opts: &RegistryOptions,
) -> Result<Digest> {
    let name = reference.to_string();
    let repo = reference.repository.as_str();
    let registry = reference.registry.as_str();
    let digest = image.manifest_digest.clone();
    if let Some(want) = &reference.digest
        && *want != digest
    {
        return Err(PushError::DigestMismatch {
            reference: name,
            actual: digest,
        });
    }
    let store_err = |digest: &Digest| {
        let (name, digest) = (name.clone(), digest.clone());
        move |source| PushError::Store {
            reference: name,
            digest,
            source,
        }
    };
    let manifest_bytes = store.read_blob(&digest).map_err(store_err(&digest))?;
    let layer_jobs = image
        .manifest
        .layers
        .iter()
        .zip(&image.config.rootfs.diff_ids)
        .filter(|(l, _)| oci::layer_kind(&l.media_type) == Some(oci::LayerKind::Distributable))
        .map(|(desc, diff_id)| {
            let store_err = store_err(&desc.digest);
            async move {
                if !store.has_blob(&desc.digest) {
                    // An uncompressed layer is its own tar, rebuilt from the snapshot's source.
                    if desc.digest != *diff_id {
                        return Err(store_err(StoreError::BlobMissing {
                            digest: desc.digest.clone(),
                        }));
                    }
                    let (s, d) = (store.clone(), diff_id.clone());
                    crate::blocking::unblock(move || s.layer_blob(&d))
                        .await
                        .map_err(store_err)?;
                }
                let from =
                    record::lookup(store.root(), registry, &desc.digest).filter(|r| r != repo);
                push_blob(store, client, repo, desc, from.as_deref(), opts).await
            }
        });
    let config_job = push_blob(
        store,
        client,
        repo,
        &image.manifest.config,
        config_from,
        opts,
    );
    futures_util::future::try_join(
        futures_util::stream::iter(layer_jobs)
            .buffer_unordered(opts.concurrency.max(1))
            .try_collect::<Vec<()>>(),
        config_job,
    )
    .await?;
    let media_type = match image.manifest.media_type.as_deref() {
        Some(m) => m,
        None if image.manifest.config.media_type == oci::MEDIA_TYPE_DOCKER_CONFIG => {
            oci::MEDIA_TYPE_DOCKER_MANIFEST
        }
        None => oci::MEDIA_TYPE_MANIFEST,
    };
    let target = reference.tag.clone().unwrap_or_else(|| digest.to_string());
    client
        .put_manifest(repo, &target, media_type, &manifest_bytes)
        .await?;
    record::remember_repo_digest(
        store.root(),
        &image.manifest_digest,
        &format!("{}@{digest}", reference.name()),
    );
    tracing::debug!(reference = %name, %digest, "pushed as stored");
    Ok(digest)
}

/// Makes the registry have `desc` in `repo`: HEAD, else mount from `from`, else a streamed
/// upload. Retried as a whole on transient errors (a new upload session each time).
pub(crate) async fn push_blob(
    store: &Store,
    client: &Client,
    repo: &str,
    desc: &Descriptor,
    from: Option<&str>,
    opts: &RegistryOptions,
) -> Result<()> {
    let digest = &desc.digest;
    let path = store.blob_path(digest);
    client
        .retry(|| async {
            if client.has_blob(repo, digest).await? {
                opts.report(Progress::Exists {
                    digest: digest.clone(),
                });
                return Ok(());
            }
            let session = match client.start_upload(repo, digest, from).await? {
                UploadStart::Mounted => {
                    opts.report(Progress::Mounted {
                        digest: digest.clone(),
                        from: from.unwrap_or_default().to_owned(),
                    });
                    return Ok(());
                }
                UploadStart::Session(s) => s,
            };
            let progress: Arc<dyn Fn(u64) + Send + Sync> = match &opts.progress {
                Some(p) => {
                    let (p, d, total) = (p.clone(), digest.clone(), desc.size);
                    Arc::new(move |done| {
                        p(&Progress::Upload {
                            digest: d.clone(),
                            done,
                            total,
                        })
                    })
                }
                None => Arc::new(|_| {}),
            };
            match opts.chunk_size.filter(|&c| c > 0 && desc.size > c) {
                Some(chunk) => {
                    client
                        .put_blob_chunked(&session, digest, &path, desc.size, chunk, progress)
                        .await?
                }
                None => match client
                    .put_blob(&session, digest, &path, desc.size, progress.clone())
                    .await
                {
                    // The registry, or a proxy in front of it, limits request bodies: send the
                    // blob again in chunks, in a new session (the refused one is spent).
                    Err(ClientError::Status { status, .. })
                        if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE =>
                    {
                        tracing::debug!(%digest, "blob refused as too large; uploading in chunks");
                        match client.start_upload(repo, digest, None).await? {
                            UploadStart::Session(s) => {
                                client
                                    .put_blob_chunked(
                                        &s,
                                        digest,
                                        &path,
                                        desc.size,
                                        super::FALLBACK_CHUNK,
                                        progress,
                                    )
                                    .await?
                            }
                            UploadStart::Mounted => {}
                        }
                    }
                    r => r?,
                },
            }
            opts.report(Progress::Uploaded {
                digest: digest.clone(),
            });
            Ok(())
        })
        .await?;
    record::remember(store.root(), client.registry(), digest, repo);
    Ok(())
}

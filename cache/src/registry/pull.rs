//! `pull`: registry -> store, verifying every digest before anything is used.

use super::client::{Client, ClientError};
use super::{RegistryOptions, record};
use crate::image::Image;
use crate::oci::{self, Digest, ImageConfig, ImageIndex, ImageManifest, Platform};
use crate::reference::Reference;
use crate::store::{Store, StoreError};
use futures_util::{StreamExt as _, TryStreamExt as _};

/// Image configs larger than this are refused.
const MAX_CONFIG_SIZE: u64 = 16 << 20;

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Talking to the registry failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The manifest or index is not valid JSON of the expected shape.
    #[error("{reference}: invalid {what} {digest}")]
    InvalidManifest {
        /// The reference being pulled.
        reference: String,
        /// `manifest`, `index` or `config`.
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A media type kiln does not pull (schema1, artifacts, foreign layers).
    #[error("{reference}: unsupported media type `{media_type}` for {what}")]
    Unsupported {
        /// The reference.
        reference: String,
        /// What carried it.
        what: String,
        /// The media type.
        media_type: String,
    },
    /// A Docker schema1 manifest: deprecated since 2015, refused by docker 20.10 and later.
    #[error(
        "{reference}: the registry serves a Docker schema 1 manifest (`{media_type}`), which kiln does not support (docker stopped pulling them too); push the image again with a current tool, or convert it with `skopeo copy --format v2s2`"
    )]
    Schema1 {
        /// The reference.
        reference: String,
        /// The manifest's media type.
        media_type: String,
    },
    /// The index nests indexes deeper than [`MAX_INDEX_DEPTH`].
    #[error("{reference}: indexes nested more than {MAX_INDEX_DEPTH} deep")]
    NestedTooDeep {
        /// The reference.
        reference: String,
    },
    /// A single-platform image of another platform than the one asked for (docker's words).
    #[error(
        "image with reference {reference} was found but does not match the specified platform: wanted {wanted}, actual: {actual}"
    )]
    PlatformMismatch {
        /// The reference.
        reference: String,
        /// The wanted platform.
        wanted: String,
        /// The image's platform.
        actual: String,
    },
    /// The index has no manifest for the wanted platform.
    #[error("{reference}: no image for platform {platform} (the index has: {available})")]
    NoPlatform {
        /// The reference.
        reference: String,
        /// The wanted platform.
        platform: String,
        /// What the index lists.
        available: String,
    },
    /// The config's diff_ids and the manifest's layers disagree.
    #[error(
        "{reference}: the manifest lists {layers} layers but the config has {diff_ids} diff_ids"
    )]
    LayerCount {
        /// The reference.
        reference: String,
        /// Layers in the manifest.
        layers: usize,
        /// diff_ids in the config.
        diff_ids: usize,
    },
    /// A blob failed verification or could not be stored or unpacked.
    #[error("{reference}: blob {digest}")]
    Blob {
        /// The reference.
        reference: String,
        /// The blob.
        digest: Digest,
        /// The cause (digest mismatch, unsafe tar entry, I/O).
        #[source]
        source: StoreError,
    },
    /// A small blob (the config) does not match its digest.
    #[error("{reference}: blob content has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// The reference.
        reference: String,
        /// The digest in the manifest.
        expected: Digest,
        /// The digest of what was received.
        actual: Digest,
    },
    /// A verified blob could not be reopened from the store.
    #[error("cannot open {path}")]
    Open {
        /// The blob file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A blob's size differs from its descriptor.
    #[error("{reference}: blob {digest} has {actual} bytes, the manifest says {expected}")]
    Size {
        /// The reference.
        reference: String,
        /// The blob.
        digest: Digest,
        /// From the descriptor.
        expected: u64,
        /// Received.
        actual: u64,
    },
    /// An object store cache (`type=s3`, `type=azblob`) could not be read.
    #[error("{reference}")]
    Object {
        /// The cache.
        reference: String,
        /// The cause.
        #[source]
        source: Box<crate::remote::object::ObjectError>,
    },
    /// Writing the image or its tag failed.
    #[error("{reference}: cannot store the image")]
    Store {
        /// The reference.
        reference: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
}

type Result<T> = std::result::Result<T, PullError>;

fn is_index(media_type: &str) -> bool {
    media_type == oci::MEDIA_TYPE_INDEX || media_type == oci::MEDIA_TYPE_DOCKER_MANIFEST_LIST
}

fn is_manifest(media_type: &str) -> bool {
    media_type == oci::MEDIA_TYPE_MANIFEST || media_type == oci::MEDIA_TYPE_DOCKER_MANIFEST
}

fn is_schema1(media_type: &str) -> bool {
    media_type == oci::MEDIA_TYPE_DOCKER_SCHEMA1
        || media_type == oci::MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED
}

/// Indexes inside indexes followed at most this deep (BuildKit and docker follow nested
/// indexes; real images nest one level at most).
const MAX_INDEX_DEPTH: usize = 4;

/// The media type of a manifest body: its `mediaType` field, else the Content-Type, else a
/// guess from its shape (OCI allows omitting both).
fn media_type_of(body: &[u8], content_type: &str) -> String {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Peek {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        schema_version: Option<u32>,
    }
    match serde_json::from_slice::<Peek>(body) {
        Ok(Peek {
            media_type: Some(m),
            ..
        }) if !m.is_empty() => m,
        _ if !content_type.is_empty() && content_type != "application/json" => {
            content_type.to_owned()
        }
        Ok(Peek {
            manifests: Some(_), ..
        }) => oci::MEDIA_TYPE_INDEX.to_owned(),
        Ok(Peek {
            schema_version: Some(2),
            ..
        }) => oci::MEDIA_TYPE_MANIFEST.to_owned(),
        Ok(Peek {
            schema_version: Some(1),
            ..
        }) => oci::MEDIA_TYPE_DOCKER_SCHEMA1.to_owned(),
        _ => content_type.to_owned(),
    }
}

fn platform_matches(p: &Platform, want: &Platform) -> bool {
    p.os == want.os
        && p.architecture == want.architecture
        && (want.variant.is_none()
            || p.variant == want.variant
            || (p.variant.is_none() && want.variant.as_deref() == Some("v8")))
}

/// What [`pull_image`] pulled.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image as stored locally: the registry's manifest and config, byte for byte.
    pub image: Image,
    /// The digest of what the reference names on the registry, as served: the index or
    /// manifest list for a multi-platform image, else the manifest. This is the digest docker
    /// prints (`Digest: sha256:...`) and `name@digest` pulls the same image again.
    pub digest: Digest,
    /// The digest of the platform's manifest as served (equal to `digest` without an index).
    pub manifest_digest: Digest,
}

/// Pulls `reference` for `platform` into `store`, keeping the manifest, config and indexes
/// exactly as served, and tags it with `reference` (when it has a tag). Layers already in the store are not downloaded again. Returns the local image; see
/// [`pull_image`] for the registry's digests too.
///
/// Fails as [`pull_image`] does.
pub async fn pull(
    store: &Store,
    reference: &Reference,
    platform: &Platform,
    opts: &RegistryOptions,
) -> Result<Image> {
    Ok(pull_image(store, reference, platform, opts).await?.image)
}

/// Like [`pull`], and returns the registry's digests of what was pulled, which are also
/// recorded as the image's repo digests ([`super::repo_digests`]).
///
/// Fails when the registry cannot be reached or refuses, the image has no manifest for
/// `platform`, a blob does not match its digest or holds an unsafe tar entry, or the store
/// cannot be written. A failed pull tags nothing and writes no manifest or config; layers that
/// were fully verified before the failure stay in the store for the next try.
pub async fn pull_image(
    store: &Store,
    reference: &Reference,
    platform: &Platform,
    opts: &RegistryOptions,
) -> Result<Pulled> {
    let name = reference.to_string();
    let repo = reference.repository.as_str();
    let client = Client::new(
        &reference.registry,
        vec![format!("repository:{repo}:pull")],
        &opts.client_config(),
    )?;
    let tag_or_digest = match (&reference.digest, &reference.tag) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.clone(),
        (None, None) => crate::reference::DEFAULT_TAG.to_owned(),
    };
    let (mut body, content_type) = client.get_manifest(repo, &tag_or_digest).await?;
    let mut media_type = media_type_of(&body, &content_type);
    let top_digest = Digest::of(&body);
    // Indexes (and the manifest) are stored byte for byte as served, so that every digest the
    // registry knows them by resolves locally too.
    let mut stored = Vec::new();
    while is_index(&media_type) {
        if stored.len() >= MAX_INDEX_DEPTH {
            return Err(PullError::NestedTooDeep { reference: name });
        }
        let index: ImageIndex =
            serde_json::from_slice(&body).map_err(|source| PullError::InvalidManifest {
                reference: name.clone(),
                what: "index",
                digest: Digest::of(&body),
                source,
            })?;
        let chosen = choose(&index, platform).ok_or_else(|| PullError::NoPlatform {
            reference: name.clone(),
            platform: platform.to_string(),
            available: index
                .manifests
                .iter()
                .filter(|d| !d.is_attestation())
                .map(|d| match &d.platform {
                    Some(p) => p.to_string(),
                    None if is_index(&d.media_type) => "a nested index".to_owned(),
                    None => "a manifest without platform".to_owned(),
                })
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        tracing::debug!(reference = %name, manifest = %chosen.digest, %platform, "index entry chosen");
        stored.push(std::mem::take(&mut body));
        let (b, ct) = client
            .get_manifest(repo, &chosen.digest.to_string())
            .await?;
        body = b;
        media_type = media_type_of(&body, &ct);
        if media_type.is_empty() || media_type == "application/json" {
            media_type = chosen.media_type.clone();
        }
    }
    if is_schema1(&media_type) {
        return Err(PullError::Schema1 {
            reference: name,
            media_type,
        });
    }
    if !is_manifest(&media_type) {
        return Err(PullError::Unsupported {
            reference: name,
            what: "manifest".to_owned(),
            media_type,
        });
    }
    let manifest_digest = Digest::of(&body);
    let manifest: ImageManifest =
        serde_json::from_slice(&body).map_err(|source| PullError::InvalidManifest {
            reference: name.clone(),
            what: "manifest",
            digest: manifest_digest.clone(),
            source,
        })?;
    for l in &manifest.layers {
        if oci::layer_kind(&l.media_type).is_none() {
            return Err(PullError::Unsupported {
                reference: name,
                what: format!("layer {}", l.digest),
                media_type: l.media_type.clone(),
            });
        }
    }

    // The config is small: fetch and verify it in memory; it is stored as served.
    let (config_bytes, config) = fetch_config(&client, repo, &manifest, &name).await?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(PullError::LayerCount {
            reference: name,
            layers: manifest.layers.len(),
            diff_ids: config.rootfs.diff_ids.len(),
        });
    }
    // A single-platform image must be of the platform asked for (docker refuses it the same
    // way when --platform is given; kiln always knows the platform it wants). An index entry
    // was chosen by platform already; its config is checked too, as it is what runs.
    let actual = config.platform();
    if !actual.os.is_empty()
        && !actual.architecture.is_empty()
        && !platform_matches(&actual, platform)
    {
        return Err(PullError::PlatformMismatch {
            reference: name,
            wanted: platform.to_string(),
            actual: actual.to_string(),
        });
    }

    let jobs = manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(desc, diff_id)| {
            let (client, name) = (&client, &name);
            async move {
                super::layer::fetch_layer(store, client, repo, desc, diff_id, name, opts).await
            }
        });
    futures_util::stream::iter(jobs)
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;

    let store2 = store.clone();
    let tag = reference
        .tag
        .as_ref()
        .map(|t| format!("{}:{t}", reference.name()));
    stored.push(body);
    let image = crate::blocking::unblock(move || -> std::result::Result<Image, StoreError> {
        store2.put_blob(&config_bytes)?;
        let mut manifest_digest = None;
        for b in &stored {
            manifest_digest = Some(store2.put_blob(b)?);
        }
        let manifest_digest = manifest_digest.expect("the manifest was pushed onto `stored`");
        let image = store2.image(&manifest_digest)?;
        if let Some(tag) = tag {
            store2.tag(&tag, &image.manifest_digest)?;
        }
        Ok(image)
    })
    .await
    .map_err(|source| PullError::Store {
        reference: name.clone(),
        source,
    })?;
    tracing::debug!(reference = %name, registry = %top_digest, manifest = %manifest_digest, "pulled");
    record::remember_repo_digest(
        store.root(),
        &image.manifest_digest,
        &format!("{}@{top_digest}", reference.name()),
    );
    Ok(Pulled {
        image,
        digest: top_digest,
        manifest_digest,
    })
}

/// The entry of `index` for `platform`: an image manifest or a nested index whose platform
/// matches, attestation manifests skipped. A nested index without a platform is followed
/// when nothing matches directly (docker does the same).
fn choose<'a>(index: &'a ImageIndex, platform: &Platform) -> Option<&'a oci::Descriptor> {
    let candidates = || index.manifests.iter().filter(|d| !d.is_attestation());
    candidates()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| platform_matches(p, platform))
                && (is_manifest(&d.media_type) || is_index(&d.media_type))
        })
        .or_else(|| candidates().find(|d| d.platform.is_none() && is_index(&d.media_type)))
}

async fn fetch_config(
    client: &Client,
    repo: &str,
    manifest: &ImageManifest,
    name: &str,
) -> Result<(Vec<u8>, ImageConfig)> {
    let desc = &manifest.config;
    let limit = desc.size.min(MAX_CONFIG_SIZE);
    let bytes = client
        .retry(|| async {
            let resp = client.get_blob(repo, &desc.digest).await?;
            let mut out = Vec::new();
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|source| {
                    client.network(&format!("GET blob {}", desc.digest), source)
                })?;
                out.extend_from_slice(&chunk);
                if out.len() as u64 > limit {
                    break;
                }
            }
            Ok(out)
        })
        .await?;
    let actual = Digest::of(&bytes);
    if actual != desc.digest {
        return Err(PullError::DigestMismatch {
            reference: name.to_owned(),
            expected: desc.digest.clone(),
            actual,
        });
    }
    let config = serde_json::from_slice(&bytes).map_err(|source| PullError::InvalidManifest {
        reference: name.to_owned(),
        what: "config",
        digest: desc.digest.clone(),
        source,
    })?;
    Ok((bytes, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_kind_comes_from_field_then_header_then_shape() {
        assert_eq!(
            media_type_of(br#"{"mediaType":"x/y","manifests":[]}"#, "a/b"),
            "x/y"
        );
        assert_eq!(
            media_type_of(br#"{"manifests":[]}"#, oci::MEDIA_TYPE_DOCKER_MANIFEST_LIST),
            oci::MEDIA_TYPE_DOCKER_MANIFEST_LIST
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"manifests":[]}"#, "application/json"),
            oci::MEDIA_TYPE_INDEX
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"config":{}}"#, ""),
            oci::MEDIA_TYPE_MANIFEST
        );
    }

    #[test]
    fn platform_match_honours_variant_only_when_asked() {
        let p = |a: &str, v: Option<&str>| Platform {
            architecture: a.into(),
            os: "linux".into(),
            variant: v.map(Into::into),
            os_version: None,
        };
        assert!(platform_matches(&p("amd64", None), &p("amd64", None)));
        assert!(!platform_matches(&p("arm64", None), &p("amd64", None)));
        assert!(platform_matches(&p("arm", Some("v7")), &p("arm", None)));
        assert!(!platform_matches(
            &p("arm", Some("v6")),
            &p("arm", Some("v7"))
        ));
        assert!(platform_matches(&p("arm64", None), &p("arm64", Some("v8"))));
    }

    #[test]
    fn schema1_is_recognised_and_refused_by_name() {
        assert_eq!(
            media_type_of(br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#, ""),
            oci::MEDIA_TYPE_DOCKER_SCHEMA1
        );
        assert!(is_schema1(oci::MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED));
        let e = PullError::Schema1 {
            reference: "reg/x:1".into(),
            media_type: oci::MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED.into(),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("schema 1") && msg.contains("prettyjws") && msg.contains("reg/x:1"),
            "{msg}"
        );
    }

    #[test]
    fn index_choice_skips_attestations_and_follows_nested_indexes() {
        let host = Platform::host();
        let d = |media_type: &str, n: &[u8], platform: Option<Platform>| {
            let mut d = oci::Descriptor::new(media_type, Digest::of(n), 1);
            d.platform = platform;
            d
        };
        let mut attestation = d(oci::MEDIA_TYPE_MANIFEST, b"att", Some(host.clone()));
        attestation.annotations.insert(
            oci::ANNOTATION_REFERENCE_TYPE.into(),
            "attestation-manifest".into(),
        );
        let nested = d(oci::MEDIA_TYPE_INDEX, b"nested", Some(host.clone()));
        let index = ImageIndex {
            schema_version: 2,
            media_type: None,
            manifests: vec![attestation, nested.clone()],
            annotations: Default::default(),
            extra: Default::default(),
        };
        assert_eq!(choose(&index, &host), Some(&nested));
        // A nested index without a platform is followed when nothing else matches.
        let bare = d(oci::MEDIA_TYPE_INDEX, b"bare", None);
        let other = Platform {
            architecture: "s390x".into(),
            ..host.clone()
        };
        let index = ImageIndex {
            manifests: vec![
                d(oci::MEDIA_TYPE_MANIFEST, b"s390x", Some(other)),
                bare.clone(),
            ],
            ..index
        };
        assert_eq!(choose(&index, &host), Some(&bare));
    }
}

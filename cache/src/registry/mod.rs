//! The registry client: pull images into the [`Store`](crate::store::Store), push images
//! from it, log in.
//!
//! - [`pull`] fetches a manifest (OCI or Docker schema2; through an index or manifest list
//!   for the wanted platform), the config and the layers. Layers download concurrently; each
//!   body is read once and, in the same pass, stored (its digest verified before the blob
//!   becomes visible) and decompressed and unpacked into a snapshot whose diff_id is checked
//!   against the config (see `layer.rs`). The compressed blob stays the layer's stored form;
//!   its tar is rebuilt from it when needed. Manifest and config are verified in memory and
//!   stored only after every layer is in, so a failed pull leaves no image behind.
//! - [`push`] compresses layers
//!   ([`Store::compressed_layer`](crate::store::Store::compressed_layer), memoized), skips
//!   blobs the registry has (HEAD), mounts blobs known to be in another repository of the
//!   same registry, uploads the rest streamed from disk (never a whole blob in memory): one PUT each, or
//!   PATCH chunks when [`RegistryOptions::chunk_size`] asks for them or the registry refuses
//!   a whole blob as too large; then PUTs an OCI manifest with its media type.
//! - [`auth`] reads and writes docker's `config.json` and runs credential helpers; [`client`]
//!   speaks HTTP, answers basic and bearer challenges and retries transient failures.
//!
//! Why not oci-client: it reports a mount answered with 202 as an error instead of uploading,
//! turns a wrong password into an anonymous 401, writes manifests without `mediaType`, and pulls
//! aws-lc through its default TLS. The distribution API kiln needs is a dozen requests, so
//! kiln speaks it with reqwest (rustls, ring, the system's root certificates) directly.
//!
//! Plain HTTP is used only for loopback registries and those the caller lists as insecure.
//! Where blobs were pushed or pulled is remembered under `KILN_ROOT/registry/` to find mount
//! sources. This module never prints and never reads the environment: the caller passes the
//! docker config, the insecure list and a progress callback.

pub mod auth;
pub mod client;
pub(crate) mod layer;
mod pull;
mod push;
pub(crate) mod record;

pub use pull::{PullError, Pulled, pull, pull_image};
pub(crate) use push::push_blob;
pub use push::{PushError, push, push_index};

use crate::compress::{Codec, Compression};
use crate::oci::Digest;
use auth::{Credentials, DockerConfig};
use client::{Client, ClientConfig, ClientError};
use std::sync::Arc;
use std::time::Duration;

/// What happened to one blob, for progress displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Pull: the layer is already in the store; nothing to download.
    Local {
        /// The layer blob's digest (as in the manifest).
        digest: Digest,
    },
    /// Pull: bytes received so far (reported about every MiB).
    Download {
        /// The blob.
        digest: Digest,
        /// Bytes so far.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// Pull: the layer is verified and unpacked.
    Unpacked {
        /// The layer blob.
        digest: Digest,
    },
    /// Push: the layer is being compressed (or its memoized blob looked up).
    Compress {
        /// The layer's diff_id.
        diff_id: Digest,
    },
    /// Push: the registry already has the blob.
    Exists {
        /// The blob.
        digest: Digest,
    },
    /// Push: the blob was mounted from another repository.
    Mounted {
        /// The blob.
        digest: Digest,
        /// The repository it came from.
        from: String,
    },
    /// Push: bytes sent so far (about every MiB).
    Upload {
        /// The blob.
        digest: Digest,
        /// Bytes so far.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// Push: the blob was uploaded.
    Uploaded {
        /// The blob.
        digest: Digest,
    },
}

/// The chunk size of a chunked upload after a registry refused a whole blob with 413.
pub const FALLBACK_CHUNK: u64 = 32 << 20;

/// A progress callback; called from several tasks at once.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// How to pull and push.
#[derive(Clone)]
pub struct RegistryOptions {
    /// Where credentials come from.
    pub docker_config: DockerConfig,
    /// Registries (`host[:port]` or `host`) allowed over plain HTTP besides loopback.
    pub insecure: Vec<String>,
    /// Blobs transferred at once.
    pub concurrency: usize,
    /// Retries after the first attempt for connection errors, 5xx and 429.
    pub retries: u32,
    /// First backoff delay, doubled after each retry.
    pub retry_base: Duration,
    /// Connect, response and idle-read timeouts (a timeout is not retried: the wait would
    /// multiply).
    pub timeouts: client::Timeouts,
    /// Layer compression for push.
    pub compression: Compression,
    /// Upload blobs larger than this in PATCH chunks of this size instead of one PUT. `None`
    /// (the default): one streamed PUT, which is faster, falling back to chunks of
    /// [`FALLBACK_CHUNK`] when the registry refuses the body as too large (413).
    pub chunk_size: Option<u64>,
    /// Called as blobs move.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryOptions")
            .field("docker_config", &self.docker_config.path())
            .field("insecure", &self.insecure)
            .field("concurrency", &self.concurrency)
            .field("retries", &self.retries)
            .field("timeouts", &self.timeouts)
            .field("compression", &self.compression)
            .field("chunk_size", &self.chunk_size)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl RegistryOptions {
    /// Defaults: credentials from `docker_config`, 4 blobs at once, 4 retries from 250 ms,
    /// [`client::Timeouts::default`],
    /// gzip level 6 (what docker pushes), no progress.
    pub fn new(docker_config: DockerConfig) -> RegistryOptions {
        RegistryOptions {
            docker_config,
            insecure: Vec::new(),
            concurrency: 4,
            retries: 4,
            retry_base: Duration::from_millis(250),
            timeouts: client::Timeouts::default(),
            compression: Compression {
                codec: Codec::Gzip,
                level: 6,
            },
            chunk_size: None,
            progress: None,
        }
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        ClientConfig {
            docker_config: self.docker_config.clone(),
            insecure: self.insecure.clone(),
            retries: self.retries,
            retry_base: self.retry_base,
            timeouts: self.timeouts,
        }
    }

    pub(crate) fn report(&self, p: Progress) {
        if let Some(f) = &self.progress {
            f(&p);
        }
    }
}

/// The repo digests (`registry/repo@sha256:...`) recorded for the local image `image` by
/// pulls and pushes: the digests the registry knows it by. Sorted; empty when none.
pub fn repo_digests(store: &crate::store::Store, image: &Digest) -> Vec<String> {
    record::repo_digests(store.root(), image)
}

/// Checks `creds` against `registry` (a `GET /v2/` with the basic or bearer flow), then saves
/// them in `config` (through its credential helper if one is set, else in `auths`).
///
/// Fails when the registry rejects the credentials ([`ClientError::Denied`]), cannot be
/// reached, or the config cannot be written.
pub async fn login(
    registry: &str,
    creds: &Credentials,
    config: &mut DockerConfig,
    opts: &RegistryOptions,
) -> Result<(), ClientError> {
    let client = Client::with_given_credentials(
        registry,
        Vec::new(),
        Some(creds.clone()),
        &opts.client_config(),
    )?;
    client.ping().await?;
    config.store(registry, creds)?;
    Ok(())
}

/// Removes the saved credentials of `registry` from `config`. Returns whether any were saved.
///
/// Fails when a credential helper fails or the config cannot be written.
pub fn logout(registry: &str, config: &mut DockerConfig) -> Result<bool, auth::AuthError> {
    config.erase(registry)
}

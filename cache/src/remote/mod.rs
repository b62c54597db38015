//! Remote build cache: cache records and their layers (and, optionally, the contents of
//! `RUN --mount=type=cache` directories) leave the machine as an OCI artifact and come back
//! on another one (`kiln build --cache-to` / `--cache-from`).
//!
//! - [`format`]: the artifact: a manifest whose config ([`format::CacheConfig`], media type
//!   [`format::MEDIA_TYPE_CACHE_CONFIG`]) maps cache keys to layer descriptors and parent keys.
//! - [`export`]: store -> registry or OCI layout directory. Only blobs the destination lacks
//!   are sent (HEAD, cross-repository mount, then upload, through [`crate::registry`]'s push
//!   machinery and the compression memo).
//! - [`import`]: the artifact's manifest and config are read first; layers are fetched one by
//!   one when the solver actually needs them ([`import::Imported::ensure_layers`]), verified
//!   against their digest and diff_id on the way in.
//! - [`inline`]: the cache config embedded in the image config (`type=inline`).
//! - [`mounts`]: cache mount directories as content-addressed chunks.
//! - [`object`]: object stores ([`s3`], [`azblob`]) as a third kind of place: the same
//!   manifest, config and blobs as plain objects in BuildKit's key layout.
//!
//! This module knows nothing of build graphs: the solver hands it keys and layer chains.

pub mod azblob;
pub mod export;
pub mod format;
pub mod import;
pub mod inline;
mod layout;
pub mod mounts;
pub mod object;
pub mod s3;
mod sigv4;

use crate::oci::Digest;
use crate::reference::Reference;
use crate::registry::PushError;
use crate::registry::client::ClientError;
use crate::store::StoreError;
use std::fmt;
use std::path::PathBuf;

/// Where a remote cache lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLocation {
    /// `type=registry,ref=REF` (also the image itself for `type=inline` caches).
    Registry(Reference),
    /// `type=local,src|dest=DIR`: an OCI image layout directory.
    Layout(PathBuf),
    /// `type=s3` / `type=azblob`: objects in a bucket or container.
    Object(Box<object::ObjectLocation>),
}

impl fmt::Display for CacheLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheLocation::Registry(r) => write!(f, "{r}"),
            CacheLocation::Layout(p) => write!(f, "{}", p.display()),
            CacheLocation::Object(o) => write!(f, "{o}"),
        }
    }
}

/// Which records an export carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The steps of the final image (its layers).
    #[default]
    Min,
    /// Every step of every stage the build ran or found cached.
    Max,
}

/// Why a remote cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Talking to the registry failed.
    #[error("cache {location}")]
    Client {
        /// The cache.
        location: String,
        /// The cause.
        #[source]
        source: Box<ClientError>,
    },
    /// An object store request failed.
    #[error("cache {location}")]
    Object {
        /// The cache (it names the backend and the bucket or container).
        location: String,
        /// The cause.
        #[source]
        source: Box<object::ObjectError>,
    },
    /// An object the cache needs is not there (`not found` for a manifest: not exported yet).
    #[error("cache {location}: {key} not found")]
    Missing {
        /// The cache.
        location: String,
        /// The object key.
        key: String,
    },
    /// Sending a blob failed.
    #[error("cache {location}")]
    Push {
        /// The cache.
        location: String,
        /// The cause.
        #[source]
        source: Box<PushError>,
    },
    /// The local store failed (compressing, reading or ingesting a blob, unpacking a layer).
    #[error("cache {location}: blob {digest}")]
    Store {
        /// The cache.
        location: String,
        /// The blob or layer.
        digest: Digest,
        /// The cause.
        #[source]
        source: Box<StoreError>,
    },
    /// The manifest, config or layout index is not what kiln writes.
    #[error("cache {location}: invalid {what}")]
    Invalid {
        /// The cache.
        location: String,
        /// `manifest`, `cache config`, `index.json`...
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The reference names something that is neither a kiln cache nor an image with an
    /// inline cache.
    #[error("cache {location}: {what} is not a kiln cache (media type `{media_type}`)")]
    NotACache {
        /// The cache.
        location: String,
        /// What was found.
        what: &'static str,
        /// Its media type.
        media_type: String,
    },
    /// A small document did not hash to its digest.
    #[error("cache {location}: content has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// The cache.
        location: String,
        /// What the descriptor said.
        expected: Digest,
        /// What came.
        actual: Digest,
    },
    /// A blob is larger than its descriptor says (the download was stopped).
    #[error("cache {location}: blob {digest} is larger than its descriptor's {size} bytes")]
    TooLarge {
        /// The cache.
        location: String,
        /// The blob.
        digest: Digest,
        /// The descriptor's size.
        size: u64,
    },
    /// A file of an OCI layout could not be read or written.
    #[error("cache {location}: {op} {}", path.display())]
    Io {
        /// The cache.
        location: String,
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A layer (or blob) a record names is in none of the imported caches.
    #[error("layer {diff_id} is not in any imported cache")]
    Unavailable {
        /// The layer.
        diff_id: Digest,
    },
    /// A layer could not be fetched, verified or unpacked.
    #[error("importing layer {diff_id}")]
    Pull {
        /// The layer.
        diff_id: Digest,
        /// The cause (it names the cache).
        #[source]
        source: Box<crate::registry::PullError>,
    },
}

type Result<T> = std::result::Result<T, RemoteError>;

#[cfg(test)]
mod tests {
    use crate::oci::Digest;
    use crate::snapshot::CommitOptions;
    use crate::store::Store;

    /// Commits two one-file layers (`a`, then `b`) and returns their diff_ids, base first.
    pub(super) fn two_layers(store: &Store) -> Vec<Digest> {
        ["a", "b"]
            .into_iter()
            .map(|name| {
                let upper = store.temp_dir("upper").unwrap();
                std::fs::write(upper.path().join(name), name).unwrap();
                store
                    .commit_layer(
                        upper.path(),
                        &CommitOptions {
                            clamp_mtime: Some(0),
                        },
                    )
                    .unwrap()
                    .expect("a file makes a layer")
                    .diff_id
            })
            .collect()
    }
}

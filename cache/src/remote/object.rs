//! Object stores as cache backends (`type=s3`, `type=azblob`): the same `kiln.cache.v1`
//! manifest, config and blobs as a registry cache, kept as plain objects with BuildKit's
//! layout (`cache/remotecache/s3` and `cache/remotecache/azblob` in moby/buildkit):
//!
//! - the manifest under `<prefix><manifests_prefix><name>`, once per name (`name=a;b`);
//! - every blob (config, compressed layers, cache mount chunks) under
//!   `<prefix><blobs_prefix><digest>` (`sha256:<hex>`), written once: an export HEADs a blob
//!   before it uploads it.
//!
//! S3 joins the parts as they are (defaults `blobs/`, `manifests/`); Azure joins them as
//! paths (defaults `blobs`, `manifests`), as BuildKit does for each.
//!
//! Concurrent exports to one name are safe without locks: blobs are content-addressed, so two
//! writers of one key write the same bytes; every object appears whole (an S3 PUT or
//! multipart completion and an Azure Put Blob or Put Block List commit atomically); and a
//! manifest is written only after every blob it names exists. The last manifest written wins,
//! and each is a complete cache.

use super::{azblob, s3};
use crate::oci::Digest;
use bytes::Bytes;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upload blobs larger than this in parts (S3 multipart, Azure blocks) by default.
pub const DEFAULT_PART_SIZE: u64 = 32 << 20;

/// A credential that must not reach logs (`Debug` prints `<redacted>`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Which object store, and how to reach and authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Amazon S3 or an S3-compatible server.
    S3(s3::S3Config),
    /// Azure Blob Storage (or azurite).
    Azblob(azblob::AzConfig),
}

/// A cache in an object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLocation {
    /// The store.
    pub backend: Backend,
    /// Prepended to every key.
    pub prefix: String,
    /// Between the prefix and a blob's digest.
    pub blobs_prefix: String,
    /// Between the prefix and a manifest's name.
    pub manifests_prefix: String,
    /// Manifest names: an export writes each, an import reads the first (as BuildKit).
    pub names: Vec<String>,
    /// Blobs uploaded at once.
    pub upload_parallelism: usize,
    /// S3 only: an existing blob last written longer ago than this is copied onto itself, so
    /// that a lifecycle rule expiring old objects keeps the blobs still in use.
    pub touch_refresh: Option<Duration>,
    /// Blobs larger than this go up in parts of this size.
    pub part_size: u64,
}

impl ObjectLocation {
    /// The key of manifest `name`.
    pub fn manifest_key(&self, name: &str) -> String {
        self.join(&[&self.prefix, &self.manifests_prefix, name])
    }

    /// The key of blob `d`.
    pub fn blob_key(&self, d: &Digest) -> String {
        self.join(&[&self.prefix, &self.blobs_prefix, &d.to_string()])
    }

    fn join(&self, parts: &[&str]) -> String {
        match self.backend {
            Backend::S3(_) => parts.concat(),
            // BuildKit's filepath.Join: empty parts dropped, one slash between the others.
            Backend::Azblob(_) => parts
                .iter()
                .map(|p| p.trim_matches('/'))
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join("/"),
        }
    }

    /// The backend's name in messages.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::S3(_) => "s3",
            Backend::Azblob(_) => "azblob",
        }
    }
}

impl fmt::Display for ObjectLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names.join(";");
        match &self.backend {
            Backend::S3(c) => write!(
                f,
                "s3 bucket {} ({}{}{names})",
                c.bucket, self.prefix, self.manifests_prefix
            ),
            Backend::Azblob(c) => write!(
                f,
                "azblob container {} of account {} ({})",
                c.container,
                c.account_name,
                self.join(&[&self.prefix, &self.manifests_prefix, &names])
            ),
        }
    }
}

/// Why an object store request failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The server answered with an error status.
    #[error("{op} {key}: HTTP {status}{}{}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default(), hint(*status))]
    Status {
        /// `GET`, `PUT`, `HEAD`...
        op: &'static str,
        /// The object key.
        key: String,
        /// The HTTP status.
        status: u16,
        /// The service's error code (`InvalidAccessKeyId`, `AuthenticationFailed`...).
        code: Option<String>,
    },
    /// The request could not be sent or its answer read.
    #[error("{op} {key}")]
    Network {
        /// What was done.
        op: &'static str,
        /// The object key.
        key: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// A local file could not be read for upload.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A successful answer lacked something kiln needs.
    #[error("{op} {key}: the answer has no {what}")]
    Answer {
        /// What was done.
        op: &'static str,
        /// The object key.
        key: String,
        /// `UploadId`, `ETag`...
        what: &'static str,
    },
    /// The endpoint or account URL is not usable.
    #[error("invalid URL {url:?}")]
    Url {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: url::ParseError,
    },
    /// The endpoint URL cannot name this bucket (virtual-host style with an IP address...).
    #[error("bucket {bucket} at {url}: hint: set use_path_style=true for an IP endpoint")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// The endpoint.
        url: String,
        /// The cause.
        #[source]
        source: rusty_s3::BucketError,
    },
    /// The Azure account key is not base64.
    #[error("secret_access_key is not base64")]
    Key {
        /// The cause.
        #[source]
        source: base64::DecodeError,
    },
}

fn hint(status: u16) -> &'static str {
    match status {
        401 | 403 => " (hint: check the credentials and that they may use this bucket/container)",
        _ => "",
    }
}

impl ObjectError {
    /// Worth another attempt: a connection error, 5xx, 408 or 429.
    pub fn is_transient(&self) -> bool {
        match self {
            ObjectError::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            ObjectError::Network { source, .. } => !source.is_builder() && !source.is_decode(),
            _ => false,
        }
    }
}

pub(crate) type ObjResult<T> = std::result::Result<T, ObjectError>;

/// What a HEAD tells about an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Its size.
    pub size: u64,
    /// Time since it was last written, when the server said.
    pub age: Option<Duration>,
}

/// A connected object store.
#[derive(Debug)]
pub(crate) enum ObjectClient {
    S3(s3::S3Client),
    Azblob(azblob::AzClient),
}

impl ObjectClient {
    /// Fails when the endpoint URL or key is unusable.
    pub(crate) fn new(backend: &Backend) -> ObjResult<ObjectClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| ObjectError::Network {
                op: "connect",
                key: String::new(),
                source,
            })?;
        Ok(match backend {
            Backend::S3(c) => ObjectClient::S3(s3::S3Client::new(c, http)?),
            Backend::Azblob(c) => ObjectClient::Azblob(azblob::AzClient::new(c, http)?),
        })
    }

    /// Size and age of `key`, None when it does not exist.
    pub(crate) async fn head(&self, key: &str) -> ObjResult<Option<Head>> {
        retry(|| async {
            match self {
                ObjectClient::S3(c) => c.head(key).await,
                ObjectClient::Azblob(c) => c.head(key).await,
            }
        })
        .await
    }

    /// The object's body as a response to stream, None when it does not exist.
    pub(crate) async fn get(&self, key: &str) -> ObjResult<Option<reqwest::Response>> {
        retry(|| async {
            match self {
                ObjectClient::S3(c) => c.get(key).await,
                ObjectClient::Azblob(c) => c.get(key).await,
            }
        })
        .await
    }

    /// Writes a small object in one request.
    pub(crate) async fn put_bytes(&self, key: &str, body: Bytes) -> ObjResult<()> {
        retry(|| async {
            match self {
                ObjectClient::S3(c) => {
                    c.put(key, reqwest::Body::from(body.clone()), body.len() as u64)
                        .await
                }
                ObjectClient::Azblob(c) => {
                    c.put(key, reqwest::Body::from(body.clone()), body.len() as u64)
                        .await
                }
            }
        })
        .await
    }

    /// Uploads file `path` of `size` bytes, streamed from disk: in one request up to
    /// `part_size`, else in parts of `part_size` (S3 multipart upload, Azure blocks), up to
    /// `parallel` parts at once.
    pub(crate) async fn put_file(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        part_size: u64,
        parallel: usize,
    ) -> ObjResult<()> {
        if size <= part_size {
            return retry(|| async {
                let body = file_body(path, 0, size).await?;
                match self {
                    ObjectClient::S3(c) => c.put(key, body, size).await,
                    ObjectClient::Azblob(c) => c.put(key, body, size).await,
                }
            })
            .await;
        }
        match self {
            ObjectClient::S3(c) => c.put_multipart(key, path, size, part_size, parallel).await,
            ObjectClient::Azblob(c) => c.put_blocks(key, path, size, part_size, parallel).await,
        }
    }

    /// Rewrites `key` in place so that its age starts again (S3 only; a no-op elsewhere).
    pub(crate) async fn touch(&self, key: &str) -> ObjResult<()> {
        match self {
            ObjectClient::S3(c) => retry(|| c.touch(key)).await,
            ObjectClient::Azblob(_) => Ok(()),
        }
    }

    /// Creates the container or bucket when the backend does that (Azure, as BuildKit).
    pub(crate) async fn prepare_export(&self) -> ObjResult<()> {
        match self {
            ObjectClient::S3(_) => Ok(()),
            ObjectClient::Azblob(c) => retry(|| c.create_container()).await,
        }
    }
}

/// The bytes `[offset, offset+len)` of `path` as a streamed request body.
pub(crate) async fn file_body(path: &Path, offset: u64, len: u64) -> ObjResult<reqwest::Body> {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let read_err = |source| ObjectError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = tokio::fs::File::open(path).await.map_err(read_err)?;
    if offset > 0 {
        f.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(read_err)?;
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(f.take(len), 256 << 10);
    Ok(reqwest::Body::wrap_stream(stream))
}

/// Runs `part(i, offset, len)` for each slice of `part_size` bytes of a `size`-byte upload
/// (the last one shorter; `i` counts from 0), up to `parallel` at once, and returns their
/// results in part order. Serves S3 multipart uploads and Azure block uploads.
pub(crate) async fn upload_in_parts<T, F, Fut>(
    size: u64,
    part_size: u64,
    parallel: usize,
    part: F,
) -> ObjResult<Vec<T>>
where
    F: Fn(u64, u64, u64) -> Fut,
    Fut: std::future::Future<Output = ObjResult<T>>,
{
    use futures_util::{StreamExt as _, TryStreamExt as _};
    let parts = size.div_ceil(part_size);
    let jobs = (0..parts).map(|i| {
        let job = part(i, i * part_size, part_size.min(size - i * part_size));
        async move { job.await.map(|t| (i, t)) }
    });
    let mut done: Vec<(u64, T)> = futures_util::stream::iter(jobs)
        .buffer_unordered(parallel.max(1))
        .try_collect()
        .await?;
    done.sort_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, t)| t).collect())
}

/// Runs `op` up to 4 times while it fails transiently, backing off from 200 ms.
pub(crate) async fn retry<T, F, Fut>(mut op: F) -> ObjResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ObjResult<T>>,
{
    let mut attempt = 0u32;
    loop {
        match op().await {
            Err(e) if attempt < 3 && e.is_transient() => {
                tracing::debug!(error = %e, attempt, "retrying");
                tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(attempt)).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// Checks a response's status: Ok(None) for 404 when `missing_ok`, the error otherwise.
pub(crate) async fn check(
    resp: std::result::Result<reqwest::Response, reqwest::Error>,
    op: &'static str,
    key: &str,
    missing_ok: bool,
) -> ObjResult<Option<reqwest::Response>> {
    let resp = resp.map_err(|source| ObjectError::Network {
        op,
        key: key.to_owned(),
        source,
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(Some(resp));
    }
    if status.as_u16() == 404 && missing_ok {
        return Ok(None);
    }
    // Azure names the error in a header; S3 in `<Code>` of an XML body.
    let mut code = resp
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if code.is_none() {
        let body = resp.text().await.unwrap_or_default();
        code = xml_text(&body, "Code").map(str::to_owned);
    }
    Err(ObjectError::Status {
        op,
        key: key.to_owned(),
        status: status.as_u16(),
        code,
    })
}

/// The text of the first `<tag>` element of a small XML answer (`UploadId`, `Code`): these
/// answers are flat and kiln reads nothing else from them.
pub(crate) fn xml_text<'a>(body: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{tag}>"))? + start;
    Some(&body[start..end])
}

/// Age of an object from its `Last-Modified` header.
pub(crate) fn age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get("last-modified")?.to_str().ok()?;
    let t = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(v)
        .ok()?;
    let d = jiff::Timestamp::now().duration_since(t);
    Duration::try_from(d).ok()
}

/// Content length of a HEAD answer.
pub(crate) fn head_of(resp: &reqwest::Response) -> Head {
    let size = resp
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Head {
        size,
        age: age(resp.headers()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(backend: Backend, blobs: &str, manifests: &str) -> ObjectLocation {
        ObjectLocation {
            backend,
            prefix: "ci/".into(),
            blobs_prefix: blobs.into(),
            manifests_prefix: manifests.into(),
            names: vec!["main".into()],
            upload_parallelism: 4,
            touch_refresh: None,
            part_size: DEFAULT_PART_SIZE,
        }
    }

    #[test]
    fn keys_follow_buildkits_layout_per_backend() {
        let s3 = Backend::S3(s3::S3Config {
            bucket: "b".into(),
            region: "us-east-1".into(),
            endpoint_url: None,
            use_path_style: false,
            credentials: None,
        });
        let d = Digest::of(b"x");
        let l = loc(s3, "blobs/", "manifests/");
        assert_eq!(l.manifest_key("main"), "ci/manifests/main");
        assert_eq!(l.blob_key(&d), format!("ci/blobs/{d}"));
        // S3 concatenates: no slash is invented.
        let l = ObjectLocation {
            blobs_prefix: "b-".into(),
            ..l
        };
        assert_eq!(l.blob_key(&d), format!("ci/b-{d}"));
        let az = Backend::Azblob(azblob::AzConfig {
            account_url: "http://127.0.0.1:10000/devstoreaccount1".into(),
            account_name: "devstoreaccount1".into(),
            container: "c".into(),
            auth: azblob::AzAuth::Anonymous,
        });
        let l = loc(az, "blobs", "manifests");
        assert_eq!(l.manifest_key("main"), "ci/manifests/main");
        assert_eq!(l.blob_key(&d), format!("ci/blobs/{d}"));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let c = s3::S3Config {
            bucket: "b".into(),
            region: "r".into(),
            endpoint_url: None,
            use_path_style: true,
            credentials: Some(s3::S3Credentials {
                access_key_id: "AKIA1".into(),
                secret_access_key: Secret("very-secret".into()),
                session_token: Some(Secret("tok".into())),
            }),
        };
        let s = format!("{c:?}");
        assert!(!s.contains("very-secret") && !s.contains("tok\""), "{s}");
    }

    #[test]
    fn xml_fields_and_transient_statuses() {
        let body = "<?xml version=\"1.0\"?><InitiateMultipartUploadResult><Bucket>b</Bucket>\
                    <UploadId>abc-1</UploadId></InitiateMultipartUploadResult>";
        assert_eq!(xml_text(body, "UploadId"), Some("abc-1"));
        assert_eq!(xml_text(body, "Code"), None);
        let e = |status| ObjectError::Status {
            op: "PUT",
            key: "k".into(),
            status,
            code: None,
        };
        assert!(e(503).is_transient() && e(429).is_transient());
        assert!(!e(403).is_transient() && !e(404).is_transient());
        assert!(e(403).to_string().contains("hint: check the credentials"));
    }
}

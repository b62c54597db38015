//! `--cache-from`: read caches (manifest and config only), answer lookups, and fetch a layer
//! or a cache mount's chunks only when the solver asks for them.

use super::format::{
    CacheConfig, CacheLayer, CacheManifest, INLINE_KEY, MEDIA_TYPE_CACHE_CONFIG, MountEntry,
};
use super::mounts::{self, Chunked};
use super::object::{ObjectClient, ObjectLocation};
use super::{CacheLocation, RemoteError, Result, layout};
use crate::oci::{self, Descriptor, Digest};
use crate::registry::client::{Client, ClientError};
use crate::registry::layer::{LayerSource, fetch_layer_from};
use crate::registry::{self, RegistryOptions};
use crate::store::Store;
use futures_util::{StreamExt as _, TryStreamExt as _};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// Configs larger than this are refused.
const MAX_CONFIG_SIZE: usize = 64 << 20;

/// Where one imported cache's blobs come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// A registry repository.
    Registry {
        /// Its client (pull scope).
        client: Box<Client>,
        /// The repository.
        repo: String,
    },
    /// An OCI layout directory.
    Layout(PathBuf),
    /// An object store.
    Object {
        /// Its client.
        client: Box<ObjectClient>,
        /// Where the blobs are.
        location: Box<ObjectLocation>,
    },
}

#[derive(Debug)]
struct Loaded {
    location: CacheLocation,
    source: Source,
}

/// The caches named by `--cache-from`, read (manifest and config) but not downloaded.
#[derive(Debug)]
pub struct Imported {
    caches: Vec<Loaded>,
    records: BTreeMap<Digest, Vec<Digest>>,
    /// Image dates by [`crate::records::created_key`].
    dates: BTreeMap<Digest, i64>,
    layers: BTreeMap<Digest, (usize, CacheLayer)>,
    mounts: BTreeMap<String, (usize, MountEntry)>,
    once: Mutex<BTreeMap<Digest, Arc<OnceCell<()>>>>,
    opts: RegistryOptions,
    fetched: AtomicUsize,
}

impl Imported {
    /// No caches (every lookup misses).
    pub fn empty(opts: RegistryOptions) -> Imported {
        Imported {
            caches: Vec::new(),
            records: BTreeMap::new(),
            dates: BTreeMap::new(),
            layers: BTreeMap::new(),
            mounts: BTreeMap::new(),
            once: Mutex::new(BTreeMap::new()),
            opts,
            fetched: AtomicUsize::new(0),
        }
    }

    /// Reads the manifest and config of every cache in `locations` (in order: the first cache
    /// that has a key wins). A cache that cannot be read (not pushed yet, not a cache) is left
    /// out and its error returned beside the result: a missing cache must not fail a build.
    pub async fn load(
        locations: &[CacheLocation],
        opts: &RegistryOptions,
    ) -> (Imported, Vec<RemoteError>) {
        let mut out = Imported::empty(opts.clone());
        let mut errors = Vec::new();
        for loc in locations {
            match read(loc, opts).await {
                Ok((source, config)) => out.add(loc.clone(), source, config),
                Err(e) => errors.push(e),
            }
        }
        (out, errors)
    }

    fn add(&mut self, location: CacheLocation, source: Source, config: CacheConfig) {
        let idx = self.caches.len();
        for rec in &config.records {
            if let Some(chain) = config.chain(rec) {
                self.records.entry(rec.key.clone()).or_insert(chain);
            }
        }
        for (k, t) in &config.dates {
            self.dates.entry(k.clone()).or_insert(*t);
        }
        for l in &config.layers {
            self.layers
                .entry(l.diff_id.clone())
                .or_insert_with(|| (idx, l.clone()));
        }
        for m in &config.mounts {
            self.mounts
                .entry(m.id.clone())
                .or_insert_with(|| (idx, m.clone()));
        }
        tracing::debug!(%location, records = config.records.len(), layers = config.layers.len(), "cache imported");
        self.caches.push(Loaded { location, source });
    }

    /// The image date recorded under `key` ([`crate::records::created_key`]).
    pub fn created(&self, key: &Digest) -> Option<i64> {
        self.dates.get(key).copied()
    }

    /// Number of records across the imported caches.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when no cache gave any record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The layer chain recorded for `key` (its layers may not be local yet: see
    /// [`Imported::ensure_layers`]).
    pub fn lookup(&self, key: &Digest) -> Option<&[Digest]> {
        self.records.get(key).map(Vec::as_slice)
    }

    /// The compressed blob of layer `diff_id` and the cache it is in, if any cache has it.
    pub fn layer(&self, diff_id: &Digest) -> Option<(&CacheLocation, &CacheLayer)> {
        self.layers
            .get(diff_id)
            .map(|(i, l)| (&self.caches[*i].location, l))
    }

    /// Layers downloaded so far by [`Imported::ensure_layers`].
    pub fn fetched(&self) -> usize {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Makes every layer of `diff_ids` present in `store`, downloading (concurrently, each
    /// layer once even when several steps ask at the same time) those it lacks. Each blob is
    /// verified against its digest and its tar against the diff_id.
    ///
    /// Fails when a missing layer is in no imported cache, or on a download, verification or
    /// store error.
    pub async fn ensure_layers(&self, store: &Store, diff_ids: &[Digest]) -> Result<()> {
        let missing: Vec<Digest> = diff_ids
            .iter()
            .filter(|d| !store.has_layer(d))
            .cloned()
            .collect();
        // Owned items: a closure over borrowed ones is not general enough for a Send future.
        let jobs = missing
            .into_iter()
            .map(|d| async move { self.ensure_layer(store, &d).await });
        futures_util::stream::iter(jobs)
            .buffer_unordered(self.opts.concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    }

    async fn ensure_layer(&self, store: &Store, diff_id: &Digest) -> Result<()> {
        let cell = {
            let mut once = self.once.lock().expect("not poisoned");
            Arc::clone(once.entry(diff_id.clone()).or_default())
        };
        cell.get_or_try_init(|| async {
            if store.has_layer(diff_id) {
                return Ok(());
            }
            let (idx, layer) =
                self.layers
                    .get(diff_id)
                    .ok_or_else(|| RemoteError::Unavailable {
                        diff_id: diff_id.clone(),
                    })?;
            let cache = &self.caches[*idx];
            let desc = layer.descriptor();
            let location = cache.location.to_string();
            let (file, key);
            let source = match &cache.source {
                Source::Registry { client, repo } => LayerSource::Registry { client, repo },
                Source::Layout(dir) => {
                    file = layout::blob_path(dir, &desc.digest);
                    LayerSource::File(&file)
                }
                Source::Object {
                    client,
                    location: loc,
                } => {
                    // Unpacked as it streams, like a registry layer.
                    key = loc.blob_key(&desc.digest);
                    LayerSource::Object { client, key: &key }
                }
            };
            fetch_layer_from(store, source, &desc, diff_id, &location, &self.opts)
                .await
                .map_err(|source| RemoteError::Pull {
                    diff_id: diff_id.clone(),
                    source: Box::new(source),
                })?;
            self.fetched.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .await
        .map(drop)
    }

    /// Makes blob `desc` of `cache` (a mount chunk, or a layer an export needs) present in
    /// `store`, verified against its digest.
    async fn fetch_blob(&self, store: &Store, cache: &Loaded, desc: &Descriptor) -> Result<()> {
        if store.has_blob(&desc.digest) {
            return Ok(());
        }
        let location = cache.location.to_string();
        let store_err = |source| RemoteError::Store {
            location: location.clone(),
            digest: desc.digest.clone(),
            source: Box::new(source),
        };
        match &cache.source {
            Source::Layout(dir) => {
                let p = layout::blob_path(dir, &desc.digest);
                let f = std::fs::File::open(&p).map_err(|source| RemoteError::Io {
                    location: location.clone(),
                    op: "open",
                    path: p.clone(),
                    source,
                })?;
                let (s, d) = (store.clone(), desc.digest.clone());
                crate::blocking::unblock(move || s.ingest_blob(f, Some(&d)))
                    .await
                    .map_err(store_err)?;
            }
            Source::Registry { .. } | Source::Object { .. } => {
                // Transient failures (connection, 5xx, a stream cut short) retry the whole
                // download, as pull does; a digest mismatch does not.
                let mut attempt = 0u32;
                loop {
                    let once = match &cache.source {
                        Source::Registry { client, repo } => {
                            download(store, client, repo, desc, &location).await
                        }
                        Source::Object {
                            client,
                            location: loc,
                        } => {
                            let key = loc.blob_key(&desc.digest);
                            download_object(store, client, &key, desc, &location).await
                        }
                        Source::Layout(_) => unreachable!("layouts are read above"),
                    };
                    match once {
                        Ok(()) => break,
                        Err(e) if attempt < self.opts.retries && is_transient(&e) => {
                            tracing::debug!(digest = %desc.digest, error = %e, attempt, "retrying");
                            tokio::time::sleep(self.opts.retry_base * 2u32.pow(attempt.min(8)))
                                .await;
                            attempt += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
                // An object store layer is reported once, when fetch_layer_from unpacks it.
                if let (Some(p), Source::Registry { .. }) = (&self.opts.progress, &cache.source) {
                    p(&registry::Progress::Unpacked {
                        digest: desc.digest.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Restores cache mount `id` into `dest` from the first imported cache that has it, when
    /// `dest` is absent or empty. Returns whether it did.
    ///
    /// Fails on download, verification or I/O errors.
    pub async fn restore_mount(&self, store: &Store, id: &str, dest: &Path) -> Result<bool> {
        let Some((idx, entry)) = self.mounts.get(id) else {
            return Ok(false);
        };
        let cache = &self.caches[*idx];
        let location = cache.location.to_string();
        let store_err = |digest: Digest| {
            let location = location.clone();
            move |source| RemoteError::Store {
                location,
                digest,
                source: Box::new(source),
            }
        };
        if !mounts::is_absent_or_empty(dest).map_err(store_err(Digest::of(id.as_bytes())))? {
            return Ok(false);
        }
        let jobs = entry
            .chunks
            .iter()
            .cloned()
            .map(|c| async move { self.fetch_blob(store, cache, &c).await });
        futures_util::stream::iter(jobs)
            .buffer_unordered(self.opts.concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        let chunked = Chunked {
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            chunks: entry.chunks.clone(),
        };
        let (s, dest) = (store.clone(), dest.to_path_buf());
        crate::blocking::unblock(move || mounts::restore(&s, &chunked, &dest))
            .await
            .map_err(store_err(Digest::of(id.as_bytes())))
    }

    /// The imported entry of cache mount `id`, if any cache has it.
    pub fn mount(&self, id: &str) -> Option<&MountEntry> {
        self.mounts.get(id).map(|(_, m)| m)
    }

    /// The cache that lists blob `digest` (a layer or a mount chunk).
    fn cache_of_blob(&self, digest: &Digest) -> Option<&Loaded> {
        let layer = self.layers.values().find(|(_, l)| l.digest == *digest);
        let chunk = || {
            self.mounts
                .values()
                .find(|(_, m)| m.chunks.iter().any(|c| c.digest == *digest))
        };
        let idx = layer
            .map(|(i, _)| *i)
            .or_else(|| chunk().map(|(i, _)| *i))?;
        self.caches.get(idx)
    }

    /// The registry and repository of the cache that lists blob `digest`, when that cache is
    /// in a registry: a cross-repository mount source for an export.
    pub(crate) fn blob_repo(&self, digest: &Digest) -> Option<(&str, &str)> {
        match &self.cache_of_blob(digest)?.source {
            Source::Registry { client, repo } => Some((client.registry(), repo.as_str())),
            Source::Layout(_) | Source::Object { .. } => None,
        }
    }

    /// Downloads blob `desc` (a layer or mount chunk of an imported cache) into `store`, for
    /// an export that must send a blob this build never needed locally.
    ///
    /// Fails when no imported cache lists it, or on download and verification errors.
    pub(crate) async fn fetch_remote_blob(&self, store: &Store, desc: &Descriptor) -> Result<()> {
        let cache = self
            .cache_of_blob(&desc.digest)
            .ok_or_else(|| RemoteError::Unavailable {
                diff_id: desc.digest.clone(),
            })?;
        self.fetch_blob(store, cache, desc).await
    }
}

/// One download of `desc` from `repo` into the store, verified against its digest.
async fn download(
    store: &Store,
    client: &Client,
    repo: &str,
    desc: &Descriptor,
    location: &str,
) -> Result<()> {
    let resp = client
        .get_blob(repo, &desc.digest)
        .await
        .map_err(|source| RemoteError::Client {
            location: location.to_owned(),
            source: Box::new(source),
        })?;
    ingest(store, resp, desc, location, |source| RemoteError::Client {
        location: location.to_owned(),
        source: Box::new(ClientError::Network {
            registry: client.registry().to_owned(),
            what: format!("GET blob {}", desc.digest),
            source,
        }),
    })
    .await
}

/// One download of blob `desc` from object `key` into the store, verified against its digest.
async fn download_object(
    store: &Store,
    client: &ObjectClient,
    key: &str,
    desc: &Descriptor,
    location: &str,
) -> Result<()> {
    let object_err = |source| RemoteError::Object {
        location: location.to_owned(),
        source: Box::new(source),
    };
    let resp = client
        .get(key)
        .await
        .map_err(object_err)?
        .ok_or_else(|| RemoteError::Missing {
            location: location.to_owned(),
            key: key.to_owned(),
        })?;
    ingest(store, resp, desc, location, |source| {
        object_err(super::object::ObjectError::Network {
            op: "GET",
            key: key.to_owned(),
            source,
        })
    })
    .await
}

/// Streams a response body into the store as blob `desc`: never more than its size, and
/// stored only when it matches its digest. `net_err` names a cut connection.
async fn ingest(
    store: &Store,
    resp: reqwest::Response,
    desc: &Descriptor,
    location: &str,
    net_err: impl FnOnce(reqwest::Error) -> RemoteError,
) -> Result<()> {
    let (tx_blob, rx_blob) = tokio::sync::mpsc::channel::<bytes::Bytes>(32);
    let (s, d) = (store.clone(), desc.digest.clone());
    let ingest =
        crate::blocking::unblock(move || s.ingest_blob(ChannelReader::new(rx_blob), Some(&d)));
    let mut stream = resp.bytes_stream();
    let (mut seen, mut net_error, mut too_long) = (0u64, None, false);
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                net_error = Some(e);
                break;
            }
        };
        seen += chunk.len() as u64;
        if seen > desc.size {
            // Never more than the descriptor announced.
            too_long = true;
            break;
        }
        if tx_blob.send(chunk).await.is_err() {
            break;
        }
    }
    drop(tx_blob);
    let ingested = ingest.await;
    if let Some(source) = net_error {
        return Err(net_err(source));
    }
    let store_err = |source| RemoteError::Store {
        location: location.to_owned(),
        digest: desc.digest.clone(),
        source: Box::new(source),
    };
    if too_long {
        return Err(RemoteError::TooLarge {
            location: location.to_owned(),
            digest: desc.digest.clone(),
            size: desc.size,
        });
    }
    ingested.map(drop).map_err(store_err)
}

/// A blocking reader over chunks sent from async code.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> ChannelReader {
        ChannelReader {
            rx,
            current: bytes::Bytes::new(),
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Worth another attempt: a transient registry answer, or an I/O error while the body
/// streamed into the store (a cut connection surfaces there).
fn is_transient(e: &RemoteError) -> bool {
    match e {
        RemoteError::Client { source, .. } => source.is_transient(),
        RemoteError::Object { source, .. } => source.is_transient(),
        RemoteError::Store { source, .. } => {
            matches!(**source, crate::store::StoreError::Io { .. })
        }
        _ => false,
    }
}

/// Reads one cache's manifest and config.
async fn read(loc: &CacheLocation, opts: &RegistryOptions) -> Result<(Source, CacheConfig)> {
    let location = loc.to_string();
    match loc {
        CacheLocation::Layout(dir) => {
            let desc = layout::manifest(dir)?;
            let body = layout::read_blob(dir, &desc.digest)?;
            let manifest = parse_manifest(&location, &body)?;
            let config_bytes = layout::read_blob(dir, &manifest.config.digest)?;
            let config = parse_config(&location, &manifest, &config_bytes)?;
            Ok((Source::Layout(dir.clone()), config))
        }
        CacheLocation::Object(o) => {
            let object_err = |source| RemoteError::Object {
                location: location.clone(),
                source: Box::new(source),
            };
            let client = ObjectClient::new(&o.backend).map_err(object_err)?;
            // BuildKit reads the first name; the others are written for other readers.
            let key = o.manifest_key(o.names.first().map(String::as_str).unwrap_or_default());
            let body = get_small_object(&client, &key, &location).await?;
            let manifest = parse_manifest(&location, &body)?;
            let config_key = o.blob_key(&manifest.config.digest);
            let config_bytes = get_small_object(&client, &config_key, &location).await?;
            let config = parse_fetched_config(location, &manifest, &config_bytes)?;
            Ok((
                Source::Object {
                    client: Box::new(client),
                    location: o.clone(),
                },
                config,
            ))
        }
        CacheLocation::Registry(r) => {
            let repo = r.repository.clone();
            let client_err = |source| RemoteError::Client {
                location: location.clone(),
                source: Box::new(source),
            };
            let client = Client::new(
                &r.registry,
                vec![format!("repository:{repo}:pull")],
                &opts.client_config(),
            )
            .map_err(client_err)?;
            let target = match (&r.digest, &r.tag) {
                (Some(d), _) => d.to_string(),
                (None, Some(t)) => t.clone(),
                (None, None) => crate::reference::DEFAULT_TAG.to_owned(),
            };
            let (body, media_type) = client
                .get_manifest(&repo, &target)
                .await
                .map_err(client_err)?;
            let config = match super::inline::index_of(&location, &body, &media_type)? {
                Some(index) => super::inline::read_index(&client, &repo, &location, &index).await?,
                None => {
                    let manifest = parse_manifest(&location, &body)?;
                    let config_bytes = get_small_blob(&client, &repo, &manifest.config.digest)
                        .await
                        .map_err(client_err)?;
                    parse_fetched_config(location, &manifest, &config_bytes)?
                }
            };
            Ok((
                Source::Registry {
                    client: Box::new(client),
                    repo,
                },
                config,
            ))
        }
    }
}

/// A manifest or config object, at most [`MAX_CONFIG_SIZE`] bytes read.
async fn get_small_object(client: &ObjectClient, key: &str, location: &str) -> Result<Vec<u8>> {
    let object_err = |source| RemoteError::Object {
        location: location.to_owned(),
        source: Box::new(source),
    };
    super::object::retry(|| async {
        let Some(resp) = client.get(key).await? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| super::object::ObjectError::Network {
                op: "GET",
                key: key.to_owned(),
                source,
            })?;
            out.extend_from_slice(&chunk);
            if out.len() > MAX_CONFIG_SIZE {
                break;
            }
        }
        Ok(Some(out))
    })
    .await
    .map_err(object_err)?
    .ok_or_else(|| RemoteError::Missing {
        location: location.to_owned(),
        key: key.to_owned(),
    })
}

pub(super) async fn get_small_blob(
    client: &Client,
    repo: &str,
    digest: &Digest,
) -> std::result::Result<Vec<u8>, ClientError> {
    client
        .retry(|| async {
            let resp = client.get_blob(repo, digest).await?;
            let mut out = Vec::new();
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|source| ClientError::Network {
                    registry: client.registry().to_owned(),
                    what: format!("GET blob {digest}"),
                    source,
                })?;
                out.extend_from_slice(&chunk);
                if out.len() > MAX_CONFIG_SIZE {
                    break;
                }
            }
            Ok(out)
        })
        .await
}

pub(super) fn parse_manifest(location: &str, body: &[u8]) -> Result<CacheManifest> {
    let m: CacheManifest = serde_json::from_slice(body).map_err(|source| RemoteError::Invalid {
        location: location.to_owned(),
        what: "manifest",
        source,
    })?;
    if m.media_type != oci::MEDIA_TYPE_MANIFEST && m.media_type != oci::MEDIA_TYPE_DOCKER_MANIFEST {
        return Err(RemoteError::NotACache {
            location: location.to_owned(),
            what: "the manifest",
            media_type: m.media_type,
        });
    }
    Ok(m)
}

/// [`parse_config`] for config bytes fetched over the network (object store, registry):
/// first checks that they hash to the digest the manifest names.
pub(super) fn parse_fetched_config(
    location: String,
    manifest: &CacheManifest,
    bytes: &[u8],
) -> Result<CacheConfig> {
    let actual = Digest::of(bytes);
    if actual != manifest.config.digest {
        return Err(RemoteError::DigestMismatch {
            location,
            expected: manifest.config.digest.clone(),
            actual,
        });
    }
    parse_config(&location, manifest, bytes)
}

/// A cache config, or the inline cache of an image config (whose layers are the manifest's).
fn parse_config(location: &str, manifest: &CacheManifest, bytes: &[u8]) -> Result<CacheConfig> {
    let invalid = |source| RemoteError::Invalid {
        location: location.to_owned(),
        what: "cache config",
        source,
    };
    match manifest.config.media_type.as_str() {
        MEDIA_TYPE_CACHE_CONFIG => serde_json::from_slice(bytes).map_err(invalid),
        oci::MEDIA_TYPE_CONFIG | oci::MEDIA_TYPE_DOCKER_CONFIG => {
            let mut v: serde_json::Value = serde_json::from_slice(bytes).map_err(invalid)?;
            let Some(inline) = v.get_mut(INLINE_KEY).map(serde_json::Value::take) else {
                return Err(RemoteError::NotACache {
                    location: location.to_owned(),
                    what: "the image (no inline cache)",
                    media_type: manifest.config.media_type.clone(),
                });
            };
            let mut cfg: CacheConfig = serde_json::from_value(inline).map_err(invalid)?;
            let image: oci::ImageConfig = serde_json::from_value(v).map_err(invalid)?;
            cfg.layers = manifest
                .layers
                .iter()
                .zip(&image.rootfs.diff_ids)
                .map(|(d, diff_id)| CacheLayer {
                    media_type: d.media_type.clone(),
                    digest: d.digest.clone(),
                    size: d.size,
                    diff_id: diff_id.clone(),
                })
                .collect();
            Ok(cfg)
        }
        other => Err(RemoteError::NotACache {
            location: location.to_owned(),
            what: "the manifest's config",
            media_type: other.to_owned(),
        }),
    }
}

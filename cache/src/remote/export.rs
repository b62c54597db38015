//! `--cache-to`: build the cache artifact from the solver's records and send the blobs the
//! destination lacks.

use super::format::{
    ARTIFACT_TYPE, CacheConfig, CacheLayer, CacheManifest, CacheRecordEntry,
    MEDIA_TYPE_CACHE_CONFIG, MountEntry, VERSION,
};
use super::import::Imported;
use super::object::{ObjectClient, ObjectError, ObjectLocation};
use super::{CacheLocation, RemoteError, Result, layout, mounts};
use crate::oci::{self, Descriptor, Digest};
use crate::registry::client::Client;
use crate::registry::{Progress, RegistryOptions, push_blob, record};
use crate::store::Store;
use futures_util::{StreamExt as _, TryStreamExt as _};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One step's result to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRecord {
    /// Its cache key.
    pub key: Digest,
    /// The key of the step it ran on (None on a base image).
    pub parent: Option<Digest>,
    /// Its filesystem: diff_ids, base first.
    pub chain: Vec<Digest>,
    /// Set for an image date ([`crate::records::created_key`]): exported in
    /// [`CacheConfig::dates`], not as a record.
    pub created: Option<i64>,
}

/// A cache mount directory to export (`mounts=true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportMount {
    /// The mount's cache id.
    pub id: String,
    /// Its directory (`KILN_ROOT/cachemounts/<name>`).
    pub dir: PathBuf,
}

/// What to export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportPlan {
    /// The records.
    pub records: Vec<ExportRecord>,
    /// The cache mounts.
    pub mounts: Vec<ExportMount>,
}

/// What an export did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// The cache manifest's digest.
    pub manifest: Digest,
    /// Records exported.
    pub records: usize,
    /// Records left out because a layer was neither local nor in an imported cache.
    pub skipped: usize,
    /// Blobs the cache lists (layers, mount chunks) plus its config.
    pub blobs: usize,
    /// Blobs sent.
    pub uploaded: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Blobs the destination already had.
    pub present: usize,
}

/// Where each blob comes from.
#[derive(Debug, Clone)]
struct Blob {
    desc: Descriptor,
    /// Listed by an imported cache and maybe not in the store (a layer this build never
    /// needed, the chunks of a mount it never used).
    remote: bool,
}

/// Exports `plan` to `location`: compresses local layers (memoized), chunks cache mounts,
/// writes the config and manifest, and sends only what the destination lacks. Layers that
/// are not local but in `imported` are mounted from their cache's repository on the same
/// registry, or downloaded and sent.
///
/// Fails when a blob cannot be compressed, read or sent, or the destination refuses the
/// manifest.
pub async fn export(
    store: &Store,
    plan: &ExportPlan,
    location: &CacheLocation,
    imported: Option<&Imported>,
    opts: &RegistryOptions,
) -> Result<ExportReport> {
    let name = location.to_string();
    let (config, blobs) = assemble(store, plan, imported, opts, &name).await?;
    let mut report = ExportReport {
        manifest: Digest::of(b""),
        records: config.records.len(),
        skipped: plan.records.len() - config.records.len() - config.dates.len(),
        blobs: 0,
        uploaded: 0,
        mounted: 0,
        present: 0,
    };
    let config_bytes = serde_json::to_vec(&config).expect("cache configs serialise to JSON");
    let config_digest = put_small(store, &config_bytes, &name)?;
    let config_desc = Descriptor::new(
        MEDIA_TYPE_CACHE_CONFIG,
        config_digest,
        config_bytes.len() as u64,
    );
    let manifest = CacheManifest {
        schema_version: 2,
        media_type: oci::MEDIA_TYPE_MANIFEST.to_owned(),
        artifact_type: Some(ARTIFACT_TYPE.to_owned()),
        config: config_desc.clone(),
        layers: blobs.iter().map(|b| b.desc.clone()).collect(),
    };
    let manifest_bytes =
        oci::to_canonical_json(&manifest).expect("manifests always serialise to JSON");
    report.manifest = Digest::of(&manifest_bytes);
    report.blobs = blobs.len() + 1;
    let mut all = blobs;
    all.push(Blob {
        desc: config_desc,
        remote: false,
    });

    match location {
        CacheLocation::Registry(r) => {
            let repo = r.repository.as_str();
            // Repositories blobs may be mounted from need their pull scope in the token.
            let mut from: BTreeMap<Digest, String> = BTreeMap::new();
            for b in &all {
                let f = match imported.filter(|_| b.remote) {
                    Some(i) => i
                        .blob_repo(&b.desc.digest)
                        .filter(|(reg, _)| *reg == r.registry)
                        .map(|(_, repo)| repo.to_owned()),
                    None => record::lookup(store.root(), &r.registry, &b.desc.digest),
                };
                if let Some(f) = f.filter(|f| f != repo) {
                    from.insert(b.desc.digest.clone(), f);
                }
            }
            let mut scopes = vec![format!("repository:{repo}:pull,push")];
            let sources: BTreeSet<&String> = from.values().collect();
            scopes.extend(sources.iter().map(|s| format!("repository:{s}:pull")));
            let client_err = |source| RemoteError::Client {
                location: name.clone(),
                source: Box::new(source),
            };
            let client = Arc::new(
                Client::new(&r.registry, scopes, &opts.client_config()).map_err(client_err)?,
            );
            let counts = Arc::new(Counts::default());
            let mut counted = opts.clone();
            let (c2, inner) = (Arc::clone(&counts), opts.progress.clone());
            counted.progress = Some(Arc::new(move |p: &Progress| {
                c2.count(p);
                if let Some(f) = &inner {
                    f(p);
                }
            }));
            let counted = &counted;
            let jobs = all.iter().map(|b| {
                let (client, from) = (Arc::clone(&client), from.get(&b.desc.digest).cloned());
                let name = name.clone();
                async move {
                    if b.remote && !store.has_blob(&b.desc.digest) {
                        // Only mountable (or already there) unless we fetch it first.
                        if client.has_blob(repo, &b.desc.digest).await.unwrap_or(false) {
                            counted.report(Progress::Exists {
                                digest: b.desc.digest.clone(),
                            });
                            return Ok(());
                        }
                        if from.is_none()
                            && let Some(i) = imported
                        {
                            i.fetch_remote_blob(store, &b.desc).await?;
                        }
                    }
                    push_blob(store, &client, repo, &b.desc, from.as_deref(), counted)
                        .await
                        .map_err(|source| RemoteError::Push {
                            location: name,
                            source: Box::new(source),
                        })
                }
            });
            futures_util::stream::iter(jobs)
                .buffer_unordered(opts.concurrency.max(1))
                .try_collect::<Vec<()>>()
                .await?;
            let target = r.tag.clone().unwrap_or_else(|| report.manifest.to_string());
            client
                .put_manifest(repo, &target, oci::MEDIA_TYPE_MANIFEST, &manifest_bytes)
                .await
                .map_err(client_err)?;
            report.uploaded = counts.uploaded.load(Ordering::Relaxed);
            report.mounted = counts.mounted.load(Ordering::Relaxed);
            report.present = counts.present.load(Ordering::Relaxed);
        }
        CacheLocation::Object(o) => {
            let client = ObjectClient::new(&o.backend).map_err(object_err(&name))?;
            let (uploaded, present) =
                export_objects(store, &client, o, &all, imported, &name).await?;
            report.uploaded = uploaded;
            report.present = present;
            // Written last, once per name, after every blob it lists exists: a reader never
            // sees a manifest whose blobs are still on their way.
            let body = bytes::Bytes::from(manifest_bytes.clone());
            for n in &o.names {
                client
                    .put_bytes(&o.manifest_key(n), body.clone())
                    .await
                    .map_err(object_err(&name))?;
            }
        }
        CacheLocation::Layout(dir) => {
            for b in &all {
                if layout::has_blob(dir, &b.desc.digest) {
                    report.present += 1;
                    continue;
                }
                if b.remote
                    && !store.has_blob(&b.desc.digest)
                    && let Some(i) = imported
                {
                    i.fetch_remote_blob(store, &b.desc).await?;
                }
                layout::put_blob(dir, &b.desc.digest, &store.blob_path(&b.desc.digest))?;
                report.uploaded += 1;
            }
            let manifest_digest = put_small(store, &manifest_bytes, &name)?;
            layout::put_blob(dir, &manifest_digest, &store.blob_path(&manifest_digest))?;
            let mut desc = Descriptor::new(
                oci::MEDIA_TYPE_MANIFEST,
                manifest_digest,
                manifest_bytes.len() as u64,
            );
            desc.annotations.insert(
                "kiln.cache.artifactType".to_owned(),
                ARTIFACT_TYPE.to_owned(),
            );
            layout::set_manifest(dir, desc)?;
        }
    }
    tracing::debug!(cache = %name, manifest = %report.manifest, uploaded = report.uploaded, "cache exported");
    Ok(report)
}

fn object_err(name: &str) -> impl Fn(ObjectError) -> RemoteError + '_ {
    move |source| RemoteError::Object {
        location: name.to_owned(),
        source: Box::new(source),
    }
}

/// Sends the blobs an object store lacks (HEAD first; up to `upload_parallelism` at once) and
/// touches old ones when `touch_refresh` says so. Returns (uploaded, present).
async fn export_objects(
    store: &Store,
    client: &ObjectClient,
    o: &ObjectLocation,
    all: &[Blob],
    imported: Option<&Imported>,
    name: &str,
) -> Result<(usize, usize)> {
    client.prepare_export().await.map_err(object_err(name))?;
    let (uploaded, present) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let (uploaded_ref, present_ref) = (&uploaded, &present);
    let jobs = all.iter().map(|b| async move {
        let key = o.blob_key(&b.desc.digest);
        if let Some(head) = client.head(&key).await.map_err(object_err(name))? {
            if let (Some(limit), Some(age)) = (o.touch_refresh, head.age)
                && age > limit
            {
                client.touch(&key).await.map_err(object_err(name))?;
            }
            present_ref.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if b.remote
            && !store.has_blob(&b.desc.digest)
            && let Some(i) = imported
        {
            i.fetch_remote_blob(store, &b.desc).await?;
        }
        let path = store.blob_path(&b.desc.digest);
        client
            .put_file(&key, &path, b.desc.size, o.part_size, o.upload_parallelism)
            .await
            .map_err(object_err(name))?;
        uploaded_ref.fetch_add(1, Ordering::Relaxed);
        Ok::<(), RemoteError>(())
    });
    futures_util::stream::iter(jobs)
        .buffer_unordered(o.upload_parallelism.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok((uploaded.into_inner(), present.into_inner()))
}

#[derive(Debug, Default)]
struct Counts {
    uploaded: AtomicUsize,
    mounted: AtomicUsize,
    present: AtomicUsize,
}

impl Counts {
    fn count(&self, p: &Progress) {
        let c = match p {
            Progress::Uploaded { .. } => &self.uploaded,
            Progress::Mounted { .. } => &self.mounted,
            Progress::Exists { .. } => &self.present,
            _ => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

fn put_small(store: &Store, bytes: &[u8], name: &str) -> Result<Digest> {
    store.put_blob(bytes).map_err(|source| RemoteError::Store {
        location: name.to_owned(),
        digest: Digest::of(bytes),
        source: Box::new(source),
    })
}

/// The cache config and the blobs it names (layers first, then mount chunks).
async fn assemble(
    store: &Store,
    plan: &ExportPlan,
    imported: Option<&Imported>,
    opts: &RegistryOptions,
    name: &str,
) -> Result<(CacheConfig, Vec<Blob>)> {
    // Every distinct layer, in first-use order.
    let mut order: Vec<Digest> = Vec::new();
    let mut seen = BTreeSet::new();
    for r in &plan.records {
        for d in &r.chain {
            if seen.insert(d.clone()) {
                order.push(d.clone());
            }
        }
    }
    let local: Vec<Digest> = order
        .iter()
        .filter(|d| store.has_layer(d))
        .cloned()
        .collect();
    let (s, c, n) = (store.clone(), opts.compression, name.to_owned());
    let compressed = crate::blocking::unblock(move || {
        local
            .into_iter()
            .map(|d| {
                s.compressed_layer(&d, c)
                    .map(|desc| (d.clone(), desc))
                    .map_err(|source| RemoteError::Store {
                        location: n.clone(),
                        digest: d,
                        source: Box::new(source),
                    })
            })
            .collect::<Result<BTreeMap<Digest, Descriptor>>>()
    })
    .await?;

    let mut config = CacheConfig {
        version: VERSION.to_owned(),
        ..Default::default()
    };
    let mut blobs = Vec::new();
    let mut index: BTreeMap<Digest, usize> = BTreeMap::new();
    for d in &order {
        let (desc, remote) = match (compressed.get(d), imported.and_then(|i| i.layer(d))) {
            (Some(desc), _) => (desc.clone(), false),
            (None, Some((_, l))) => (l.descriptor(), true),
            (None, None) => continue,
        };
        index.insert(d.clone(), config.layers.len());
        config.layers.push(CacheLayer {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: desc.size,
            diff_id: d.clone(),
        });
        blobs.push(Blob { desc, remote });
    }
    for r in &plan.records {
        if let Some(t) = r.created {
            config.dates.insert(r.key.clone(), t);
            continue;
        }
        let Some(layers) = r
            .chain
            .iter()
            .map(|d| index.get(d).copied())
            .collect::<Option<Vec<usize>>>()
        else {
            continue;
        };
        config.records.push(CacheRecordEntry {
            key: r.key.clone(),
            parent: r.parent.clone(),
            layers,
        });
    }

    let mut chunk_seen = BTreeSet::new();
    for m in &plan.mounts {
        let empty = mounts::is_absent_or_empty(&m.dir).map_err(|source| RemoteError::Store {
            location: name.to_owned(),
            digest: Digest::of(m.id.as_bytes()),
            source: Box::new(source),
        })?;
        if empty {
            // Not used (or restored) here: carry the imported contents over, so that a build
            // whose RUN steps were all cached does not drop the mount from the cache.
            if let Some(e) = imported.and_then(|i| i.mount(&m.id)) {
                for c in &e.chunks {
                    if chunk_seen.insert(c.digest.clone()) {
                        blobs.push(Blob {
                            desc: c.clone(),
                            remote: true,
                        });
                    }
                }
                config.mounts.push(e.clone());
            }
            continue;
        }
        let (s, dir) = (store.clone(), m.dir.clone());
        let chunked = crate::blocking::unblock(move || mounts::chunk_dir(&s, &dir))
            .await
            .map_err(|source| RemoteError::Store {
                location: name.to_owned(),
                digest: Digest::of(m.id.as_bytes()),
                source: Box::new(source),
            })?;
        for c in &chunked.chunks {
            if chunk_seen.insert(c.digest.clone()) {
                blobs.push(Blob {
                    desc: c.clone(),
                    remote: false,
                });
            }
        }
        config.mounts.push(MountEntry {
            id: m.id.clone(),
            mode: chunked.mode,
            uid: chunked.uid,
            gid: chunked.gid,
            chunks: chunked.chunks,
        });
    }
    Ok((config, blobs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::auth::DockerConfig;

    /// A store holding two layers (`a`, then `b` on it) and a cache mount directory.
    fn source(dir: &std::path::Path) -> (Store, Vec<Digest>, PathBuf) {
        let store = Store::open(dir.join("src-root")).unwrap();
        let chain = super::super::tests::two_layers(&store);
        let mount = dir.join("mount");
        std::fs::create_dir_all(mount.join("pkgs")).unwrap();
        std::fs::write(mount.join("pkgs/tool.deb"), "bytes").unwrap();
        (store, chain, mount)
    }

    #[tokio::test]
    async fn layout_export_imports_lazily_and_reexports_nothing() {
        let t = tempfile::tempdir().unwrap();
        let (store, chain, mount) = source(t.path());
        let (k1, k2) = (Digest::of(b"step 1"), Digest::of(b"step 2"));
        let plan = ExportPlan {
            records: vec![
                ExportRecord {
                    key: k1.clone(),
                    parent: None,
                    chain: chain[..1].to_vec(),
                    created: None,
                },
                ExportRecord {
                    key: k2.clone(),
                    parent: Some(k1.clone()),
                    chain: chain.clone(),
                    created: None,
                },
            ],
            mounts: vec![ExportMount {
                id: "pkgs".into(),
                dir: mount,
            }],
        };
        let loc = CacheLocation::Layout(t.path().join("layout"));
        let opts = RegistryOptions::new(DockerConfig::anonymous());
        let first = export(&store, &plan, &loc, None, &opts).await.unwrap();
        assert_eq!((first.records, first.skipped), (2, 0));
        // Two layers, one mount chunk, the config.
        assert_eq!((first.blobs, first.uploaded, first.present), (4, 4, 0));
        let again = export(&store, &plan, &loc, None, &opts).await.unwrap();
        assert_eq!((again.uploaded, again.present), (0, 4));
        assert_eq!(again.manifest, first.manifest);

        let dest = Store::open(t.path().join("dest-root")).unwrap();
        let (imported, errors) = Imported::load(std::slice::from_ref(&loc), &opts).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(imported.lookup(&k2), Some(&chain[..]));
        assert_eq!(imported.lookup(&k1), Some(&chain[..1]));
        assert!(!dest.has_layer(&chain[0]), "a lookup downloads nothing");
        imported.ensure_layers(&dest, &chain[..1]).await.unwrap();
        assert!(dest.has_layer(&chain[0]) && !dest.has_layer(&chain[1]));
        assert_eq!(imported.fetched(), 1);
        imported.ensure_layers(&dest, &chain).await.unwrap();
        assert_eq!(imported.fetched(), 2);

        let restored = t.path().join("dest-root/cachemounts/pkgs");
        assert!(
            imported
                .restore_mount(&dest, "pkgs", &restored)
                .await
                .unwrap()
        );
        assert_eq!(
            std::fs::read_to_string(restored.join("pkgs/tool.deb")).unwrap(),
            "bytes"
        );
        assert!(
            !imported
                .restore_mount(&dest, "pkgs", &restored)
                .await
                .unwrap()
        );

        // A build whose steps were all cached never touched the mount: exporting again from
        // a third store carries the imported mount (and layers it never fetched) over.
        let third = Store::open(t.path().join("third-root")).unwrap();
        let (imported, _) = Imported::load(std::slice::from_ref(&loc), &opts).await;
        let plan3 = ExportPlan {
            records: plan.records.clone(),
            mounts: vec![ExportMount {
                id: "pkgs".into(),
                dir: t.path().join("third-root/cachemounts/pkgs"),
            }],
        };
        let loc2 = CacheLocation::Layout(t.path().join("layout2"));
        let r = export(&third, &plan3, &loc2, Some(&imported), &opts)
            .await
            .unwrap();
        assert_eq!((r.records, r.uploaded), (2, 4));
        let (again, errors) = Imported::load(std::slice::from_ref(&loc2), &opts).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(again.mount("pkgs"), imported.mount("pkgs"));
        assert_eq!(again.lookup(&k2), Some(&chain[..]));
    }

    #[tokio::test]
    async fn a_missing_cache_is_reported_not_fatal() {
        let t = tempfile::tempdir().unwrap();
        let opts = RegistryOptions::new(DockerConfig::anonymous());
        let loc = CacheLocation::Layout(t.path().join("nothing-here"));
        let (imported, errors) = Imported::load(&[loc], &opts).await;
        assert!(imported.is_empty());
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].to_string().contains("nothing-here"),
            "{}",
            errors[0]
        );
    }
}

//! Push and pull against the real registry, checked with skopeo and umoci.

use crate::harness::*;
use cache::oci::{self, Descriptor, Digest, ImageIndex, ImageManifest, Platform};
use cache::registry::client::Client;
use cache::registry::{self, Progress, PullError};
use cache::store::Store;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

#[test]
fn push_is_complete_for_skopeo_and_umoci_with_the_same_tree() {
    if !require(&[REGISTRY_BIN, "skopeo", "umoci"]) {
        return;
    }
    let reg = Registry::start();
    let (_d, store, image) = busybox_store();
    let dest = reg.reference("kiln/busybox:1");
    let digest = rt()
        .block_on(registry::push(&store, &image, &dest, &options()))
        .unwrap();

    let url = format!("docker://{}/kiln/busybox:1", reg.host());
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &url]);
    assert_eq!(Digest::of(raw.as_bytes()), digest);
    let manifest: ImageManifest = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        manifest.media_type.as_deref(),
        Some(oci::MEDIA_TYPE_MANIFEST)
    );
    assert_eq!(manifest.layers.len(), 1);
    assert_eq!(manifest.layers[0].media_type, oci::MEDIA_TYPE_LAYER_GZIP);
    let inspect: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", &url])).unwrap();
    assert_eq!(inspect["Digest"], digest.to_string());
    assert_eq!(inspect["Architecture"], Platform::host().architecture);

    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &url,
        &format!("oci:{}:t", layout.display()),
    ]);
    let bundle = work.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:t", layout.display())])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        std::fs::read(rootfs.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let ours = store.snapshot_path(&image.config.rootfs.diff_ids[0]);
    assert_eq!(tree(&rootfs), tree(&ours));
}

#[test]
fn pull_into_an_empty_store_gives_the_same_layers_and_runs() {
    if !require(&[REGISTRY_BIN]) {
        return;
    }
    let reg = Registry::start();
    let (_d, store, image) = busybox_store();
    let dest = reg.reference("kiln/pullme:v1");
    let rt = rt();
    let pushed = rt
        .block_on(registry::push(&store, &image, &dest, &options()))
        .unwrap();

    let empty = tempfile::tempdir().unwrap();
    let store2 = Store::open(empty.path()).unwrap();
    let mut opts = options();
    let events = recording(&mut opts);
    let pulled = rt
        .block_on(registry::pull(&store2, &dest, &Platform::host(), &opts))
        .unwrap();
    assert_eq!(pulled.config.rootfs.diff_ids, image.config.rootfs.diff_ids);
    assert_eq!(pulled.config.config.cmd, image.config.config.cmd);
    assert_eq!(
        count(&events, |p| matches!(p, Progress::Unpacked { .. })),
        1
    );
    let resolved = store2
        .resolve(&dest.to_string())
        .unwrap()
        .expect("pulled image is tagged");
    assert_eq!(resolved.manifest_digest, pulled.manifest_digest);
    // The unpacked busybox runs.
    let snap = store2.snapshot_path(&pulled.config.rootfs.diff_ids[0]);
    let out = Command::new(snap.join("bin/busybox"))
        .args(["echo", "pulled"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"pulled\n");

    // A second pull downloads nothing.
    let events = recording(&mut opts);
    rt.block_on(registry::pull(&store2, &dest, &Platform::host(), &opts))
        .unwrap();
    assert_eq!(count(&events, |p| matches!(p, Progress::Local { .. })), 1);
    assert_eq!(
        count(&events, |p| matches!(p, Progress::Download { .. })),
        0
    );

    // Pushing the pulled image elsewhere on the registry reuses the registry's compressed
    // blob (no recompression) and mounts it from where it was pulled.
    let events = recording(&mut opts);
    let again = rt
        .block_on(registry::push(
            &store2,
            &pulled,
            &reg.reference("kiln/copy:v1"),
            &opts,
        ))
        .unwrap();
    assert_eq!(
        again, pushed,
        "same config and same compressed layer: same manifest"
    );
    assert_eq!(
        count(
            &events,
            |p| matches!(p, Progress::Mounted { from, .. } if from == "kiln/pullme")
        ),
        1,
        "{:?}",
        events.lock().unwrap()
    );
}

/// A pull keeps the layer compressed (the registry's blob) instead of also writing the tar:
/// the tar comes back from it byte for byte, verified, when something needs it.
#[test]
fn pulled_layer_tar_is_rebuilt_from_the_compressed_blob_and_verified() {
    if !require(&[REGISTRY_BIN]) {
        return;
    }
    let reg = Registry::start();
    let (_d, store, image) = busybox_store();
    let diff_id = image.config.rootfs.diff_ids[0].clone();
    let original = std::fs::read(store.blob_path(&diff_id)).unwrap();
    let dest = reg.reference("kiln/lazy:v1");
    let rt = rt();
    let pushed = rt
        .block_on(registry::push(&store, &image, &dest, &options()))
        .unwrap();

    let empty = tempfile::tempdir().unwrap();
    let store2 = Store::open(empty.path()).unwrap();
    let pulled = rt
        .block_on(registry::pull(
            &store2,
            &dest,
            &Platform::host(),
            &options(),
        ))
        .unwrap();
    assert!(store2.has_layer(&diff_id));
    assert!(!store2.has_blob(&diff_id), "the tar is not written at pull");
    let source = store2.layer_source(&diff_id).expect("source recorded");
    assert_eq!(source.size, original.len() as u64);
    // The image is the registry's manifest, kept as served (its layer is the gzip blob).
    assert_eq!(pulled.manifest_digest, pushed);
    assert_eq!(
        pulled.manifest.layers[0].media_type,
        oci::MEDIA_TYPE_LAYER_GZIP
    );
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut store2.open_layer(&diff_id).unwrap(), &mut tar).unwrap();
    assert!(tar == original, "the rebuilt tar is the original");

    // Garbage collection keeps the compressed blob of a kept layer (it is the layer's only
    // copy of its tar), also without the compressed/ memo that names it too.
    for memo in std::fs::read_dir(store2.root().join("compressed")).unwrap() {
        std::fs::remove_file(memo.unwrap().path()).unwrap();
    }
    // (`all`: the registry's manifest, stored with the image, is no root then.)
    store2
        .prune(
            &cache::gc::PruneOptions {
                all: true,
                ..Default::default()
            },
            &[],
        )
        .unwrap();
    assert!(store2.has_layer(&diff_id));
    assert!(store2.layer_source(&diff_id).is_some());

    // Another codec compresses from the rebuilt tar.
    let zstd = cache::compress::Compression {
        codec: cache::compress::Codec::Zstd,
        level: 3,
    };
    let z = store2.compressed_layer(&diff_id, zstd).unwrap();
    assert!(store2.has_blob(&z.digest));
    // The saved archive holds the registry's gzip blob.
    let mut saved = Vec::new();
    store2
        .save(
            &[(dest.to_string(), pulled.manifest_digest.clone())],
            &mut saved,
        )
        .unwrap();

    // A corrupted source is caught by the diff_id check, and no tar blob appears.
    let blob = store2.blob_path(&source.blob.digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&blob, &bytes).unwrap();
    let mut out = Vec::new();
    let read = store2.open_layer(&diff_id).and_then(|mut r| {
        std::io::Read::read_to_end(&mut r, &mut out)
            .map_err(|e| cache::store::StoreError::Save { source: e })
    });
    assert!(read.is_err(), "corruption must not read back as the layer");
    assert!(store2.layer_blob(&diff_id).is_err());
    assert!(!store2.has_blob(&diff_id));

    // Materialised from an intact source, the tar blob is the original.
    bytes[mid] ^= 0x55;
    std::fs::write(&blob, &bytes).unwrap();
    let path = store2.layer_blob(&diff_id).unwrap();
    assert!(std::fs::read(path).unwrap() == original);
}

#[test]
fn image_pushed_by_skopeo_as_docker_schema2_is_pulled() {
    if !require(&[REGISTRY_BIN, "skopeo"]) {
        return;
    }
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let (_, diff_id) = write_layout(
        work.path(),
        &[("hello.txt", b"from skopeo\n")],
        &Platform::host().architecture,
    );
    let dest = format!("docker://{}/other/tool:s2", reg.host());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &format!("oci:{}:t", work.path().display()),
        &dest,
    ]);
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &dest]);
    assert!(raw.contains(oci::MEDIA_TYPE_DOCKER_MANIFEST), "{raw}");

    let empty = tempfile::tempdir().unwrap();
    let store = Store::open(empty.path()).unwrap();
    let image = rt()
        .block_on(registry::pull(
            &store,
            &reg.reference("other/tool:s2"),
            &Platform::host(),
            &options(),
        ))
        .unwrap();
    assert_eq!(image.config.rootfs.diff_ids, vec![diff_id.clone()]);
    assert_eq!(
        std::fs::read(store.snapshot_path(&diff_id).join("hello.txt")).unwrap(),
        b"from skopeo\n"
    );

    // Pushed back as it was served (as `skopeo copy` does): the same manifest bytes, Docker
    // media types and digest.
    let copy = reg.reference("other/copy:s2");
    let digest = rt()
        .block_on(registry::push(&store, &image, &copy, &options()))
        .unwrap();
    let copied = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{copy}"),
    ]);
    assert_eq!(copied, raw);
    assert_eq!(digest, image.manifest_digest);
    assert_eq!(digest, Digest::of(raw.as_bytes()));
}

#[test]
fn multi_arch_index_pull_picks_the_wanted_platform() {
    if !require(&[REGISTRY_BIN, "skopeo"]) {
        return;
    }
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let mut entries = Vec::new();
    for arch in ["arm64", "amd64"] {
        let dir = work.path().join(arch);
        let (digest, diff_id) = write_layout(&dir, &[("arch", arch.as_bytes())], arch);
        let dest = format!("docker://{}/multi/app@{digest}", reg.host());
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:t", dir.display()),
            &dest,
        ]);
        let size = std::fs::metadata(dir.join("blobs/sha256").join(digest.hex()))
            .unwrap()
            .len();
        let mut d = Descriptor::new(oci::MEDIA_TYPE_MANIFEST, digest, size);
        d.platform = Some(Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: None,
            os_version: None,
        });
        entries.push((d, diff_id));
    }
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_INDEX.into()),
        manifests: entries.iter().map(|(d, _)| d.clone()).collect(),
        annotations: BTreeMap::new(),
        extra: Default::default(),
    };
    let rt = rt();
    let opts = options();
    let client = Client::new(
        &reg.host(),
        vec!["repository:multi/app:pull,push".into()],
        &client_config(&opts),
    )
    .unwrap();
    rt.block_on(client.put_manifest(
        "multi/app",
        "latest",
        oci::MEDIA_TYPE_INDEX,
        &serde_json::to_vec(&index).unwrap(),
    ))
    .unwrap();

    let dest = reg.reference("multi/app");
    let amd64 = Platform {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
        os_version: None,
    };
    let store = Store::open(work.path().join("store")).unwrap();
    let pulled = rt
        .block_on(registry::pull_image(&store, &dest, &amd64, &opts))
        .unwrap();
    let image = &pulled.image;
    assert_eq!(image.config.architecture, "amd64");
    assert_eq!(image.config.rootfs.diff_ids, vec![entries[1].1.clone()]);
    // The registry digests: the index's (what the tag names) and the chosen manifest's.
    let index_digest = Digest::of(&serde_json::to_vec(&index).unwrap());
    assert_eq!(pulled.digest, index_digest);
    assert_eq!(pulled.manifest_digest, entries[1].0.digest);
    assert_eq!(
        registry::repo_digests(&store, &image.manifest_digest),
        vec![format!("{}@{index_digest}", dest.name())]
    );
    let arm = Platform {
        architecture: "arm64".into(),
        ..amd64.clone()
    };
    let image = rt
        .block_on(registry::pull(&store, &dest, &arm, &opts))
        .unwrap();
    assert_eq!(image.config.rootfs.diff_ids, vec![entries[0].1.clone()]);
    let s390x = Platform {
        architecture: "s390x".into(),
        ..amd64
    };
    let err = rt
        .block_on(registry::pull(&store, &dest, &s390x, &opts))
        .unwrap_err();
    assert!(matches!(err, PullError::NoPlatform { .. }), "{err}");
    assert!(
        err.to_string().contains("linux/arm64, linux/amd64"),
        "{err}"
    );
}

#[test]
fn second_push_uploads_nothing_and_other_repository_mounts() {
    if !require(&[REGISTRY_BIN]) {
        return;
    }
    let reg = Registry::start();
    let (_d, store, image) = busybox_store();
    let rt = rt();
    let mut opts = options();
    let uploaded = |p: &Progress| matches!(p, Progress::Uploaded { .. });

    let events = recording(&mut opts);
    let first = rt
        .block_on(registry::push(
            &store,
            &image,
            &reg.reference("a/app:1"),
            &opts,
        ))
        .unwrap();
    assert_eq!(
        count(&events, uploaded),
        2,
        "config and layer: {:?}",
        events.lock().unwrap()
    );

    let events = recording(&mut opts);
    let second = rt
        .block_on(registry::push(
            &store,
            &image,
            &reg.reference("a/app:1"),
            &opts,
        ))
        .unwrap();
    assert_eq!(
        first, second,
        "pushes are deterministic (memoized compression)"
    );
    assert_eq!(count(&events, uploaded), 0);
    assert_eq!(count(&events, |p| matches!(p, Progress::Exists { .. })), 2);

    let events = recording(&mut opts);
    rt.block_on(registry::push(
        &store,
        &image,
        &reg.reference("b/app:1"),
        &opts,
    ))
    .unwrap();
    assert_eq!(count(&events, uploaded), 0, "{:?}", events.lock().unwrap());
    assert_eq!(
        count(
            &events,
            |p| matches!(p, Progress::Mounted { from, .. } if from == "a/app")
        ),
        2
    );
    // A stale record (the source repository lost the blob) falls back to an upload on 202.
    let gone = reg
        .dir
        .path()
        .join("data/docker/registry/v2/repositories/c");
    let (_d2, store2, image2) = random_store(1 << 16, 7);
    rt.block_on(registry::push(
        &store2,
        &image2,
        &reg.reference("c/app:1"),
        &opts,
    ))
    .unwrap();
    std::fs::remove_dir_all(&gone).unwrap();
    let events = recording(&mut opts);
    rt.block_on(registry::push(
        &store2,
        &image2,
        &reg.reference("d/app:1"),
        &opts,
    ))
    .unwrap();
    assert_eq!(count(&events, |p| matches!(p, Progress::Mounted { .. })), 0);
    assert_eq!(
        count(&events, uploaded) + count(&events, |p| matches!(p, Progress::Exists { .. })),
        2
    );
}

/// Issue 4: uploads stream monolithic or chunked. A tiny chunk size forces PATCH chunks
/// against the real registry; the image comes back intact.
#[test]
fn chunked_upload_sends_patches_and_the_image_pulls_back() {
    if !require(&[REGISTRY_BIN]) {
        return;
    }
    let reg = Registry::start_logging();
    let (_d, store, image) = random_store(300 << 10, 7);
    let dest = reg.reference("kiln/chunked:1");
    let rt = rt();
    let mut opts = options();
    opts.chunk_size = Some(64 << 10);
    let events = recording(&mut opts);
    let digest = rt
        .block_on(registry::push(&store, &image, &dest, &opts))
        .unwrap();
    assert_eq!(
        count(&events, |p| matches!(p, Progress::Uploaded { .. })),
        2,
        "layer and config"
    );
    let patches = reg
        .log()
        .lines()
        .filter(|l| l.contains("http.request.method=PATCH") && l.contains("response completed"))
        .count();
    // 300 KiB of random data gzips to a bit more than 300 KiB: at least 5 chunks of 64 KiB;
    // the config is smaller than a chunk and goes in one PUT.
    assert!(patches >= 5, "{patches} PATCH requests:\n{}", reg.log());

    let empty = tempfile::tempdir().unwrap();
    let store2 = Store::open(empty.path()).unwrap();
    let pulled = rt
        .block_on(registry::pull_image(
            &store2,
            &dest,
            &Platform::host(),
            &options(),
        ))
        .unwrap();
    assert_eq!(pulled.digest, digest);
    assert_eq!(
        pulled.image.config.rootfs.diff_ids,
        image.config.rootfs.diff_ids
    );
}

/// A registry behind a proxy that refuses large bodies (413): the monolithic PUT is refused
/// and the blob goes again in chunks, in a new upload session.
#[test]
fn a_blob_refused_as_too_large_is_uploaded_in_chunks() {
    if !require(&[REGISTRY_BIN]) {
        return;
    }
    let reg = Registry::start();
    let proxy = BodyLimitProxy::start(reg.port, 256 << 10);
    let (_d, store, image) = random_store(600 << 10, 11);
    let dest =
        cache::reference::Reference::parse(&format!("127.0.0.1:{}/kiln/limited:1", proxy.port))
            .unwrap();
    let rt = rt();
    let digest = rt
        .block_on(registry::push(&store, &image, &dest, &options()))
        .unwrap();
    let seen = proxy.requests.lock().unwrap().clone();
    let empty = tempfile::tempdir().unwrap();
    let puts_refused = seen
        .iter()
        .filter(|l| l.starts_with("PUT ") && l.contains("/blobs/uploads/"))
        .count();
    let patches = seen.iter().filter(|l| l.starts_with("PATCH ")).count();
    // About 600 KiB of gzip: the PUT is refused, then PATCHes of 600 and 300 KiB are, and
    // 150 KiB ones get through.
    assert!(puts_refused >= 1, "{seen:#?}");
    assert!(patches >= 6, "{seen:#?}");
    let pulled = rt
        .block_on(registry::pull_image(
            &Store::open(empty.path()).unwrap(),
            &reg.reference("kiln/limited:1"),
            &Platform::host(),
            &options(),
        ))
        .unwrap();
    assert_eq!(pulled.digest, digest);
}

/// Once nothing holds a pulled image, prune removes its layer record, snapshot and blob.
#[test]
fn prune_removes_a_pulled_layer_and_its_compressed_source() {
    if !require(&[REGISTRY_BIN]) {
        return;
    }
    let reg = Registry::start();
    let (_d, store, image) = busybox_store();
    let dest = reg.reference("kiln/gone:v1");
    let rt = rt();
    rt.block_on(registry::push(&store, &image, &dest, &options()))
        .unwrap();
    let empty = tempfile::tempdir().unwrap();
    let store2 = Store::open(empty.path()).unwrap();
    rt.block_on(registry::pull(
        &store2,
        &dest,
        &Platform::host(),
        &options(),
    ))
    .unwrap();
    let diff_id = image.config.rootfs.diff_ids[0].clone();
    let source = store2.layer_source(&diff_id).expect("source recorded");
    assert!(store2.untag(&dest.to_string()).unwrap());
    store2
        .prune(
            &cache::gc::PruneOptions {
                all: true,
                ..Default::default()
            },
            &[],
        )
        .unwrap();
    assert!(!store2.has_layer(&diff_id));
    assert!(store2.layer_source(&diff_id).is_none());
    assert!(!store2.has_blob(&source.blob.digest));
    assert_eq!(
        std::fs::read_dir(store2.root().join("layers"))
            .unwrap()
            .count(),
        0
    );
}

//! What no honest registry does: bad blobs, missing blobs, hostile layers, cut connections,
//! a registry killed mid-push.

use crate::harness::*;
use cache::oci::{Digest, Platform};
use cache::reference::Reference;
use cache::registry::client::{Client, ClientError};
use cache::registry::{self, Progress, PullError, PushError};
use cache::store::Store;
use std::collections::BTreeMap;
use std::sync::Arc;

#[test]
fn hostile_blobs_and_manifests_fail_cleanly_and_store_nothing() {
    let good_tar = tar_of("ok.txt", b"fine\n");
    let good = gzip(&good_tar);
    let evil = gzip(&tar_of("ok.txt", b"evil\n"));
    let escaping_tar = tar_of("../../escaped-by-kiln-test", b"x\n");
    let escaping = gzip(&escaping_tar);
    let mut routes = BTreeMap::new();
    // 1. The blob does not match its digest.
    hostile_routes(
        &mut routes,
        "mismatch",
        &Digest::of(&good),
        good.len() as u64,
        Some(evil),
        Digest::of(&good_tar),
    );
    // 2. The manifest references a blob the server does not have.
    hostile_routes(
        &mut routes,
        "missing",
        &Digest::of(&good),
        good.len() as u64,
        None,
        Digest::of(&good_tar),
    );
    // 3. Digests all match, but the layer writes outside the root.
    hostile_routes(
        &mut routes,
        "escape",
        &Digest::of(&escaping),
        escaping.len() as u64,
        Some(escaping.clone()),
        Digest::of(&escaping_tar),
    );
    // 4. The config's diff_id does not match the layer's content.
    hostile_routes(
        &mut routes,
        "diffid",
        &Digest::of(&good),
        good.len() as u64,
        Some(good.clone()),
        Digest::of(b"other"),
    );
    let server = HostileServer::start(routes, 200);
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("a/b/root")).unwrap();
    let before = store_contents(&store);
    let opts = options();
    let pull = |name: &str| {
        let r = Reference::parse(&format!("127.0.0.1:{}/evil/{name}", server.port)).unwrap();
        rt.block_on(registry::pull(&store, &r, &Platform::host(), &opts))
            .unwrap_err()
    };

    let err = pull("mismatch");
    assert!(matches!(err, PullError::Blob { .. }), "{err:#?}");
    assert!(format!("{:?}", err).contains("DigestMismatch"), "{err:#?}");
    assert_eq!(store_contents(&store), before);

    let err = pull("missing");
    assert!(
        matches!(err, PullError::Client(ClientError::NotFound { .. })),
        "{err:#?}"
    );
    assert!(err.to_string().contains("not found"), "{err}");
    assert_eq!(store_contents(&store), before);

    let err = pull("escape");
    assert!(matches!(err, PullError::Blob { .. }), "{err:#?}");
    assert!(!dir.path().join("a/escaped-by-kiln-test").exists());
    assert!(!dir.path().join("escaped-by-kiln-test").exists());
    assert_eq!(store.list_images().unwrap().len(), 0);
    assert!(
        std::fs::read_dir(store.root().join("snapshots"))
            .unwrap()
            .next()
            .is_none()
    );

    let err = pull("diffid");
    assert!(matches!(err, PullError::Blob { .. }), "{err:#?}");
    assert_eq!(store.list_images().unwrap().len(), 0);
    assert!(
        std::fs::read_dir(store.root().join("snapshots"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn registry_killed_mid_push_fails_clearly_and_a_retry_completes() {
    if !require(&[REGISTRY_BIN]) {
        return;
    }
    let reg = Registry::start();
    let (_d, store, image) = random_store(24 << 20, 42);
    let dest = reg.reference("kill/me:1");
    let rt = rt();
    let mut opts = options();
    let child = reg.child.clone();
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let k = killed.clone();
    opts.progress = Some(Arc::new(move |p: &Progress| {
        if let Progress::Upload { done, .. } = p
            && *done >= 4 << 20
            && !k.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            Registry::kill(&child);
        }
    }));
    let err = rt
        .block_on(registry::push(&store, &image, &dest, &opts))
        .unwrap_err();
    assert!(
        killed.load(std::sync::atomic::Ordering::SeqCst),
        "the upload was never under way: {err}"
    );
    let msg = anyhow_chain(&err);
    assert!(
        matches!(err, PushError::Client(ClientError::Network { .. })),
        "{msg}"
    );
    assert!(msg.contains(&reg.host()), "{msg}");

    reg.spawn();
    opts.progress = None;
    let digest = rt
        .block_on(registry::push(&store, &image, &dest, &opts))
        .unwrap();
    let empty = tempfile::tempdir().unwrap();
    let pulled = rt
        .block_on(registry::pull(
            &Store::open(empty.path()).unwrap(),
            &dest,
            &Platform::host(),
            &options(),
        ))
        .unwrap();
    assert_eq!(pulled.config.rootfs.diff_ids, image.config.rootfs.diff_ids);
    let c = Client::new(&reg.host(), vec![], &client_config(&options())).unwrap();
    let (body, _) = rt.block_on(c.get_manifest("kill/me", "1")).unwrap();
    assert_eq!(Digest::of(&body), digest);
}

#[test]
fn a_download_cut_halfway_is_retried_and_completes() {
    let layer_tar = tar_of("big.bin", &vec![7u8; 256 << 10]);
    let layer = gzip(&layer_tar);
    let mut routes = BTreeMap::new();
    let ld = Digest::of(&layer);
    hostile_routes(
        &mut routes,
        "flaky",
        &ld,
        layer.len() as u64,
        Some(layer.clone()),
        Digest::of(&layer_tar),
    );
    let cut = [format!("/v2/evil/flaky/blobs/{ld}")].into_iter().collect();
    let server = HostileServer::start_with_token(routes, 100, None, cut);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let r = Reference::parse(&format!("127.0.0.1:{}/evil/flaky", server.port)).unwrap();
    let image = rt()
        .block_on(registry::pull(&store, &r, &Platform::host(), &options()))
        .unwrap();
    assert_eq!(image.config.rootfs.diff_ids, vec![Digest::of(&layer_tar)]);
    let gets = server
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(&format!("blobs/{ld}")))
        .count();
    assert_eq!(gets, 2, "one cut download, one retry");
}

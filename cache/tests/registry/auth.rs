//! Basic auth (htpasswd registry) and the bearer token flow.

use crate::harness::*;
use cache::oci::{Digest, Platform};
use cache::reference::Reference;
use cache::registry::auth::{Credentials, DockerConfig};
use cache::registry::client::ClientError;
use cache::registry::{self, PullError, PushError, RegistryOptions};
use cache::store::Store;
use std::collections::BTreeMap;
use std::process::Command;

#[test]
fn basic_auth_accepts_right_and_names_the_registry_for_wrong_credentials() {
    if !require(&[REGISTRY_BIN, "htpasswd"]) {
        return;
    }
    let reg = Registry::start_with(Some(("alice", "s3cret")));
    let (_d, store, image) = busybox_store();
    let rt = rt();
    let dest = reg.reference("private/app:1");
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg_path = cfg_dir.path().join("config.json");

    let err = rt
        .block_on(registry::push(&store, &image, &dest, &options()))
        .unwrap_err();
    assert!(
        matches!(err, PushError::Client(ClientError::Unauthorized { .. })),
        "{err}"
    );
    assert!(err.to_string().contains(&reg.host()), "{err}");

    let wrong = Credentials::Basic {
        username: "alice".into(),
        password: "nope".into(),
    };
    let mut config = DockerConfig::load(&cfg_path).unwrap();
    let err = rt
        .block_on(registry::login(
            &reg.host(),
            &wrong,
            &mut config,
            &options(),
        ))
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ClientError::Denied { .. }), "{msg}");
    assert!(
        msg.contains(&reg.host()) && msg.contains("alice") && msg.contains("401"),
        "{msg}"
    );
    assert!(!cfg_path.exists(), "a failed login writes nothing");

    // Wrong credentials stored in the file: push fails with the same clear error.
    let mut bad_file = DockerConfig::load(&cfg_path).unwrap();
    bad_file.store(&reg.host(), &wrong).unwrap();
    let opts = RegistryOptions {
        docker_config: DockerConfig::load(&cfg_path).unwrap(),
        ..options()
    };
    let err = rt
        .block_on(registry::push(&store, &image, &dest, &opts))
        .unwrap_err();
    assert!(
        matches!(err, PushError::Client(ClientError::Denied { .. })),
        "{err}"
    );

    let right = Credentials::Basic {
        username: "alice".into(),
        password: "s3cret".into(),
    };
    let mut config = DockerConfig::load(&cfg_path).unwrap();
    rt.block_on(registry::login(
        &reg.host(),
        &right,
        &mut config,
        &options(),
    ))
    .unwrap();
    let opts = RegistryOptions {
        docker_config: DockerConfig::load(&cfg_path).unwrap(),
        ..options()
    };
    let digest = rt
        .block_on(registry::push(&store, &image, &dest, &opts))
        .unwrap();
    let empty = tempfile::tempdir().unwrap();
    let pulled = rt
        .block_on(registry::pull(
            &Store::open(empty.path()).unwrap(),
            &dest,
            &Platform::host(),
            &opts,
        ))
        .unwrap();
    assert_eq!(pulled.config.rootfs.diff_ids, image.config.rootfs.diff_ids);
    let inspect = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw", "--authfile"])
        .arg(&cfg_path)
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    assert_eq!(
        Digest::of(&inspect.stdout),
        digest,
        "skopeo reads the file kiln wrote"
    );

    let mut config = DockerConfig::load(&cfg_path).unwrap();
    assert!(registry::logout(&reg.host(), &mut config).unwrap());
    let opts = RegistryOptions {
        docker_config: DockerConfig::load(&cfg_path).unwrap(),
        ..options()
    };
    let err = rt.block_on(registry::pull(
        &Store::open(empty.path()).unwrap(),
        &dest,
        &Platform::host(),
        &opts,
    ));
    assert!(matches!(
        err,
        Err(PullError::Client(ClientError::Unauthorized { .. }))
    ));
}

#[test]
fn bearer_token_flow_sends_basic_credentials_to_the_realm() {
    let layer_tar = tar_of("t.txt", b"token\n");
    let layer = gzip(&layer_tar);
    let mut routes = BTreeMap::new();
    hostile_routes(
        &mut routes,
        "tok",
        &Digest::of(&layer),
        layer.len() as u64,
        Some(layer.clone()),
        Digest::of(&layer_tar),
    );
    let server =
        HostileServer::start_with_token(routes, 100, Some(("bob", "pw")), Default::default());
    let host = format!("127.0.0.1:{}", server.port);
    let reference = Reference::parse(&format!("{host}/evil/tok")).unwrap();
    let rt = rt();
    let cfg = tempfile::tempdir().unwrap();
    let with = |user: &str, password: &str| {
        let path = cfg.path().join(format!("{user}-{password}.json"));
        let mut c = DockerConfig::load(&path).unwrap();
        c.store(
            &host,
            &Credentials::Basic {
                username: user.into(),
                password: password.into(),
            },
        )
        .unwrap();
        RegistryOptions {
            docker_config: DockerConfig::load(&path).unwrap(),
            ..options()
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();

    let err = rt
        .block_on(registry::pull(
            &store,
            &reference,
            &Platform::host(),
            &with("bob", "wrong"),
        ))
        .unwrap_err();
    assert!(
        matches!(err, PullError::Client(ClientError::Denied { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains(&host) && err.to_string().contains("bob"),
        "{err}"
    );

    let image = rt
        .block_on(registry::pull(
            &store,
            &reference,
            &Platform::host(),
            &with("bob", "pw"),
        ))
        .unwrap();
    assert_eq!(image.config.rootfs.diff_ids, vec![Digest::of(&layer_tar)]);
    let requests = server.requests.lock().unwrap().clone();
    assert!(
        requests.iter().any(|r| r.starts_with("GET /token?")
            && r.contains("scope=repository%3Aevil%2Ftok%3Apull")
            && r.contains("service=kiln-test")),
        "{requests:#?}"
    );
}

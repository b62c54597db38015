//! Registry client tests against the real CNCF distribution registry (Debian's
//! `docker-registry`), started per test on a free 127.0.0.1 port with its own storage, and
//! checked with skopeo and umoci. A tiny hostile HTTP server (std, loopback only, bounded)
//! serves what no honest registry would.
//!
//! Without `docker-registry`, skopeo or umoci these tests skip with a message, unless
//! REQUIRE_PRIVILEGED_TESTS=1, where they fail.

use cache::image::Image;
use cache::oci::{self, Descriptor, Digest, ImageConfig, ImageIndex, ImageManifest, Platform};
use cache::reference::Reference;
use cache::registry::auth::{Credentials, DockerConfig};
use cache::registry::client::{Client, ClientError};
use cache::registry::{self, Progress, PullError, PushError, RegistryOptions};
use cache::store::Store;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

fn require(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("REQUIRE_PRIVILEGED_TESTS").is_ok_and(|v| v == "1") {
        panic!(
            "REQUIRE_PRIVILEGED_TESTS=1 but {missing:?} missing (apt-get install docker-registry skopeo umoci apache2-utils)"
        );
    }
    eprintln!("skipping: {missing:?} not installed");
    false
}

/// A running `docker-registry serve` on 127.0.0.1, killed on drop.
struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    child: Arc<Mutex<Option<Child>>>,
}

impl Registry {
    fn start() -> Registry {
        Registry::start_with(None)
    }

    /// With `Some((user, password))`, htpasswd basic auth.
    fn start_with(user: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut auth = String::new();
        if let Some((u, p)) = user {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .unwrap();
            assert!(out.status.success());
            std::fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test\n{auth}",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let r = Registry {
            dir,
            port,
            child: Arc::new(Mutex::new(None)),
        };
        r.spawn();
        r
    }

    fn spawn(&self) {
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("log")).unwrap())
            .spawn()
            .unwrap();
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn reference(&self, repo_tag: &str) -> Reference {
        Reference::parse(&format!("{}/{repo_tag}", self.host())).unwrap()
    }

    fn kill(child: &Mutex<Option<Child>>) {
        if let Some(mut c) = child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        Registry::kill(&self.child);
    }
}

fn options() -> RegistryOptions {
    let mut o = RegistryOptions::new(DockerConfig::anonymous());
    o.retries = 2;
    o.retry_base = Duration::from_millis(20);
    o
}

/// Records every progress event.
fn recording(opts: &mut RegistryOptions) -> Arc<Mutex<Vec<Progress>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    opts.progress = Some(Arc::new(move |p: &Progress| {
        e.lock().unwrap().push(p.clone())
    }));
    events
}

fn count(events: &Mutex<Vec<Progress>>, pred: impl Fn(&Progress) -> bool) -> usize {
    events.lock().unwrap().iter().filter(|p| pred(p)).count()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A store holding a busybox image: /bin/busybox plus `sh` and `echo` applet links.
fn busybox_store() -> (tempfile::TempDir, Store, Image) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "bin/", std::io::empty()).unwrap();
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", &busybox[..]).unwrap();
    for applet in ["sh", "echo"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut config = ImageConfig::empty(&Platform::host());
    config.config.cmd = Some(vec!["/bin/sh".into()]);
    let image = store.import_rootfs(&tar[..], config).unwrap();
    (dir, store, image)
}

/// A store with a one-layer image holding `size` bytes of incompressible data.
fn random_store(size: usize, seed: u64) -> (tempfile::TempDir, Store, Image) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    let mut data = Vec::with_capacity(size);
    let mut x = seed | 1;
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "data.bin", &data[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let image = store
        .import_rootfs(&tar[..], ImageConfig::empty(&Platform::host()))
        .unwrap();
    (dir, store, image)
}

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

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

/// Relative path, kind and (for files) content digest of every entry under `root`.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else if m.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &p, out);
            } else {
                out.push(format!("{rel} {}", Digest::of(&std::fs::read(&p).unwrap())));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
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

/// Writes an OCI layout with one image: `files` in one gzip layer.
fn write_layout(dir: &Path, files: &[(&str, &[u8])], arch: &str) -> (Digest, Digest) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = Digest::of(data);
        std::fs::write(blobs.join(d.hex()), data).unwrap();
        Descriptor::new("", d, data.len() as u64)
    };
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let layer = Descriptor {
        media_type: oci::MEDIA_TYPE_LAYER_GZIP.into(),
        ..put(&gz.finish().unwrap())
    };
    let mut config = ImageConfig::empty(&Platform {
        architecture: arch.into(),
        ..Platform::host()
    });
    config.rootfs.diff_ids = vec![diff_id.clone()];
    let config = Descriptor {
        media_type: oci::MEDIA_TYPE_CONFIG.into(),
        ..put(&serde_json::to_vec(&config).unwrap())
    };
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_MANIFEST.into()),
        config,
        layers: vec![layer],
        annotations: BTreeMap::new(),
    };
    let m = Descriptor {
        media_type: oci::MEDIA_TYPE_MANIFEST.into(),
        ..put(&serde_json::to_vec(&manifest).unwrap())
    };
    let mut m_ref = m.clone();
    m_ref
        .annotations
        .insert("org.opencontainers.image.ref.name".into(), "t".into());
    let index = ImageIndex {
        schema_version: 2,
        media_type: None,
        manifests: vec![m_ref],
        annotations: BTreeMap::new(),
    };
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    (m.digest, diff_id)
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

    // Pushed back as OCI: the same layer blob, mounted, listed with the OCI media type.
    let docker: ImageManifest = serde_json::from_str(&raw).unwrap();
    let copy = reg.reference("other/copy:oci");
    rt().block_on(registry::push(&store, &image, &copy, &options()))
        .unwrap();
    let raw = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{copy}"),
    ]);
    let oci_manifest: ImageManifest = serde_json::from_str(&raw).unwrap();
    assert_eq!(oci_manifest.layers[0].digest, docker.layers[0].digest);
    assert_eq!(
        oci_manifest.layers[0].media_type,
        oci::MEDIA_TYPE_LAYER_GZIP
    );
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
    let image = rt
        .block_on(registry::pull(&store, &dest, &amd64, &opts))
        .unwrap();
    assert_eq!(image.config.architecture, "amd64");
    assert_eq!(image.config.rootfs.diff_ids, vec![entries[1].1.clone()]);
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

fn client_config(opts: &RegistryOptions) -> cache::registry::client::ClientConfig {
    cache::registry::client::ClientConfig {
        docker_config: opts.docker_config.clone(),
        insecure: opts.insecure.clone(),
        retries: opts.retries,
        retry_base: opts.retry_base,
    }
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

/// A loopback HTTP/1.1 server answering GET paths from a fixed table (404 otherwise). It
/// serves at most `max_requests` requests and stops when dropped.
struct HostileServer {
    port: u16,
    /// Request lines seen.
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostileServer {
    fn start(routes: BTreeMap<String, (String, Vec<u8>)>, max_requests: usize) -> HostileServer {
        HostileServer::start_with_token(routes, max_requests, None, Default::default())
    }

    /// With `Some((user, password))`, `/v2/` paths need `Bearer t0k`, which `/token` hands out
    /// for those basic credentials, as a token-auth registry does.
    fn start_with_token(
        routes: BTreeMap<String, (String, Vec<u8>)>,
        max_requests: usize,
        token_user: Option<(&str, &str)>,
        mut cut_once: std::collections::BTreeSet<String>,
    ) -> HostileServer {
        use base64::Engine as _;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let basic = token_user.map(|(u, p)| {
            format!(
                "basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut served = 0;
            while served < max_requests
                && Instant::now() < deadline
                && !stop2.load(std::sync::atomic::Ordering::Relaxed)
            {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                served += 1;
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                // One request per connection; TLS probes and garbage are dropped.
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || !line.ends_with("HTTP/1.1\r\n") {
                    continue;
                }
                let mut header = String::new();
                let mut authorization = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    if let Some((k, v)) = header.split_once(':')
                        && k.eq_ignore_ascii_case("authorization")
                    {
                        authorization = v.trim().to_owned();
                    }
                    header.clear();
                }
                seen.lock().unwrap().push(line.trim().to_owned());
                let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                let mut conn = conn;
                let mut extra = String::new();
                let route = match &basic {
                    Some(basic) if path.starts_with("/token?") => {
                        if authorization.eq_ignore_ascii_case(basic) {
                            Some((
                                "200 OK",
                                "application/json".to_owned(),
                                br#"{"token":"t0k"}"#.to_vec(),
                            ))
                        } else {
                            Some((
                                "401 Unauthorized",
                                "application/json".to_owned(),
                                b"{}".to_vec(),
                            ))
                        }
                    }
                    Some(_) if authorization != "Bearer t0k" => {
                        extra = format!(
                            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"kiln-test\"\r\n"
                        );
                        Some((
                            "401 Unauthorized",
                            "application/json".to_owned(),
                            b"{}".to_vec(),
                        ))
                    }
                    _ => None,
                };
                let (status, ctype, body) = match (route, routes.get(&path)) {
                    (Some(r), _) => r,
                    (None, Some((ctype, body))) => ("200 OK", ctype.clone(), body.clone()),
                    (None, None) => (
                        "404 Not Found",
                        "application/json".to_owned(),
                        br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#
                            .to_vec(),
                    ),
                };
                let head = line.starts_with("HEAD ");
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                    body.len()
                );
                if !head {
                    // Paths in `cut_once` lose their connection halfway, the first time.
                    let n = if cut_once.remove(&path) {
                        body.len() / 2
                    } else {
                        body.len()
                    };
                    let _ = conn.write_all(&body[..n]);
                }
            }
        });
        HostileServer {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves repository `evil/NAME:latest` whose manifest lists `layer` (gzip) with digest
/// `claimed` and a config whose diff_id is `diff_id`; `served` is what the blob URL returns
/// (`None`: 404).
fn hostile_routes(
    routes: &mut BTreeMap<String, (String, Vec<u8>)>,
    name: &str,
    claimed: &Digest,
    size: u64,
    served: Option<Vec<u8>>,
    diff_id: Digest,
) {
    let mut config = ImageConfig::empty(&Platform::host());
    config.rootfs.diff_ids = vec![diff_id];
    let config = serde_json::to_vec(&config).unwrap();
    let cd = Digest::of(&config);
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_MANIFEST.into()),
        config: Descriptor::new(oci::MEDIA_TYPE_CONFIG, cd.clone(), config.len() as u64),
        layers: vec![Descriptor::new(
            oci::MEDIA_TYPE_LAYER_GZIP,
            claimed.clone(),
            size,
        )],
        annotations: BTreeMap::new(),
    };
    let json = "application/octet-stream".to_owned();
    routes.insert("/v2/".into(), ("application/json".into(), b"{}".to_vec()));
    routes.insert(
        format!("/v2/evil/{name}/manifests/latest"),
        (
            oci::MEDIA_TYPE_MANIFEST.into(),
            serde_json::to_vec(&manifest).unwrap(),
        ),
    );
    routes.insert(
        format!("/v2/evil/{name}/blobs/{cd}"),
        (json.clone(), config),
    );
    if let Some(b) = served {
        routes.insert(format!("/v2/evil/{name}/blobs/{claimed}"), (json, b));
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    // `append_data` refuses `..`; write the name into the header directly.
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

/// Everything a failed pull could have left: blobs, snapshots, image names.
fn store_contents(store: &Store) -> (Vec<PathBuf>, usize) {
    let mut files = Vec::new();
    for sub in ["blobs", "snapshots"] {
        let dir = store.root().join(sub);
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten() {
                let p = e.unwrap().path();
                if p.is_dir() && !p.is_symlink() && sub == "blobs" {
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
    }
    (files, store.list_images().unwrap().len())
}

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

/// The error and its sources, one per line.
fn anyhow_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut s = e.source();
    while let Some(c) = s {
        out.push_str(&format!(": {c}"));
        s = c.source();
    }
    out
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

//! The test harness: the registry process, stores with images, skopeo, and a hostile
//! loopback HTTP server.

use cache::image::Image;
use cache::oci::{self, Descriptor, Digest, ImageConfig, ImageIndex, ImageManifest, Platform};
use cache::reference::Reference;
use cache::registry::auth::DockerConfig;
use cache::registry::{Progress, RegistryOptions};
use cache::store::Store;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

pub fn require(tools: &[&str]) -> bool {
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
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub child: Arc<Mutex<Option<Child>>>,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_with(None)
    }

    /// With `Some((user, password))`, htpasswd basic auth.
    pub fn start_with(user: Option<(&str, &str)>) -> Registry {
        Registry::start_full(user, "error")
    }

    /// Logs every request (`level: info`) to [`Registry::log`].
    pub fn start_logging() -> Registry {
        Registry::start_full(None, "info")
    }

    fn start_full(user: Option<(&str, &str)>, level: &str) -> Registry {
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
            "version: 0.1\nlog:\n  level: {level}\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test\n{auth}",
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

    pub fn spawn(&self) {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn reference(&self, repo_tag: &str) -> Reference {
        Reference::parse(&format!("{}/{repo_tag}", self.host())).unwrap()
    }

    pub fn kill(child: &Mutex<Option<Child>>) {
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

pub fn options() -> RegistryOptions {
    let mut o = RegistryOptions::new(DockerConfig::anonymous());
    o.retries = 2;
    o.retry_base = Duration::from_millis(20);
    o
}

/// Records every progress event.
pub fn recording(opts: &mut RegistryOptions) -> Arc<Mutex<Vec<Progress>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    opts.progress = Some(Arc::new(move |p: &Progress| {
        e.lock().unwrap().push(p.clone())
    }));
    events
}

pub fn count(events: &Mutex<Vec<Progress>>, pred: impl Fn(&Progress) -> bool) -> usize {
    events.lock().unwrap().iter().filter(|p| pred(p)).count()
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A store holding a busybox image: /bin/busybox plus `sh` and `echo` applet links.
pub fn busybox_store() -> (tempfile::TempDir, Store, Image) {
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
pub fn random_store(size: usize, seed: u64) -> (tempfile::TempDir, Store, Image) {
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

pub fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Relative path, kind and (for files) content digest of every entry under `root`.
pub fn tree(root: &Path) -> Vec<String> {
    pub fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
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

/// Writes an OCI layout with one image: `files` in one gzip layer.
pub fn write_layout(dir: &Path, files: &[(&str, &[u8])], arch: &str) -> (Digest, Digest) {
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
        extra: Default::default(),
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
        extra: Default::default(),
    };
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    (m.digest, diff_id)
}

pub fn client_config(opts: &RegistryOptions) -> cache::registry::client::ClientConfig {
    cache::registry::client::ClientConfig {
        docker_config: opts.docker_config.clone(),
        insecure: opts.insecure.clone(),
        retries: opts.retries,
        retry_base: opts.retry_base,
        timeouts: opts.timeouts,
    }
}

/// A loopback HTTP/1.1 server answering GET paths from a fixed table (404 otherwise). It
/// serves at most `max_requests` requests and stops when dropped.
pub struct HostileServer {
    pub port: u16,
    /// Request lines seen.
    pub requests: Arc<Mutex<Vec<String>>>,
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl HostileServer {
    pub fn start(
        routes: BTreeMap<String, (String, Vec<u8>)>,
        max_requests: usize,
    ) -> HostileServer {
        HostileServer::start_with_token(routes, max_requests, None, Default::default())
    }

    /// With `Some((user, password))`, `/v2/` paths need `Bearer t0k`, which `/token` hands out
    /// for those basic credentials, as a token-auth registry does.
    pub fn start_with_token(
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
pub fn hostile_routes(
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
        extra: Default::default(),
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

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

pub fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
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
pub fn store_contents(store: &Store) -> (Vec<PathBuf>, usize) {
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

/// The error and its sources, one per line.
pub fn anyhow_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut s = e.source();
    while let Some(c) = s {
        out.push_str(&format!(": {c}"));
        s = c.source();
    }
    out
}

/// A loopback HTTP/1.1 proxy in front of a registry that refuses request bodies larger than
/// `limit` with 413, as registries behind size-limited load balancers do. One request per
/// connection (it answers `Connection: close`); it records the request lines it saw.
pub struct BodyLimitProxy {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BodyLimitProxy {
    pub fn start(upstream: u16, limit: u64) -> BodyLimitProxy {
        use std::io::Read as _;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || !line.ends_with("HTTP/1.1\r\n") {
                    continue;
                }
                let mut head = line.clone();
                let mut len = 0u64;
                let mut h = String::new();
                while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                    let (k, v) = h.split_once(':').unwrap_or((&h, ""));
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if !k.eq_ignore_ascii_case("connection") {
                        head.push_str(&h);
                    }
                    h.clear();
                }
                head.push_str("Connection: close\r\n\r\n");
                let mut body = vec![0u8; len as usize];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                seen.lock().unwrap().push(line.trim().to_owned());
                let mut conn = conn;
                if len > limit {
                    let msg = b"request body too large";
                    let _ = write!(
                        conn,
                        "HTTP/1.1 413 Payload Too Large\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        msg.len()
                    );
                    let _ = conn.write_all(msg);
                    continue;
                }
                let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                // The registry builds Location headers from Host, so they point back here.
                if up.write_all(head.as_bytes()).is_err() || up.write_all(&body).is_err() {
                    continue;
                }
                let _ = std::io::copy(&mut up, &mut conn);
            }
        });
        BodyLimitProxy {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BodyLimitProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

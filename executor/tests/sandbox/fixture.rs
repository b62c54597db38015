//! Shared fixtures: privilege checks, a busybox root, running a spec.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use executor::spec::{InitSpec, Network, Rootfs, RunSpec};

/// A named test.
pub type TestFn = fn() -> Result<()>;

/// Why privileged tests cannot run here, if they cannot.
pub fn privileged() -> std::result::Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not running as root".into());
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.contains("overlay") {
        return Err("overlayfs is not available (/proc/filesystems)".into());
    }
    if !Path::new("/bin/busybox").exists() {
        return Err("/bin/busybox is missing (apt-get install busybox-static)".into());
    }
    Ok(())
}

pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
pub const GROUP: &str = "root:x:0:\nalice:x:1000:\nwheel:x:10:alice\nnogroup:x:65534:\n";

/// A busybox root filesystem (`busybox --install -s` layout, /etc/passwd and /etc/group, no
/// /proc, /dev, /sys or /etc/hosts), built once per test process.
pub fn busybox_root() -> &'static Path {
    static ROOT: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &ROOT
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let root = dir.path().join("busybox");
            build_busybox(&root).expect("building the busybox root");
            (dir, root)
        })
        .1
}

fn build_busybox(root: &Path) -> Result<()> {
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list-full")
        .output()?;
    for applet in String::from_utf8(list.stdout)?.lines() {
        let path = root.join(applet);
        if path.exists() {
            continue;
        }
        std::fs::create_dir_all(path.parent().context("applet parent")?)?;
        symlink("/bin/busybox", &path)?;
    }
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::write(root.join("etc/passwd"), PASSWD)?;
    std::fs::write(root.join("etc/group"), GROUP)?;
    std::fs::create_dir_all(root.join("home/alice"))?;
    std::os::unix::fs::chown(root.join("home/alice"), Some(1000), Some(1000))?;
    std::fs::create_dir_all(root.join("data"))?;
    std::fs::write(root.join("data/old"), "old\n")?;
    Ok(())
}

/// A fresh upper and work dir (and the temp dir holding them).
pub struct Layer {
    pub dir: tempfile::TempDir,
}

impl Layer {
    pub fn new() -> Result<Layer> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("upper"))?;
        std::fs::create_dir(dir.path().join("work"))?;
        Ok(Layer { dir })
    }
    pub fn upper(&self) -> PathBuf {
        self.dir.path().join("upper")
    }
    pub fn rootfs(&self, lowers: Vec<PathBuf>) -> Rootfs {
        Rootfs {
            lowers,
            upper: self.upper(),
            work: self.dir.path().join("work"),
        }
    }
}

/// A RunSpec on `lowers` running `sh -c script`.
pub fn sh(layer: &Layer, lowers: Vec<PathBuf>, script: &str) -> RunSpec {
    RunSpec {
        rootfs: layer.rootfs(lowers),
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
        cwd: "/".into(),
        user: String::new(),
        hostname: "kiln-test".into(),
        network: Network::Loopback,
        mounts: vec![],
        tty: false,
        security: Default::default(),
    }
}

/// Runs a spec through `executor::sandbox::command` (re-executing this test binary).
pub fn run(spec: InitSpec) -> Result<Output> {
    let exe = std::env::current_exe()?;
    let out = executor::sandbox::command(&exe, &spec)?
        .stdin(Stdio::null())
        .output()?;
    Ok(out)
}

/// Runs a RunSpec and returns (exit code, stdout, stderr).
pub fn run_spec(spec: RunSpec) -> Result<(i32, String, String)> {
    let out = run(InitSpec::Run(spec))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Runs a script on the busybox root and requires exit 0; returns stdout.
pub fn sh_ok(script: &str) -> Result<String> {
    let layer = Layer::new()?;
    let (code, out, err) = run_spec(sh(&layer, vec![busybox_root().to_path_buf()], script))?;
    if code != 0 {
        bail!("`{script}` exited {code}\nstdout: {out}\nstderr: {err}");
    }
    Ok(out)
}

/// Every path under `dir`, relative, sorted.
pub fn tree(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            out.push(p.strip_prefix(base)?.display().to_string());
            if e.file_type()?.is_dir() {
                walk(base, &p, out)?;
            }
        }
        Ok(())
    }
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

macro_rules! ensure_eq {
    ($a:expr, $b:expr) => {{
        let (a, b) = (&$a, &$b);
        anyhow::ensure!(
            a == b,
            "{} != {}: {:?} vs {:?}",
            stringify!($a),
            stringify!($b),
            a,
            b
        );
    }};
}
pub(crate) use ensure_eq;

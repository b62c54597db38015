//! `kiln push` and `kiln pull` through the real CNCF registry (`docker-registry`, started here on
//! a free 127.0.0.1 port with its own storage): build, push, pull into another store, run.

use crate::harness::{TestDir, privileged, text};
use anyhow::{Context as _, ensure};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `docker-registry serve` child, killed on drop.
struct Registry {
    child: Child,
    port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(dir: &std::path::Path) -> anyhow::Result<Registry> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test\n",
            dir.join("registry-data").display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting docker-registry")?;
    let reg = Registry { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    // Polling the port is the only readiness signal the registry gives.
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "docker-registry did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(reg)
}

#[test]
fn pushed_image_pulls_into_another_store_and_runs() -> anyhow::Result<()> {
    if !privileged(&["docker-registry"]) {
        return Ok(());
    }
    let t = TestDir::new();
    t.import_busybox()?;
    t.write(
        "Dockerfile",
        "FROM busybox\nRUN echo pushed-and-pulled > /msg\nCMD [\"cat\", \"/msg\"]\n",
    );
    t.build("app:1", &[])?;
    let reg = start_registry(t.dir.path())?;
    let remote = format!("127.0.0.1:{}/kiln/app:1", reg.port);
    t.ok(&["push", "app:1", &remote])?;

    let other = TestDir::new();
    other.ok(&["pull", &remote])?;
    let out = other.ok(&["run", "--rm", &remote])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "pushed-and-pulled\n",
        "{}",
        text(&out)
    );
    Ok(())
}

//! Rootless kiln inside `docker run` without `--privileged`: an image assembled here (the kiln
//! binary and its shared libraries, busybox, newuidmap/newgidmap with file capabilities, a user `u` with a
//! subordinate range) made with `docker import`, run with only the relaxations BuildKit's
//! rootless image documents (seccomp and AppArmor unconfined) plus `systempaths=unconfined`
//! (so the sandbox can mount its own /proc, which docker's masks over /proc forbid in a user
//! namespace). The store is a VOLUME of the image: overlayfs needs a real filesystem under
//! its upper dir, not the container's own overlay.

use crate::harness::{busybox_tar, kiln_bin, privileged, text};
use anyhow::{Context as _, ensure};
use std::path::Path;
use std::process::Command;

const DOCKER: &str = "/usr/bin/docker";

fn header(kind: tar::EntryType, mode: u32, size: u64, uid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(0);
    h
}

/// A PAX extended header giving the next entry the extended attribute `key` (docker import
/// applies `SCHILY.xattr.*` records).
fn pax_xattr(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    key: &str,
    value: &[u8],
) -> anyhow::Result<()> {
    let body_len = 1 + "SCHILY.xattr.".len() + key.len() + 1 + value.len() + 1;
    // The record's length counts its own digits.
    let mut len = body_len + 1;
    while len != body_len + len.to_string().len() {
        len = body_len + len.to_string().len();
    }
    let mut record = format!("{len} SCHILY.xattr.{key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    let mut h = header(tar::EntryType::XHeader, 0o644, record.len() as u64, 0);
    b.append_data(&mut h, format!("PaxHeaders/{path}"), record.as_slice())?;
    Ok(())
}

/// The shared libraries `bin` loads, by `ldd`.
fn libs(bin: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("ldd").arg(bin).output()?;
    ensure!(
        out.status.success(),
        "ldd {}: {}",
        bin.display(),
        text(&out)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(str::to_owned)
        })
        .collect())
}

/// The image's root filesystem as a tar, with the example's files in `context` (a directory
/// owned by the user, e.g. `home/u/hello`) and its `FROM busybox` lines naming `base`.
pub(crate) fn rootfs(work: &Path, context: &str, base: &str) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (d, mode, uid) in [
        ("bin", 0o755, 0),
        ("etc", 0o755, 0),
        ("tmp", 0o1777, 0),
        ("proc", 0o555, 0),
        ("sys", 0o555, 0),
        ("dev", 0o755, 0),
        ("run", 0o755, 0),
        ("usr", 0o755, 0),
        ("usr/bin", 0o755, 0),
        ("lib", 0o755, 0),
        ("lib64", 0o755, 0),
        ("lib/x86_64-linux-gnu", 0o755, 0),
        ("home", 0o755, 0),
        ("home/u", 0o755, 1000),
        ("home/u/run", 0o700, 1000),
        ("home/u/.local", 0o755, 1000),
        ("home/u/.local/share", 0o755, 1000),
    ] {
        b.append_data(
            &mut header(tar::EntryType::Directory, mode, 0, uid),
            d,
            std::io::empty(),
        )?;
    }
    // kiln without its debug info (a debug build is ~250 MB, most of it DWARF).
    let kiln = work.join("kiln");
    let out = Command::new("strip")
        .arg("-g")
        .arg("-o")
        .arg(&kiln)
        .arg(kiln_bin())
        .output()?;
    ensure!(out.status.success(), "strip: {}", text(&out));
    let mut files: Vec<(String, String, u32)> = vec![
        (kiln.display().to_string(), "bin/kiln".into(), 0o755),
        ("/bin/busybox".into(), "bin/busybox".into(), 0o755),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for bin in [kiln_bin().as_path(), Path::new("/usr/bin/newuidmap")] {
        for lib in libs(bin)? {
            if seen.insert(lib.clone()) {
                files.push((lib.clone(), lib.trim_start_matches('/').to_owned(), 0o755));
            }
        }
    }
    for (src, dst, mode) in files {
        let data = std::fs::read(&src).with_context(|| src.clone())?;
        b.append_data(
            &mut header(tar::EntryType::Regular, mode, data.len() as u64, 0),
            dst,
            data.as_slice(),
        )?;
    }
    // newuidmap/newgidmap with file capabilities (as Fedora ships them), not setuid root:
    // they then run as the user, who owns the new user namespace (the kernel's condition for
    // writing its map without CAP_SYS_ADMIN, which the container lacks), with CAP_SETUID
    // (CAP_SETGID) in the container's namespace. Debian's setuid newuidmap runs as root,
    // which owns nothing there, and is refused.
    for (tool, cap) in [("newuidmap", 7u32), ("newgidmap", 6)] {
        let data = std::fs::read(format!("/usr/bin/{tool}"))?;
        let mut value = Vec::new();
        // struct vfs_cap_data, revision 2, effective: permitted = the one capability.
        for word in [0x0200_0001u32, 1 << cap, 0, 0, 0] {
            value.extend_from_slice(&word.to_le_bytes());
        }
        pax_xattr(
            &mut b,
            &format!("usr/bin/{tool}"),
            "security.capability",
            &value,
        )?;
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o755, data.len() as u64, 0),
            format!("usr/bin/{tool}"),
            data.as_slice(),
        )?;
    }
    for applet in [
        "sh", "cat", "ls", "id", "tr", "mkdir", "echo", "sleep", "env",
    ] {
        b.append_link(
            &mut header(tar::EntryType::Symlink, 0o777, 0, 0),
            format!("bin/{applet}"),
            "busybox",
        )?;
    }
    let bb = busybox_tar()?;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let mut texts: Vec<(String, Vec<u8>, u64)> = vec![
        (
            "etc/passwd".into(),
            b"root:x:0:0:root:/root:/bin/sh\nu:x:1000:1000:u:/home/u:/bin/sh\n".to_vec(),
            0,
        ),
        ("etc/group".into(), b"root:x:0:\nu:x:1000:\n".to_vec(), 0),
        ("etc/subuid".into(), b"u:100000:65536\n".to_vec(), 0),
        ("etc/subgid".into(), b"u:100000:65536\n".to_vec(), 0),
        ("home/u/busybox.tar".into(), bb, 1000),
    ];
    for e in std::fs::read_dir(&example)? {
        let e = e?;
        if e.file_type()?.is_file() {
            let mut data = std::fs::read(e.path())?;
            if e.file_name() == "Dockerfile" {
                data = String::from_utf8(data)?
                    .replace("FROM busybox", &format!("FROM {base}"))
                    .into_bytes();
            }
            texts.push((
                format!("{context}/{}", e.file_name().to_string_lossy()),
                data,
                1000,
            ));
        }
    }
    b.append_data(
        &mut header(tar::EntryType::Directory, 0o755, 0, 1000),
        context,
        std::io::empty(),
    )?;
    for (p, data, uid) in texts {
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o644, data.len() as u64, uid),
            p,
            data.as_slice(),
        )?;
    }
    Ok(b.into_inner()?)
}

/// The config of the image `remote` (an insecure registry), pulled back by skopeo (a tool we
/// did not write) into the OCI layout `oci` as `hello`.
pub(crate) fn pulled_config(remote: &str, oci: &Path) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{remote}"))
        .arg(format!("oci:{}:hello", oci.display()))
        .output()?;
    ensure!(out.status.success(), "skopeo copy: {}", text(&out));
    let out = Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci:{}:hello", oci.display()))
        .output()?;
    ensure!(out.status.success(), "skopeo inspect: {}", text(&out));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The host's address on docker's default bridge (`docker0`), which containers reach.
fn docker_gateway() -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", "docker0"])
        .output()?;
    ensure!(out.status.success(), "ip addr show docker0: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_owned)
        .context("docker0 has no IPv4 address")
}

#[test]
fn rootless_kiln_builds_and_pushes_the_example_inside_an_unprivileged_docker_container()
-> anyhow::Result<()> {
    if !privileged(&[
        "docker",
        "strip",
        "ldd",
        "newuidmap",
        "docker-registry",
        "skopeo",
        "ip",
    ]) {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let gateway = docker_gateway()?;
    let reg = crate::registry::start_registry_on(work.path(), &gateway)?;
    let registry = format!("{gateway}:{}", reg.port);
    let tar_path = work.path().join("rootfs.tar");
    std::fs::write(&tar_path, rootfs(work.path(), "home/u/hello", "busybox")?)?;
    let tag = format!("kiln-rootless-it:{}", std::process::id());
    let out = Command::new(DOCKER)
        .args([
            "import",
            "--change",
            "USER u",
            "--change",
            "WORKDIR /home/u",
        ])
        .args(["--change", "VOLUME /home/u/.local/share"])
        .args([
            "--change",
            "ENV HOME=/home/u XDG_RUNTIME_DIR=/home/u/run PATH=/bin:/usr/bin",
        ])
        .arg(&tar_path)
        .arg(&tag)
        .output()?;
    ensure!(out.status.success(), "docker import: {}", text(&out));
    if std::env::var_os("KILN_IT_KEEP").is_some() {
        std::fs::copy(&tar_path, std::env::temp_dir().join("kiln-rootless-it.tar"))?;
    }
    let _ = std::fs::remove_file(&tar_path);
    let remote = format!("{registry}/rootless/hello:1");
    // No /dev/net/tun in the container: kiln keeps the container's network (the automatic
    // KILN_ROOTLESS_NET=host, with a notice), so RUN steps, `kiln run` and the push use it.
    let script = format!(
        "set -e; kiln import --change 'CMD [\"sh\"]' busybox.tar busybox >/dev/null; \
         kiln build --progress plain -t hello hello; kiln run --rm hello; \
         kiln run --rm busybox sh -c 'test -r /sys/kernel/mm && echo SYS-OK'; \
         mkdir net; printf 'FROM busybox\\nRUN wget -q -O /reply http://{registry}/v2/\\n' \
         > net/Dockerfile; kiln build -q -t net net >/dev/null; \
         kiln run --rm net sh -c 'echo REPLY=$(cat /reply)'; \
         kiln push --insecure-registry {registry} hello {remote}; id -u"
    );
    let out = Command::new(DOCKER)
        .args(["run", "--rm"])
        .args(["--security-opt", "seccomp=unconfined"])
        .args(["--security-opt", "apparmor=unconfined"])
        .args(["--security-opt", "systempaths=unconfined"])
        .arg(&tag)
        .args(["sh", "-c", &script])
        .output()?;
    if std::env::var_os("KILN_IT_KEEP").is_none() {
        let _ = Command::new(DOCKER).args(["rmi", "-f", &tag]).output();
    }
    ensure!(
        out.status.success(),
        "kiln inside docker failed ({}):\n{}",
        out.status,
        text(&out)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("/dev/net/tun cannot be opened") && err.contains("KILN_ROOTLESS_NET=host"),
        "no host-network notice: {}",
        text(&out)
    );
    ensure!(s.contains("HELLO FROM A KILN BUILD"), "{}", text(&out));
    ensure!(
        s.contains("SYS-OK"),
        "no /sys in the container: {}",
        text(&out)
    );
    // A RUN step reached the registry on the host through the container's network.
    ensure!(
        s.contains("REPLY={}"),
        "RUN did not reach the host: {}",
        text(&out)
    );
    ensure!(s.trim_end().ends_with("1000"), "not run as uid 1000: {s}");
    // Pulled back on the host by skopeo, a tool we did not write.
    let config = pulled_config(&remote, &work.path().join("pulled"))?;
    ensure!(
        config["config"]["Labels"]["org.opencontainers.image.title"] == "hello"
            && config["config"]["Env"]
                .as_array()
                .is_some_and(|e| e.iter().any(|v| v == "GREETING_FILE=/app/GREETING.txt")),
        "pulled config: {config}"
    );
    Ok(())
}

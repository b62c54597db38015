//! README claims checked at the CLI: `kiln run -e/-w/-u/--entrypoint/-i`, `--progress tty` on a
//! real terminal (`script` gives kiln a pty), `kiln login --password-stdin` against a registry
//! with htpasswd auth, and `kiln pull --platform` of another architecture's image.

use crate::harness::{TestDir, busybox_dir, stdout, text};
use anyhow::{Context as _, ensure};
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `kiln args...` with `input` on its stdin.
fn with_stdin(
    t: &TestDir,
    args: &[&str],
    env: &[(&str, &str)],
    input: &str,
) -> anyhow::Result<Output> {
    let mut c = t.cmd(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("piped stdin")?
        .write_all(input.as_bytes())?;
    Ok(child.wait_with_output()?)
}

#[test]
fn run_env_workdir_user_entrypoint_and_stdin_reach_the_container() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox\nENV FROM_IMAGE=kept\nENTRYPOINT [\"echo\", \"from-entrypoint\"]\n",
    );
    t.build("flags:1", &[])?;

    // -e adds and overrides variables; the image's others stay.
    let out = t.ok(&[
        "run",
        "--rm",
        "-e",
        "A=1",
        "-e",
        "FROM_IMAGE=over",
        "--entrypoint",
        "sh",
        "flags:1",
        "-c",
        "echo $A $FROM_IMAGE",
    ])?;
    ensure!(stdout(&out) == "1 over\n", "{}", text(&out));
    let out = t.ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        "flags:1",
        "-c",
        "echo $FROM_IMAGE",
    ])?;
    ensure!(stdout(&out) == "kept\n", "{}", text(&out));

    // -w sets the working directory (created when missing, as docker does).
    let out = t.ok(&[
        "run",
        "--rm",
        "-w",
        "/srv/app",
        "--entrypoint",
        "pwd",
        "flags:1",
    ])?;
    ensure!(stdout(&out) == "/srv/app\n", "{}", text(&out));

    // -u sets uid and gid, numerically and by name from the image's /etc/passwd.
    let out = t.ok(&[
        "run",
        "--rm",
        "-u",
        "1234:4321",
        "--entrypoint",
        "sh",
        "flags:1",
        "-c",
        "id -u; id -g",
    ])?;
    ensure!(stdout(&out) == "1234\n4321\n", "{}", text(&out));
    let out = t.ok(&[
        "run",
        "--rm",
        "-u",
        "nobody",
        "--entrypoint",
        "id",
        "flags:1",
        "-un",
    ])?;
    ensure!(stdout(&out) == "nobody\n", "{}", text(&out));

    // Without --entrypoint the image's runs with CMD as its arguments; with it, it replaces it.
    let out = t.ok(&["run", "--rm", "flags:1", "x"])?;
    ensure!(stdout(&out) == "from-entrypoint x\n", "{}", text(&out));
    let out = t.ok(&["run", "--rm", "--entrypoint", "echo", "flags:1", "x"])?;
    ensure!(stdout(&out) == "x\n", "{}", text(&out));

    // -i connects stdin; without it the container reads nothing.
    let out = with_stdin(
        &t,
        &["run", "--rm", "-i", "--entrypoint", "cat", "flags:1"],
        &[],
        "piped in\n",
    )?;
    ensure!(
        out.status.success() && stdout(&out) == "piped in\n",
        "{}",
        text(&out)
    );
    let out = with_stdin(
        &t,
        &["run", "--rm", "--entrypoint", "cat", "flags:1"],
        &[],
        "piped in\n",
    )?;
    ensure!(
        out.status.success() && stdout(&out).is_empty(),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn progress_tty_redraws_on_a_terminal_and_plain_has_no_escapes() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["script"])? else {
        return Ok(());
    };
    t.write("Dockerfile", "FROM busybox\nRUN echo tty-step > /out\n");
    let ctx = t.ctx.to_str().context("utf-8")?;
    let kiln = crate::harness::kiln_bin();
    let line = format!(
        "{} build --progress tty -t tty:1 {ctx}",
        kiln.to_str().context("utf-8")?
    );
    // `script` runs the command on a new pty and copies what it draws to our stdout.
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("KILN_ROOT", &t.root)
        .env("TERM", "xterm")
        .env_remove("KILN_LOG")
        .stdin(Stdio::null())
        .output()?;
    let drawn = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "{}", text(&out));
    ensure!(
        drawn.contains("\x1b[") && drawn.contains("RUN echo tty-step"),
        "no terminal drawing: {drawn:?}"
    );
    let run = t.ok(&["run", "--rm", "tty:1", "cat", "/out"])?;
    ensure!(stdout(&run) == "tty-step\n", "{}", text(&run));

    let out = t.ok(&[
        "build",
        "--progress",
        "plain",
        "--no-cache",
        "-t",
        "tty:2",
        ctx,
    ])?;
    ensure!(
        !text(&out).contains('\x1b') && text(&out).contains("RUN echo tty-step"),
        "{}",
        text(&out)
    );
    Ok(())
}

/// A `docker-registry` with htpasswd basic auth for `user:password`, killed on drop.
struct AuthRegistry {
    child: Child,
    host: String,
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_auth_registry(
    dir: &std::path::Path,
    user: &str,
    password: &str,
) -> anyhow::Result<AuthRegistry> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()?;
    ensure!(out.status.success(), "htpasswd: {}", text(&out));
    std::fs::write(dir.join("htpasswd"), out.stdout)?;
    let config = dir.join("auth-registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test\nauth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
            dir.join("auth-registry-data").display(),
            dir.join("htpasswd").display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting docker-registry")?;
    let reg = AuthRegistry {
        child,
        host: format!("127.0.0.1:{port}"),
    };
    // Polling the port is the only readiness signal the registry gives.
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "docker-registry did not start on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(reg)
}

#[test]
fn login_password_stdin_stores_checked_credentials_that_push_and_pull_use() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["docker-registry", "htpasswd"])? else {
        return Ok(());
    };
    let reg = start_auth_registry(t.dir.path(), "kiln", "s3cret")?;
    let docker_config = t.dir.path().join("docker-config");
    std::fs::create_dir(&docker_config)?;
    let dc = docker_config.to_str().context("utf-8")?;
    let env = [("DOCKER_CONFIG", dc)];
    t.write("Dockerfile", "FROM busybox\nRUN echo authed > /msg\n");
    t.build("auth:1", &[])?;
    let remote = format!("{}/kiln/auth:1", reg.host);

    let push = |t: &TestDir| {
        t.cmd(&["push", "auth:1", &remote])
            .env("DOCKER_CONFIG", dc)
            .output()
    };
    let out = push(&t)?;
    ensure!(
        !out.status.success(),
        "pushed without credentials: {}",
        text(&out)
    );

    // A wrong password is refused by the registry and nothing is saved.
    let out = with_stdin(
        &t,
        &["login", "-u", "kiln", "--password-stdin", &reg.host],
        &env,
        "wrong\n",
    )?;
    ensure!(
        !out.status.success(),
        "a wrong password logged in: {}",
        text(&out)
    );
    let saved = std::fs::read_to_string(docker_config.join("config.json")).unwrap_or_default();
    ensure!(
        !saved.contains(&reg.host),
        "a refused login was saved: {saved}"
    );

    // The password read from stdin (trailing newline stripped, as docker) is checked and saved
    // in docker's format: base64 of user:password.
    let out = with_stdin(
        &t,
        &["login", "-u", "kiln", "--password-stdin", &reg.host],
        &env,
        "s3cret\n",
    )?;
    ensure!(out.status.success(), "{}", text(&out));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(docker_config.join("config.json"))?)?;
    ensure!(
        saved["auths"][&reg.host]["auth"] == "a2lsbjpzM2NyZXQ=",
        "{saved}"
    );

    let out = push(&t)?;
    ensure!(out.status.success(), "{}", text(&out));
    let other = TestDir::new();
    let out = other
        .cmd(&["run", "--rm", &remote, "cat", "/msg"])
        .env("DOCKER_CONFIG", dc)
        .output()?;
    ensure!(
        out.status.success() && stdout(&out) == "authed\n",
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn pull_platform_takes_an_image_of_another_architecture() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["docker-registry", "umoci", "skopeo"])? else {
        return Ok(());
    };
    let other = if std::env::consts::ARCH == "aarch64" {
        "amd64"
    } else {
        "arm64"
    };
    // A single-platform image whose config says `other`, made by umoci from a kiln image and
    // pushed by skopeo.
    t.write("Dockerfile", "FROM busybox\nRUN echo elsewhere > /msg\n");
    t.build("arch:1", &[])?;
    let tar = t.dir.path().join("arch.tar");
    t.ok(&["save", "arch:1", "-o", tar.to_str().context("utf-8")?])?;
    let layout = t.dir.path().join("arch-layout");
    std::fs::create_dir(&layout)?;
    tar::Archive::new(std::fs::File::open(&tar)?).unpack(&layout)?;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let refname = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .context("index.json names the image")?;
    let image = format!("{}:{refname}", layout.display());
    let tool = |bin: &str, args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new(bin).args(args).output()?;
        ensure!(out.status.success(), "{bin} {args:?}: {}", text(&out));
        Ok(())
    };
    tool(
        "umoci",
        &["config", "--image", &image, "--architecture", other],
    )?;
    let reg = crate::registry::start_registry(t.dir.path())?;
    let remote = format!("127.0.0.1:{}/kiln/other:1", reg.port);
    tool(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{image}"),
            &format!("docker://{remote}"),
        ],
    )?;

    // Refused on this machine, naming the image's platform, unless --platform asks for it.
    let store = TestDir::new();
    let out = store.kiln(&["pull", &remote]);
    ensure!(
        !out.status.success() && text(&out).contains(&format!("linux/{other}")),
        "{}",
        text(&out)
    );
    store.ok(&["pull", "--platform", &format!("linux/{other}"), &remote])?;
    let inspect = store.ok(&["inspect", &remote])?;
    let doc: serde_json::Value = serde_json::from_slice(&inspect.stdout)?;
    ensure!(doc[0]["Architecture"] == other, "{}", text(&inspect));
    Ok(())
}

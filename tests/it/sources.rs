//! Issue 3's remaining sources and mounts: ADD of a git repository (against `git daemon` on
//! 127.0.0.1), RUN --mount=type=ssh (a real `ssh-agent`), a context bind mount that hides
//! `.dockerignore`d files.

use crate::harness::{TestDir, busybox_dir, cached, executed_runs, text};
use anyhow::{Context as _, ensure};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Kills and reaps a helper process (git daemon, ssh-agent) when the test ends, with the
/// processes of its group: `git daemon` runs `git-daemon` as a child, which outlived the `git`
/// it was started by. Start it with `process_group(0)`.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(pgid) = i32::try_from(self.0.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `git args...` in `dir` with a fixed identity and dates, so commits are reproducible.
pub(crate) fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "kiln")
        .env("GIT_AUTHOR_EMAIL", "kiln@example.invalid")
        .env("GIT_COMMITTER_NAME", "kiln")
        .env("GIT_COMMITTER_EMAIL", "kiln@example.invalid")
        .env("GIT_AUTHOR_DATE", "2020-01-02T03:04:05Z")
        .env("GIT_COMMITTER_DATE", "2020-01-02T03:04:05Z")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .context("running git")?;
    ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Writes `files` into the work tree and commits them; returns the commit id.
pub(crate) fn commit(repo: &Path, files: &[(&str, &str)], message: &str) -> anyhow::Result<String> {
    for (rel, text) in files {
        let p = repo.join(rel);
        std::fs::create_dir_all(p.parent().context("a parent")?)?;
        std::fs::write(&p, text)?;
    }
    git(repo, &["add", "-A"])?;
    git(repo, &["commit", "-q", "-m", message])?;
    git(repo, &["rev-parse", "HEAD"])
}

/// An empty repository `base/repo.git` on branch `main`.
pub(crate) fn init_repo(base: &Path) -> anyhow::Result<PathBuf> {
    let repo = base.join("repo.git");
    std::fs::create_dir_all(&repo)?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    Ok(repo)
}

/// A repository `base/repo.git` served by `git daemon` on a free 127.0.0.1 port.
pub(crate) struct GitServer {
    _daemon: Proc,
    pub(crate) repo: PathBuf,
    pub(crate) url: String,
}

pub(crate) fn git_server(t: &TestDir) -> anyhow::Result<GitServer> {
    let base = t.dir.path().join("git");
    let repo = init_repo(&base)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let daemon = Command::new("git")
        .arg("daemon")
        .arg("--export-all")
        .arg("--reuseaddr")
        .arg("--informative-errors")
        .arg(format!("--base-path={}", base.display()))
        .arg("--listen=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg(&base)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting git daemon")?;
    let daemon = Proc(daemon);
    // Ready once it accepts connections (bounded wait).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            std::time::Instant::now() < deadline,
            "git daemon did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(GitServer {
        _daemon: daemon,
        repo,
        url: format!("git://127.0.0.1:{port}/repo.git"),
    })
}

fn cat(t: &TestDir, image: &str, path: &str) -> anyhow::Result<String> {
    let out = t.ok(&["run", "--rm", image, "cat", path])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn add_git_branch_tag_commit_subdir_query_and_keep_git_dir() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["git"])? else {
        return Ok(());
    };
    let s = git_server(&t)?;
    let c1 = commit(&s.repo, &[("README", "v1\n"), ("sub/file", "s1\n")], "one")?;
    git(&s.repo, &["tag", "-a", "v1", "-m", "release 1"])?;
    let c2 = commit(&s.repo, &[("README", "v2\n"), ("sub/file", "s2\n")], "two")?;
    let u = &s.url;
    let prefix = &c1[..10];
    t.write(
        "Dockerfile",
        &format!(
            "FROM busybox\n\
             ADD {u} /src/main\n\
             ADD {u}#v1 /src/tag\n\
             ADD {u}#{c1} /src/commit\n\
             ADD {u}#main:sub /src/sub\n\
             ADD {u}?tag=v1&subdir=sub /src/qsub/\n\
             ADD --checksum={prefix} --keep-git-dir=true {u}#v1 /src/keep\n\
             RUN cat /src/main/README /src/tag/README /src/commit/README /src/sub/file \
             /src/qsub/file /src/keep/.git/HEAD > /out && \
             (test -e /src/main/.git || echo no-git-dir) >> /out && \
             stat -c %Y /src/main/README >> /out\n"
        ),
    );
    t.build("gitsrc:1", &[])?;
    let out = cat(&t, "gitsrc:1", "/out")?;
    // The checked-out files carry the commit time (2020-01-02T03:04:05Z), not the clock.
    let want = format!("v2\nv1\nv1\ns2\ns1\n{c1}\nno-git-dir\n1577934245\n");
    ensure!(out == want, "got {out:?}, want {want:?} (main is {c2})");
    Ok(())
}

#[test]
fn add_git_cache_follows_the_branch_and_bad_refs_name_the_url() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["git"])? else {
        return Ok(());
    };
    let s = git_server(&t)?;
    commit(&s.repo, &[("README", "v1\n")], "one")?;
    let u = &s.url;
    t.write(
        "Dockerfile",
        &format!("FROM busybox\nADD {u}#main /src\nRUN cat /src/README > /out\n"),
    );
    t.build("gitcache:1", &[])?;
    let ev = t.build("gitcache:2", &[])?;
    ensure!(
        cached(&ev).iter().any(|n| n.contains("ADD")),
        "an unchanged branch must hit the cache: {ev:?}"
    );
    ensure!(executed_runs(&ev).is_empty(), "{:?}", executed_runs(&ev));
    // The branch moves: ls-remote sees the new commit, the ADD and the RUN run again.
    commit(&s.repo, &[("README", "v2\n")], "two")?;
    let ctx = t.ctx.to_str().expect("utf-8");
    let out = t.ok(&[
        "build",
        "--progress",
        "plain",
        "--explain",
        "-t",
        "gitcache:3",
        ctx,
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("cache misses: 2") && err.contains(&format!("file changed: {u}#main (git)")),
        "a moved branch must miss the cache, and --explain say why: {err}"
    );
    ensure!(cat(&t, "gitcache:3", "/out")? == "v2\n");

    // A ref that does not exist: the error names the step and the URL.
    t.write(
        "Dockerfile",
        &format!("FROM busybox\nADD {u}#nosuchbranch /src\n"),
    );
    let out = t.kiln(&["build", "-t", "gitcache:4", t.ctx.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{}", text(&out));
    ensure!(
        err.contains("Dockerfile:2")
            && err.contains(&format!("{u}#nosuchbranch"))
            && err.contains("\"nosuchbranch\" not found"),
        "{}",
        text(&out)
    );
    // A checksum that does not match the commit.
    t.write(
        "Dockerfile",
        &format!("FROM busybox\nADD --checksum=0000000 {u}#main /src\n"),
    );
    let out = t.kiln(&["build", "-t", "gitcache:5", t.ctx.to_str().expect("utf-8")]);
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"),
        "{}",
        text(&out)
    );
    Ok(())
}

/// `kiln build` with extra environment; returns the rawjson events.
fn build_env(
    t: &TestDir,
    tag: &str,
    extra: &[&str],
    env: &[(&str, &Path)],
) -> anyhow::Result<Vec<serde_json::Value>> {
    let ctx = t.ctx.to_str().expect("utf-8 path");
    let mut args = vec!["build", "--progress", "rawjson", "-t", tag];
    args.extend_from_slice(extra);
    args.push(ctx);
    let mut cmd = t.cmd(&args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    ensure!(out.status.success(), "kiln {args:?}:\n{}", text(&out));
    crate::harness::events(&out)
}

/// Copies `bin` and the shared libraries `ldd` lists for it under `root`, at their own paths,
/// so that a dynamically linked tool runs in the busybox image.
fn copy_with_libs(bin: &str, root: &Path) -> anyhow::Result<()> {
    let out = Command::new("ldd").arg(bin).output()?;
    ensure!(out.status.success(), "ldd {bin}");
    let mut files = vec![bin.to_owned()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(p.to_owned());
        }
    }
    for f in files {
        let dst = root.join(f.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().context("a parent")?)?;
        std::fs::copy(&f, &dst).with_context(|| format!("copying {f}"))?;
    }
    Ok(())
}

#[test]
fn ssh_mount_reaches_a_real_agent_and_stays_out_of_keys_and_layers() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["ssh-agent", "ssh-add", "ssh-keygen", "ldd"])? else {
        return Ok(());
    };
    let d = t.dir.path();
    let key = d.join("key");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test", "-f"])
        .arg(&key)
        .status()?;
    ensure!(st.success(), "ssh-keygen");
    let fp = Command::new("ssh-keygen").arg("-lf").arg(&key).output()?;
    let fingerprint = String::from_utf8_lossy(&fp.stdout)
        .split_whitespace()
        .nth(1)
        .context("a fingerprint")?
        .to_owned();
    let sock = d.join("agent.sock");
    let _agent = Proc(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        ensure!(
            std::time::Instant::now() < deadline,
            "ssh-agent did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let st = Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &sock)
        .stderr(Stdio::null())
        .status()?;
    ensure!(st.success(), "ssh-add");

    copy_with_libs("/usr/bin/ssh-add", &t.ctx.join("sshroot"))?;
    t.write(
        "Dockerfile",
        "FROM busybox\n\
         COPY sshroot/ /\n\
         ARG N\n\
         RUN --mount=type=ssh sh -c 'test -S \"$SSH_AUTH_SOCK\" && echo \"$SSH_AUTH_SOCK\" > /sock \
         && ssh-add -l > /keys'\n\
         RUN --mount=type=ssh,id=deploy,target=/agent,uid=1000,gid=1000,mode=0660 \
         stat -c '%u %g %a %F' /agent > /stat\n",
    );
    let sock_s = sock.to_str().expect("utf-8");
    let deploy = format!("deploy={sock_s}");
    build_env(
        &t,
        "ssh:1",
        &["--ssh", "default", "--ssh", &deploy],
        &[("SSH_AUTH_SOCK", &sock)],
    )?;
    ensure!(cat(&t, "ssh:1", "/sock")? == "/run/buildkit/ssh_agent.0\n");
    let keys = cat(&t, "ssh:1", "/keys")?;
    ensure!(keys.contains(&fingerprint), "{keys:?} lacks {fingerprint}");
    ensure!(cat(&t, "ssh:1", "/stat")? == "1000 1000 660 socket\n");
    let out = t.ok(&[
        "run",
        "--rm",
        "ssh:1",
        "sh",
        "-c",
        "test -e /run/buildkit/ssh_agent.0 || test -e /agent || echo gone",
    ])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "gone\n",
        "the socket reached the layer: {}",
        text(&out)
    );

    // A key file instead of a socket: kiln loads it into a private agent.
    let key_s = key.to_str().expect("utf-8");
    let ev = build_env(
        &t,
        "ssh:2",
        &[
            "--build-arg",
            "N=2",
            "--ssh",
            &format!("default={key_s}"),
            "--ssh",
            &format!("deploy={key_s}"),
        ],
        &[],
    )?;
    ensure!(executed_runs(&ev).len() == 2, "{:?}", executed_runs(&ev));
    let keys = cat(&t, "ssh:2", "/keys")?;
    ensure!(keys.contains(&fingerprint), "{keys:?} lacks {fingerprint}");
    // Another agent does not change the keys: everything is cached.
    let ev = build_env(
        &t,
        "ssh:3",
        &["--build-arg", "N=2", "--ssh", "default", "--ssh", &deploy],
        &[("SSH_AUTH_SOCK", &sock)],
    )?;
    ensure!(executed_runs(&ev).is_empty(), "{:?}", executed_runs(&ev));

    // required=true without --ssh: the error names file:line:col and the id.
    t.write(
        "Dockerfile",
        "FROM busybox\n  RUN --mount=type=ssh,id=gh,required=true true\n",
    );
    let out = t.kiln(&["build", "-t", "ssh:4", t.ctx.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && err.contains("Dockerfile:2:3")
            && err.contains("ssh agent \"gh\" is required"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn context_bind_mount_hides_ignored_files_and_its_key_ignores_them() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(".dockerignore", "secret.txt\nignored/\n");
    t.write("keep.txt", "k1\n");
    t.write("secret.txt", "s1\n");
    t.write("ignored/x", "x\n");
    t.write("sub/y", "y\n");
    t.write(
        "Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=bind,target=/ctx sh -c 'ls -A /ctx /ctx/sub > /list; cat /ctx/keep.txt >> /list'\n\
         RUN --mount=type=bind,target=/ctx,rw sh -c 'ls -A /ctx > /list-rw; echo changed > /ctx/secret.txt'\n",
    );
    t.build("bind:1", &[])?;
    let list = cat(&t, "bind:1", "/list")?;
    ensure!(
        list == "/ctx:\n.dockerignore\nDockerfile\nkeep.txt\nsub\n\n/ctx/sub:\ny\nk1\n",
        "{list:?}"
    );
    let list = cat(&t, "bind:1", "/list-rw")?;
    ensure!(
        list == ".dockerignore\nDockerfile\nkeep.txt\nsub\n",
        "{list:?}"
    );
    ensure!(std::fs::read_to_string(t.ctx.join("secret.txt"))? == "s1\n");

    // An ignored file changes: nothing runs again.
    t.write("secret.txt", "s2\n");
    t.write("ignored/x", "x2\n");
    let ev = t.build("bind:2", &[])?;
    ensure!(executed_runs(&ev).is_empty(), "{:?}", executed_runs(&ev));
    // A visible one changes: both RUNs see a new context, and --explain names the file.
    t.write("keep.txt", "k2\n");
    let ctx = t.ctx.to_str().expect("utf-8");
    let out = t.ok(&[
        "build",
        "--progress",
        "plain",
        "--explain",
        "-t",
        "bind:3",
        ctx,
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("cache misses: 2") && err.contains("file changed: keep.txt"),
        "{err}"
    );
    ensure!(cat(&t, "bind:3", "/list")?.ends_with("k2\n"));
    Ok(())
}

/// Serves `git http-backend` (git's smart HTTP, as a CGI program) on a free 127.0.0.1 port:
/// one thread per connection, `Connection: close`. Returns `http://127.0.0.1:PORT`.
pub(crate) fn git_http(base: &Path) -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let base = base.to_owned();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let base = base.clone();
            std::thread::spawn(move || {
                let _ = cgi(conn, &base);
            });
        }
    });
    Ok(format!("http://{addr}"))
}

fn cgi(mut conn: std::net::TcpStream, base: &Path) -> std::io::Result<()> {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or("GET").to_owned();
    let target = parts.next().unwrap_or("/").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut headers = std::collections::BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let header = |k: &str| headers.get(k).cloned().unwrap_or_default();
    // git sends chunked bodies only above http.postBuffer (1 MiB); these repositories are tiny.
    let len: usize = header("content-length").parse().unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let mut child = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", base)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", len.to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("HTTP_GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&body)?;
    }
    let out = child.wait_with_output()?;
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            out.stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
        });
    let (head, body) = match split {
        Some((i, n)) => (
            String::from_utf8_lossy(&out.stdout[..i]).into_owned(),
            &out.stdout[i + n..],
        ),
        None => (String::new(), &out.stdout[..]),
    };
    let mut status = "200 OK".to_owned();
    let mut resp = String::new();
    for line in head.lines() {
        match line.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_owned(),
            Some(_) => {
                resp.push_str(line.trim_end());
                resp.push_str("\r\n");
            }
            None => {}
        }
    }
    let head = format!(
        "HTTP/1.1 {status}\r\n{resp}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    Ok(())
}

#[test]
fn add_git_over_smart_http_with_a_tag_and_subdir() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["git"])? else {
        return Ok(());
    };
    let base = t.dir.path().join("http");
    let repo = init_repo(&base)?;
    commit(&repo, &[("app/main.sh", "echo one\n")], "one")?;
    git(&repo, &["tag", "v1"])?;
    commit(&repo, &[("app/main.sh", "echo two\n")], "two")?;
    let url = format!("{}/repo.git", git_http(&base)?);
    t.write(
        "Dockerfile",
        &format!(
            "FROM busybox\nADD {url}#v1:app /a/\nADD {url} /b\n\
             RUN cat /a/main.sh /b/app/main.sh > /out\n"
        ),
    );
    t.build("githttp:1", &[])?;
    ensure!(cat(&t, "githttp:1", "/out")? == "echo one\necho two\n");
    Ok(())
}

#[test]
fn add_git_checks_out_submodules_unless_asked_not_to() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["git"])? else {
        return Ok(());
    };
    let s = git_server(&t)?;
    let sub = s.repo.with_file_name("sub.git");
    std::fs::create_dir_all(&sub)?;
    git(&sub, &["init", "-q", "-b", "main"])?;
    commit(&sub, &[("lib.txt", "from the submodule\n")], "lib")?;
    commit(&s.repo, &[("README", "top\n")], "top")?;
    // A relative URL, resolved against the superproject's remote (the daemon) by kiln.
    git(
        &s.repo,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            "../sub.git",
            "vendor/sub",
        ],
    )?;
    git(&s.repo, &["commit", "-q", "-m", "add submodule"])?;
    let u = &s.url;
    t.write(
        "Dockerfile",
        &format!(
            "FROM busybox\nADD {u} /src\nADD {u}?submodules=false /bare\n\
             RUN cat /src/vendor/sub/lib.txt > /out && ls -A /bare/vendor/sub | wc -l >> /out && \
             (test -e /src/vendor/sub/.git || echo no-git-file) >> /out\n"
        ),
    );
    t.build("gitsub:1", &[])?;
    let out = cat(&t, "gitsub:1", "/out")?;
    ensure!(out == "from the submodule\n0\nno-git-file\n", "{out:?}");
    Ok(())
}

#[test]
fn add_extracts_every_archive_codec_without_host_tools() -> anyhow::Result<()> {
    use std::io::Write as _;
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let tar = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(6);
        h.set_mode(0o640);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append_data(&mut h, "dir/a.txt", &b"hello\n"[..])?;
        b.into_inner()?
    };
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&tar)?;
        e.finish()?
    };
    let bz = {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
        e.write_all(&tar)?;
        e.finish()?
    };
    let xz = {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(&tar)?;
        e.finish()?
    };
    let zst = zstd::encode_all(&tar[..], 3)?;
    // Named like an archive but not a tar inside: copied as it is.
    let not_tar = {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(b"not a tar")?;
        e.finish()?
    };
    for (name, bytes) in [
        ("a.tar", &tar),
        ("a.tgz", &gz),
        ("a.tar.bz2", &bz),
        ("a.txz", &xz),
        ("a.tar.zst", &zst),
        ("text.tar.bz2", &not_tar),
    ] {
        std::fs::write(t.ctx.join(name), bytes)?;
    }
    t.write(
        "Dockerfile",
        "FROM busybox\n\
         ADD a.tar /tar/\nADD a.tgz /gz/\nADD a.tar.bz2 /bz2/\nADD a.txz /xz/\n\
         ADD a.tar.zst /zst/\nADD text.tar.bz2 /raw/\n\
         RUN for d in tar gz bz2 xz zst; do cat /$d/dir/a.txt; stat -c '%a %Y' /$d/dir/a.txt; done \
         > /out && ls /raw > /raw.ls\n",
    );
    // No `bzip2`, `xz`, `gzip` or `zstd` on the PATH of kiln: it decodes in-process.
    let empty = t.dir.path().join("empty-path");
    std::fs::create_dir(&empty)?;
    let ctx = t.ctx.to_str().expect("utf-8");
    let out = t
        .cmd(&["build", "-t", "codecs:1", ctx])
        .env("PATH", &empty)
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    let want = "hello\n640 1600000000\n".repeat(5);
    ensure!(cat(&t, "codecs:1", "/out")? == want);
    ensure!(cat(&t, "codecs:1", "/raw.ls")? == "text.tar.bz2\n");
    Ok(())
}

#[test]
fn add_git_over_ssh_gets_the_ssh_default_agent() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(t) = busybox_dir(&["git"])? else {
        return Ok(());
    };
    let base = t.dir.path().join("ssh-repos");
    let repo = init_repo(&base)?;
    commit(&repo, &[("f", "over ssh\n")], "one")?;
    // No sshd here: git's ssh command is a shim that checks and records the agent socket kiln
    // hands to git, then runs the real git-upload-pack on the repository (what sshd would
    // run for `git@host:repo.git`).
    let log = t.dir.path().join("ssh.log");
    let shim = t.dir.path().join("ssh-shim");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\n\
             test -S \"$SSH_AUTH_SOCK\" || {{ echo 'no agent socket' >&2; exit 1; }}\n\
             echo \"$SSH_AUTH_SOCK\" >> '{}'\n\
             for last; do :; done\n\
             cd '{}' && exec sh -c \"$last\"\n",
            log.display(),
            base.display()
        ),
    )?;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755))?;
    let agent = t.dir.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&agent)?;
    t.write(
        "Dockerfile",
        "FROM busybox\nADD git@localhost:repo.git#main /s\nRUN cat /s/f > /out\n",
    );
    let ctx = t.ctx.to_str().expect("utf-8");
    let ssh = format!("default={}", agent.display());
    let out = t
        .cmd(&["build", "--ssh", &ssh, "-t", "gitssh:1", ctx])
        .env("GIT_SSH_COMMAND", &shim)
        .env_remove("SSH_AUTH_SOCK")
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    ensure!(cat(&t, "gitssh:1", "/out")? == "over ssh\n");
    let seen = std::fs::read_to_string(&log)?;
    ensure!(
        seen.lines().all(|l| Path::new(l) == agent) && !seen.is_empty(),
        "{seen:?}"
    );
    // Without --ssh, git gets no agent and the error names the URL.
    let out = t
        .cmd(&["build", "-t", "gitssh:2", "--no-cache", ctx])
        .env("GIT_SSH_COMMAND", &shim)
        .env_remove("SSH_AUTH_SOCK")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("git@localhost:repo.git#main"),
        "{}",
        text(&out)
    );
    Ok(())
}

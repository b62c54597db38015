//! Issue 13 item 3: build contexts other than a directory (a git URL with ref and subdir over
//! `git daemon` and git's smart HTTP, a tarball URL, a plain Dockerfile URL) and buildx's
//! `--build-context NAME=DIR|docker-image://REF|git URL|https URL`, which replaces stages and
//! images by name. Servers run on 127.0.0.1 only.

use crate::harness::{TestDir, busybox_dir, text};
use crate::sources::{commit, git, git_http, git_server, init_repo};
use anyhow::{Context as _, ensure};
use std::collections::BTreeMap;
use std::sync::Arc;

/// An HTTP/1.1 server on 127.0.0.1 serving `files` (path to body; 404 otherwise) from a
/// thread until the process ends. Returns `http://127.0.0.1:PORT`.
fn serve(files: BTreeMap<String, Vec<u8>>) -> anyhow::Result<String> {
    serve_with_headers(
        files
            .into_iter()
            .map(|(p, b)| (p, (String::new(), b)))
            .collect(),
    )
}

/// [`serve`] with extra header lines (`Name: value\r\n` each) per path.
fn serve_with_headers(files: BTreeMap<String, (String, Vec<u8>)>) -> anyhow::Result<String> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let files = Arc::new(files);
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let Ok(read) = conn.try_clone() else { continue };
            let mut reader = BufReader::new(read);
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            let path = first.split(' ').nth(1).unwrap_or("");
            let (status, extra, body) = match files.get(path) {
                Some((h, b)) => ("200 OK", h.as_str(), b.as_slice()),
                None => ("404 Not Found", "", &[][..]),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body);
        }
    });
    Ok(format!("http://{addr}"))
}

/// A gzip-compressed tar of `files` (regular files, mode 0644).
fn tar_gz(files: &[(&str, &str)]) -> anyhow::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for (path, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append_data(&mut h, path, body.as_bytes())?;
    }
    Ok(b.into_inner()?.finish()?)
}

fn cat(t: &TestDir, image: &str, path: &str) -> anyhow::Result<String> {
    let out = t.ok(&["run", "--rm", image, "cat", path])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kiln build -t TAG EXTRA... CONTEXT` with quiet progress, which must succeed.
fn build(t: &TestDir, tag: &str, extra: &[&str], context: &str) -> anyhow::Result<()> {
    let mut args = vec!["build", "--progress", "plain", "-t", tag];
    args.extend_from_slice(extra);
    args.push(context);
    t.ok(&args).map(|_| ())
}

#[test]
fn git_url_contexts_take_the_ref_and_subdir_over_git_and_smart_http() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["git"])? else {
        return Ok(());
    };
    let srv = git_server(&t)?;
    let df = "FROM busybox\nCOPY hello /hello\n";
    commit(
        &srv.repo,
        &[
            ("app/Dockerfile", df),
            ("app/hello", "v1\n"),
            ("hello", "root\n"),
        ],
        "one",
    )?;
    git(&srv.repo, &["tag", "v1"])?;
    commit(&srv.repo, &[("app/hello", "v2\n")], "two")?;
    // `#ref:subdir`: the tag's subdirectory is the context, its Dockerfile the Dockerfile.
    build(&t, "gitctx:tag", &[], &format!("{}#v1:app", srv.url))?;
    ensure!(cat(&t, "gitctx:tag", "/hello")? == "v1\n");
    // The branch head; and the default branch with the repository root as the context and
    // `-f` naming a file inside the checkout.
    build(&t, "gitctx:main", &[], &format!("{}#main:app", srv.url))?;
    ensure!(cat(&t, "gitctx:main", "/hello")? == "v2\n");
    build(&t, "gitctx:root", &["-f", "app/Dockerfile"], &srv.url)?;
    ensure!(cat(&t, "gitctx:root", "/hello")? == "root\n");

    // git's smart HTTP (`http://host/repo.git`), as buildx passes https URLs.
    let base = t.dir.path().join("http");
    let repo = init_repo(&base)?;
    commit(
        &repo,
        &[("sub/Dockerfile", df), ("sub/hello", "over http\n")],
        "h",
    )?;
    let url = format!("{}/repo.git#main:sub", git_http(&base)?);
    build(&t, "gitctx:http", &[], &url)?;
    ensure!(cat(&t, "gitctx:http", "/hello")? == "over http\n");

    // A ref that does not exist names the URL.
    let out = t.kiln(&["build", &format!("{}#nope", srv.url)]);
    ensure!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains(&format!("build context {}#nope", srv.url)) && err.contains("\"nope\""),
        "{err}"
    );
    Ok(())
}

#[test]
fn url_contexts_are_a_tarball_or_a_dockerfile_alone() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let df = "FROM busybox\nCOPY data/file /file\n";
    let base = serve(BTreeMap::from([
        (
            "/ctx.tar.gz".to_owned(),
            tar_gz(&[("Dockerfile", df), ("data/file", "from the tarball\n")])?,
        ),
        (
            "/Dockerfile".to_owned(),
            b"FROM busybox\nRUN echo alone > /alone\n".to_vec(),
        ),
        ("/copies".to_owned(), b"FROM busybox\nCOPY x /x\n".to_vec()),
    ]))?;
    build(&t, "urlctx:tar", &[], &format!("{base}/ctx.tar.gz"))?;
    ensure!(cat(&t, "urlctx:tar", "/file")? == "from the tarball\n");
    // A plain file is the Dockerfile, with an empty context.
    build(&t, "urlctx:file", &[], &format!("{base}/Dockerfile"))?;
    ensure!(cat(&t, "urlctx:file", "/alone")? == "alone\n");
    let out = t.kiln(&["build", &format!("{base}/copies")]);
    ensure!(!out.status.success(), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        text(&out)
    );
    // A missing URL fails with its status and the URL.
    let out = t.kiln(&["build", &format!("{base}/missing.tar")]);
    ensure!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains(&format!("build context {base}/missing.tar")) && err.contains("404"),
        "{err}"
    );
    Ok(())
}

#[test]
fn build_contexts_replace_stages_and_images_by_name() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["git"])? else {
        return Ok(());
    };
    // docker-image://: an image of the store (tagged under another name).
    t.ok(&["tag", "busybox", "localbox:1"])
        .context("kiln tag")?;
    // DIR, with its own .dockerignore.
    let dir = t.dir.path().join("named");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("who"), "from the dir\n")?;
    std::fs::write(dir.join("secret"), "hidden\n")?;
    std::fs::write(dir.join(".dockerignore"), "secret\n")?;
    // A git URL and an http tarball.
    let srv = git_server(&t)?;
    commit(&srv.repo, &[("sub/g.txt", "from git\n")], "g")?;
    let base = serve(BTreeMap::from([(
        "/t.tar.gz".to_owned(),
        tar_gz(&[("t.txt", "from the tarball\n")])?,
    )]))?;
    t.write(
        "Dockerfile",
        "FROM busybox AS base\nRUN echo from-the-stage > /who\n\
         FROM alpine:3.20\n\
         COPY --from=base /who /who\n\
         RUN --mount=from=base,target=/b sh -c 'test -e /b/secret && echo leaked > /leak; true'\n\
         COPY --from=gitctx /g.txt /g.txt\n\
         RUN --mount=from=tarctx,target=/t cp /t/t.txt /t.txt\n",
    );
    let ctx = t.ctx.to_str().context("utf-8")?.to_owned();
    let named = [
        format!("base={}", dir.display()),
        "alpine:3.20=docker-image://localbox:1".to_owned(),
        format!("gitctx={}#main:sub", srv.url),
        format!("tarctx={base}/t.tar.gz"),
    ];
    let mut args: Vec<&str> = Vec::new();
    for n in &named {
        args.extend(["--build-context", n.as_str()]);
    }
    build(&t, "named:1", &args, &ctx)?;
    ensure!(cat(&t, "named:1", "/who")? == "from the dir\n");
    ensure!(cat(&t, "named:1", "/g.txt")? == "from git\n");
    ensure!(cat(&t, "named:1", "/t.txt")? == "from the tarball\n");
    let leak = t.kiln(&["run", "--rm", "named:1", "test", "-e", "/leak"]);
    ensure!(
        !leak.status.success(),
        "the named dir's .dockerignore leaked"
    );

    // Unchanged named contexts give the same image (the dir image is content-addressed).
    let id = |t: &TestDir| -> anyhow::Result<String> {
        let out = t.ok(&["images", "--no-trunc", "--format", "{{.ID}}", "named:1"])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let first = id(&t)?;
    build(&t, "named:1", &args, &ctx)?;
    ensure!(
        id(&t)? == first,
        "a rebuild with the same contexts changed the image"
    );

    // Forms kiln refuses say what is wrong.
    let out = t.kiln(&["build", "--build-context", "x=oci-layout:///nope", &ctx]);
    ensure!(!out.status.success(), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("/nope/index.json"),
        "{}",
        text(&out)
    );
    let out = t.kiln(&["build", "--build-context", "nonsense", &ctx]);
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("expected NAME=VALUE"),
        "{}",
        text(&out)
    );
    Ok(())
}

/// BuildKit v0.24's answers for the http context below: `ls` of the mount, and `stat -c '%a %Y
/// %u:%g'` of its file (served with `Last-Modified` 1700000000 and a Content-Disposition name).
const V024_HTTP_CONTEXT: (&str, &str) = ("context\n", "600 1700000000 0:0\n");

/// `--build-context NAME=https://host/file` of a plain file (not an archive): a context holding
/// that one file named `context`, as BuildKit's dockerfile frontend 1.24 makes it
/// (`llb.HTTP(url, llb.Filename("context"))`: the name wins over the URL's and
/// Content-Disposition's), mode 0600 and dated by `Last-Modified`, as BuildKit's HTTP
/// source. `COPY --from`, `RUN --mount=from=` and `FROM` take it (FROM: a root holding that
/// file alone). BuildKit v0.24 (frontend 1.18) fails every such context with `invalid
/// argument` (checked with the oracle: `--opt context:web=http://...`), so there is no older
/// behaviour to keep. The file itself is compared with what BuildKit v0.24's HTTP source makes
/// of the state frontend 1.24 builds (`tests/it/testdata/http_context_llb.go`, the same URL
/// and headers from a local server, the same `ls` and `stat` in a RUN that mounts it):
/// [`V024_HTTP_CONTEXT`].
#[test]
fn an_http_named_context_of_a_plain_file_is_that_file_named_context() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let base = serve_with_headers(BTreeMap::from([(
        "/files/hello.txt".to_owned(),
        (
            "Last-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\n\
             Content-Disposition: attachment; filename=\"by-header.txt\"\r\n"
                .to_owned(),
            b"hello from the web\n".to_vec(),
        ),
    )]))?;
    let web = format!("web={base}/files/hello.txt");
    t.write(
        "Dockerfile",
        "FROM busybox\nCOPY --from=web context /got\n\
         RUN --mount=from=web,target=/w ls /w > /listing && stat -c '%a %Y %u:%g' /w/context > /stat \
         && stat -c %a /got > /copied\n",
    );
    let ctx = t.ctx.to_str().context("utf-8")?.to_owned();
    build(&t, "web:1", &["--build-context", &web], &ctx)?;
    ensure!(cat(&t, "web:1", "/got")? == "hello from the web\n");
    let (listing, stat) = V024_HTTP_CONTEXT;
    ensure!(cat(&t, "web:1", "/listing")? == listing);
    let got = cat(&t, "web:1", "/stat")?;
    ensure!(got == stat, "kiln {got:?}, BuildKit v0.24 {stat:?}");
    // COPY --from keeps the mode (its date drops to the build's epoch, kiln's rule for files
    // of other stages and images: README "Image dates").
    ensure!(cat(&t, "web:1", "/copied")? == "600\n");

    // FROM the context: a root filesystem of that one file.
    t.write("Dockerfile", "FROM web\n");
    let out = t.dir.path().join("out");
    t.ok(&[
        "build",
        "--build-context",
        &web,
        "-o",
        &format!("type=local,dest={}", out.display()),
        &ctx,
    ])?;
    let names: Vec<String> = std::fs::read_dir(&out)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<_>>()?;
    ensure!(names == ["context"], "{names:?}");
    ensure!(std::fs::read_to_string(out.join("context"))? == "hello from the web\n");

    // A missing file is the server's 404, naming the flag.
    let out = t.kiln(&[
        "build",
        "--build-context",
        &format!("web={base}/nope"),
        &ctx,
    ]);
    ensure!(!out.status.success(), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("--build-context web={base}/nope")),
        "{}",
        text(&out)
    );
    Ok(())
}

/// `--build-context NAME=oci-layout://DIR@sha256:...` (and `DIR:TAG`): an image saved by one
/// store builds in another that has nothing else, and its blobs arrive byte for byte.
#[test]
fn an_oci_layout_context_is_imported_as_it_is() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write("Dockerfile", "FROM busybox\nRUN echo layered > /file\n");
    build(&t, "src:1", &[], t.ctx.to_str().context("utf-8")?)?;
    let saved = t.dir.path().join("src.tar");
    t.ok(&["save", "-o", saved.to_str().context("utf-8")?, "src:1"])?;
    let layout = t.dir.path().join("layout");
    std::fs::create_dir(&layout)?;
    tar::Archive::new(std::fs::File::open(&saved)?).unpack(&layout)?;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let entry = &index["manifests"][0];
    let digest = entry["digest"]
        .as_str()
        .context("a manifest digest")?
        .to_owned();

    // A store with nothing in it.
    let fresh = TestDir::new();
    fresh.write("Dockerfile", "FROM base\nRUN cat /file > /copy\n");
    let ctx = fresh.ctx.to_str().context("utf-8")?.to_owned();
    let named = format!("base=oci-layout://{}@{digest}", layout.display());
    build(&fresh, "fromlayout:1", &["--build-context", &named], &ctx)?;
    ensure!(cat(&fresh, "fromlayout:1", "/copy")? == "layered\n");
    // The manifest kept byte for byte (never re-serialised).
    let hex = digest.trim_start_matches("sha256:");
    ensure!(
        std::fs::read(fresh.root.join("blobs/sha256").join(hex))?
            == std::fs::read(layout.join("blobs/sha256").join(hex))?,
        "the manifest changed on import"
    );
    // By tag, when the layout names one.
    if let Some(tag) = entry["annotations"]["org.opencontainers.image.ref.name"].as_str() {
        let named = format!("base=oci-layout://{}:{tag}", layout.display());
        build(&fresh, "fromlayout:2", &["--build-context", &named], &ctx)?;
        ensure!(cat(&fresh, "fromlayout:2", "/copy")? == "layered\n");
    }
    // A digest the layout does not have names the blob it looked for.
    let bad = format!(
        "base=oci-layout://{}@sha256:{}",
        layout.display(),
        "0".repeat(64)
    );
    let out = fresh.kiln(&["build", "--build-context", &bad, &ctx]);
    ensure!(!out.status.success(), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains(&"0".repeat(64)),
        "{}",
        text(&out)
    );
    Ok(())
}

/// The regular files of a `docker save`/`kiln save` archive's image, layers applied in order
/// (no whiteouts in these images): path to (mode, content digest).
fn saved_files(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, (u32, String)>> {
    use std::io::Read as _;
    let mut members: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(path)?);
    for e in ar.entries()? {
        let mut e = e?;
        if e.header().entry_type().is_file() {
            let name = e
                .path()?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data)?;
            members.insert(name, data);
        }
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(members.get("manifest.json").context("manifest.json")?)?;
    let mut files = BTreeMap::new();
    for layer in manifest[0]["Layers"].as_array().context("Layers")? {
        let layer = layer.as_str().context("a layer path")?;
        let data = members
            .get(layer)
            .with_context(|| format!("layer {layer}"))?;
        let mut plain = Vec::new();
        if data.starts_with(&[0x1f, 0x8b]) {
            flate2::read::MultiGzDecoder::new(data.as_slice()).read_to_end(&mut plain)?;
        } else {
            plain.clone_from(data);
        }
        let mut lt = tar::Archive::new(plain.as_slice());
        for e in lt.entries()? {
            let mut e = e?;
            if e.header().entry_type().is_file() {
                let name = e
                    .path()?
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .to_owned();
                // docker's tars carry the file type bits in the mode field too.
                let mode = e.header().mode()? & 0o7777;
                let mut body = Vec::new();
                e.read_to_end(&mut body)?;
                files.insert(name, (mode, cache::oci::Digest::of(&body).to_string()));
            }
        }
    }
    Ok(files)
}

/// docker 20.10's BuildKit (`DOCKER_BUILDKIT=1 docker build <git URL>`) as the reference: the
/// same repository and ref give the same files, modes and contents. One listed divergence:
/// BuildKit 0.8 does not apply a git context's `.dockerignore` (it reads it only for local
/// contexts); kiln applies it to every context, as the docs describe the file and as later
/// BuildKit releases do for git contexts.
/// (Its BuildKit 0.8 refuses a `:subdir` with "subdir not supported yet", so the subdirectory
/// forms are tested against kiln only, above.)
#[test]
fn git_url_context_matches_dockers_buildkit() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["git"])? else {
        return Ok(());
    };
    let up = std::process::Command::new("/usr/bin/docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !up {
        ensure!(
            std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() != Ok("1"),
            "docker reference test required but `docker info` fails (no dockerd?)"
        );
        eprintln!("skipped: docker (with dockerd) is needed as the reference");
        return Ok(());
    }
    let srv = git_server(&t)?;
    commit(
        &srv.repo,
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY . /app/\nCOPY conf/app.conf /etc/app.conf\n",
            ),
            (".dockerignore", "*.tmp\n"),
            ("main.sh", "echo main\n"),
            ("junk.tmp", "ignored\n"),
            ("conf/app.conf", "k=v\n"),
        ],
        "svc",
    )?;
    git(&srv.repo, &["tag", "v2"])?;
    commit(&srv.repo, &[("main.sh", "echo later\n")], "later")?;
    let url = format!("{}#v2", srv.url);
    let tag = format!("kiln-it-contexts:{}", std::process::id());
    let docker_tar = t.dir.path().join("docker.tar");
    let kiln_tar = t.dir.path().join("kiln.tar");
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new("/usr/bin/docker")
            .env("DOCKER_BUILDKIT", "1")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .context("running docker")?;
        ensure!(out.status.success(), "docker {args:?}: {}", text(&out));
        Ok(())
    };
    let built = run(&["build", "-q", "-t", &tag, &url])
        .and_then(|()| run(&["save", "-o", docker_tar.to_str().context("utf-8")?, &tag]));
    let _ = run(&["rmi", "-f", &tag]);
    built?;
    build(&t, &tag, &[], &url)?;
    t.ok(&["save", "-o", kiln_tar.to_str().context("utf-8")?, &tag])?;
    let (kiln, mut docker) = (saved_files(&kiln_tar)?, saved_files(&docker_tar)?);
    ensure!(
        kiln.contains_key("app/main.sh") && !kiln.contains_key("app/junk.tmp"),
        "{kiln:?}"
    );
    // The divergence, asserted so that a newer reference shows up here.
    ensure!(
        docker.remove("app/junk.tmp").is_some(),
        "docker's BuildKit now applies the git context's .dockerignore: drop the divergence"
    );
    ensure!(kiln == docker, "kiln:   {kiln:?}\ndocker: {docker:?}");
    Ok(())
}

//! Dockerfile instruction semantics end to end (heredocs, ONBUILD, USER/--chown, ADD of
//! archives, .dockerignore, COPY modes and links, image config): each test builds with the real kiln, then reads
//! the image back through `kiln save` + `umoci unpack` (files, modes, owners) and the saved
//! OCI config (image config and history). Several behaviours share one build to keep the
//! suite fast. Where BuildKit and the Docker documentation disagree, these follow BuildKit.

use crate::harness::{build, cached, executed_runs, privileged, setup, strings, text, unpack};
use anyhow::{Context as _, ensure};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Command;

#[test]
fn heredoc_copy_sources_and_shebang_run_scripts() -> anyhow::Result<()> {
    let Some(t) = setup()? else { return Ok(()) };
    t.write(
        "Dockerfile",
        "FROM busybox\n\
         RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group\n\
         ARG name=world\n\
         ENV greeting=Hello\n\
         WORKDIR /dest\n\
         COPY <<EOF single\n\
         $greeting ${name}! \"dq\" 'sq' \\$ \\\\\n\
         EOF\n\
         COPY <<EOF <<EOF2 double/\n\
         first\n\
         EOF\n\
         second\n\
         EOF2\n\
         COPY <<'EOF' raw\n\
         Hello ${name}! \\$\n\
         EOF\n\
         COPY <<-EOF tabs\n\
         \tone\n\
         \t\ttwo\n\
         EOF\n\
         COPY --chmod=0755 --chown=app <<EOF /perm/run.sh\n\
         echo hi\n\
         EOF\n\
         ADD <<EOF /added\n\
         added\n\
         EOF\n\
         COPY <<a*b <<c[1] /odd/\n\
         star\n\
         a*b\n\
         bracket\n\
         c[1]\n\
         RUN <<EOF\n\
         #!/bin/sh -e\n\
         echo \"sh as $0\" > /dest/sh-out\n\
         EOF\n\
         RUN <<EOF\n\
         #!/bin/awk -f\n\
         BEGIN { print \"awk ran\" > \"/dest/awk-out\" }\n\
         EOF\n\
         RUN <<EOF\n\
         echo plain > /dest/plain-out\n\
         EOF\n",
    );
    let img = build(&t, "heredoc:1", &[])?;
    ensure!(img.read("/dest/single")? == "Hello world! \"dq\" 'sq' $ \\\n");
    ensure!(img.read("/dest/double/EOF")? == "first\n");
    ensure!(img.read("/dest/double/EOF2")? == "second\n");
    ensure!(img.read("/dest/raw")? == "Hello ${name}! \\$\n");
    ensure!(img.read("/dest/tabs")? == "one\ntwo\n");
    ensure!(img.meta("/dest/single")? == (0o644, 0, 0));
    ensure!(img.meta("/perm/run.sh")? == (0o755, 1000, 1000));
    ensure!(img.read("/added")? == "added\n");
    // Heredoc names are file names, glob characters included.
    ensure!(img.read("/odd/a*b")? == "star\n" && img.read("/odd/c[1]")? == "bracket\n");
    // The `#!` script is a file at /dev/pipes/EOF that the shell execs (BuildKit's layout).
    ensure!(img.read("/dest/sh-out")? == "sh as /dev/pipes/EOF\n");
    ensure!(img.read("/dest/awk-out")? == "awk ran\n");
    ensure!(img.read("/dest/plain-out")? == "plain\n");
    ensure!(
        !img.exists("/dev/pipes/EOF"),
        "the script is not in the image"
    );
    let history = img.history();
    ensure!(
        history
            .iter()
            .any(|h| h == "COPY <<EOF <<EOF2 double/ # buildkit"),
        "{history:?}"
    );

    // Inline files are keyed by their bytes: a rebuild runs nothing, and editing one script
    // re-runs that step and the one after it while the heredoc COPYs stay cached.
    let again = t.build("heredoc:1", &[])?;
    ensure!(
        executed_runs(&again).is_empty(),
        "{:?}",
        executed_runs(&again)
    );
    let df = std::fs::read_to_string(t.ctx.join("Dockerfile"))?;
    t.write("Dockerfile", &df.replace("awk ran", "awk ran again"));
    let edited = t.build("heredoc:2", &[])?;
    let ran = executed_runs(&edited);
    ensure!(ran.len() == 2, "{ran:?}");
    ensure!(
        cached(&edited)
            .iter()
            .any(|n| n.ends_with("COPY <<EOF <<EOF2 double/")),
        "{:?}",
        cached(&edited)
    );
    ensure!(unpack(&t, "heredoc:2")?.read("/dest/awk-out")? == "awk ran again\n");
    // `--explain` names the heredoc that changed.
    let df = std::fs::read_to_string(t.ctx.join("Dockerfile"))?;
    t.write("Dockerfile", &df.replace("second", "second!"));
    let ctx = t.ctx.to_str().context("utf-8")?;
    let out = t.ok(&[
        "build",
        "--progress",
        "plain",
        "--explain",
        "-t",
        "heredoc:3",
        ctx,
    ])?;
    let all = text(&out);
    ensure!(
        all.contains("COPY <<EOF <<EOF2 double/: file changed: <<EOF2"),
        "{all}"
    );
    Ok(())
}

#[test]
fn onbuild_triggers_fire_in_child_builds_and_from_a_stage() -> anyhow::Result<()> {
    let Some(t) = setup()? else { return Ok(()) };
    // An image only a trigger names (BuildKit's testOnBuildNewDeps).
    t.ok(&["tag", "busybox", "only-in-trigger:1"])?;
    let parent = t.dir.path().join("parent.Dockerfile");
    std::fs::write(
        &parent,
        "FROM busybox\n\
         ONBUILD RUN echo -n 11 >> /onbuild-run\n\
         ONBUILD COPY child.txt /from-child-context\n\
         ONBUILD COPY --from=only-in-trigger:1 /etc/group /from-image\n\
         ONBUILD ENV TRIGGERED=yes\n\
         ONBUILD RUN --mount=type=cache,target=/cache echo -n 42 >> /cache/foo\n\
         ONBUILD RUN <<EOF\n\
         echo \"from a heredoc trigger\" > /onbuild-heredoc\n\
         EOF\n",
    )?;
    t.write("child.txt", "child context\n");
    let p = build(&t, "parent:1", &["-f", parent.to_str().context("utf-8")?])?;
    ensure!(
        !p.exists("/onbuild-run"),
        "triggers do not fire in the parent"
    );
    ensure!(strings(p.cfg("OnBuild")).len() == 6, "{}", p.config);

    // BuildKit's testOnBuildWithChildStage, testOnBuildInheritedStageRun and
    // testOnBuildInheritedStageWithFrom: triggers fire once, in the first stage FROM the
    // image; a stage's own ONBUILD fires in a stage FROM it, and may name this file's stages.
    t.write(
        "Dockerfile",
        "FROM parent:1 AS fromimage\n\
         RUN --mount=type=cache,target=/cache [ \"$(cat /cache/foo)\" = 42 ]\n\
         FROM fromimage AS again\n\
         RUN [ \"$(cat /onbuild-run)\" = 11 ]\n\
         FROM busybox AS src\n\
         RUN echo -n 12 > /in-file\n\
         FROM busybox AS base\n\
         ONBUILD RUN echo stage > /stage-trigger\n\
         ONBUILD COPY --from=src /in-file /from-src\n\
         FROM base AS childofstage\n\
         FROM again\n\
         COPY --from=childofstage /stage-trigger /from-src /\n",
    );
    let c = build(&t, "child:1", &[])?;
    ensure!(c.read("/onbuild-run")? == "11");
    ensure!(c.read("/from-child-context")? == "child context\n");
    ensure!(c.read("/from-image")? == p.read("/etc/group")?);
    ensure!(c.read("/stage-trigger")? == "stage\n");
    ensure!(c.read("/from-src")? == "12");
    ensure!(c.read("/onbuild-heredoc")? == "from a heredoc trigger\n");
    ensure!(
        c.env().iter().any(|e| e == "TRIGGERED=yes"),
        "{:?}",
        c.env()
    );
    // Triggers run once: the child does not hand them on (BuildKit's testOnBuildCleared).
    ensure!(strings(c.cfg("OnBuild")).is_empty(), "{}", c.config);
    t.write(
        "Dockerfile",
        "FROM child:1\nRUN [ \"$(cat /onbuild-run)\" = 11 ]\n",
    );
    t.build("grandchild:1", &[])?;
    Ok(())
}

#[test]
fn user_and_chown_names_resolve_and_workdir_is_created_for_the_user() -> anyhow::Result<()> {
    let Some(t) = setup()? else { return Ok(()) };
    t.write("a.txt", "a\n");
    // A base image whose /etc/passwd and /etc/group know `app` and `staff`.
    let base = t.dir.path().join("users.Dockerfile");
    std::fs::write(
        &base,
        "FROM busybox\n\
         RUN echo 'app:x:1000:1000:app:/home/app:/bin/sh' >> /etc/passwd && \
         printf 'app:x:1000:\\nstaff:x:2000:app\\n' >> /etc/group\n",
    )?;
    t.build("users:base", &["-f", base.to_str().context("utf-8")?])?;
    t.write(
        "Dockerfile",
        "FROM users:base\n\
         COPY --chown=app:staff a.txt /owned/a.txt\n\
         COPY --chown=app a.txt /owned/user-only\n\
         COPY --chown=1234:5678 a.txt /owned/numeric\n\
         RUN mkdir /mine && chown app:app /mine\n\
         WORKDIR /mine\n\
         USER app\n\
         WORKDIR /srv/app\n\
         WORKDIR sub\n\
         RUN id -u > uid && id -g >> uid && pwd > pwd\n\
         USER app:staff\n\
         RUN id -g > /tmp/gid\n",
    );
    let img = build(&t, "users:1", &[])?;
    ensure!(img.meta("/owned/a.txt")? == (0o644, 1000, 2000));
    // `--chown=user` alone takes the user's primary group from /etc/passwd.
    ensure!(img.meta("/owned/user-only")? == (0o644, 1000, 1000));
    ensure!(img.meta("/owned/numeric")? == (0o644, 1234, 5678));
    // WORKDIR leaves an existing directory's owner alone (BuildKit's testWorkdirExists).
    ensure!(img.meta("/mine")? == (0o755, 1000, 1000));
    ensure!(img.meta("/srv/app")? == (0o755, 1000, 1000));
    ensure!(img.meta("/srv/app/sub")? == (0o755, 1000, 1000));
    ensure!(img.read("/srv/app/sub/uid")? == "1000\n1000\n");
    ensure!(img.read("/srv/app/sub/pwd")? == "/srv/app/sub\n");
    ensure!(img.meta("/srv/app/sub/uid")?.1 == 1000);
    ensure!(img.read("/tmp/gid")? == "2000\n");
    ensure!(img.cfg("WorkingDir") == "/srv/app/sub", "{}", img.config);
    ensure!(img.cfg("User") == "app:staff", "{}", img.config);
    Ok(())
}

/// A tar holding `<dir>/hello.txt`.
fn small_tar(dir: &str) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let body = format!("from {dir}\n");
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(body.len() as u64);
    h.set_mtime(0);
    b.append_data(&mut h, format!("{dir}/hello.txt"), body.as_bytes())?;
    Ok(b.into_inner()?)
}

/// Pipes `data` through `tool -c`.
fn compress(tool: &str, data: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = Command::new(tool)
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {tool}"))?;
    child.stdin.take().context("stdin")?.write_all(data)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "{tool} failed");
    Ok(out.stdout)
}

#[test]
fn add_extracts_archives_by_content_and_copy_never_does() -> anyhow::Result<()> {
    if !privileged(&["gzip", "bzip2", "xz", "zstd"]) {
        return Ok(());
    }
    let Some(t) = setup()? else { return Ok(()) };
    let mut written = BTreeMap::new();
    for (name, tool) in [
        ("plain", None),
        ("gz", Some("gzip")),
        ("bz2", Some("bzip2")),
        ("xz", Some("xz")),
        ("zst", Some("zstd")),
    ] {
        let raw = small_tar(name)?;
        let bytes = match tool {
            None => raw,
            Some(tool) => compress(tool, &raw)?,
        };
        std::fs::write(t.ctx.join(format!("{name}.bin")), &bytes)?;
        written.insert(name, bytes);
    }
    t.write("notar.tar.gz", "just text\n");
    t.write(
        "Dockerfile",
        "FROM busybox\n\
         ADD plain.bin gz.bin bz2.bin xz.bin zst.bin /x/\n\
         ADD notar.tar.gz /y/\n\
         COPY gz.bin zst.bin /copied/\n",
    );
    let img = build(&t, "archives:1", &[])?;
    for name in ["plain", "gz", "bz2", "xz", "zst"] {
        ensure!(
            img.read(&format!("/x/{name}/hello.txt"))? == format!("from {name}\n"),
            "{name}"
        );
        ensure!(!img.exists(&format!("/x/{name}.bin")), "{name}.bin kept");
    }
    ensure!(img.read("/y/notar.tar.gz")? == "just text\n");
    ensure!(std::fs::read(img.path("/copied/gz.bin"))? == written["gz"]);
    ensure!(std::fs::read(img.path("/copied/zst.bin"))? == written["zst"]);
    Ok(())
}

#[test]
fn dockerignore_patterns_and_the_dockerfile_specific_file() -> anyhow::Result<()> {
    let Some(t) = setup()? else { return Ok(()) };
    t.write(
        ".dockerignore",
        "# comment\n**/*.log\n!keep.log\n/top.txt\nbuild/\nsecret\nba*\n!bay\n.dockerignore\n",
    );
    for f in [
        "a.log",
        "sub/deep/b.log",
        "keep.log",
        "top.txt",
        "sub/top.txt",
        "build/out.o",
        "secret",
        "ok.txt",
        "bar",
        "baz",
        "bay",
    ] {
        t.write(f, f);
    }
    t.write("Dockerfile", "FROM busybox\nCOPY . /ctx/\n");
    let img = build(&t, "ignore:1", &[])?;
    // As BuildKit's testDockerignore: `ba*` with `!bay`, and .dockerignore ignoring itself.
    for present in ["keep.log", "sub/top.txt", "ok.txt", "Dockerfile", "bay"] {
        ensure!(img.exists(&format!("/ctx/{present}")), "{present} missing");
    }
    for absent in [
        "a.log",
        "sub/deep/b.log",
        "top.txt",
        "build",
        "secret",
        "bar",
        "baz",
        ".dockerignore",
    ] {
        ensure!(!img.exists(&format!("/ctx/{absent}")), "{absent} copied");
    }

    // `<Dockerfile>.dockerignore` beside the Dockerfile replaces the context's .dockerignore.
    let df = t.dir.path().join("custom.Dockerfile");
    std::fs::write(&df, "FROM busybox\nCOPY . /ctx/\n")?;
    std::fs::write(
        t.dir.path().join("custom.Dockerfile.dockerignore"),
        "ok.txt\n",
    )?;
    let img = build(&t, "ignore:2", &["-f", df.to_str().context("utf-8")?])?;
    ensure!(!img.exists("/ctx/ok.txt"), "ok.txt copied");
    ensure!(img.exists("/ctx/a.log") && img.exists("/ctx/secret"));

    // Naming an ignored file fails the build at its line.
    t.write("Dockerfile", "FROM busybox\nCOPY secret /s\n");
    let out = t.kiln(&["build", "-t", "ignore:3", t.ctx.to_str().context("utf-8")?]);
    let all = text(&out);
    ensure!(!out.status.success(), "{all}");
    ensure!(
        all.contains("Dockerfile:2") && all.contains("secret"),
        "{all}"
    );

    // A bare `!` line is refused as BuildKit does, naming the file and line.
    t.write(".dockerignore", "secret\n!\n");
    let out = t.kiln(&["build", "-t", "ignore:4", t.ctx.to_str().context("utf-8")?]);
    let all = text(&out);
    ensure!(!out.status.success(), "{all}");
    ensure!(
        all.contains(".dockerignore:2: illegal exclusion pattern: \"!\""),
        "{all}"
    );
    Ok(())
}

#[test]
fn copy_modes_links_slashes_wildcards_and_symlinks() -> anyhow::Result<()> {
    let Some(t) = setup()? else { return Ok(()) };
    t.write("a.txt", "a\n");
    t.write("b.txt", "b\n");
    t.write("dir/f.txt", "f\n");
    t.write("dir/h1", "hard\n");
    std::fs::hard_link(t.ctx.join("dir/h1"), t.ctx.join("dir/h2"))?;
    std::os::unix::fs::symlink("f.txt", t.ctx.join("dir/inner-link"))?;
    std::os::unix::fs::symlink("a.txt", t.ctx.join("top-link"))?;
    t.write("sticky/x", "x\n");
    t.write("private/x", "x\n");
    std::fs::set_permissions(
        t.ctx.join("private"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    t.write(
        "Dockerfile",
        "FROM busybox\n\
         RUN mkdir /real && ln -s /real /via && mkdir /existing\n\
         COPY --link a.txt /linked/\n\
         COPY --chmod=4755 a.txt /suid\n\
         COPY --chmod=2750 a.txt /sgid\n\
         COPY --chmod=1777 sticky /sticky\n\
         COPY a.txt /into/\n\
         COPY a.txt /renamed\n\
         COPY a.txt /existing\n\
         COPY a.txt b.txt /multi/\n\
         COPY *.nomatch /nothing/\n\
         COPY top-link /followed\n\
         COPY dir /d/\n\
         COPY private /newdir\n\
         COPY a.txt /via/through.txt\n",
    );
    let img = build(&t, "copy:1", &[])?;
    ensure!(img.read("/linked/a.txt")? == "a\n");
    ensure!(img.meta("/suid")?.0 == 0o4755);
    ensure!(img.meta("/sgid")?.0 == 0o2750);
    // --chmod applies to the directory copied and to its files.
    ensure!(img.meta("/sticky")?.0 == 0o1777 && img.meta("/sticky/x")?.0 == 0o1777);
    ensure!(img.read("/into/a.txt")? == "a\n");
    ensure!(img.read("/renamed")? == "a\n");
    ensure!(img.read("/existing/a.txt")? == "a\n");
    ensure!(img.read("/multi/a.txt")? == "a\n" && img.read("/multi/b.txt")? == "b\n");
    // BuildKit (AllowEmptyWildcard): a wildcard matching nothing copies nothing, not even
    // the destination directory.
    ensure!(!img.exists("/nothing"), "/nothing was created");
    let followed = std::fs::symlink_metadata(img.path("/followed"))?;
    ensure!(followed.is_file() && img.read("/followed")? == "a\n");
    let inner = std::fs::symlink_metadata(img.path("/d/inner-link"))?;
    ensure!(inner.file_type().is_symlink());
    ensure!(std::fs::read_link(img.path("/d/inner-link"))? == Path::new("f.txt"));
    let (h1, h2) = (
        std::fs::metadata(img.path("/d/h1"))?,
        std::fs::metadata(img.path("/d/h2"))?,
    );
    ensure!(h1.ino() == h2.ino(), "hardlink not kept");
    ensure!(
        img.read("/real/through.txt")? == "a\n",
        "not written through"
    );
    // BuildKit creates a directory source's new destination like a missing parent (0755,
    // root); only the contents keep their modes.
    ensure!(img.meta("/newdir")? == (0o755, 0, 0) && img.meta("/newdir/x")?.0 == 0o644);
    ensure!(
        std::fs::symlink_metadata(img.path("/via"))?
            .file_type()
            .is_symlink()
    );
    Ok(())
}

#[test]
fn image_config_instructions_match_buildkit() -> anyhow::Result<()> {
    let Some(t) = setup()? else { return Ok(()) };
    t.write(
        "myshell",
        "#!/bin/sh\necho \"$@\" >> /shell-log\nexec /bin/sh \"$@\"\n",
    );
    std::fs::set_permissions(
        t.ctx.join("myshell"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    t.write("hello", "hi\n");
    t.write(
        "Dockerfile",
        "FROM busybox AS main\n\
         COPY myshell /myshell\n\
         SHELL [\"/myshell\", \"-c\"]\n\
         RUN echo via-shell > /ran\n\
         ARG BUILD_ONLY=secret-ish\n\
         ARG HTTP_PROXY\n\
         RUN echo \"$BUILD_ONLY $HTTP_PROXY\" > /args\n\
         ENTRYPOINT exec-me --flag\n\
         HEALTHCHECK --interval=5s --timeout=3s --start-period=2s --start-interval=1s --retries=4 CMD [\"true\"]\n\
         EXPOSE 9000-9002 53/udp 80\n\
         VOLUME [\"/data\", \"/logs\"]\n\
         VOLUME /cache /tmp/x\n\
         WORKDIR /work\n\
         FROM main AS nohealth\n\
         HEALTHCHECK NONE\n\
         CMD again --twice\n\
         FROM scratch AS bare\n\
         WORKDIR /foo\n\
         WORKDIR /\n\
         COPY hello /\n\
         COPY --from=main myshell .\n",
    );
    let proxy = ["--build-arg", "HTTP_PROXY=http://proxy.invalid:3128"];
    let mut flags = vec!["--target", "main"];
    flags.extend(proxy);
    let img = build(&t, "config:main", &flags)?;
    ensure!(
        img.read("/shell-log")?
            == "-c echo via-shell > /ran\n-c echo \"$BUILD_ONLY $HTTP_PROXY\" > /args\n"
    );
    ensure!(img.read("/args")? == "secret-ish http://proxy.invalid:3128\n");
    // ARG values are in RUN's environment but not in the image config.
    ensure!(
        !img.env()
            .iter()
            .any(|e| e.contains("BUILD_ONLY") || e.contains("PROXY"))
    );
    // Proxy ARGs stay out of the history; other ARGs are recorded as BuildKit does.
    let history = img.history().join("\n");
    ensure!(
        !history.contains("proxy.invalid") && !history.contains("ARG HTTP_PROXY"),
        "{history}"
    );
    ensure!(
        history.contains("ARG BUILD_ONLY=secret-ish\nRUN |1 BUILD_ONLY=secret-ish /myshell -c"),
        "{history}"
    );
    // SHELL wraps shell-form ENTRYPOINT; an ENTRYPOINT resets the CMD inherited from busybox.
    ensure!(strings(img.cfg("Entrypoint")) == ["/myshell", "-c", "exec-me --flag"]);
    ensure!(img.cfg("Cmd").is_null(), "{}", img.config);
    let hc = img.cfg("Healthcheck");
    ensure!(strings(&hc["Test"]) == ["CMD", "true"], "{hc}");
    ensure!(
        hc["Interval"] == 5_000_000_000u64 && hc["Timeout"] == 3_000_000_000u64,
        "{hc}"
    );
    ensure!(
        hc["StartPeriod"] == 2_000_000_000u64 && hc["Retries"] == 4,
        "{hc}"
    );
    ensure!(hc["StartInterval"] == 1_000_000_000u64, "{hc}");
    let ports: Vec<&String> = img
        .cfg("ExposedPorts")
        .as_object()
        .context("ports")?
        .keys()
        .collect();
    ensure!(
        ports == ["53/udp", "80/tcp", "9000/tcp", "9001/tcp", "9002/tcp"],
        "{ports:?}"
    );
    let vols: Vec<&String> = img
        .cfg("Volumes")
        .as_object()
        .context("vols")?
        .keys()
        .collect();
    ensure!(vols == ["/cache", "/data", "/logs", "/tmp/x"], "{vols:?}");

    let img = build(&t, "config:nohealth", &["--target", "nohealth"])?;
    ensure!(
        strings(&img.cfg("Healthcheck")["Test"]) == ["NONE"],
        "{}",
        img.config
    );
    // The SHELL set in the parent stage wraps this stage's shell-form CMD too.
    ensure!(
        strings(img.cfg("Cmd")) == ["/myshell", "-c", "again --twice"],
        "{}",
        img.config
    );

    let img = build(&t, "config:bare", &["--target", "bare"])?;
    ensure!(img.cfg("WorkingDir") == "/", "{}", img.config);
    ensure!(
        img.env() == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "{:?}",
        img.env()
    );
    ensure!(img.read("/hello")? == "hi\n");
    // WORKDIR creates its directory even on scratch (BuildKit's testWorkdirCreatesDir); a
    // relative `COPY --from` source is relative to the stage's root, not its WORKDIR.
    ensure!(std::fs::symlink_metadata(img.path("/foo"))?.is_dir());
    ensure!(img.exists("/myshell"));
    Ok(())
}

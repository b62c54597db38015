//! BuildKit's own Dockerfile integration cases (moby/buildkit, frontend/dockerfile/*_test.go,
//! Apache-2.0), adapted to one Dockerfile per file of theirs: each RUN `[ ... ]` fails the build
//! when kiln disagrees, and the files the build leaves are compared with BuildKit's expected
//! values. Helpers come from [`crate::harness`].

use crate::harness::{build, setup};
use crate::harness::{executed_runs, text};
use anyhow::{Context as _, ensure};

/// BuildKit's heredoc integration cases (frontend/dockerfile/dockerfile_heredoc_test.go:
/// testRunComplexHeredoc, testHeredocIndent, testHeredocVarSubstitution, testRunFakeHeredoc,
/// testCopyHeredocSpecialSymbols, testCopyHeredoc;
/// moby/buildkit, Apache-2.0), rewritten as one Dockerfile (Debian's busybox has no `adduser`:
/// the user is appended to /etc/passwd), with BuildKit's expected files.
#[test]
fn heredocs_match_buildkits_heredoc_suite() -> anyhow::Result<()> {
    let Some(t) = setup()? else { return Ok(()) };
    t.write("Dockerfile", BUILDKIT_HEREDOCS);
    let img = build(&t, "bkheredoc:1", &[])?;
    for (file, want) in [
        ("out1", "hello world\n"),
        ("out2", "HELLO WORLD\n"),
        ("fd3", "hello world\n"),
        ("fd4", "HELLO WORLD\n"),
        ("foo-copy", "\tfoo\n"),
        ("foo-run", "\n\tfoo\n"),
        ("foo2-run", "\n\tfoo\n"),
        ("foo3-run", "\n\tfoo\n"),
        ("bar-copy", "bar\n"),
        ("bar-run", "\nbar\n"),
        ("bar2-run", "\nbar\n"),
        ("bar3-run", "\nbar\n"),
        ("r1", "Hello world!\n"),
        ("r2", "Hello new world!\n"),
        ("fake", "foo\n"),
        ("perms", "0777\n0644\nuser:user\n"),
        ("quotefile", "\"quotes in file\"\n"),
        ("slashfile1", "\n"),
        ("slashfile2", "\\\n"),
        ("slashfile3", "$\n"),
        ("rawslashfile1", "\\\n"),
        ("rawslashfile2", "\\\\\n"),
        ("rawslashfile3", "\\$\n"),
        ("c1", "Hello world!\n"),
        ("c2", "Hello ${name}!\n"),
        ("c3", "Hello ${name}!\n"),
        ("q1", "Hello 'world'!\n"),
        ("q2", "Hello \"world\"!\n"),
        ("qsingle1", "Hello '${name}'!\n"),
        ("qdouble2", "Hello \"${name}\"!\n"),
    ] {
        let got = img.read(&format!("/dest/{file}"))?;
        ensure!(
            got == want,
            "/dest/{file}: {got:?}, BuildKit gives {want:?}"
        );
    }
    Ok(())
}

const BUILDKIT_HEREDOCS: &str = r#"FROM busybox AS build
WORKDIR /dest
RUN cat <<EOF1 | tr '[:upper:]' '[:lower:]' > ./out1; \
	cat <<EOF2 | tr '[:lower:]' '[:upper:]' > ./out2
hello WORLD
EOF1
HELLO world
EOF2
RUN <<EOF 3<<IN1 4<<IN2 awk -f -
BEGIN {
	while ((getline line < "/proc/self/fd/3") > 0)
		print tolower(line) > "./fd3"
	while ((getline line < "/proc/self/fd/4") > 0)
		print toupper(line) > "./fd4"
}
EOF
hello WORLD
IN1
HELLO world
IN2
COPY <<EOF /dest/foo-copy
	foo
EOF
COPY <<-EOF /dest/bar-copy
	bar
EOF
RUN <<EOF
echo "
	foo" > /dest/foo-run
EOF
RUN <<-EOF
echo "
	bar" > /dest/bar-run
EOF
RUN <<EOF
#!/bin/sh
echo "
	foo" > /dest/foo2-run
EOF
RUN <<-EOF
#!/bin/sh
echo "
	bar" > /dest/bar2-run
EOF
RUN <<EOF sh > /dest/foo3-run
echo "
	foo"
EOF
RUN <<-EOF sh > /dest/bar3-run
echo "
	bar"
EOF
ARG name=world
RUN <<EOF
greeting="Hello"
echo "${greeting} ${name}!" > /dest/r1
EOF
RUN <<EOF
name="new world"
echo "Hello ${name}!" > /dest/r2
EOF
COPY <<EOF /dest/quotefile
"quotes in file"
EOF
COPY <<EOF /dest/slashfile1
\
EOF
COPY <<EOF /dest/slashfile2
\\
EOF
COPY <<EOF /dest/slashfile3
\$
EOF
COPY <<"EOF" /dest/rawslashfile1
\
EOF
COPY <<"EOF" /dest/rawslashfile2
\\
EOF
COPY <<"EOF" /dest/rawslashfile3
\$
EOF
COPY <<EOF /dest/c1
Hello ${name}!
EOF
COPY <<'EOF' /dest/c2
Hello ${name}!
EOF
COPY <<"EOF" /dest/c3
Hello ${name}!
EOF
COPY <<EOF /dest/q1
Hello '${name}'!
EOF
COPY <<EOF /dest/q2
Hello "${name}"!
EOF
COPY <<'EOF' /dest/qsingle1
Hello '${name}'!
EOF
COPY <<"EOF" /dest/qdouble2
Hello "${name}"!
EOF
RUN echo 'user:x:1000:1000::/home/user:/bin/sh' >> /etc/passwd && \
	echo 'user:x:1000:' >> /etc/group && mkdir -p /permfiles
COPY --chmod=777 <<EOF /permfiles/all
dummy content
EOF
COPY --chmod=0644 <<EOF /permfiles/rw
dummy content
EOF
COPY --chown=user:user <<EOF /permfiles/owned
dummy content
EOF
RUN stat -c "%04a" /permfiles/all >> /dest/perms && \
	stat -c "%04a" /permfiles/rw >> /dest/perms && \
	stat -c "%U:%G" /permfiles/owned >> /dest/perms
SHELL ["/bin/awk"]
RUN <<EOF
BEGIN {
	print "foo" > "/dest/fake"
}
EOF
"#;

/// BuildKit's USER cases (frontend/dockerfile/dockerfile_user_test.go: testUser and
/// testUserAdditionalGids; moby/buildkit, Apache-2.0), adapted: Debian's busybox image here has
/// no `daemon` user or `wheel` group, so the first RUN adds the ones the official busybox has,
/// and the result carries /etc/passwd so that umoci can resolve its USER.
/// Every `[ ... ]` fails the build when `id` disagrees with BuildKit.
#[test]
fn user_switching_matches_buildkits_user_tests() -> anyhow::Result<()> {
    let Some(t) = setup()? else { return Ok(()) };
    t.write("Dockerfile", BUILDKIT_USERS);
    let img = build(&t, "bkuser:1", &[])?;
    ensure!(img.read("/rootuser")? == "root\n");
    ensure!(img.read("/daemonuser")? == "daemon\n");
    ensure!(img.cfg("User") == "nobody", "{}", img.config);
    Ok(())
}

const BUILDKIT_USERS: &str = r#"FROM busybox AS base
RUN echo 'daemon:x:1:1:daemon:/usr/sbin:/bin/false' >> /etc/passwd && \
	printf 'daemon:x:1:\nwheel:x:10:root\n' >> /etc/group
RUN mkdir -m 0777 /out
RUN id -un > /out/rootuser
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)" = '0:0/root:root' ]
USER root
RUN [ "$(id -G):$(id -Gn)" = '0 10:root wheel' ]
RUN echo 'dockerio:x:1001:1001::/bin:/bin/false' >> /etc/passwd && \
	echo 'dockerio:x:1001:' >> /etc/group
USER dockerio
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1001/dockerio:dockerio/1001:dockerio' ]
USER root
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '0:0/root:root/0 10:root wheel' ] && \
	echo 'supplementary:x:1002:dockerio' >> /etc/group
USER dockerio
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1001/dockerio:dockerio/1001 1002:dockerio supplementary' ]
USER 1001
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1001/dockerio:dockerio/1001 1002:dockerio supplementary' ]
USER dockerio:dockerio
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1001/dockerio:dockerio/1001:dockerio' ]
USER 1001:dockerio
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1001/dockerio:dockerio/1001:dockerio' ]
USER dockerio:1001
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1001/dockerio:dockerio/1001:dockerio' ]
USER 1001:1001
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1001/dockerio:dockerio/1001:dockerio' ]
USER dockerio:supplementary
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1002/dockerio:supplementary/1002:supplementary' ]
USER dockerio:1002
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1002/dockerio:supplementary/1002:supplementary' ]
USER 1001:supplementary
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1002/dockerio:supplementary/1002:supplementary' ]
USER 1001:1002
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1002/dockerio:supplementary/1002:supplementary' ]
USER 1042:1043
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1042:1043/1042:1043/1043:1043' ]
USER daemon
RUN id -un > /out/daemonuser
USER 1234
RUN [ "$(id)" = "uid=1234 gid=0(root) groups=0(root)" ]
USER 1234:1234
RUN [ "$(id)" = "uid=1234 gid=1234 groups=1234" ]
USER daemon
RUN [ "$(id)" = "uid=1(daemon) gid=1(daemon) groups=1(daemon)" ]
USER root
RUN [ "$(id)" = "uid=0(root) gid=0(root) groups=0(root),10(wheel)" ]
FROM scratch
COPY --from=base /out /
COPY --from=base /etc/passwd /etc/group /etc/
USER nobody
"#;

/// BuildKit's COPY cases (frontend/dockerfile/dockerfile_copy_test.go: testCopyChownExistingDir,
/// testEmptyDestDir, testPreserveDestDirSlash, testCopyLinkDotDestDir, testCopyLinkEmptyDestDir,
/// testEmptyWildcard, testCopyChownCreateDest, testCopyThroughSymlinkContext; moby/buildkit,
/// Apache-2.0), adapted to one Dockerfile whose RUN steps fail the build on any difference.
#[test]
fn copy_rules_match_buildkits_copy_tests() -> anyhow::Result<()> {
    let Some(t) = setup()? else { return Ok(()) };
    t.write("testfile", "contents0");
    t.write("foo", "contents0");
    t.write("sub/foo", "contents");
    std::os::unix::fs::symlink("sub", t.ctx.join("link"))?;
    t.write("Dockerfile", BUILDKIT_COPIES);
    let img = build(&t, "bkcopy:1", &["--build-arg", "group=user"])?;
    ensure!(img.meta("/a")?.1 == 100 && img.meta("/b")?.1 == 300);
    ensure!(img.read("/c")? == "contents");
    // `--from` is never expanded (testDockerfileCopyFromArgs).
    t.write("Dockerfile", "FROM scratch\nCOPY --from=$FOO . .\n");
    let out = t.kiln(&["build", "-t", "bkcopy:2", t.ctx.to_str().context("utf-8")?]);
    let all = text(&out);
    ensure!(
        !out.status.success() && all.contains("variable expansion is not supported"),
        "{all}"
    );
    Ok(())
}

const BUILDKIT_COPIES: &str = r#"FROM busybox AS source
RUN touch /file && chown 100:200 /file \
 && mkdir -p /dir/subdir \
 && touch /dir/subdir/nestedfile \
 && chown 100:200 /dir \
 && chown 101:201 /dir/subdir \
 && chown 102:202 /dir/subdir/nestedfile

FROM busybox AS test_base
RUN mkdir -p /existingdir/existingsubdir \
 && touch /existingdir/existingfile \
 && chown 500:600 /existingdir \
 && chown 501:601 /existingdir/existingsubdir \
 && chown 501:601 /existingdir/existingfile \
 && echo 'user:x:1000:1000::/home/user:/bin/sh' >> /etc/passwd \
 && echo 'user01:x:1001:1001::/home/user01:/bin/sh' >> /etc/passwd \
 && printf 'user:x:1000:\nuser01:x:1001:\n' >> /etc/group

FROM test_base AS copy_from
COPY --from=source /file .
COPY --from=source /dir /dir
COPY --from=source /dir/. /existingdir
RUN check() { a=$(stat -c "%u:%g" "$2"); [ "$a" = "$1" ] || { echo "incorrect ownership on $2: expected $1, got $a"; exit 1; }; } \
 && check 100:200 /file && check 0:0 /dir && check 101:201 /dir/subdir && check 102:202 /dir/subdir/nestedfile \
 && check 500:600 /existingdir && check 501:601 /existingdir/existingsubdir && check 501:601 /existingdir/existingfile \
 && check 101:201 /existingdir/subdir && check 102:202 /existingdir/subdir/nestedfile

FROM test_base AS copy_from_chowned
COPY --from=source --chown=300:400 /file .
COPY --from=source --chown=300:400 /dir /dir
COPY --from=source --chown=300:400 /dir/. /existingdir
RUN check() { a=$(stat -c "%u:%g" "$2"); [ "$a" = "$1" ] || { echo "incorrect ownership on $2: expected $1, got $a"; exit 1; }; } \
 && check 300:400 /file && check 300:400 /dir && check 300:400 /dir/subdir && check 300:400 /dir/subdir/nestedfile \
 && check 500:600 /existingdir && check 501:601 /existingdir/existingsubdir && check 501:601 /existingdir/existingfile \
 && check 300:400 /existingdir/subdir && check 300:400 /existingdir/subdir/nestedfile

FROM test_base AS misc
ARG group
ENV owner=user01
ENV empty=""
COPY testfile $empty
RUN [ "$(cat testfile)" = "contents0" ]
COPY testfile /sample/
RUN [ "$(cat /sample/testfile)" = "contents0" ]
WORKDIR /var/www
COPY --link testfile .
RUN [ "$(cat testfile)" = "contents0" ]
WORKDIR /var/www2
COPY --link testfile $empty
RUN [ "$(cat testfile)" = "contents0" ]
COPY foo nomatch* /wild/
RUN [ "$(cat /wild/foo)" = "contents0" ]
COPY --chown=user:user . /dest
COPY --chown=${owner}:${group} . /dest01
RUN [ "$(stat -c "%U %G" /dest)" = "user user" ]
RUN [ "$(stat -c "%U %G" /dest01)" = "user01 user" ]
COPY link/foo /through/
RUN [ "$(cat /through/foo)" = "contents" ]

FROM scratch
COPY --from=copy_from /file /a
COPY --from=copy_from_chowned /file /b
COPY --from=misc /through/foo /c
"#;

/// BuildKit's ARG cases (frontend/dockerfile/dockerfile_args_test.go: testMultiArgs,
/// testQuotedMetaArgs, testBuiltinArgs, testDefaultEnvWithArgs, testEmptyStringArgInEnv,
/// testGlobalArgErrors, testArgDefaultExpansion; moby/buildkit, Apache-2.0), adapted to one
/// Dockerfile.
#[test]
fn args_match_buildkits_arg_tests() -> anyhow::Result<()> {
    let Some(t) = setup()? else { return Ok(()) };
    t.write("myscript.sh", "#!/bin/sh\necho -n $my_arg $* > /out\n");
    std::fs::set_permissions(
        t.ctx.join("myscript.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    t.write("Dockerfile", BUILDKIT_ARGS);
    let args = |proxy: &'static str| {
        [
            "--build-arg",
            "FOO=foocontents",
            "--build-arg",
            proxy,
            "--build-arg",
            "NO_PROXY=npvalue",
        ]
    };
    let img = build(&t, "bkargs:1", &args("http_proxy=hpvalue"))?;
    ensure!(img.read("/multi")? == "foo bar:box-foo:123 456");
    ensure!(img.read("/quoted")? == "bar-box");
    // A lowercase proxy build-arg reaches RUN as HTTP_PROXY too.
    ensure!(img.read("/builtin")? == "hpvalue::npvalue::foocontents::::bazcontent");
    ensure!(img.read("/defenv")? == "my_arg=def_val my_arg=def_val my_arg=d");
    let env = img.read("/emptyarg")?;
    ensure!(
        env.lines().any(|l| l == "BAR=") && env.contains("FOO=foocontents"),
        "{env}"
    );
    // Another proxy value keeps the cache (and the old output), as in BuildKit.
    let again = t.build("bkargs:2", &args("http_proxy=hpvalue2"))?;
    ensure!(
        executed_runs(&again).is_empty(),
        "{:?}",
        executed_runs(&again)
    );

    // `${V:?msg}` in a global or a stage ARG default fails unless a build-arg sets it.
    t.write(
        "Dockerfile",
        "ARG FOO=${FOO:?\"custom error\"}\nFROM busybox\n",
    );
    let ctx = t.ctx.to_str().context("utf-8")?;
    let out = t.kiln(&["build", "-t", "bkargs:3", ctx]);
    ensure!(
        !out.status.success() && text(&out).contains("FOO: custom error"),
        "{}",
        text(&out)
    );
    t.ok(&["build", "--build-arg", "FOO=bar", "-t", "bkargs:3", ctx])?;
    t.write(
        "Dockerfile",
        "FROM scratch\nARG FOO\nARG BAR=${FOO:?\"foo missing\"}\n",
    );
    let out = t.kiln(&["build", "-t", "bkargs:4", ctx]);
    ensure!(
        !out.status.success() && text(&out).contains("FOO: foo missing"),
        "{}",
        text(&out)
    );
    t.ok(&["build", "--build-arg", "BAR=123", "-t", "bkargs:4", ctx])?;
    Ok(())
}

const BUILDKIT_ARGS: &str = r#"ARG a1="foo bar" a2=box
ARG a3="$a2-foo"
ARG image=idlebox
FROM busy$a2 AS multi
ARG a3 a4="123 456" a1
RUN echo -n "$a1:$a3:$a4" > /out
FROM busy${image#idle} AS quoted
ARG a2
ARG a5="bar-$a2"
RUN echo -n $a5 > /out
FROM busybox AS builtin
ARG FOO
ARG BAR
ARG BAZ=bazcontent
RUN echo -n $HTTP_PROXY::$NO_PROXY::$FOO::$BAR::$BAZ > /out
FROM busybox AS defenv
ARG my_arg
ENV my_arg "my_arg=${my_arg:-def_val}"
ENV my_trimmed_arg "${my_arg%%e*}"
COPY myscript.sh myscript.sh
RUN ./myscript.sh $my_arg $my_trimmed_arg
FROM busybox AS emptyarg
ARG FOO
ARG BAR=
RUN env > /out
FROM scratch
COPY --from=multi /out /multi
COPY --from=quoted /out /quoted
COPY --from=builtin /out /builtin
COPY --from=defenv /out /defenv
COPY --from=emptyarg /out /emptyarg
"#;

/// A tar of `(path, content)` regular files and `(path, target)` symlinks (`symlinks`).
fn tar_of(files: &[(&str, &str)], symlinks: &[(&str, &str)]) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, path, body.as_bytes())?;
    }
    for (path, target) in symlinks {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        b.append_link(&mut h, path, target)?;
    }
    Ok(b.into_inner()?)
}

/// BuildKit's COPY/ADD cases from frontend/dockerfile/dockerfile_test.go (moby/buildkit,
/// Apache-2.0): testDockerfileAddArchiveWildcard, testSymlinkDestination,
/// testCopyOverrideFiles, testCopyVarSubstitution, testCopyWildcards, testCopyChown,
/// testCopyChmod, testDockerfileAddChownExpand, testCopyRelative, testMultiStageImplicitFrom,
/// testMultiStageCaseInsensitive, testExposeExpansion and testDockerfileScratchConfig,
/// adapted to one Dockerfile (Debian's busybox has `nogroup` where BuildKit's has `nobody`).
#[test]
fn copy_and_add_match_buildkits_dockerfile_tests() -> anyhow::Result<()> {
    let Some(t) = setup()? else { return Ok(()) };
    std::fs::write(t.ctx.join("t.tar"), tar_of(&[("foo", "content0")], &[])?)?;
    std::fs::write(t.ctx.join("b.tar"), tar_of(&[("bar", "content1")], &[])?)?;
    std::fs::write(
        t.ctx.join("symlink.archive"),
        tar_of(&[], &[("symlink", "../tmp/symlink-target")])?,
    )?;
    for (path, body) in [
        ("foo", "hello"),
        ("bar/sub", ""),
        ("sub/dir1/dir2/foo", "foo-contents"),
        ("files/foo.go", "foo.go-contents"),
        ("foo.go", "foo-contents"),
        ("bar.go", "bar-contents"),
        ("barfile", "bar-contents"),
        ("bar2", "bar-contents"),
    ] {
        t.write(path, body);
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(t.ctx.join("bar"), std::fs::Permissions::from_mode(0o700))?;
    std::fs::set_permissions(t.ctx.join("bar2"), std::fs::Permissions::from_mode(0o700))?;
    t.write("Dockerfile", BUILDKIT_DOCKERFILE_TESTS);
    let img = build(&t, "bkdf:1", &["--build-arg", "group=nogroup"])?;
    for (path, want) in [
        ("/a/dest/foo", "content0"),
        ("/a/dest/bar", "content1"),
        ("/a/tmp/symlink-target/foo", "hello"),
        ("/a/sub/dir1/dir2/foo", "foo-contents"),
        ("/a/dest2/foo.go", "foo.go-contents"),
        ("/a/baz", "bar-contents"),
        ("/a/gofiles/foo.go", "foo-contents"),
        ("/a/gofiles/bar.go", "bar-contents"),
        ("/a/foo2.go", "foo-contents"),
        ("/a/subdest/dir2/foo", "foo-contents"),
        ("/a/subdest2/foo", "foo-contents"),
        ("/a/subdest3/bar", "foo-contents"),
        ("/a/subdest4/dir2/foo", "foo-contents"),
        ("/a/subdest5/dir2/foo", "foo-contents"),
        ("/a/subdest6/dir2/foo", "foo-contents"),
        ("/baz", "hello"),
        ("/owners-done", "hello"),
    ] {
        ensure!(img.read(path)? == want, "{path}: {:?}", img.read(path));
    }
    ensure!(img.read("/test")?.contains("root"));
    let ports: Vec<&String> = img
        .cfg("ExposedPorts")
        .as_object()
        .context("ports")?
        .keys()
        .collect();
    ensure!(ports == ["3000/tcp", "4000/udp", "5000/tcp"], "{ports:?}");

    t.write("Dockerfile", "FROM scratch\nENV foo=bar\n");
    let img = build(&t, "bkdf:2", &[])?;
    ensure!(
        img.config["rootfs"]["diff_ids"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    let history = img.config["history"].as_array().context("history")?;
    ensure!(
        history.len() == 1 && history[0]["empty_layer"] == true,
        "{history:?}"
    );
    ensure!(img.history()[0].contains("ENV foo=bar"));
    ensure!(img.env().iter().any(|e| e == "foo=bar"));
    ensure!(img.env().iter().any(|e| e.starts_with("PATH=")));
    ensure!(
        img.cfg("WorkingDir")
            .as_str()
            .is_some_and(|w| !w.is_empty())
    );
    Ok(())
}

const BUILDKIT_DOCKERFILE_TESTS: &str = r#"FROM scratch AS addarchive
ADD *.tar /dest
ADD symlink.archive /
COPY foo /symlink/
COPY sub sub
COPY sub sub
COPY files/foo.go dest2/foo.go
COPY files/foo.go dest2/foo.go
COPY files dest2
ENV FOO=barfile
COPY $FOO baz
COPY *.go /gofiles/
COPY f*.go foo2.go
COPY sub/* /subdest/
COPY sub/*/dir2/foo /subdest2/
COPY sub/*/dir2/foo /subdest3/bar
COPY sub/dir1/ subdest4
COPY sub/dir1/. subdest5
COPY sub/dir1 subdest6

FROM busybox AS owners
RUN echo 'daemon:x:1:1:daemon:/usr/sbin:/bin/false' >> /etc/passwd && echo 'daemon:x:1:' >> /etc/group
ENV owner=1000
RUN mkdir -m 0777 /out
COPY --chown=daemon foo /
COPY --chown=1000:nogroup bar /baz
ARG group
COPY --chown=${owner}:${group} foo /foobis
ADD --chown=${owner}:${group} foo /addfoo
COPY --chmod=0644 foo /cfoo
COPY --chmod=777 bar2 /cbaz
COPY --chmod=0 foo /cfoobis
RUN [ "$(stat -c "%U %G" /foo)" = "daemon daemon" ] && [ "$(stat -c "%u %G" /baz/sub)" = "1000 nogroup" ] \
 && [ "$(stat -c "%u %G" /foobis)" = "1000 nogroup" ] && [ "$(stat -c "%u %G" /addfoo)" = "1000 nogroup" ] \
 && [ "$(stat -c "%04a" /cfoo)" = 0644 ] && [ "$(stat -c "%04a" /cbaz)" = 0777 ] && [ "$(stat -c "%04a" /cfoobis)" = 0000 ]
WORKDIR /test1
WORKDIR test2
RUN sh -c "[ "$PWD" = '/test1/test2' ]"
COPY foo ./
RUN sh -c "[ $(cat /test1/test2/foo) = 'hello' ]"
ADD foo ./bar/baz
RUN sh -c "[ $(cat /test1/test2/bar/baz) = 'hello' ]"
COPY foo ./bar/baz2
RUN sh -c "[ $(cat /test1/test2/bar/baz2) = 'hello' ]"
WORKDIR ..
COPY foo ./
RUN sh -c "[ $(cat /test1/foo) = 'hello' ]"
COPY foo /test3/
RUN sh -c "[ $(cat /test3/foo) = 'hello' ]"
WORKDIR /test4
COPY . .
RUN sh -c "[ $(cat /test4/foo) = 'hello' ]"
WORKDIR /test5/test6
COPY foo ../
RUN sh -c "[ $(cat /test5/foo) = 'hello' ]"

FROM scratch AS STAge0
COPY foo bar
FROM scratch AS staGE1
COPY --from=staGE0 bar baz
COPY --from=busybox /etc/passwd test
FROM scratch
ARG PORTS="3000 4000/udp"
EXPOSE $PORTS
EXPOSE 5000
COPY --from=addarchive / /a/
COPY --from=stage1 baz test /
COPY --from=owners /test4/foo /owners-done
"#;

/// BuildKit's testCopyChmod (parents take the --chmod mode), testCopySymlinks (wildcard matches
/// that are symlinks are followed, chains included), testCopyUnicodePath and testCopySocket
/// (a context socket arrives as a regular file); moby/buildkit, Apache-2.0, adapted.
#[test]
fn copy_chmod_parents_symlinks_and_sockets_match_buildkit() -> anyhow::Result<()> {
    let Some(t) = setup()? else { return Ok(()) };
    use std::os::unix::fs::{PermissionsExt as _, symlink};
    t.write("foo", "foo-contents");
    t.write("bar", "bar-contents");
    std::fs::set_permissions(t.ctx.join("bar"), std::fs::Permissions::from_mode(0o700))?;
    symlink("bar", t.ctx.join("sfoo"))?;
    t.write("sub/lfile", "lfile-contents");
    t.write("sub/subfile", "subfile-contents");
    t.write("sub/baz", "baz-contents");
    symlink("subfile", t.ctx.join("sub/l0"))?;
    symlink("second", t.ctx.join("sub/l1"))?;
    symlink("baz", t.ctx.join("sub/second"))?;
    t.write("test-äöü.txt", "foo");
    t.write("test-%C3%A4%C3%B6%C3%BC.txt", "bar");
    let _socket = std::os::unix::net::UnixListener::bind(t.ctx.join("sock.sock"))?;
    t.write(
        "Dockerfile",
        "FROM busybox\n\
         COPY --chmod=0644 foo /\n\
         COPY --chmod=777 bar /baz\n\
         COPY --chmod=0 foo /foobis\n\
         COPY --chmod=777 foo /parent/foo\n\
         COPY --chmod=770 foo /parent/sub/foo\n\
         ARG mode\n\
         COPY --chmod=${mode} foo /footer\n\
         COPY sfoo /sfoo\n\
         COPY sub/l* /alllinks/\n\
         COPY test-äöü.txt test-%C3%A4%C3%B6%C3%BC.txt sock.sock /uni/\n",
    );
    let img = build(&t, "bkchmod:1", &["--build-arg", "mode=755"])?;
    for (path, mode) in [
        ("/foo", 0o644),
        ("/baz", 0o777),
        ("/foobis", 0),
        ("/parent", 0o777),
        ("/parent/sub", 0o770),
        ("/footer", 0o755),
    ] {
        ensure!(img.meta(path)?.0 == mode, "{path}: {:o}", img.meta(path)?.0);
    }
    for (path, want) in [
        ("/sfoo", "bar-contents"),
        ("/alllinks/l0", "subfile-contents"),
        ("/alllinks/lfile", "lfile-contents"),
        ("/alllinks/l1", "baz-contents"),
        ("/uni/test-äöü.txt", "foo"),
        ("/uni/test-%C3%A4%C3%B6%C3%BC.txt", "bar"),
        ("/uni/sock.sock", ""),
    ] {
        ensure!(img.read(path)? == want, "{path}");
    }
    ensure!(std::fs::symlink_metadata(img.path("/alllinks/l1"))?.is_file());
    ensure!(std::fs::symlink_metadata(img.path("/uni/sock.sock"))?.is_file());
    Ok(())
}

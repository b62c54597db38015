//! Rootless kiln: the real binary started as an ordinary user (created here with `useradd`,
//! one with subordinate id ranges and one without), through `setpriv`, with its own
//! XDG_RUNTIME_DIR (so its own session: pause process, user namespace, slirp4netns) and
//! KILN_ROOT. Each test kills its session's pause process at the end (the network helper
//! exits with it).

use crate::harness::{TestDir, busybox_tar, privileged, text, umoci_unpack};
use anyhow::{Context as _, ensure};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// The user with ranges, and its range (subuid = subgid).
pub(crate) const USER: &str = "kiln-it-rl";
pub(crate) const RANGE: (u32, u32) = (600_000, 65_536);
/// The user without ranges.
const SINGLE_USER: &str = "kiln-it-rl1";

/// useradd and usermod lock /etc/passwd: one at a time, and once per user and test run (the
/// users' sessions of other tests may be running meanwhile).
static USERADD: Mutex<BTreeMap<String, (u32, u32)>> = Mutex::new(BTreeMap::new());

/// Creates `name` (no home, no automatic subordinate ids) unless it exists, then gives it
/// `range` in /etc/subuid and /etc/subgid, or removes every range it has. Returns uid, gid.
pub(crate) fn ensure_user(name: &str, range: Option<(u32, u32)>) -> anyhow::Result<(u32, u32)> {
    let mut done = USERADD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ids) = done.get(name) {
        return Ok(*ids);
    }
    let exists = Command::new("id").arg(name).output()?.status.success();
    if !exists {
        let out = Command::new("useradd")
            .args(["-M", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name])
            .output()?;
        ensure!(out.status.success(), "useradd {name}: {}", text(&out));
    }
    for (file, flag) in [
        ("/etc/subuid", "--del-subuids"),
        ("/etc/subgid", "--del-subgids"),
    ] {
        let ids = std::fs::read_to_string(file).unwrap_or_default();
        for line in ids.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() == 3 && f[0] == name {
                let (s, c): (u32, u32) = (f[1].parse()?, f[2].parse()?);
                let out = Command::new("usermod")
                    .args([flag, &format!("{s}-{}", s + c - 1), name])
                    .output()?;
                ensure!(
                    out.status.success(),
                    "usermod {flag} {name}: {}",
                    text(&out)
                );
            }
        }
    }
    if let Some((s, c)) = range {
        let r = format!("{s}-{}", s + c - 1);
        let out = Command::new("usermod")
            .args(["--add-subuids", &r, "--add-subgids", &r, name])
            .output()?;
        ensure!(
            out.status.success(),
            "usermod --add-subuids {name}: {}",
            text(&out)
        );
    }
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id").args([flag, name]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    let ids = (id("-u")?, id("-g")?);
    done.insert(name.to_owned(), ids);
    Ok(ids)
}

/// One test's rootless world: a user, a temp dir it can use, and its session.
pub(crate) struct Rootless {
    pub(crate) t: TestDir,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) home: PathBuf,
    pub(crate) runtime: PathBuf,
}

impl Drop for Rootless {
    fn drop(&mut self) {
        // The session's pause process (started by the kiln this test ran); slirp4netns exits
        // when it does.
        if let Ok(pid) = std::fs::read_to_string(self.runtime.join("kiln/pause.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        // pasta does not notice that its namespace is gone.
        if let Ok(pid) = std::fs::read_to_string(self.runtime.join("kiln/pasta.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

pub(crate) fn rootless(name: &str, range: Option<(u32, u32)>) -> anyhow::Result<Option<Rootless>> {
    if !privileged(&[
        "newuidmap",
        "newgidmap",
        "slirp4netns",
        "useradd",
        "setpriv",
        "umoci",
    ]) {
        return Ok(None);
    }
    let (uid, gid) = ensure_user(name, range)?;
    let t = TestDir::new();
    std::fs::set_permissions(t.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let home = t.dir.path().join("home");
    let runtime = t.dir.path().join("run");
    for d in [&home, &runtime, &t.root] {
        std::fs::create_dir_all(d)?;
        std::os::unix::fs::chown(d, Some(uid), Some(gid))?;
    }
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700))?;
    let r = Rootless {
        t,
        uid,
        gid,
        home,
        runtime,
    };
    let tar = r.home.join("busybox.tar");
    std::fs::write(&tar, busybox_tar()?)?;
    r.ok(&[
        "import",
        "--change",
        r#"CMD ["sh"]"#,
        tar.to_str().expect("utf-8 path"),
        "busybox",
    ])?;
    Ok(Some(r))
}

impl Rootless {
    /// A store `mount/store` owned by the user, on a file system mounted since the session
    /// began (which the session is ended for, so the next one sees the mount), holding the
    /// `busybox` image.
    pub(crate) fn store_with_busybox(&self, mount: &Path) -> anyhow::Result<PathBuf> {
        let store = mount.join("store");
        std::fs::create_dir(&store)?;
        std::os::unix::fs::chown(&store, Some(self.uid), Some(self.gid))?;
        end_session(self)?;
        let tar = self.home.join("busybox.tar");
        let out = self
            .cmd(&store, &["import", "--change", r#"CMD ["sh"]"#])
            .arg(&tar)
            .arg("busybox")
            .output()?;
        ensure!(out.status.success(), "import: {}", text(&out));
        Ok(store)
    }

    /// `kiln args...` as the user, with only the environment a login would give it.
    pub(crate) fn cmd(&self, root: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args(["--clear-groups", "--"])
            .arg(crate::harness::kiln_bin())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", &self.home)
            .env("XDG_RUNTIME_DIR", &self.runtime)
            .env("KILN_ROOT", root)
            .stdin(Stdio::null());
        c
    }

    fn kiln(&self, args: &[&str]) -> Output {
        self.cmd(&self.t.root, args).output().expect("setpriv runs")
    }

    fn ok(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = self.kiln(args);
        ensure!(
            out.status.success(),
            "kiln {args:?} as uid {} failed ({}):\n{}",
            self.uid,
            out.status,
            text(&out)
        );
        Ok(out)
    }

    fn build(&self, tag: &str, ctx: &Path, extra: &[&str]) -> anyhow::Result<Output> {
        let mut args = vec!["build", "--progress", "plain", "-t", tag];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().expect("utf-8 path"));
        self.ok(&args)
    }

    /// `kiln save` of `tag` unpacked by umoci (as root, so owners are kept): its rootfs.
    fn unpack(&self, tag: &str) -> anyhow::Result<PathBuf> {
        let archive = self.home.join("image.tar");
        self.ok(&["save", tag, "-o", archive.to_str().expect("utf-8 path")])?;
        let layout = self.t.dir.path().join("layout");
        std::fs::create_dir_all(&layout)?;
        let out = Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout)
            .output()?;
        ensure!(out.status.success(), "tar: {}", text(&out));
        let bundle = self.t.dir.path().join("bundle");
        umoci_unpack(
            &layout,
            tag.rsplit_once(':').map_or("latest", |(_, t)| t),
            &bundle,
        )?;
        Ok(bundle.join("rootfs"))
    }
}

/// The host's first global IPv4 address: what a rootless RUN reaches through slirp4netns
/// (the host's 127.0.0.1 is not reachable from the session, by design).
fn host_ip() -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()?;
    let s = String::from_utf8_lossy(&out.stdout);
    s.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_owned)
        .context("no global IPv4 address on this host")
}

/// A `busybox httpd` on the host serving `dir`, killed on drop.
struct Httpd(std::process::Child);

impl Drop for Httpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn httpd(ip: &str, dir: &Path) -> anyhow::Result<(Httpd, u16)> {
    let port = std::net::TcpListener::bind((ip, 0))?.local_addr()?.port();
    let child = Command::new("/bin/busybox")
        .args(["httpd", "-f", "-p", &format!("{ip}:{port}"), "-h"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let h = Httpd(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect((ip, port)).is_err() {
        ensure!(std::time::Instant::now() < deadline, "httpd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((h, port))
}

pub(crate) fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello")
}

#[test]
fn rootless_example_builds_and_runs() -> anyhow::Result<()> {
    let Some(r) = rootless(USER, Some(RANGE))? else {
        return Ok(());
    };
    r.build("hello:latest", &example_dir(), &[])?;
    let out = r.ok(&["run", "--rm", "hello:latest"])?;
    let s = String::from_utf8_lossy(&out.stdout);
    ensure!(s.contains("HELLO FROM A KILN BUILD"), "run printed {s:?}");
    ensure!(s.contains("built by kiln"), "run printed {s:?}");
    // The store is the user's: every file under KILN_ROOT belongs to the user or to its
    // subordinate range, never to root.
    let meta = std::fs::metadata(r.t.root.join("blobs"))?;
    ensure!(meta.uid() == r.uid, "blobs/ owned by {}", meta.uid());
    Ok(())
}

#[test]
fn rootless_multi_owner_image_round_trips_with_its_owners() -> anyhow::Result<()> {
    let Some(r) = rootless(USER, Some(RANGE))? else {
        return Ok(());
    };
    r.t.write(
        "Dockerfile",
        "FROM busybox\nRUN mkdir /o && touch /o/root /o/user /o/nobody && chown 1000:1000 /o/user && chown 65534:65534 /o/nobody\nRUN echo app:x:1000:1000::/:/bin/sh >> /etc/passwd\nUSER app\nRUN touch /tmp/by-app\n",
    );
    r.build("multi:1", &r.t.ctx, &[])?;
    let rootfs = r.unpack("multi:1")?;
    let owner = |p: &str| -> anyhow::Result<(u32, u32)> {
        let m = std::fs::symlink_metadata(rootfs.join(p)).with_context(|| p.to_owned())?;
        Ok((m.uid(), m.gid()))
    };
    ensure!(owner("o/root")? == (0, 0), "o/root: {:?}", owner("o/root")?);
    ensure!(
        owner("o/user")? == (1000, 1000),
        "o/user: {:?}",
        owner("o/user")?
    );
    ensure!(
        owner("o/nobody")? == (65534, 65534),
        "o/nobody: {:?}",
        owner("o/nobody")?
    );
    ensure!(
        owner("tmp/by-app")? == (1000, 1000),
        "tmp/by-app: {:?}",
        owner("tmp/by-app")?
    );
    // Inside a container the ids are the image's too.
    let out = r.ok(&[
        "run",
        "--rm",
        "multi:1",
        "stat",
        "-c",
        "%u:%g %n",
        "/o/user",
        "/o/nobody",
    ])?;
    let s = String::from_utf8_lossy(&out.stdout);
    ensure!(
        s.contains("1000:1000 /o/user") && s.contains("65534:65534 /o/nobody"),
        "{s}"
    );
    Ok(())
}

#[test]
fn rootless_run_cache_mount_keeps_its_contents() -> anyhow::Result<()> {
    let Some(r) = rootless(USER, Some(RANGE))? else {
        return Ok(());
    };
    let dockerfile = |n: u32| {
        format!(
            "FROM busybox\nRUN --mount=type=cache,target=/c,uid=1000 echo {n} >> /c/log && cat /c/log && stat -c %u /c\n"
        )
    };
    r.t.write("Dockerfile", &dockerfile(1));
    r.build("c:1", &r.t.ctx, &[])?;
    r.t.write("Dockerfile", &dockerfile(2));
    let out = r.build("c:2", &r.t.ctx, &[])?;
    let s = text(&out);
    ensure!(
        s.lines().any(|l| l.ends_with(" 1")) && s.lines().any(|l| l.ends_with(" 2")),
        "the second build did not see the first one's cache entry:\n{s}"
    );
    ensure!(
        s.lines().any(|l| l.ends_with(" 1000")),
        "cache dir owner:\n{s}"
    );
    Ok(())
}

#[test]
fn rootless_run_reaches_a_host_through_slirp4netns() -> anyhow::Result<()> {
    let Some(r) = rootless(USER, Some(RANGE))? else {
        return Ok(());
    };
    let ip = host_ip()?;
    let www = r.t.dir.path().join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), "served by the host\n")?;
    let (_httpd, port) = httpd(&ip, &www)?;
    r.t.write(
        "Dockerfile",
        "FROM busybox\nARG URL\nRUN wget -q -O /got \"$URL\" && cat /got\n",
    );
    let url = format!("URL=http://{ip}:{port}/index.html");
    let out = r.build("net:1", &r.t.ctx, &["--build-arg", &url])?;
    ensure!(text(&out).contains("served by the host"), "{}", text(&out));
    // `kiln run` on the default bridge and with --network none.
    let out = r.ok(&["run", "--rm", "busybox", "wget", "-q", "-O-", &url[4..]])?;
    ensure!(String::from_utf8_lossy(&out.stdout).contains("served by the host"));
    let out = r.kiln(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "wget",
        "-q",
        "-T",
        "2",
        "-O-",
        &url[4..],
    ]);
    ensure!(!out.status.success(), "--network none reached the host");
    Ok(())
}

#[test]
fn rootless_run_publishes_a_port() -> anyhow::Result<()> {
    let Some(r) = rootless(USER, Some(RANGE))? else {
        return Ok(());
    };
    r.t.write(
        "Dockerfile",
        "FROM busybox\nRUN mkdir /www && echo published > /www/index.html\n",
    );
    r.build("web:1", &r.t.ctx, &[])?;
    let port = crate::harness::free_port()?;
    let spec = format!("{port}:8080");
    r.ok(&[
        "run", "-d", "--name", "web", "-p", &spec, "web:1", "httpd", "-f", "-p", "8080", "-h",
        "/www",
    ])?;
    let got = (|| -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("curl")
                .args([
                    "-s",
                    "-m",
                    "2",
                    &format!("http://127.0.0.1:{port}/index.html"),
                ])
                .output()?;
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            if s.contains("published") || std::time::Instant::now() > deadline {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })();
    let exec = r.kiln(&["exec", "web", "cat", "/www/index.html"]);
    r.ok(&["rm", "-f", "web"])?;
    let got = got?;
    ensure!(
        String::from_utf8_lossy(&exec.stdout) == "published\n",
        "exec: {}",
        text(&exec)
    );
    ensure!(
        got.contains("published"),
        "127.0.0.1:{port} answered {got:?}"
    );
    // Removing the container removed the forward.
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "2",
            &format!("http://127.0.0.1:{port}/index.html"),
        ])
        .output()?;
    ensure!(!out.status.success(), "port {port} still answers after rm");
    Ok(())
}

#[test]
fn rootless_push_and_pull_through_a_registry() -> anyhow::Result<()> {
    let Some(r) = rootless(USER, Some(RANGE))? else {
        return Ok(());
    };
    let ip = host_ip()?;
    let reg = crate::registry::start_registry_on(r.t.dir.path(), &ip)?;
    r.t.write(
        "Dockerfile",
        "FROM busybox\nRUN mkdir /d && echo pushed > /d/f && chown 65534 /d/f\n",
    );
    r.build("app:1", &r.t.ctx, &[])?;
    let remote = format!("{ip}:{}/rootless/app:1", reg.port);
    r.ok(&[
        "push",
        "--insecure-registry",
        &format!("{ip}:{}", reg.port),
        "app:1",
        &remote,
    ])?;
    let other = r.home.join("store2");
    let pull = |args: &[&str]| r.cmd(&other, args).output();
    let out = pull(&[
        "pull",
        "--insecure-registry",
        &format!("{ip}:{}", reg.port),
        &remote,
    ])?;
    ensure!(out.status.success(), "pull: {}", text(&out));
    let out = pull(&["run", "--rm", &remote, "stat", "-c", "%u %n", "/d/f"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("65534 /d/f"),
        "run of the pulled image: {}",
        text(&out)
    );
    Ok(())
}

#[test]
fn rootless_without_subordinate_ids_warns_and_builds_with_one_id() -> anyhow::Result<()> {
    let Some(r) = rootless(SINGLE_USER, None)? else {
        return Ok(());
    };
    r.t.write(
        "Dockerfile",
        "FROM busybox\nRUN echo single > /f && id -u\n",
    );
    let out = r.build("one:1", &r.t.ctx, &[])?;
    let s = text(&out);
    ensure!(
        s.contains("warning: rootless: no subordinate ids for user kiln-it-rl1"),
        "no warning:\n{s}"
    );
    let out = r.ok(&["run", "--rm", "one:1", "cat", "/f"])?;
    ensure!(String::from_utf8_lossy(&out.stdout) == "single\n");
    // What does not work, and says so: another owner.
    r.t.write(
        "Dockerfile",
        "FROM busybox\nRUN touch /x && chown 1000 /x\n",
    );
    let out = r.kiln(&["build", "-t", "two:1", r.t.ctx.to_str().expect("utf-8")]);
    ensure!(!out.status.success(), "chown to 1000 worked with one id");
    ensure!(text(&out).contains("chown"), "{}", text(&out));
    Ok(())
}

#[test]
fn rootless_sandbox_keeps_the_security_policy() -> anyhow::Result<()> {
    let Some(r) = rootless(USER, Some(RANGE))? else {
        return Ok(());
    };
    let script = "grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status; \
                  echo timer_list=$(wc -c < /proc/timer_list) firmware=$(ls /sys/firmware | wc -l); \
                  (echo x > /proc/sysrq-trigger) 2>/dev/null && echo sysrq-written; \
                  unshare -U true 2>/dev/null && echo unshared; \
                  mknod /tmp/null c 1 3 2>/dev/null && echo mknod-worked; echo done";
    let out = r.ok(&["run", "--rm", "busybox", "sh", "-c", script])?;
    let s = String::from_utf8_lossy(&out.stdout);
    // seccomp filter mode, no_new_privs, docker's 14 capabilities.
    ensure!(s.contains("Seccomp:\t2"), "{s}");
    ensure!(s.contains("NoNewPrivs:\t1"), "{s}");
    ensure!(s.contains("CapEff:\t00000000a80425fb"), "{s}");
    // Masked and read-only /proc paths, as root mode.
    ensure!(s.contains("timer_list=0 firmware=0"), "{s}");
    ensure!(!s.contains("sysrq-written"), "{s}");
    // The seccomp profile refuses new user namespaces; device nodes cannot be made.
    ensure!(!s.contains("unshared"), "{s}");
    ensure!(!s.contains("mknod-worked"), "{s}");
    ensure!(s.contains("done"), "{s}");
    // Path confinement: a COPY through a symlink that points out of the root lands inside it.
    r.t.write(
        "Dockerfile",
        "FROM busybox\nRUN ln -s ../../../../../../tmp /escape\nCOPY f /escape/copied\nRUN cat /tmp/copied\n",
    );
    r.t.write("f", "inside\n");
    let out = r.build("conf:1", &r.t.ctx, &[])?;
    ensure!(text(&out).contains("inside"), "{}", text(&out));
    ensure!(
        !Path::new("/tmp/copied").exists(),
        "COPY escaped to the host's /tmp"
    );
    Ok(())
}

#[test]
fn rootless_limits_without_a_delegated_cgroup_warn_and_run_unlimited() -> anyhow::Result<()> {
    let Some(r) = rootless(USER, Some(RANGE))? else {
        return Ok(());
    };
    let out = r.ok(&[
        "run",
        "--rm",
        "--memory",
        "64m",
        "--pids-limit",
        "50",
        "busybox",
        "echo",
        "ran",
    ])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "ran\n",
        "{}",
        text(&out)
    );
    ensure!(
        text(&out).contains("warning: rootless:")
            && text(&out).contains("running without --memory/--cpus/--pids-limit limits"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn rootless_fuse_overlayfs_builds_the_example_and_a_multi_step_image() -> anyhow::Result<()> {
    let Some(r) = rootless(USER, Some(RANGE))? else {
        return Ok(());
    };
    ensure!(
        privileged(&["fuse-overlayfs"]),
        "fuse-overlayfs is not installed"
    );
    // This kernel has overlayfs in user namespaces: the switch forces the fallback.
    let fuse = |args: &[&str]| -> anyhow::Result<Output> {
        let out = r
            .cmd(&r.t.root, args)
            .env("KILN_ROOTLESS_OVERLAY", "fuse")
            .output()?;
        ensure!(
            out.status.success(),
            "kiln {args:?} with fuse-overlayfs failed ({}):\n{}",
            out.status,
            text(&out)
        );
        Ok(out)
    };
    let example = example_dir();
    fuse(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "hello:fuse",
        example.to_str().expect("utf-8 path"),
    ])?;
    let out = fuse(&["run", "--rm", "hello:fuse"])?;
    let s = String::from_utf8_lossy(&out.stdout);
    ensure!(
        s.contains("HELLO FROM A KILN BUILD") && s.contains("built by kiln"),
        "run printed {s:?}"
    );
    r.t.write(
        "Dockerfile",
        "FROM busybox\n\
         RUN grep ' / / ' /proc/self/mountinfo > /root-mount\n\
         RUN mkdir -p /d/sub && echo one > /d/a && echo gone > /d/b && touch /d/sub/x && chown 1000:1000 /d/a\n\
         RUN rm /d/b && echo two >> /d/a && rm -rf /d/sub && mkdir /d/sub && echo new > /d/sub/y\n\
         RUN echo app:x:1000:1000::/:/bin/sh >> /etc/passwd\n\
         USER app\n\
         RUN echo by-app > /tmp/by-app && cat /d/a\n",
    );
    fuse(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "steps:fuse",
        r.t.ctx.to_str().expect("utf-8 path"),
    ])?;
    // Unpacked by umoci: the layers' whiteouts, opaque directory and owners.
    let rootfs = r.unpack("steps:fuse")?;
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).with_context(|| p.to_owned());
    let mount = read("root-mount")?;
    ensure!(
        mount.contains("fuse"),
        "the RUN root was not fuse-overlayfs: {mount}"
    );
    ensure!(read("d/a")? == "one\ntwo\n", "d/a: {:?}", read("d/a")?);
    ensure!(!rootfs.join("d/b").exists(), "the whiteout of d/b was lost");
    ensure!(
        !rootfs.join("d/sub/x").exists() && read("d/sub/y")? == "new\n",
        "the replaced directory d/sub"
    );
    let owner = |p: &str| -> anyhow::Result<u32> {
        Ok(std::fs::symlink_metadata(rootfs.join(p))
            .with_context(|| p.to_owned())?
            .uid())
    };
    ensure!(owner("d/a")? == 1000, "d/a owner {}", owner("d/a")?);
    ensure!(
        owner("tmp/by-app")? == 1000,
        "tmp/by-app owner {}",
        owner("tmp/by-app")?
    );
    // No layer carries fuse-overlayfs's private xattrs or stray markers.
    let mut traces = Vec::new();
    let mut stack = vec![rootfs.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            let mut names = vec![0u8; 4096];
            let n = rustix::fs::llistxattr(&p, &mut names).unwrap_or(0);
            let names = String::from_utf8_lossy(&names[..n]).into_owned();
            if names.contains("fuseoverlayfs") || names.contains(".overlay.") {
                traces.push(format!("{}: {names:?}", p.display()));
            }
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".wh."))
            {
                traces.push(p.display().to_string());
            }
            if std::fs::symlink_metadata(&p)?.is_dir() {
                stack.push(p);
            }
        }
    }
    ensure!(
        traces.is_empty(),
        "fuse-overlayfs left traces in the image: {traces:?}"
    );
    eprintln!("root mount of the RUN steps: {mount}");
    Ok(())
}

#[test]
fn rootless_pasta_refuses_published_ports_and_says_why() -> anyhow::Result<()> {
    let Some(r) = rootless(USER, Some(RANGE))? else {
        return Ok(());
    };
    ensure!(
        privileged(&["pasta"]),
        "pasta (Debian package passt) is not installed"
    );
    // The session from `rootless` runs slirp4netns: end it, the next one uses pasta.
    end_session(&r)?;
    let port = crate::harness::free_port()?;
    let out = r
        .cmd(
            &r.t.root,
            &[
                "run",
                "--rm",
                "-p",
                &format!("{port}:80"),
                "busybox",
                "true",
            ],
        )
        .env("KILN_ROOTLESS_NET", "pasta")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && err.contains("this session uses pasta")
            && err.contains("cannot add a port forward once started")
            && err.contains("KILN_ROOTLESS_NET=slirp4netns"),
        "{}",
        text(&out)
    );
    // Without -p the pasta session runs containers.
    let out = r
        .cmd(&r.t.root, &["run", "--rm", "busybox", "echo", "ran"])
        .env("KILN_ROOTLESS_NET", "pasta")
        .output()?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "ran\n",
        "{}",
        text(&out)
    );
    Ok(())
}

/// Kills the test's session; the next kiln command starts a new one.
pub(crate) fn end_session(r: &Rootless) -> anyhow::Result<()> {
    let pid: i32 = std::fs::read_to_string(r.runtime.join("kiln/pause.pid"))?
        .trim()
        .parse()?;
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).context("pause pid")?,
        rustix::process::Signal::KILL,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// An overlayfs mounted by root, unmounted on drop.
struct OverlayMount(PathBuf);

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn rootless_store_on_overlayfs_fails_clearly_naming_both_overlays() -> anyhow::Result<()> {
    let Some(r) = rootless(USER, Some(RANGE))? else {
        return Ok(());
    };
    // A store on overlayfs itself (as in a container without a volume): the kernel refuses it
    // as an upper dir, and so does kiln's fuse-overlayfs fallback (which hangs there).
    let base = r.t.dir.path().join("ovl");
    let (lower, upper, work, merged) = (
        base.join("l"),
        base.join("u"),
        base.join("w"),
        base.join("m"),
    );
    for d in [&lower, &upper, &work, &merged] {
        std::fs::create_dir_all(d)?;
    }
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        ))
        .arg(&merged)
        .output()?;
    ensure!(out.status.success(), "mount overlay: {}", text(&out));
    let _mounted = OverlayMount(merged.clone());
    let store = r.store_with_busybox(&merged)?;
    r.t.write("Dockerfile", "FROM busybox\nRUN echo built > /f\n");
    let out = r
        .cmd(&store, &["build", "--progress", "plain", "-t", "ovl:1"])
        .arg(&r.t.ctx)
        .output()?;
    let all = text(&out);
    ensure!(
        !out.status.success()
            && all.contains("overlayfs refused it")
            && all.contains("fuse-overlayfs cannot use as its upper dir either"),
        "{all}"
    );
    Ok(())
}

/// `RUN --security=insecure` rootless (README "Device policy and seccomp"): no seccomp filter,
/// no masked paths, a tmpfs mounts (the user namespace's capabilities), but no extra devices
/// (as BuildKit adds none in a user namespace) and a cgroup filesystem it cannot write.
#[test]
fn rootless_insecure_step_is_unmasked_without_host_devices() -> anyhow::Result<()> {
    // One id is enough for the step (and leaves USER's ranges to the other tests).
    let Some(r) = rootless(SINGLE_USER, None)? else {
        return Ok(());
    };
    r.t.write(
        "Dockerfile",
        "FROM busybox\nRUN --security=insecure grep Seccomp: /proc/self/status; \
         echo masks=$(grep -c -E ' /(proc|sys)/(timer_list|keys|acpi|firmware|sys) ' /proc/mounts); \
         mkdir -p /m && mount -t tmpfs none /m && echo mounted; \
         echo devs=$(ls /dev | grep -c -E '^(kmsg|fuse|kvm|loop-control|loop0)$'); \
         echo cgwrite=$(mkdir /sys/fs/cgroup/x 2>/dev/null && echo yes || echo no)\n\
         RUN echo default-masks=$(grep -c -E ' /(proc|sys)/(timer_list|keys|acpi|firmware|sys) ' /proc/mounts)\n",
    );
    let out = r.build("insecure:1", &r.t.ctx, &["--allow", "security.insecure"])?;
    let s = text(&out);
    for want in ["Seccomp:\t0", "masks=0", "mounted", "devs=0", "cgwrite=no"] {
        ensure!(s.contains(want), "{want} missing from\n{s}");
    }
    // The same grep finds the masks of a default step.
    ensure!(
        s.contains("default-masks=") && !s.contains("default-masks=0"),
        "{s}"
    );
    Ok(())
}

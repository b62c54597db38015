//! `kiln run -v/--mount/--tmpfs/--read-only` and `kiln volume`, each compared with what docker
//! 20.10 (the CI dockerd) does with the same image: kiln builds it, `kiln save` hands it to
//! `docker load`, and both run the same commands. Host paths and volume names are per test
//! and per process, and every docker object a test makes is removed at its end.

use crate::harness::{TestDir, busybox_dir, stdout, text};
use anyhow::{Context as _, ensure};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Output};

/// The test image: `/data` (owned by 1000, 0750) with a file, `/evil -> /etc` and
/// `/evil2 -> ../../..`, the symlinks a hostile image uses to aim a mount at the host.
const DOCKERFILE: &str = "FROM busybox
RUN mkdir -p /data && echo image > /data/f && chown -R 1000:1000 /data && chmod 750 /data \\
 && chmod 640 /data/f && ln -s /etc/shadow /data/link && ln -s /etc /evil && ln -s ../../.. /evil2 \\
 && echo 'root:x:0:0:image-root:/root:/bin/sh' > /etc/passwd
";

pub(crate) fn docker(args: &[&str]) -> Output {
    Command::new("/usr/bin/docker")
        .args(args)
        .output()
        .expect("docker runs")
}

pub(crate) fn docker_ok(args: &[&str]) -> anyhow::Result<Output> {
    let out = docker(args);
    ensure!(out.status.success(), "docker {args:?}: {}", text(&out));
    Ok(out)
}

/// dockerd answering; a failure under REQUIRE_PRIVILEGED_TESTS=1, else a printed skip.
fn docker_ready() -> bool {
    if docker(&["version", "--format", "{{.Server.Version}}"])
        .status
        .success()
    {
        return true;
    }
    if std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        panic!("docker reference test required but dockerd does not answer");
    }
    eprintln!("skipped: dockerd is not answering");
    false
}

/// A kiln root with the test image as `IMG`, the same image loaded into dockerd as `IMG`,
/// removed from dockerd on drop.
pub(crate) struct Both {
    pub(crate) t: TestDir,
    pub(crate) img: String,
    pub(crate) tag: String,
}

impl Drop for Both {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.img]);
    }
}

pub(crate) fn setup(what: &str) -> anyhow::Result<Option<Both>> {
    setup_with(what, DOCKERFILE)
}

/// [`setup`] of the image `dockerfile` builds.
fn setup_with(what: &str, dockerfile: &str) -> anyhow::Result<Option<Both>> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(None);
    };
    if !docker_ready() {
        return Ok(None);
    }
    t.write("Dockerfile", dockerfile);
    let tag = format!("{what}-{}", std::process::id());
    let img = format!("kiln-it-vol:{tag}");
    t.build(&img, &[])?;
    let tar = t.dir.path().join("img.tar");
    t.ok(&["save", &img, "-o", tar.to_str().context("utf-8")?])?;
    docker_ok(&["load", "-i", tar.to_str().context("utf-8")?])?;
    std::fs::remove_file(&tar)?;
    Ok(Some(Both { t, img, tag }))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs `run --rm ARGS` on both; returns (kiln's output, docker's output).
fn both_run(b: &Both, args: &[&str]) -> (Output, Output) {
    let owned: Vec<String> = ["run", "--rm"]
        .iter()
        .chain(args)
        .map(|x| {
            if *x == "IMG" {
                b.img.clone()
            } else {
                (*x).to_owned()
            }
        })
        .collect();
    let a: Vec<&str> = owned.iter().map(String::as_str).collect();
    (b.t.kiln(&a), docker(&a))
}

/// `ARGS` on kiln and on docker, each output parsed as JSON: (kiln's, docker's).
pub(crate) fn both_json(
    b: &Both,
    args: &[&str],
) -> anyhow::Result<(serde_json::Value, serde_json::Value)> {
    let k = serde_json::from_slice(&b.t.ok(args)?.stdout)?;
    let d = serde_json::from_slice(&docker_ok(args)?.stdout)?;
    Ok((k, d))
}

/// (uid, gid, mode, contents) of a file.
fn file_facts(p: &Path) -> anyhow::Result<(u32, u32, u32, String)> {
    let m = std::fs::metadata(p).with_context(|| p.display().to_string())?;
    Ok((
        m.uid(),
        m.gid(),
        m.mode() & 0o7777,
        std::fs::read_to_string(p)?,
    ))
}

#[test]
fn bind_mounts_create_write_and_refuse_as_docker() -> anyhow::Result<()> {
    let Some(b) = setup("bind")? else {
        return Ok(());
    };
    let (hk, hd) = (b.t.dir.path().join("k/src"), b.t.dir.path().join("d/src"));
    // -v creates a missing host directory (root's, 0755), as docker's.
    let probe = ["-w", "/src", &b.img, "sh", "-c", "echo hi > f; pwd"];
    let vk = format!("{}:/src", s(&hk));
    let vd = format!("{}:/src", s(&hd));
    let k =
        b.t.kiln(&[&["run", "--rm", "-v", &vk][..], &probe].concat());
    let d = docker(&[&["run", "--rm", "-v", &vd][..], &probe].concat());
    for out in [&k, &d] {
        ensure!(
            out.status.success() && stdout(out) == "/src\n",
            "{}",
            text(out)
        );
    }
    let (mk, md) = (std::fs::metadata(&hk)?, std::fs::metadata(&hd)?);
    assert_eq!(
        (mk.uid(), mk.mode() & 0o7777),
        (md.uid(), md.mode() & 0o7777)
    );
    assert_eq!(file_facts(&hk.join("f"))?, file_facts(&hd.join("f"))?);
    assert_eq!(file_facts(&hk.join("f"))?.3, "hi\n");
    // A file written through the bind belongs on the host to the container's user.
    for h in [&hk, &hd] {
        std::fs::set_permissions(h, std::fs::Permissions::from_mode(0o777))?;
    }
    let vk = format!("{}:/src", s(&hk));
    let vd = format!("{}:/src", s(&hd));
    let k = b.t.kiln(&[
        "run",
        "--rm",
        "-u",
        "1234:2345",
        "-v",
        &vk,
        &b.img,
        "sh",
        "-c",
        "echo u > /src/u",
    ]);
    let d = docker(&[
        "run",
        "--rm",
        "-u",
        "1234:2345",
        "-v",
        &vd,
        &b.img,
        "sh",
        "-c",
        "echo u > /src/u",
    ]);
    ensure!(
        k.status.success() && d.status.success(),
        "{}\n{}",
        text(&k),
        text(&d)
    );
    assert_eq!(file_facts(&hk.join("u"))?, file_facts(&hd.join("u"))?);
    assert_eq!(file_facts(&hk.join("u"))?.0, 1234);
    // :ro refuses writes with EROFS (both exit 1 with the shell's message).
    let vk = format!("{}:/src:ro", s(&hk));
    let vd = format!("{}:/src:ro", s(&hd));
    let k = b.t.kiln(&[
        "run",
        "--rm",
        "-v",
        &vk,
        &b.img,
        "sh",
        "-c",
        "echo x > /src/g",
    ]);
    let d = docker(&[
        "run",
        "--rm",
        "-v",
        &vd,
        &b.img,
        "sh",
        "-c",
        "echo x > /src/g",
    ]);
    assert_eq!(k.status.code(), d.status.code());
    assert_eq!(k.status.code(), Some(1));
    for o in [&k, &d] {
        assert!(text(o).contains("Read-only file system"), "{}", text(o));
    }
    assert!(!hk.join("g").exists() && !hd.join("g").exists());
    // docker's binds add no nosuid/nodev/noexec: the host filesystem's own options.
    let probe = "grep ' /src ' /proc/mounts | cut -d' ' -f4";
    let (k, d) = both_run(&b, &["-v", &vk, "IMG", "sh", "-c", probe]);
    assert_eq!(stdout(&k), stdout(&d), "{}", text(&k));
    assert!(
        !stdout(&k).contains("nosuid") && stdout(&k).starts_with("ro,"),
        "{}",
        text(&k)
    );
    // --mount type=bind,readonly: the same.
    let mk = format!("type=bind,source={},target=/src,readonly", s(&hk));
    let k =
        b.t.kiln(&["run", "--rm", "--mount", &mk, &b.img, "cat", "/src/f"]);
    ensure!(stdout(&k) == "hi\n", "{}", text(&k));
    Ok(())
}

#[test]
fn mount_flag_errors_are_dockers() -> anyhow::Result<()> {
    let Some(b) = setup("errors")? else {
        return Ok(());
    };
    let missing = b.t.dir.path().join("missing");
    let bind_missing = format!("type=bind,source={},target=/src", s(&missing));
    let cases: Vec<(&str, String)> = vec![
        ("--mount", bind_missing),
        ("--mount", "type=bind,target=/x".into()),
        ("--mount", "type=bind,source=/tmp".into()),
        ("--mount", "type=tmpfs,source=/x,target=/t".into()),
        ("--mount", "type=foo,target=/x".into()),
        ("--mount", "type=bind,src=/tmp,dst=/x,readonly=maybe".into()),
        ("--mount", "type=bind,src=/tmp,target=/x,bogus=1".into()),
        ("--mount", "type=volume,target=/x,tmpfs-size=1".into()),
        ("-v", "rel/x:/src".into()),
        ("-v", "relx:src".into()),
        ("-v", "/a:/b:ro:z".into()),
        ("-v", "/a:/".into()),
        ("-v", "/a:/b:ro,rw".into()),
        ("-v", "/src:ro".into()),
        ("--tmpfs", "t".into()),
    ];
    for (flag, value) in &cases {
        let k = b.t.kiln(&["run", "--rm", flag, value, &b.img, "true"]);
        let d = docker(&["run", "--rm", flag, value, &b.img, "true"]);
        assert_eq!(
            k.status.code(),
            Some(125),
            "kiln {flag} {value}: {}",
            text(&k)
        );
        assert_eq!(
            d.status.code(),
            Some(125),
            "docker {flag} {value}: {}",
            text(&d)
        );
        let ours = String::from_utf8_lossy(&k.stderr);
        let msg = ours
            .trim()
            .strip_prefix("error: ")
            .with_context(|| format!("kiln {flag} {value}: {ours}"))?;
        assert!(
            text(&d).contains(msg),
            "{flag} {value}:\nkiln:   {msg}\ndocker: {}",
            text(&d)
        );
    }
    // Nothing was made for them: no host directory, no volume.
    assert!(!missing.exists());
    assert_eq!(stdout(&b.t.ok(&["volume", "ls", "-q"])?), "");
    Ok(())
}

#[test]
fn named_volumes_are_filled_from_the_image_and_outlive_the_container() -> anyhow::Result<()> {
    let Some(b) = setup("named")? else {
        return Ok(());
    };
    let vol = format!("kiln-it-{}", b.tag);
    let v = format!("{vol}:/data");
    // The copy keeps symlinks as they are (`link -> /etc/shadow` is not followed).
    let probe = "stat -c '%u %g %a %n' /data /data/f; cat /data/f; readlink /data/link; \
                 echo more > /data/g";
    let (k, d) = both_run(&b, &["-v", &v, "IMG", "sh", "-c", probe]);
    let cleanup = || {
        let _ = docker(&["rm", "-f", &format!("kiln-it-user-{}", b.tag)]);
        let _ = docker(&["volume", "rm", "-f", &vol]);
    };
    let res = (|| -> anyhow::Result<()> {
        ensure!(k.status.success(), "{}", text(&k));
        assert_eq!(stdout(&k), stdout(&d), "the copy-up differs from docker's");
        assert_eq!(
            stdout(&k),
            "1000 1000 750 /data\n1000 1000 640 /data/f\nimage\n/etc/shadow\n"
        );
        // The volume outlives its (--rm) container, with what it wrote.
        let k =
            b.t.ok(&["run", "--rm", "-v", &v, &b.img, "cat", "/data/g"])?;
        let d = docker_ok(&["run", "--rm", "-v", &v, &b.img, "cat", "/data/g"])?;
        assert_eq!((stdout(&k), stdout(&d)), ("more\n".into(), "more\n".into()));
        // inspect: docker's keys and values, the mount point aside.
        let (ki, di) = both_json(&b, &["volume", "inspect", &vol])?;
        for key in ["Driver", "Labels", "Name", "Options", "Scope"] {
            assert_eq!(ki[0][key], di[0][key], "{key}");
        }
        let keys = |v: &serde_json::Value| {
            v[0].as_object()
                .map(|m| m.keys().cloned().collect::<Vec<_>>())
        };
        assert_eq!(keys(&ki), keys(&di));
        let mp = ki[0]["Mountpoint"].as_str().context("Mountpoint")?;
        assert_eq!(std::fs::read_to_string(Path::new(mp).join("g"))?, "more\n");
        // A volume a container (even a stopped one) uses cannot be removed.
        let user = format!("kiln-it-user-{}", b.tag);
        b.t.ok(&["run", "--name", &user, "-v", &v, &b.img, "true"])?;
        docker_ok(&["run", "--name", &user, "-v", &v, &b.img, "true"])?;
        let k = b.t.kiln(&["volume", "rm", &vol]);
        let d = docker(&["volume", "rm", &vol]);
        assert_eq!((k.status.code(), d.status.code()), (Some(1), Some(1)));
        let kid = stdout(&b.t.ok(&["inspect", "-f", "{{.Id}}", &user])?);
        let did = stdout(&docker_ok(&["inspect", "-f", "{{.Id}}", &user])?);
        assert!(
            text(&k).contains(&format!(
                "remove {vol}: volume is in use - [{}]",
                kid.trim()
            )),
            "{}",
            text(&k)
        );
        assert!(
            text(&d).contains(&format!(
                "remove {vol}: volume is in use - [{}]",
                did.trim()
            )),
            "{}",
            text(&d)
        );
        // inspect's Mounts of the container: docker's row, the source aside.
        let (km, dm) = both_json(&b, &["inspect", "-f", "{{json .Mounts}}", &user])?;
        for key in [
            "Type",
            "Name",
            "Destination",
            "Driver",
            "Mode",
            "RW",
            "Propagation",
        ] {
            assert_eq!(km[0][key], dm[0][key], "Mounts {key}");
        }
        b.t.ok(&["rm", &user])?;
        docker_ok(&["rm", &user])?;
        // Then it goes; a second rm finds nothing, in docker's words.
        for out in [
            b.t.kiln(&["volume", "rm", &vol]),
            docker(&["volume", "rm", &vol]),
        ] {
            ensure!(
                out.status.success() && stdout(&out) == format!("{vol}\n"),
                "{}",
                text(&out)
            );
        }
        let k = b.t.kiln(&["volume", "rm", &vol]);
        let d = docker(&["volume", "rm", &vol]);
        assert_eq!((k.status.code(), d.status.code()), (Some(1), Some(1)));
        assert!(
            text(&k).contains(&format!("No such volume: {vol}")),
            "{}",
            text(&k)
        );
        assert!(
            text(&d).contains(&format!("No such volume: {vol}")),
            "{}",
            text(&d)
        );
        Ok(())
    })();
    cleanup();
    res
}

/// The volume name behind the mount at `target`, from /proc/self/mountinfo's root field
/// (`.../volumes/NAME/_data`).
fn volume_behind(mountinfo: &str, target: &str) -> Option<String> {
    mountinfo.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&target))
            .then(|| {
                f.get(3)?
                    .strip_suffix("/_data")?
                    .rsplit('/')
                    .next()
                    .map(str::to_owned)
            })
            .flatten()
    })
}

#[test]
fn anonymous_volumes_go_with_rm_and_rm_v_as_docker() -> anyhow::Result<()> {
    let Some(b) = setup("anon")? else {
        return Ok(());
    };
    // --rm: the anonymous volume goes with the container.
    let (k, d) = both_run(&b, &["-v", "/anon", "IMG", "cat", "/proc/self/mountinfo"]);
    ensure!(
        k.status.success() && d.status.success(),
        "{}\n{}",
        text(&k),
        text(&d)
    );
    let kv = volume_behind(&stdout(&k), "/anon").context("kiln's /anon")?;
    let dv = volume_behind(&stdout(&d), "/anon").context("docker's /anon")?;
    assert_eq!((kv.len(), dv.len()), (64, 64));
    assert_eq!(b.t.kiln(&["volume", "inspect", &kv]).status.code(), Some(1));
    assert_eq!(docker(&["volume", "inspect", &dv]).status.code(), Some(1));
    // Without --rm it stays with the stopped container; `rm -v` takes it.
    let name = format!("kiln-it-anon-{}", b.tag);
    let k = b.t.ok(&[
        "run",
        "--name",
        &name,
        "-v",
        "/anon",
        &b.img,
        "cat",
        "/proc/self/mountinfo",
    ])?;
    let d = docker_ok(&[
        "run",
        "--name",
        &name,
        "-v",
        "/anon",
        &b.img,
        "cat",
        "/proc/self/mountinfo",
    ])?;
    let kv = volume_behind(&stdout(&k), "/anon").context("kiln's /anon")?;
    let dv = volume_behind(&stdout(&d), "/anon").context("docker's /anon")?;
    let res = (|| -> anyhow::Result<()> {
        b.t.ok(&["volume", "inspect", &kv])?;
        docker_ok(&["volume", "inspect", &dv])?;
        let (km, dm) = both_json(&b, &["inspect", "-f", "{{json .Mounts}}", &name])?;
        for key in ["Type", "Destination", "Driver", "Mode", "RW", "Propagation"] {
            assert_eq!(km[0][key], dm[0][key], "Mounts {key}");
        }
        assert_eq!(km[0]["Name"], kv.as_str());
        b.t.ok(&["rm", "-v", &name])?;
        docker_ok(&["rm", "-v", &name])?;
        assert_eq!(b.t.kiln(&["volume", "inspect", &kv]).status.code(), Some(1));
        assert_eq!(docker(&["volume", "inspect", &dv]).status.code(), Some(1));
        Ok(())
    })();
    let _ = docker(&["rm", "-fv", &name]);
    res?;
    // -d --rm: the supervisor takes the anonymous volume when the container exits.
    let id = stdout(&b.t.ok(&["run", "-d", "--rm", "-v", "/anon", &b.img, "sleep", "1"])?);
    let km: serde_json::Value = serde_json::from_slice(
        &b.t.ok(&["inspect", "-f", "{{json .Mounts}}", id.trim()])?
            .stdout,
    )?;
    let vol = km[0]["Name"].as_str().context("Name")?.to_owned();
    b.t.ok(&["volume", "inspect", &vol])?;
    for _ in 0..100 {
        if !b.t.kiln(&["inspect", id.trim()]).status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        b.t.kiln(&["volume", "inspect", &vol]).status.code(),
        Some(1)
    );
    Ok(())
}

#[test]
fn read_only_root_and_tmpfs_options_match_docker() -> anyhow::Result<()> {
    let Some(b) = setup("ro")? else {
        return Ok(());
    };
    // The root refuses writes; /dev/shm and /dev stay writable; /tmp is not made a tmpfs.
    let probe = "touch /x 2>&1; touch /tmp/x 2>&1; echo > /dev/shm/x && echo shm; \
                 grep -c ' /tmp ' /proc/mounts";
    let (k, d) = both_run(&b, &["--read-only", "IMG", "sh", "-c", probe]);
    assert_eq!(
        stdout(&k),
        stdout(&d),
        "kiln: {}\ndocker: {}",
        text(&k),
        text(&d)
    );
    assert!(
        stdout(&k).contains("/x: Read-only file system"),
        "{}",
        text(&k)
    );
    // --tmpfs with size and mode, and --mount type=tmpfs: the same options and mode.
    let probe = "touch /tmp/x /t/x && grep -E ' /(tmp|t) ' /proc/mounts | cut -d' ' -f2-4; \
                 stat -c '%a' /tmp /t";
    let (k, d) = both_run(
        &b,
        &[
            "--read-only",
            "--tmpfs",
            "/tmp:size=1m,mode=1770",
            "--mount",
            "type=tmpfs,target=/t,tmpfs-size=2097152,tmpfs-mode=0700",
            "IMG",
            "sh",
            "-c",
            probe,
        ],
    );
    ensure!(k.status.success(), "{}", text(&k));
    let sorted = |o: &Output| {
        let mut l: Vec<String> = stdout(o).lines().map(str::to_owned).collect();
        l.sort();
        l
    };
    assert_eq!(
        sorted(&k),
        sorted(&d),
        "kiln: {}\ndocker: {}",
        text(&k),
        text(&d)
    );
    assert!(
        sorted(&k)
            .contains(&"/t tmpfs rw,nosuid,nodev,noexec,relatime,size=2048k,mode=700".to_owned())
    );
    // The working directory is made before the root turns read-only, as docker makes it.
    let (k, d) = both_run(&b, &["--read-only", "-w", "/new/dir", "IMG", "pwd"]);
    assert_eq!(
        (stdout(&k), stdout(&d)),
        ("/new/dir\n".into(), "/new/dir\n".into()),
        "{}",
        text(&k)
    );
    let ro = stdout(&b.t.ok(&["run", "--name", "ro", "--read-only", &b.img, "true"])?);
    assert_eq!(ro, "");
    assert_eq!(
        stdout(&b.t.ok(&["inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", "ro"])?),
        "true\n"
    );
    Ok(())
}

#[test]
fn hostile_image_symlinks_keep_mounts_inside_the_container() -> anyhow::Result<()> {
    let Some(b) = setup("hostile")? else {
        return Ok(());
    };
    let mark = format!("kiln-it-hostile-{}", b.tag);
    // /evil -> /etc: the bind lands on the container's /etc, never the host's.
    let (hk, hd) = (b.t.dir.path().join("hk"), b.t.dir.path().join("hd"));
    let probe = format!("echo x > /evil/{mark}; ls /etc/{mark}");
    let vk = format!("{}:/evil", s(&hk));
    let vd = format!("{}:/evil", s(&hd));
    let k = b.t.kiln(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &vk,
        &b.img,
        "sh",
        "-c",
        &probe,
    ]);
    let d = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &vd,
        &b.img,
        "sh",
        "-c",
        &probe,
    ]);
    assert_eq!(
        stdout(&k),
        stdout(&d),
        "kiln: {}\ndocker: {}",
        text(&k),
        text(&d)
    );
    assert_eq!(stdout(&k), format!("/etc/{mark}\n"));
    assert!(hk.join(&mark).is_file() && hd.join(&mark).is_file());
    assert!(
        !Path::new("/etc").join(&mark).exists(),
        "a bind reached the host's /etc"
    );
    // /evil2 -> ../../..: `..` stops at the container's root.
    let vk = format!("{}:/evil2/mnt/x", s(&hk));
    let k =
        b.t.ok(&["run", "--rm", "-v", &vk, &b.img, "ls", "/mnt/x"])?;
    assert!(stdout(&k).contains(&mark), "{}", text(&k));
    // A volume filled through /evil gets the image's /etc, not the host's.
    let vol = format!("{mark}-vol");
    let v = format!("{vol}:/evil");
    let k =
        b.t.ok(&["run", "--rm", "--network", "none", "-v", &v, &b.img, "true"])?;
    drop(k);
    let mp = stdout(&b.t.ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", &vol])?);
    let passwd = std::fs::read_to_string(Path::new(mp.trim()).join("passwd"))?;
    assert_eq!(passwd, "root:x:0:0:image-root:/root:/bin/sh\n");
    Ok(())
}

#[test]
fn rootless_binds_and_volumes_work_under_the_users_root() -> anyhow::Result<()> {
    use crate::rootless::{RANGE, USER, rootless};
    let Some(r) = rootless(USER, Some(RANGE))? else {
        return Ok(());
    };
    let run = |args: &[&str]| -> anyhow::Result<Output> {
        let out = r.cmd(&r.t.root, args).output()?;
        ensure!(out.status.success(), "kiln {args:?}: {}", text(&out));
        Ok(out)
    };
    // A directory the user owns, bound: the container's root is the user on the host.
    let h = r.home.join("src");
    std::fs::create_dir(&h)?;
    std::os::unix::fs::chown(&h, Some(r.uid), Some(r.gid))?;
    let v = format!("{}:/src", s(&h));
    let out = run(&[
        "run",
        "--rm",
        "-v",
        &v,
        "-w",
        "/src",
        "busybox",
        "sh",
        "-c",
        "echo hi > f; cat f",
    ])?;
    assert_eq!(stdout(&out), "hi\n");
    let m = std::fs::metadata(h.join("f"))?;
    assert_eq!((m.uid(), m.gid()), (r.uid, r.gid));
    // A file only root may read is refused, not exposed.
    let v = "/etc/shadow:/shadow".to_owned();
    let out = r
        .cmd(
            &r.t.root,
            &["run", "--rm", "-v", &v, "busybox", "cat", "/shadow"],
        )
        .output()?;
    assert!(!out.status.success(), "{}", text(&out));
    // A named volume lives under the user's KILN_ROOT and keeps what was written.
    run(&[
        "run",
        "--rm",
        "-v",
        "rl:/v",
        "busybox",
        "sh",
        "-c",
        "echo kept > /v/f",
    ])?;
    let mp = stdout(&run(&["volume", "inspect", "-f", "{{.Mountpoint}}", "rl"])?);
    assert!(Path::new(mp.trim()).starts_with(&r.t.root), "{mp}");
    assert_eq!(
        std::fs::read_to_string(Path::new(mp.trim()).join("f"))?,
        "kept\n"
    );
    let out = run(&["run", "--rm", "-v", "rl:/v", "busybox", "cat", "/v/f"])?;
    assert_eq!(stdout(&out), "kept\n");
    run(&["volume", "rm", "rl"])?;
    crate::rootless::end_session(&r)
}

#[test]
fn image_volumes_become_anonymous_volumes_as_docker() -> anyhow::Result<()> {
    let dockerfile = "FROM busybox\nRUN mkdir /vol && echo img > /vol/f\nVOLUME /vol\n";
    let Some(b) = setup_with("imgvol", dockerfile)? else {
        return Ok(());
    };
    let name = format!("kiln-it-imgvol-{}", b.tag);
    let k = b.t.ok(&[
        "run",
        "--name",
        &name,
        &b.img,
        "sh",
        "-c",
        "cat /vol/f; echo c > /vol/g",
    ])?;
    let d = docker_ok(&[
        "run",
        "--name",
        &name,
        &b.img,
        "sh",
        "-c",
        "cat /vol/f; echo c > /vol/g",
    ])?;
    let res = (|| -> anyhow::Result<()> {
        assert_eq!((stdout(&k), stdout(&d)), ("img\n".into(), "img\n".into()));
        let (km, dm) = both_json(&b, &["inspect", "-f", "{{json .Mounts}}", &name])?;
        for key in ["Type", "Destination", "Driver", "Mode", "RW", "Propagation"] {
            assert_eq!(km[0][key], dm[0][key], "Mounts {key}");
        }
        let vol = km[0]["Name"].as_str().context("Name")?.to_owned();
        let mp = stdout(&b.t.ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", &vol])?);
        assert_eq!(
            std::fs::read_to_string(Path::new(mp.trim()).join("g"))?,
            "c\n"
        );
        // A flag on the same path replaces the image's volume.
        let h = b.t.dir.path().join("h");
        let v = format!("{}:/vol", s(&h));
        let (k, d) = both_run(&b, &["-v", &v, "IMG", "sh", "-c", "ls /vol | wc -l"]);
        assert_eq!((stdout(&k), stdout(&d)), ("0\n".into(), "0\n".into()));
        b.t.ok(&["rm", "-v", &name])?;
        assert_eq!(
            b.t.kiln(&["volume", "inspect", &vol]).status.code(),
            Some(1)
        );
        Ok(())
    })();
    let _ = docker(&["rm", "-fv", &name]);
    res
}

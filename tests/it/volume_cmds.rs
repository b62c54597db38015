//! `kiln volume create|ls|inspect|rm|prune` and `system prune --volumes`/`system df`, compared
//! with docker 20.10 (the CI dockerd) through `run_volumes`'s shared image; and containers
//! that keep their mounts across `kiln start`.

use crate::harness::{busybox_dir, stdout, text};
use crate::run_volumes::{both_json, docker, docker_ok, setup};
use anyhow::{Context as _, ensure};
use std::path::Path;
use std::process::Output;

#[test]
fn volume_commands_print_as_docker() -> anyhow::Result<()> {
    let Some(b) = setup("cmds")? else {
        return Ok(());
    };
    let label = format!("kiln-it={}", b.tag);
    let vol = format!("kiln-it-cmd-{}", b.tag);
    let cleanup = || {
        let _ = docker(&["volume", "rm", "-f", &vol]);
    };
    let res = (|| -> anyhow::Result<()> {
        for out in [
            b.t.kiln(&["volume", "create", "--label", &label, &vol]),
            docker(&["volume", "create", "--label", &label, &vol]),
        ] {
            ensure!(stdout(&out) == format!("{vol}\n"), "{}", text(&out));
        }
        let (ki, di) = both_json(&b, &["volume", "inspect", &vol])?;
        for key in ["Driver", "Labels", "Name", "Options", "Scope"] {
            assert_eq!(ki[0][key], di[0][key], "{key}");
        }
        // A missing name among found ones: the found ones printed, exit 1.
        let missing = format!("{vol}-missing");
        let k = b.t.kiln(&["volume", "inspect", &vol, &missing]);
        let d = docker(&["volume", "inspect", &vol, &missing]);
        assert_eq!((k.status.code(), d.status.code()), (Some(1), Some(1)));
        let count = |o: &Output| {
            serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).map(|v| v.len())
        };
        assert_eq!((count(&k)?, count(&d)?), (1, 1));
        assert!(
            text(&k).contains(&format!("No such volume: {missing}")),
            "{}",
            text(&k)
        );
        // ls: docker's table; -q and filters.
        let filter = format!("label={label}");
        let k = b.t.ok(&["volume", "ls", "-f", &filter])?;
        let d = docker_ok(&["volume", "ls", "-f", &filter])?;
        assert_eq!(stdout(&k), stdout(&d));
        assert_eq!(
            stdout(&k),
            format!("DRIVER    VOLUME NAME\nlocal     {vol}\n")
        );
        let k =
            b.t.ok(&["volume", "ls", "-q", "-f", "dangling=true", "-f", &filter])?;
        let d = docker_ok(&["volume", "ls", "-q", "-f", "dangling=true", "-f", &filter])?;
        assert_eq!(
            (stdout(&k), stdout(&d)),
            (format!("{vol}\n"), format!("{vol}\n"))
        );
        // Names docker's local driver refuses, in its words.
        for bad in ["bad/name", "a"] {
            let k = b.t.kiln(&["volume", "create", bad]);
            let d = docker(&["volume", "create", bad]);
            assert_eq!((k.status.code(), d.status.code()), (Some(1), Some(1)));
            let msg = String::from_utf8_lossy(&k.stderr);
            let msg = msg.trim().strip_prefix("error: ").context("kiln's error")?;
            assert!(text(&d).contains(msg), "kiln: {msg}\ndocker: {}", text(&d));
        }
        // prune (restricted to this test's label on the shared dockerd): what it removed
        // and the space, as docker prints them.
        let mp = stdout(&b.t.ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", &vol])?);
        std::fs::write(Path::new(mp.trim()).join("f"), "12345")?;
        docker_ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{vol}:/v"),
            &b.img,
            "sh",
            "-c",
            "printf 12345 > /v/f",
        ])?;
        let k = b.t.ok(&["volume", "prune", "-f", "--filter", &filter])?;
        let d = docker_ok(&["volume", "prune", "-f", "--filter", &filter])?;
        assert_eq!(stdout(&k), stdout(&d));
        assert_eq!(
            stdout(&k),
            format!("Deleted Volumes:\n{vol}\n\nTotal reclaimed space: 5B\n")
        );
        assert_eq!(stdout(&b.t.ok(&["volume", "ls", "-q"])?), "");
        Ok(())
    })();
    cleanup();
    res
}

#[test]
fn started_containers_keep_their_mounts() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let h = t.dir.path().join("log");
    let v = format!("{}:/log", h.display());
    t.ok(&[
        "run",
        "--name",
        "again",
        "-v",
        &v,
        "-v",
        "keep:/k",
        "busybox",
        "sh",
        "-c",
        "echo run >> /log/l; echo k >> /k/l",
    ])?;
    t.ok(&["start", "again"])?;
    // `start` returns once it runs: wait for it to exit.
    for _ in 0..100 {
        let st = stdout(&t.ok(&["inspect", "-f", "{{.State.Status}}", "again"])?);
        if st.trim() == "exited" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(std::fs::read_to_string(h.join("l"))?, "run\nrun\n");
    let mp = stdout(&t.ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "keep"])?);
    assert_eq!(
        std::fs::read_to_string(Path::new(mp.trim()).join("l"))?,
        "k\nk\n"
    );
    let df = stdout(&t.ok(&["system", "df"])?);
    let row = df.lines().find(|l| l.starts_with("Local Volumes"));
    let cols: Vec<&str> = row
        .context("Local Volumes row")?
        .split_whitespace()
        .collect();
    assert_eq!(cols[2..], ["1", "4B"], "{df}");
    // `system prune --volumes` keeps what a container uses, and takes it once the container
    // is gone.
    t.ok(&["system", "prune", "-f", "--volumes"])?;
    t.ok(&["volume", "inspect", "keep"])?;
    t.ok(&["rm", "again"])?;
    let out = t.ok(&["system", "prune", "-f", "--volumes"])?;
    assert!(
        stdout(&out).contains("Deleted Volumes:\nkeep\n"),
        "{}",
        text(&out)
    );
    Ok(())
}

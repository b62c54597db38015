//! `DeviceCgroup::enter` for real, on both cgroup versions: a forked child enters a test
//! cgroup (v1: the `devices` controller; v2: the unified hierarchy, which on a hybrid host has
//! no controllers but still runs device programs) and execs a shell that probes devices.
//! This binary is single-threaded, so forking here is sound.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use executor::devices::DeviceCgroup;

use super::fixture::TestFn;

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "devices_v1_enter_confines_the_process",
        devices_v1_enter_confines_the_process,
    ),
    (
        "devices_v2_enter_confines_the_process",
        devices_v2_enter_confines_the_process,
    ),
];

fn openable_block_device() -> Result<(u32, u32)> {
    for e in std::fs::read_dir("/dev")?.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.file_type().is_block_device() && std::fs::File::open(e.path()).is_ok() {
            return Ok((rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev())));
        }
    }
    anyhow::bail!("no block device root can open on the host")
}

/// Forks; the child enters `cg` and runs a probe shell. Returns the probe's output.
fn probe_in(cg: &DeviceCgroup, dir: &Path) -> Result<String> {
    let (major, minor) = openable_block_device()?;
    let node = dir.join("disk");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &node,
        rustix::fs::FileType::BlockDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rustix::fs::makedev(major, minor),
    )?;
    let out = dir.join("out");
    let script = format!(
        "{{ true </dev/null; }} 2>/dev/null && echo null=ok || echo null=denied
         {{ true <{node}; }} 2>/dev/null && echo disk=open || echo disk=denied",
        node = node.display()
    );
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    match executor::sys::fork()? {
        executor::sys::Forked::Child => {
            let code = match cg.enter(&own) {
                Ok(()) => std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("exec >{} 2>&1; {script}", out.display()))
                    .status()
                    .map(|s| s.code().unwrap_or(3))
                    .unwrap_or(4),
                Err(e) => {
                    let _ = std::fs::write(&out, format!("enter: {e:#?}"));
                    5
                }
            };
            executor::sys::exit_immediately(code)
        }
        executor::sys::Forked::Parent(pid) => {
            let pid = rustix::process::Pid::from_raw(pid).context("pid")?;
            let (_, st) =
                rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())?
                    .context("status")?;
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            ensure!(st.exit_status() == Some(0), "child {st:?}: {text}");
            Ok(text)
        }
    }
}

const CONFINED: &str = "null=ok\ndisk=denied\n";

/// Runs the probe confined by `cg`, removes the cgroups `parent/sandbox` and `parent` it made
/// under `mount` (whatever the outcome), and checks that only /dev/null was allowed.
fn probe_and_remove(cg: &DeviceCgroup, mount: &Path, parent: &str) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = probe_in(cg, tmp.path());
    let _ = std::fs::remove_dir(mount.join(parent).join("sandbox"));
    let _ = std::fs::remove_dir(mount.join(parent));
    ensure!(out? == CONFINED);
    Ok(())
}

fn devices_v1_enter_confines_the_process() -> Result<()> {
    let host = DeviceCgroup::host()?;
    let DeviceCgroup::V1 { mount, .. } = host else {
        anyhow::bail!("this test needs the v1 devices controller (hybrid host), found {host:?}");
    };
    let parent = format!("kiln-test-{}", std::process::id());
    let cg = DeviceCgroup::V1 {
        mount: mount.clone(),
        path: Path::new(&parent).join("sandbox"),
    };
    probe_and_remove(&cg, &mount, &parent)
}

fn devices_v2_enter_confines_the_process() -> Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let (mount, _, _) = executor::cgroup::cgroup_mounts(&mountinfo)
        .find(|m| m.1 == "cgroup2")
        .context("no cgroup2 hierarchy mounted")?;
    let parent = format!("kiln-test-{}", std::process::id());
    let cg = DeviceCgroup::V2 {
        mount: mount.clone(),
        parent: parent.clone().into(),
    };
    probe_and_remove(&cg, &mount, &parent)
}

//! `executor::container` driven as a library, without the cli: a container created, run in
//! the foreground and removed, with a real cgroup and a real sandbox (this test binary
//! re-executed as `__init`).

use anyhow::{Context as _, Result, ensure};
use executor::container::{self, Status, control, network::Mode, spec};

use super::fixture::{TestFn, busybox_root};

pub const TESTS: &[(&str, TestFn)] = &[(
    "created_container_runs_attached_and_leaves_only_its_exited_state",
    created_container_runs_attached_and_leaves_only_its_exited_state,
)];

/// `create` then `run_attached`, as `kiln run --pids-limit 64 --network none` does: the
/// sandbox runs in the cgroup handed to it (its command exits 3 only there), its exit status
/// comes back, the cgroup is gone after the run and the state says exited with that status; `rm`
/// then removes the directory and gives the name back.
fn created_container_runs_attached_and_leaves_only_its_exited_state() -> Result<()> {
    let root = tempfile::tempdir()?;
    let containers = root.path().join("containers");
    let created = container::create(container::Request {
        containers: containers.clone(),
        name: Some("lib-run".to_owned()),
        image_ref: "busybox".to_owned(),
        image: spec::Image {
            // 3 once in the container's cgroup (named by its id; the host name is the id's
            // first 12 digits; no cgroup namespace, so /proc/self/cgroup shows the path).
            cmd: Some(vec![
                "sh".to_owned(),
                "-c".to_owned(),
                "grep -q \"$(hostname)\" /proc/self/cgroup && exit 3; cat /proc/self/cgroup; exit 4"
                    .to_owned(),
            ]),
            env: vec!["PATH=/bin".to_owned()],
            lowers: vec![busybox_root().to_path_buf()],
            ..Default::default()
        },
        stop_signal: None,
        overrides: spec::Overrides::default(),
        security: Default::default(),
        options: Default::default(),
        network: Mode::None,
        ports: Vec::new(),
        limits: executor::cgroup::Limits {
            pids: Some(64),
            ..Default::default()
        },
        apply_limits: true,
        auto_remove: false,
        detach: false,
    })
    .context("create")?;
    let id = created.id().to_owned();
    let cgroups = created.state().cgroups.clone();
    ensure!(!cgroups.is_empty(), "a pids limit makes a cgroup");
    ensure!(
        cgroups
            .iter()
            .all(|d| d.ends_with(&id) || d.ends_with(format!("kiln-{id}"))),
        "named by the id: {cgroups:?}"
    );
    ensure!(cgroups.iter().all(|d| d.is_dir()), "{cgroups:?}");
    let exe = std::env::current_exe()?;
    let status = created.run_attached(&exe, false).context("run")?;
    ensure!(status.code() == Some(3), "{status:?}");
    ensure!(
        cgroups.iter().all(|d| !d.exists()),
        "cgroup left: {cgroups:?}"
    );
    let (dir, s) = container::state::find(&containers, "lib-run")?;
    ensure!(s.id == id && s.status == Status::Exited, "{s:?}");
    ensure!(s.exit_code == Some(3), "{s:?}");
    control::remove(&containers, "lib-run", false)?;
    ensure!(!dir.exists(), "{} left", dir.display());
    ensure!(
        container::state::lookup(&containers, "lib-run")?.is_none(),
        "still found"
    );
    Ok(())
}

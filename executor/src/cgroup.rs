//! Resource limits of containers (`--memory`, `--cpus`, `--pids-limit`) through cgroups, v1
//! or v2.
//!
//! [`Hierarchy::parse`] reads `/proc/self/mountinfo` text and finds where the controllers are:
//! on a hybrid host (v1 controllers under `/sys/fs/cgroup/<controller>` plus an empty unified
//! hierarchy, as on this project's machines) the v1 controllers win, because the v2 tree has
//! none of them; on a pure v2 host the unified tree is used. [`plan`] turns limits into the
//! directories to create and the files to write (pure, tested without root); [`Cgroup::create`]
//! executes it. A container joins with [`join`] (its pid into every `cgroup.procs`), done by
//! the sandbox process itself before it forks, so nothing escapes the limits.
//!
//! Layout: `<controller mount>/kiln/<container id>` on v1 (one directory per controller that a
//! limit needs), `<unified mount>/kiln/<container id>` on v2 (with `+memory +cpu +pids` enabled
//! in the `subtree_control` of the root and of `kiln`). As root, a container also gets a
//! cgroup of its own in every other hierarchy, limited or not, as docker's ([`everywhere`]:
//! `kiln-<id>` below kiln's own cgroup on v1), so that its read-only /sys/fs/cgroup shows its
//! own cgroups. Rootless, the limits' layout lives
//! below the cgroup v2 subtree delegated to the user ([`delegate`]).

pub mod delegate;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors from cgroup setup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file or directory could not be used.
    #[error("cgroup {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No cgroup filesystem is mounted at all.
    #[error("no cgroup filesystem is mounted")]
    NoHierarchy,
    /// No hierarchy offers a controller a limit needs.
    #[error("no cgroup hierarchy with the {controller} controller is mounted")]
    MissingController {
        /// `memory`, `cpu` or `pids`.
        controller: &'static str,
    },
    /// Rootless: the delegated subtree does not offer a controller a limit needs.
    #[error("the {controller} controller is not delegated to {dir} (see its cgroup.controllers)")]
    NotDelegated {
        /// `memory`, `cpu` or `pids`.
        controller: &'static str,
        /// The delegated directory.
        dir: PathBuf,
    },
}

type Result<T> = std::result::Result<T, CgroupError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a container may use. `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory in bytes (`--memory`).
    pub memory: Option<u64>,
    /// CPU time in thousandths of a CPU (`--cpus 1.5` is 1500).
    pub millicpus: Option<u64>,
    /// Number of processes and threads (`--pids-limit`).
    pub pids: Option<u64>,
}

impl Limits {
    /// True when nothing is limited (no cgroup is needed).
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    fn controllers(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.memory.is_some() {
            c.push("memory");
        }
        if self.millicpus.is_some() {
            c.push("cpu");
        }
        if self.pids.is_some() {
            c.push("pids");
        }
        c
    }
}

/// The CFS period kiln uses, as docker does (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Where the controllers live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: controller name to its mount point.
    V1(BTreeMap<String, PathBuf>),
    /// cgroup v2: the unified mount point.
    V2(PathBuf),
}

impl Hierarchy {
    /// The hierarchy described by `/proc/self/mountinfo` text: v1 when any of the memory, cpu
    /// or pids controllers is mounted as v1, else the cgroup2 mount. None when neither exists.
    pub fn parse(mountinfo: &str) -> Option<Hierarchy> {
        let mut v1 = BTreeMap::new();
        let mut v2 = None;
        for (mount_point, fstype, opts) in cgroup_mounts(mountinfo) {
            if fstype == "cgroup" {
                for o in opts.split(',') {
                    if matches!(o, "memory" | "cpu" | "pids") {
                        v1.insert(o.to_string(), mount_point.clone());
                    }
                }
            } else if v2.is_none() {
                v2 = Some(mount_point);
            }
        }
        if !v1.is_empty() {
            Some(Hierarchy::V1(v1))
        } else {
            v2.map(Hierarchy::V2)
        }
    }

    /// The host's hierarchy, from `/proc/self/mountinfo`. None when no cgroup fs is mounted.
    pub fn host() -> Option<Hierarchy> {
        Hierarchy::parse(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
    }
}

/// The `cgroup` and `cgroup2` mounts of `/proc/self/mountinfo` text, in order: mount point,
/// filesystem type and super options (where v1 names its controllers).
pub fn cgroup_mounts(mountinfo: &str) -> impl Iterator<Item = (PathBuf, &str, &str)> {
    mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        let mut r = right.split(' ');
        let (fstype, _source, opts) = (r.next()?, r.next(), r.next().unwrap_or(""));
        matches!(fstype, "cgroup" | "cgroup2").then(|| (PathBuf::from(mount_point), fstype, opts))
    })
}

/// The process's own cgroup directory in each hierarchy of `mountinfo` (`/proc/self/mountinfo`
/// text), from `self_cgroup` (`/proc/self/cgroup` text): `(mount point, directory)`.
/// Hierarchies the process has no line for are left out, and so is cgroup2 where v1
/// hierarchies are mounted (a hybrid host: runc's v1 containers see only those).
pub fn own_dirs(mountinfo: &str, self_cgroup: &str) -> Vec<(PathBuf, PathBuf)> {
    let v1 = cgroup_mounts(mountinfo).any(|(_, fstype, _)| fstype == "cgroup");
    cgroup_mounts(mountinfo)
        .filter(|(_, fstype, _)| !v1 || *fstype == "cgroup")
        .filter_map(|(mount, fstype, opts)| {
            let dir = crate::cgparent::under(&mount, own_path(fstype, opts, self_cgroup)?);
            Some((mount, dir))
        })
        .collect()
}

/// The path in `self_cgroup` (`/proc/self/cgroup` text) of the hierarchy mounted with
/// `fstype` and super options `opts`: the line naming its controllers, or the `0::` line of
/// a cgroup2.
fn own_path<'a>(fstype: &str, opts: &str, self_cgroup: &'a str) -> Option<&'a str> {
    self_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let matches = match fstype {
            "cgroup2" => controllers.is_empty(),
            _ => {
                !controllers.is_empty()
                    && controllers
                        .split(',')
                        .all(|c| opts.split(',').any(|o| o == c))
            }
        };
        matches.then_some(path)
    })
}

/// What [`Cgroup::create`] does: directories to create (in order), then files to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The container's cgroup directories (what it joins and what removal deletes).
    pub dirs: Vec<PathBuf>,
    /// `(file, contents)`, written in order after the directories exist.
    pub writes: Vec<(PathBuf, String)>,
}

/// The plan for container `name` with `limits` in hierarchy `h`. Fails when a limit needs a
/// controller `h` lacks (v1 only: on v2 the kernel reports it when the file is written).
pub fn plan(h: &Hierarchy, name: &str, limits: &Limits) -> Result<Plan> {
    let mut p = Plan::default();
    if limits.is_empty() {
        return Ok(p);
    }
    let mut settings: Vec<(&'static str, &'static str, String)> = Vec::new();
    if let Some(m) = limits.memory {
        settings.push((
            "memory",
            if matches!(h, Hierarchy::V1(_)) {
                "memory.limit_in_bytes"
            } else {
                "memory.max"
            },
            m.to_string(),
        ));
    }
    if let Some(c) = limits.millicpus {
        let quota = (c * CPU_PERIOD_US / 1000).max(1000);
        match h {
            Hierarchy::V1(_) => {
                settings.push(("cpu", "cpu.cfs_period_us", CPU_PERIOD_US.to_string()));
                settings.push(("cpu", "cpu.cfs_quota_us", quota.to_string()));
            }
            Hierarchy::V2(_) => {
                settings.push(("cpu", "cpu.max", format!("{quota} {CPU_PERIOD_US}")));
            }
        }
    }
    if let Some(n) = limits.pids {
        settings.push(("pids", "pids.max", n.to_string()));
    }
    match h {
        Hierarchy::V1(mounts) => {
            for controller in limits.controllers() {
                let mount = mounts
                    .get(controller)
                    .ok_or(CgroupError::MissingController { controller })?;
                let dir = mount.join("kiln").join(name);
                if !p.dirs.contains(&dir) {
                    p.dirs.push(dir);
                }
            }
            for (controller, file, value) in settings {
                let mount = mounts
                    .get(controller)
                    .ok_or(CgroupError::MissingController { controller })?;
                p.writes
                    .push((mount.join("kiln").join(name).join(file), value));
            }
        }
        Hierarchy::V2(root) => {
            let enable = limits
                .controllers()
                .iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(" ");
            let dir = root.join("kiln").join(name);
            p.dirs.push(dir.clone());
            p.writes
                .push((root.join("cgroup.subtree_control"), enable.clone()));
            p.writes
                .push((root.join("kiln").join("cgroup.subtree_control"), enable));
            for (_, file, value) in settings {
                p.writes.push((dir.join(file), value));
            }
        }
    }
    Ok(p)
}

/// A container's own cgroup in every hierarchy, as docker gives each container one: `plan`
/// (its limits) plus, in each v1 hierarchy of `mountinfo` the plan has no directory in (and a
/// hybrid host's empty cgroup2 one, which runc joins too) but the `devices` one (the sandbox
/// stays in the device policy's cgroup there), `kiln-<name>` below the cgroup kiln runs in
/// (`self_cgroup`, `/proc/self/cgroup` text), so that whatever limits kiln's caller has keep
/// holding. On v2, the unified `kiln/<name>` with memory, cpu and pids enabled. `cpuset` is
/// the `cpuset.cpus` and `cpuset.mems` of kiln's own cpuset cgroup, copied to the new one,
/// since a new v1 cpuset cgroup has none and takes no process until it has.
pub fn everywhere(
    mut p: Plan,
    h: &Hierarchy,
    mountinfo: &str,
    self_cgroup: &str,
    name: &str,
    cpuset: Option<(&str, &str)>,
) -> Plan {
    match h {
        Hierarchy::V1(_) => {
            for (mount, fstype, opts) in cgroup_mounts(mountinfo) {
                let has = |c: &str| fstype == "cgroup" && opts.split(',').any(|o| o == c);
                if has("devices") || p.dirs.iter().any(|d| d.starts_with(&mount)) {
                    continue;
                }
                let Some(own) = own_path(fstype, opts, self_cgroup) else {
                    continue;
                };
                let dir = crate::cgparent::under(&mount, own).join(format!("kiln-{name}"));
                p.dirs.push(dir.clone());
                if let (true, Some((cpus, mems))) = (has("cpuset"), cpuset) {
                    p.writes
                        .push((dir.join("cpuset.cpus"), cpus.trim().to_owned()));
                    p.writes
                        .push((dir.join("cpuset.mems"), mems.trim().to_owned()));
                }
            }
        }
        Hierarchy::V2(root) => {
            let dir = root.join("kiln").join(name);
            if !p.dirs.contains(&dir) {
                p.dirs.push(dir);
            }
            // The controllers a limit would use enabled anyway, so that the container reads
            // memory.max, cpu.max and pids.max (`max` unless limited) as podman's does.
            let all = "+memory +cpu +pids".to_owned();
            p.writes
                .push((root.join("cgroup.subtree_control"), all.clone()));
            p.writes
                .push((root.join("kiln").join("cgroup.subtree_control"), all));
        }
    }
    p
}

/// A container's cgroup directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// Creates the directories of `plan` and writes its limits. Fails when a directory or
    /// file cannot be written (the directories made so far are removed again).
    pub fn create(plan: &Plan) -> Result<Cgroup> {
        let cg = Cgroup {
            dirs: plan.dirs.clone(),
        };
        let done = (|| {
            for d in &plan.dirs {
                std::fs::create_dir_all(d).map_err(io_err(d))?;
            }
            for (f, v) in &plan.writes {
                std::fs::write(f, v).map_err(io_err(f))?;
            }
            Ok(())
        })();
        if let Err(e) = done {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// The cgroup of existing directories (from a container's state).
    pub fn open(dirs: Vec<PathBuf>) -> Cgroup {
        Cgroup { dirs }
    }

    /// Its directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Removes the directories (missing ones are fine). The kernel refuses while a process is
    /// still in one; an exited container's processes may take a moment to be released, so
    /// EBUSY is retried for up to a second. Fails with the last error.
    pub fn remove(&self) -> Result<()> {
        let mut result = Ok(());
        for d in &self.dirs {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => {
                        result = Err(io_err(d)(e));
                        break;
                    }
                }
            }
        }
        result
    }
}

/// Moves process `pid` into every directory of `dirs` (`cgroup.procs`). Its later children
/// inherit the cgroups.
pub fn join(dirs: &[PathBuf], pid: u32) -> Result<()> {
    for d in dirs {
        let f = d.join("cgroup.procs");
        std::fs::write(&f, pid.to_string()).map_err(io_err(&f))?;
    }
    Ok(())
}

/// Parses a `--cpus` value (`1.5`) into millicpus.
pub fn parse_cpus(s: &str) -> Option<u64> {
    let v: f64 = s.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then(|| (v * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const UNIFIED: &str = "\
25 20 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn own_dirs_pair_each_hierarchy_with_the_process_cgroup() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
32 25 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
33 25 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
";
        let own = "4:memory:/a/b\n3:cpu,cpuacct:/\n1:name=systemd:/s\n0::/u\n";
        let dirs = own_dirs(mountinfo, own);
        let want: Vec<(PathBuf, PathBuf)> = [
            ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/memory/a/b"),
            ("/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct"),
            ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/systemd/s"),
        ]
        .iter()
        .map(|(m, d)| (PathBuf::from(m), PathBuf::from(d)))
        .collect();
        assert_eq!(dirs, want);
        // A pure v2 host: the one hierarchy.
        let v2 = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_dirs(v2, "0::/u\n"),
            [(
                PathBuf::from("/sys/fs/cgroup"),
                PathBuf::from("/sys/fs/cgroup/u")
            )]
        );
    }

    #[test]
    fn hybrid_hosts_use_the_v1_controllers() {
        let Some(Hierarchy::V1(m)) = Hierarchy::parse(HYBRID) else {
            panic!("expected v1");
        };
        assert_eq!(m["cpu"], Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(m["memory"], Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(m["pids"], Path::new("/sys/fs/cgroup/pids"));
    }

    #[test]
    fn pure_v2_hosts_use_the_unified_tree() {
        assert_eq!(
            Hierarchy::parse(UNIFIED),
            Some(Hierarchy::V2("/sys/fs/cgroup".into()))
        );
        assert_eq!(
            Hierarchy::parse("1 0 0:1 / / rw - ext4 /dev/sda rw\n"),
            None
        );
    }

    #[test]
    fn v1_plan_writes_each_limit_in_its_controller() {
        let h = Hierarchy::parse(HYBRID).expect("hierarchy");
        let limits = Limits {
            memory: Some(64 << 20),
            millicpus: Some(1500),
            pids: Some(20),
        };
        let p = plan(&h, "web", &limits).expect("plan");
        assert_eq!(
            p.dirs,
            [
                PathBuf::from("/sys/fs/cgroup/memory/kiln/web"),
                "/sys/fs/cgroup/cpu,cpuacct/kiln/web".into(),
                "/sys/fs/cgroup/pids/kiln/web".into(),
            ]
        );
        let w: Vec<(String, &str)> = p
            .writes
            .iter()
            .map(|(f, v)| (f.display().to_string(), v.as_str()))
            .collect();
        assert_eq!(
            w,
            [
                (
                    "/sys/fs/cgroup/memory/kiln/web/memory.limit_in_bytes".into(),
                    "67108864"
                ),
                (
                    "/sys/fs/cgroup/cpu,cpuacct/kiln/web/cpu.cfs_period_us".into(),
                    "100000"
                ),
                (
                    "/sys/fs/cgroup/cpu,cpuacct/kiln/web/cpu.cfs_quota_us".into(),
                    "150000"
                ),
                ("/sys/fs/cgroup/pids/kiln/web/pids.max".into(), "20"),
            ]
        );
    }

    #[test]
    fn v2_plan_enables_controllers_then_writes_limits() {
        let h = Hierarchy::V2("/sys/fs/cgroup".into());
        let limits = Limits {
            memory: Some(1 << 30),
            millicpus: Some(500),
            pids: None,
        };
        let p = plan(&h, "db", &limits).expect("plan");
        assert_eq!(p.dirs, [PathBuf::from("/sys/fs/cgroup/kiln/db")]);
        let w: Vec<(String, &str)> = p
            .writes
            .iter()
            .map(|(f, v)| (f.display().to_string(), v.as_str()))
            .collect();
        assert_eq!(
            w,
            [
                (
                    "/sys/fs/cgroup/cgroup.subtree_control".into(),
                    "+memory +cpu"
                ),
                (
                    "/sys/fs/cgroup/kiln/cgroup.subtree_control".into(),
                    "+memory +cpu"
                ),
                ("/sys/fs/cgroup/kiln/db/memory.max".into(), "1073741824"),
                ("/sys/fs/cgroup/kiln/db/cpu.max".into(), "50000 100000"),
            ]
        );
    }

    #[test]
    fn every_container_gets_its_own_cgroup_in_every_hierarchy_but_devices() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
32 25 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
33 25 0:29 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
";
        let h = Hierarchy::parse(mountinfo).expect("v1");
        let limits = Limits {
            memory: Some(64 << 20),
            ..Limits::default()
        };
        let p = everywhere(
            plan(&h, "c1", &limits).expect("plan"),
            &h,
            mountinfo,
            "4:memory:/job\n3:cpuset:/job/x\n2:devices:/\n0::/job\n",
            "c1",
            Some(("0-1\n", "0\n")),
        );
        let dirs: Vec<&str> = p.dirs.iter().filter_map(|d| d.to_str()).collect();
        // The limited memory where the limits live; the rest below kiln's own cgroups.
        assert_eq!(
            dirs,
            [
                "/sys/fs/cgroup/memory/kiln/c1",
                "/sys/fs/cgroup/cpuset/job/x/kiln-c1",
                "/sys/fs/cgroup/unified/job/kiln-c1"
            ]
        );
        let writes: Vec<(&str, &str)> = p
            .writes
            .iter()
            .filter_map(|(f, v)| Some((f.to_str()?, v.as_str())))
            .collect();
        assert_eq!(
            writes,
            [
                (
                    "/sys/fs/cgroup/memory/kiln/c1/memory.limit_in_bytes",
                    "67108864"
                ),
                ("/sys/fs/cgroup/cpuset/job/x/kiln-c1/cpuset.cpus", "0-1"),
                ("/sys/fs/cgroup/cpuset/job/x/kiln-c1/cpuset.mems", "0"),
            ]
        );
        // No limits on v2: the one directory, the controllers enabled above it.
        let v2 = Hierarchy::V2("/sys/fs/cgroup".into());
        let p = everywhere(
            plan(&v2, "c2", &Limits::default()).expect("plan"),
            &v2,
            UNIFIED,
            "0::/\n",
            "c2",
            None,
        );
        assert_eq!(p.dirs, [PathBuf::from("/sys/fs/cgroup/kiln/c2")]);
        let files: Vec<&Path> = p.writes.iter().map(|(f, _)| f.as_path()).collect();
        assert_eq!(
            files,
            [
                Path::new("/sys/fs/cgroup/cgroup.subtree_control"),
                Path::new("/sys/fs/cgroup/kiln/cgroup.subtree_control")
            ]
        );
    }

    #[test]
    fn no_limits_means_no_cgroup_and_missing_controllers_are_named() {
        let h = Hierarchy::parse(HYBRID).expect("hierarchy");
        assert_eq!(
            plan(&h, "x", &Limits::default()).expect("plan"),
            Plan::default()
        );
        let only_mem = Hierarchy::V1([("memory".to_string(), PathBuf::from("/m"))].into());
        let e = plan(
            &only_mem,
            "x",
            &Limits {
                pids: Some(1),
                ..Limits::default()
            },
        )
        .expect_err("no pids controller");
        assert_eq!(
            e.to_string(),
            "no cgroup hierarchy with the pids controller is mounted"
        );
    }

    #[test]
    fn cpu_flags_parse_like_docker() {
        assert_eq!(parse_cpus("1.5"), Some(1500));
        assert_eq!(parse_cpus("0"), None);
    }

    #[test]
    fn create_join_and_remove_on_a_plain_directory_tree() {
        // The real files of a cgroup fs cannot be made elsewhere; a plain directory stands
        // in to check the order of operations and the cleanup.
        let t = tempfile::tempdir().expect("tempdir");
        let h = Hierarchy::V1(
            [
                ("memory".to_string(), t.path().join("memory")),
                ("pids".to_string(), t.path().join("pids")),
            ]
            .into(),
        );
        let limits = Limits {
            memory: Some(1 << 20),
            pids: Some(3),
            ..Limits::default()
        };
        let cg = Cgroup::create(&plan(&h, "c1", &limits).expect("plan")).expect("create");
        let mem = t.path().join("memory/kiln/c1/memory.limit_in_bytes");
        assert_eq!(std::fs::read_to_string(mem).expect("limit"), "1048576");
        join(cg.dirs(), 42).expect("join");
        let procs = t.path().join("pids/kiln/c1/cgroup.procs");
        assert_eq!(std::fs::read_to_string(&procs).expect("procs"), "42");
        // A cgroup fs directory is empty to rmdir; here the files must go first.
        for d in cg.dirs() {
            for e in std::fs::read_dir(d).expect("dir").flatten() {
                std::fs::remove_file(e.path()).expect("rm");
            }
        }
        cg.remove().expect("remove");
        assert!(!t.path().join("pids/kiln/c1").exists());
        cg.remove().expect("removing twice is fine");
    }
}

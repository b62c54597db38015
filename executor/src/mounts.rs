//! The mount plan of a RUN sandbox: a pure function from a [`RunSpec`] to the list of mounts
//! `init` performs, in order, on the new root. Tested without root; `init` is the thin shell
//! that executes it.
//!
//! Every target is a path inside the sandbox root. `init` resolves it with `RESOLVE_IN_ROOT`, so
//! a symlink in the image (say `/etc/hosts -> /run/hosts`) never makes a mount land outside.

use std::path::PathBuf;

use crate::spec::{ContainerMount, MountKind, Network, RunSpec};

/// What `init` does when a mount target does not exist in the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Create an empty directory (and missing parents); removed from the upper dir afterwards.
    Dir,
    /// Create an empty file (and missing parent directories); removed afterwards.
    File,
    /// A directory or a file, like the bind source.
    LikeSource,
    /// Skip the step (masking a path the kernel does not have).
    Skip,
    /// A directory; when it exists already, the new filesystem takes its mode (runc's tmpfs
    /// for docker's `--tmpfs /tmp:mode=...` on an image's /tmp: the image's mode wins).
    DirKeepMode,
}

/// Mount attributes (`MOUNT_ATTR_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attrs {
    /// Read-only.
    pub readonly: bool,
    /// nosuid.
    pub nosuid: bool,
    /// nodev.
    pub nodev: bool,
    /// noexec.
    pub noexec: bool,
}

const NOSUID_NODEV_NOEXEC: Attrs = Attrs {
    readonly: false,
    nosuid: true,
    nodev: true,
    noexec: true,
};

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A new filesystem instance (`fsopen` + `fsconfig` + `fsmount`) at `target`.
    Fs {
        /// Filesystem type: proc, sysfs, tmpfs, devpts, mqueue.
        fstype: &'static str,
        /// `fsconfig` string options (key, value).
        options: Vec<(&'static str, String)>,
        /// Absolute path in the root.
        target: String,
        /// Mount attributes.
        attrs: Attrs,
        /// Missing target policy.
        create: Create,
    },
    /// A (recursive) bind mount of a host path at `target`.
    Bind {
        /// Absolute host path.
        source: PathBuf,
        /// Absolute path in the root.
        target: String,
        /// Read-only.
        readonly: bool,
        /// Missing target policy.
        create: Create,
    },
    /// A path of a tree (a stage, an image, the context) bound at `target`: the tree is
    /// mounted detached, `path` is resolved inside it by [`crate::fsroot`], and that file
    /// or directory is cloned from its descriptor onto the target.
    Tree {
        /// The tree's directories, top first.
        lowers: Vec<PathBuf>,
        /// Upper and work dirs of a writable (throw-away) tree.
        scratch: Option<(PathBuf, PathBuf)>,
        /// Untrusted path inside the tree.
        path: String,
        /// Absolute path in the root.
        target: String,
        /// Read-only.
        readonly: bool,
    },
    /// A bind of a path of the root onto itself, made read-only.
    ReadonlySelf {
        /// Absolute path in the root.
        target: String,
    },
    /// The mount at `target` (a mount point of an earlier step) and the mounts below it,
    /// made read-only, nosuid, nodev and noexec in place, with no new mount on top.
    ReadonlyMount {
        /// Absolute path in the root.
        target: String,
    },
    /// Fills `source` (a volume's data directory), when it is empty, with a copy of what the
    /// root holds at `target` (resolved inside the root), as docker fills a new volume from
    /// the image; nothing when `target` is missing or not a directory.
    Populate {
        /// The volume's data directory.
        source: PathBuf,
        /// Absolute path in the root.
        target: String,
    },
    /// A symlink `path -> to` (the root's `/dev` is a fresh tmpfs, so it never exists before).
    Symlink {
        /// Absolute path in the root.
        path: String,
        /// Link target.
        to: String,
    },
}

impl Step {
    /// The path in the root this step mounts on or creates.
    pub fn target(&self) -> &str {
        match self {
            Step::Fs { target, .. }
            | Step::Bind { target, .. }
            | Step::Tree { target, .. }
            | Step::ReadonlySelf { target }
            | Step::ReadonlyMount { target }
            | Step::Populate { target, .. } => target,
            Step::Symlink { path, .. } => path,
        }
    }
}

/// Host paths the plan needs.
#[derive(Debug, Clone)]
pub struct HostPaths {
    /// The host's /dev (device nodes are bind-mounted from it).
    pub dev: PathBuf,
    /// Directory holding the generated `hosts`, `resolv.conf` and `hostname`.
    pub state: PathBuf,
    /// The sandbox's own cgroup directory in each hierarchy, with the name it gets under
    /// /sys/fs/cgroup (the hierarchy's mount point name: `memory`, `systemd`; empty when the
    /// hierarchy is mounted at /sys/fs/cgroup itself, as on cgroup v2 hosts). Empty: no
    /// cgroup filesystem.
    pub cgroups: Vec<(PathBuf, String)>,
    /// What an insecure step (`RUN --security=insecure`) gets from the host besides.
    pub insecure: InsecureHost,
}

/// The host's parts an insecure step sees (empty for every other sandbox).
#[derive(Debug, Clone, Default)]
pub struct InsecureHost {
    /// Devices under the host's /dev, by relative name (`kmsg`, `net/tun`, `loop0`), that
    /// exist there: of [`INSECURE_DEVICES`] and the loop devices.
    pub devices: Vec<String>,
    /// Whether the step may write its cgroup filesystem (root; never rootless).
    pub writable_cgroups: bool,
}

/// The devices BuildKit (v0.24, `util/entitlements/security`) adds to an insecure step:
/// kmsg, cuse, fuse, kvm, tun and loop-control, besides the loop devices. BuildKit creates
/// them with mknod; kiln binds those the host has.
pub const INSECURE_DEVICES: [&str; 6] = ["kmsg", "cuse", "fuse", "kvm", "net/tun", "loop-control"];

/// Device nodes bind-mounted from the host into the sandbox's /dev.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// /proc and /sys paths Docker masks (moby `oci/defaults.go`): files get /dev/null on top,
/// directories an empty read-only tmpfs.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// /proc paths Docker makes read-only.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Computes the mounts of a RUN sandbox, in the order they must happen. The overlay root itself
/// is mounted first and is not part of the plan.
///
/// `masked_is_dir` tells, for each of [`MASKED_PATHS`], whether the host has it as a directory
/// (`None` when absent), since /proc and /sys in the sandbox show the same kernel.
pub fn plan(spec: &RunSpec, host: &HostPaths, masked_is_dir: &[Option<bool>]) -> Vec<Step> {
    // `RUN --security=insecure`, as BuildKit's insecure spec: /sys and the cgroup filesystem
    // writable, no masked or read-only paths, more devices (init lifts the device policy).
    let insecure = spec.security.privileged;
    let mut steps = vec![
        Step::Fs {
            fstype: "proc",
            options: vec![],
            target: "/proc".into(),
            attrs: NOSUID_NODEV_NOEXEC,
            create: Create::Dir,
        },
        Step::Fs {
            fstype: "sysfs",
            options: vec![],
            target: "/sys".into(),
            attrs: Attrs {
                readonly: !insecure,
                ..NOSUID_NODEV_NOEXEC
            },
            create: Create::Dir,
        },
    ];
    // Every sandbox sees its own cgroups at /sys/fs/cgroup, read-only as docker's (runc's
    // cgroup mount); an insecure step as root may write them, as BuildKit's insecure spec.
    cgroupfs(
        &mut steps,
        &host.cgroups,
        insecure && host.insecure.writable_cgroups,
    );
    steps.push(Step::Fs {
        fstype: "tmpfs",
        options: vec![("mode", "755".into()), ("size", "65536k".into())],
        target: "/dev".into(),
        attrs: Attrs {
            nosuid: true,
            ..Attrs::default()
        },
        create: Create::Dir,
    });
    let extra = match insecure {
        true => host.insecure.devices.as_slice(),
        false => &[],
    };
    for dev in DEVICES
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        steps.push(Step::Bind {
            source: host.dev.join(dev),
            target: format!("/dev/{dev}"),
            readonly: false,
            create: Create::File,
        });
    }
    steps.push(Step::Fs {
        fstype: "devpts",
        options: vec![
            ("ptmxmode", "0666".into()),
            ("mode", "0620".into()),
            ("gid", "5".into()),
        ],
        target: "/dev/pts".into(),
        attrs: Attrs {
            nosuid: true,
            noexec: true,
            ..Attrs::default()
        },
        create: Create::Dir,
    });
    steps.push(Step::Fs {
        fstype: "tmpfs",
        options: vec![
            ("mode", "1777".into()),
            (
                "size",
                match spec.security.shm_size {
                    Some(b) => format!("{}k", b.div_ceil(1024)),
                    None => "65536k".into(),
                },
            ),
        ],
        target: "/dev/shm".into(),
        attrs: NOSUID_NODEV_NOEXEC,
        create: Create::Dir,
    });
    steps.push(Step::Fs {
        fstype: "mqueue",
        options: vec![],
        target: "/dev/mqueue".into(),
        attrs: NOSUID_NODEV_NOEXEC,
        create: Create::Dir,
    });
    for (path, to) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        steps.push(Step::Symlink {
            path: path.into(),
            to: to.into(),
        });
    }
    for file in ["hosts", "resolv.conf", "hostname"] {
        steps.push(Step::Bind {
            source: host.state.join(file),
            target: format!("/etc/{file}"),
            readonly: false,
            create: Create::File,
        });
    }
    let masked_is_dir = if insecure { &[] } else { masked_is_dir };
    for (path, is_dir) in MASKED_PATHS.iter().zip(masked_is_dir) {
        match is_dir {
            Some(true) => steps.push(Step::Fs {
                fstype: "tmpfs",
                options: vec![("size", "0".into())],
                target: (*path).into(),
                attrs: Attrs {
                    readonly: true,
                    ..NOSUID_NODEV_NOEXEC
                },
                create: Create::Skip,
            }),
            Some(false) => steps.push(Step::Bind {
                source: host.dev.join("null"),
                target: (*path).into(),
                readonly: true,
                create: Create::Skip,
            }),
            None => {}
        }
    }
    for path in READONLY_PATHS.iter().filter(|_| !insecure) {
        steps.push(Step::ReadonlySelf {
            target: (*path).into(),
        });
    }
    for m in &spec.mounts {
        let step = match &m.kind {
            MountKind::Bind { source } => Step::Bind {
                source: source.clone(),
                target: m.target.clone(),
                readonly: m.readonly,
                create: Create::LikeSource,
            },
            MountKind::Tree {
                lowers,
                scratch,
                path,
            } => Step::Tree {
                lowers: lowers.clone(),
                scratch: scratch.clone(),
                path: path.clone(),
                target: m.target.clone(),
                readonly: m.readonly,
            },
            MountKind::Tmpfs { size } => Step::Fs {
                fstype: "tmpfs",
                options: size
                    .map(|s| vec![("size", s.to_string())])
                    .unwrap_or_default(),
                target: m.target.clone(),
                attrs: Attrs {
                    readonly: m.readonly,
                    nosuid: true,
                    nodev: true,
                    noexec: false,
                },
                create: Create::Dir,
            },
            MountKind::Container(c) => {
                container_mount(&mut steps, c, &m.target, m.readonly);
                continue;
            }
        };
        steps.push(step);
    }
    steps
}

/// The steps of a `kiln run` mount at `target`: docker's binds (recursive, no nosuid or
/// nodev), a volume filled from the image first when it asks for it, a tmpfs with docker's
/// `nosuid,nodev,noexec`.
fn container_mount(steps: &mut Vec<Step>, m: &ContainerMount, target: &str, readonly: bool) {
    match m {
        ContainerMount::Bind { source, .. } => steps.push(Step::Bind {
            source: source.clone(),
            target: target.to_owned(),
            readonly,
            create: Create::LikeSource,
        }),
        ContainerMount::Volume {
            source, copy_up, ..
        } => {
            if *copy_up {
                steps.push(Step::Populate {
                    source: source.clone(),
                    target: target.to_owned(),
                });
            }
            steps.push(Step::Bind {
                source: source.clone(),
                target: target.to_owned(),
                readonly,
                create: Create::Dir,
            });
        }
        ContainerMount::Tmpfs { size, mode } => {
            let mut options = Vec::new();
            if let Some(s) = size {
                options.push(("size", s.to_string()));
            }
            if let Some(m) = mode {
                options.push(("mode", format!("{m:o}")));
            }
            steps.push(Step::Fs {
                fstype: "tmpfs",
                options,
                target: target.to_owned(),
                attrs: Attrs {
                    readonly,
                    ..NOSUID_NODEV_NOEXEC
                },
                create: Create::DirKeepMode,
            });
        }
    }
}

/// The generated /etc files: (file name, contents). With the host network the host's
/// `hosts` and `resolv.conf` are used as they are (`host_hosts`, `host_resolv`).
pub fn etc_files(
    spec: &RunSpec,
    host_hosts: Option<&str>,
    host_resolv: Option<&str>,
) -> Vec<(&'static str, String)> {
    let hostname = &spec.hostname;
    let (hosts, resolv) = match &spec.network {
        Network::Host => (
            host_hosts.unwrap_or_default().to_string(),
            host_resolv.unwrap_or_default().to_string(),
        ),
        // Only loopback exists: a nameserver from the host would be unreachable (or, for
        // 127.0.0.53, would point at the sandbox's own loopback).
        Network::Loopback => (
            format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
            String::new(),
        ),
        Network::Join {
            hosts, resolv_conf, ..
        } => (hosts.clone(), resolv_conf.clone()),
    };
    let resolv = spec.security.resolv_conf.clone().unwrap_or(resolv);
    let mut hosts = hosts;
    for (name, ip) in &spec.security.extra_hosts {
        if !hosts.is_empty() && !hosts.ends_with('\n') {
            hosts.push('\n');
        }
        hosts.push_str(&format!("{ip}\t{name}\n"));
    }
    vec![
        ("hosts", hosts),
        ("resolv.conf", resolv),
        ("hostname", format!("{hostname}\n")),
    ]
}

/// The sandbox's /sys/fs/cgroup, laid out as runc lays out a v1 container's: a tmpfs holding
/// each hierarchy's own cgroup directory under the hierarchy's name; on a host whose cgroup2
/// is mounted at /sys/fs/cgroup itself, that one directory there. Unless `writable`, the
/// binds are read-only and, once in place, they and the tmpfs are made read-only, nosuid,
/// nodev and noexec as docker's (whose tmpfs stays writable; kiln keeps /sys as unwritable
/// as before).
fn cgroupfs(steps: &mut Vec<Step>, cgroups: &[(PathBuf, String)], writable: bool) {
    if cgroups.is_empty() {
        return;
    }
    let tmpfs = !cgroups.iter().any(|(_, name)| name.is_empty());
    if tmpfs {
        steps.push(Step::Fs {
            fstype: "tmpfs",
            options: vec![("mode", "755".into())],
            target: "/sys/fs/cgroup".into(),
            attrs: NOSUID_NODEV_NOEXEC,
            create: Create::Skip,
        });
    }
    for (source, name) in cgroups {
        steps.push(Step::Bind {
            source: source.clone(),
            target: match name.is_empty() {
                true => "/sys/fs/cgroup".into(),
                false => format!("/sys/fs/cgroup/{name}"),
            },
            readonly: !writable,
            create: Create::Dir,
        });
    }
    if !writable {
        steps.push(Step::ReadonlyMount {
            target: "/sys/fs/cgroup".into(),
        });
    }
}

/// The parents of `path` (absolute, in the root) from the top: `/a/b/c` gives `/a`, `/a/b`.
pub fn ancestors(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    (1..parts.len())
        .map(|n| format!("/{}", parts[..n].join("/")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{MountSpec, Rootfs};
    use std::path::Path;

    fn spec(network: Network) -> RunSpec {
        RunSpec {
            rootfs: Rootfs {
                lowers: vec![],
                upper: "/u".into(),
                work: "/w".into(),
            },
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            hostname: "box".into(),
            network,
            mounts: vec![],
            tty: false,
            security: Default::default(),
        }
    }

    fn host() -> HostPaths {
        HostPaths {
            dev: "/dev".into(),
            state: "/state".into(),
            cgroups: vec![
                ("/sys/fs/cgroup/memory/a".into(), "memory".into()),
                (
                    "/sys/fs/cgroup/devices/kiln/insecure".into(),
                    "devices".into(),
                ),
            ],
            insecure: InsecureHost {
                devices: vec!["kmsg".into(), "net/tun".into(), "loop0".into()],
                writable_cgroups: true,
            },
        }
    }

    #[test]
    fn an_insecure_step_gets_writable_sys_and_cgroups_host_devices_and_no_masks() {
        let mut s = spec(Network::Loopback);
        let every = vec![Some(false); MASKED_PATHS.len()];
        let strict = plan(&s, &host(), &every);
        s.security.privileged = true;
        let steps = plan(&s, &host(), &every);
        let t = targets(&steps);
        // The default sandbox keeps every mask and none of the insecure parts.
        for p in MASKED_PATHS.iter().chain(READONLY_PATHS.iter()) {
            assert!(targets(&strict).contains(p), "{p}");
            assert!(!t.contains(p), "{p}");
        }
        for p in ["/dev/kmsg", "/dev/net/tun", "/dev/loop0"] {
            assert!(!targets(&strict).contains(&p), "{p}");
            assert!(t.contains(&p), "{p}");
        }
        // Both see their cgroups; only the insecure step's are writable.
        assert!(
            !steps
                .iter()
                .any(|s| matches!(s, Step::ReadonlyMount { .. }))
        );
        assert!(steps.iter().any(|s| matches!(s,
            Step::Fs { fstype: "sysfs", attrs, .. } if !attrs.readonly)));
        assert!(steps.contains(&Step::Bind {
            source: "/sys/fs/cgroup/memory/a".into(),
            target: "/sys/fs/cgroup/memory".into(),
            readonly: false,
            create: Create::Dir,
        }));
        let pos = |p: &str| t.iter().position(|x| *x == p).expect(p);
        assert!(pos("/sys") < pos("/sys/fs/cgroup"));
        assert!(pos("/sys/fs/cgroup") < pos("/sys/fs/cgroup/devices"));
        assert!(pos("/dev") < pos("/dev/net/tun"));
    }

    #[test]
    fn a_cgroup2_mounted_at_sys_fs_cgroup_is_bound_there_without_a_tmpfs() {
        let mut s = spec(Network::Loopback);
        s.security.privileged = true;
        let mut h = host();
        h.cgroups = vec![("/sys/fs/cgroup/kiln-insecure".into(), String::new())];
        let steps = plan(&s, &h, &[]);
        let at: Vec<&Step> = steps
            .iter()
            .filter(|s| s.target() == "/sys/fs/cgroup")
            .collect();
        assert!(matches!(at[..], [Step::Bind { .. }]), "{at:?}");
    }

    #[test]
    fn a_default_sandbox_sees_its_cgroups_read_only() {
        let steps = plan(&spec(Network::Loopback), &host(), &[]);
        assert!(steps.contains(&Step::Bind {
            source: "/sys/fs/cgroup/memory/a".into(),
            target: "/sys/fs/cgroup/memory".into(),
            readonly: true,
            create: Create::Dir,
        }));
        // The tmpfs holding the directories becomes read-only after the binds.
        let t = targets(&steps);
        let last = t
            .iter()
            .rposition(|x| *x == "/sys/fs/cgroup")
            .expect("cgroupfs");
        assert!(
            matches!(&steps[last], Step::ReadonlyMount { .. }),
            "{steps:?}"
        );
        assert!(t.iter().position(|x| *x == "/sys/fs/cgroup/devices") < Some(last));
        // An insecure step rootless gets the same read-only view.
        let mut s = spec(Network::Loopback);
        s.security.privileged = true;
        let mut h = host();
        h.insecure.writable_cgroups = false;
        assert!(plan(&s, &h, &[]).contains(&Step::Bind {
            source: "/sys/fs/cgroup/memory/a".into(),
            target: "/sys/fs/cgroup/memory".into(),
            readonly: true,
            create: Create::Dir,
        }));
        // Without cgroups (none found), no cgroup filesystem.
        let mut h = host();
        h.cgroups.clear();
        assert!(!targets(&plan(&spec(Network::Loopback), &h, &[])).contains(&"/sys/fs/cgroup"));
    }

    fn targets(steps: &[Step]) -> Vec<&str> {
        steps.iter().map(Step::target).collect()
    }

    #[test]
    fn proc_sys_dev_come_before_what_they_contain() {
        let steps = plan(&spec(Network::Loopback), &host(), &[]);
        let t = targets(&steps);
        let pos = |p: &str| t.iter().position(|x| *x == p).expect(p);
        assert!(pos("/dev") < pos("/dev/null"));
        assert!(pos("/dev") < pos("/dev/pts"));
        assert!(pos("/dev/pts") < pos("/dev/ptmx"));
        assert!(pos("/proc") < pos("/proc/sys"));
        assert!(pos("/sys") < pos("/sys/fs/cgroup"));
        assert!(pos("/sys/fs/cgroup") < pos("/sys/fs/cgroup/memory"));
        assert_eq!(t[..3], ["/proc", "/sys", "/sys/fs/cgroup"]);
    }

    #[test]
    fn devices_are_bound_from_the_host_dev() {
        let steps = plan(&spec(Network::Loopback), &host(), &[]);
        for dev in DEVICES {
            assert!(steps.contains(&Step::Bind {
                source: PathBuf::from("/dev").join(dev),
                target: format!("/dev/{dev}"),
                readonly: false,
                create: Create::File,
            }));
        }
    }

    #[test]
    fn sysfs_is_read_only_and_proc_is_not() {
        let steps = plan(&spec(Network::Loopback), &host(), &[]);
        let attrs = |name: &str| match steps.iter().find(|s| s.target() == name) {
            Some(Step::Fs { attrs, .. }) => *attrs,
            other => panic!("{name}: {other:?}"),
        };
        assert!(attrs("/sys").readonly);
        assert!(!attrs("/proc").readonly);
        assert!(attrs("/proc").noexec);
    }

    #[test]
    fn etc_files_are_bound_from_the_state_dir() {
        let steps = plan(&spec(Network::Loopback), &host(), &[]);
        for f in ["hosts", "resolv.conf", "hostname"] {
            assert!(steps.iter().any(|s| matches!(s,
                Step::Bind { source, target, create: Create::File, .. }
                    if *source == Path::new("/state").join(f) && *target == format!("/etc/{f}"))));
        }
    }

    #[test]
    fn masked_paths_follow_host_kinds_and_skip_missing_ones() {
        let mut kinds = vec![None; MASKED_PATHS.len()];
        kinds[0] = Some(true); // /proc/asound
        kinds[2] = Some(false); // /proc/kcore
        let steps = plan(&spec(Network::Loopback), &host(), &kinds);
        assert!(steps.iter().any(|s| matches!(s,
            Step::Fs { fstype: "tmpfs", target, attrs, create: Create::Skip, .. }
                if target == "/proc/asound" && attrs.readonly)));
        assert!(steps.iter().any(|s| matches!(s,
            Step::Bind { source, target, readonly: true, .. }
                if target == "/proc/kcore" && source == Path::new("/dev/null"))));
        assert!(!targets(&steps).contains(&"/proc/keys"));
    }

    #[test]
    fn user_mounts_come_last_in_order() {
        let mut s = spec(Network::Loopback);
        s.mounts = vec![
            MountSpec {
                target: "/src".into(),
                kind: MountKind::Bind {
                    source: "/host/src".into(),
                },
                readonly: true,
            },
            MountSpec {
                target: "/tmp".into(),
                kind: MountKind::Tmpfs { size: Some(1024) },
                readonly: false,
            },
        ];
        let steps = plan(&s, &host(), &[]);
        let n = steps.len();
        assert_eq!(
            steps[n - 2],
            Step::Bind {
                source: "/host/src".into(),
                target: "/src".into(),
                readonly: true,
                create: Create::LikeSource
            }
        );
        assert!(
            matches!(&steps[n - 1], Step::Fs { fstype: "tmpfs", options, .. }
            if options == &vec![("size", "1024".to_string())])
        );
    }

    /// `kiln run`'s mounts: a volume is filled before it is bound, docker's binds get no
    /// nosuid/nodev, a tmpfs gets docker's nosuid,nodev,noexec and keeps an existing
    /// directory's mode.
    #[test]
    fn container_mounts_plan_as_dockers() {
        use crate::spec::ContainerMount;
        let mut s = spec(Network::Loopback);
        let m = |target: &str, kind: ContainerMount, readonly: bool| MountSpec {
            target: target.into(),
            kind: MountKind::Container(kind),
            readonly,
        };
        s.mounts = vec![
            m(
                "/src",
                ContainerMount::Bind {
                    source: "/h".into(),
                    mode: "ro".into(),
                },
                true,
            ),
            m(
                "/data",
                ContainerMount::Volume {
                    name: "data".into(),
                    source: "/v/data/_data".into(),
                    anonymous: false,
                    copy_up: true,
                    mode: "z".into(),
                },
                false,
            ),
            m(
                "/t",
                ContainerMount::Tmpfs {
                    size: Some(1 << 20),
                    mode: Some(0o700),
                },
                false,
            ),
        ];
        let steps = plan(&s, &host(), &[]);
        let n = steps.len();
        assert_eq!(
            steps[n - 4..],
            [
                Step::Bind {
                    source: "/h".into(),
                    target: "/src".into(),
                    readonly: true,
                    create: Create::LikeSource
                },
                Step::Populate {
                    source: "/v/data/_data".into(),
                    target: "/data".into()
                },
                Step::Bind {
                    source: "/v/data/_data".into(),
                    target: "/data".into(),
                    readonly: false,
                    create: Create::Dir
                },
                Step::Fs {
                    fstype: "tmpfs",
                    options: vec![("size", "1048576".into()), ("mode", "700".into())],
                    target: "/t".into(),
                    attrs: NOSUID_NODEV_NOEXEC,
                    create: Create::DirKeepMode
                },
            ]
        );
    }

    #[test]
    fn tree_mounts_keep_the_untrusted_path_for_the_resolver() {
        let mut s = spec(Network::Loopback);
        s.mounts = vec![MountSpec {
            target: "/m".into(),
            kind: MountKind::Tree {
                lowers: vec!["/snap/a".into(), "/snap/b".into()],
                scratch: None,
                path: "../../etc".into(),
            },
            readonly: true,
        }];
        let steps = plan(&s, &host(), &[]);
        // Never joined onto a lower here: `init` resolves it inside the mounted tree.
        assert_eq!(
            steps.last(),
            Some(&Step::Tree {
                lowers: vec!["/snap/a".into(), "/snap/b".into()],
                scratch: None,
                path: "../../etc".into(),
                target: "/m".into(),
                readonly: true,
            })
        );
    }

    #[test]
    fn loopback_network_gets_loopback_hosts_and_no_nameserver() {
        let files = etc_files(
            &spec(Network::Loopback),
            Some("10.0.0.1 x\n"),
            Some("nameserver 9.9.9.9\n"),
        );
        let get = |n| &files.iter().find(|(f, _)| *f == n).expect(n).1;
        assert!(get("hosts").contains("127.0.0.1\tlocalhost box"));
        assert!(!get("hosts").contains("10.0.0.1"));
        assert_eq!(get("resolv.conf"), "");
        assert_eq!(get("hostname"), "box\n");
    }

    #[test]
    fn host_network_copies_host_files() {
        let files = etc_files(
            &spec(Network::Host),
            Some("10.0.0.1 x\n"),
            Some("nameserver 9.9.9.9\n"),
        );
        assert_eq!(files[0].1, "10.0.0.1 x\n");
        assert_eq!(files[1].1, "nameserver 9.9.9.9\n");
    }

    #[test]
    fn joined_network_uses_the_given_files() {
        let files = etc_files(
            &spec(Network::Join {
                netns: "/run/kiln/netns/x".into(),
                hosts: "10.88.0.2\tbox\n".into(),
                resolv_conf: "nameserver 10.88.0.1\n".into(),
            }),
            Some("host\n"),
            Some("host\n"),
        );
        assert_eq!(files[0].1, "10.88.0.2\tbox\n");
        assert_eq!(files[1].1, "nameserver 10.88.0.1\n");
    }

    #[test]
    fn ancestors_lists_parents_top_down() {
        assert_eq!(ancestors("/etc/hosts"), vec!["/etc"]);
        assert_eq!(ancestors("/a/b/c"), vec!["/a", "/a/b"]);
        assert!(ancestors("/proc").is_empty());
    }
}

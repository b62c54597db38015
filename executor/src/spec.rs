//! The specs a caller hands to the sandbox. They cross a process boundary as JSON (the argument
//! of `kiln __init`), so they are plain data with serde derives and no behaviour.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What the re-executed `kiln __init` process does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitSpec {
    /// Run a process (RUN, `kiln run`).
    Run(RunSpec),
    /// Edit a filesystem (COPY, ADD, WORKDIR).
    Copy(CopySpec),
    /// Run a process inside a running container's namespaces (`kiln exec`).
    Exec(ExecSpec),
}

/// A process to start in the namespaces (mount, UTS, IPC, network, PID) of a running one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// A process of the container (host pid), usually its PID 1.
    pub pid: i32,
    /// argv; `args[0]` is looked up in `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// Environment, `KEY=value`; `PATH` and `HOME` get Docker's defaults when missing.
    pub env: Vec<String>,
    /// Working directory inside the container (`/` when empty).
    pub cwd: String,
    /// User, as in [`RunSpec::user`].
    pub user: String,
    /// Allocate a terminal for the command, as [`RunSpec::tty`].
    #[serde(default)]
    pub tty: bool,
    /// The container's confinement (the same as its PID 1's).
    #[serde(default)]
    pub security: Security,
}

/// An overlay root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    /// Read-only layers, newest first. Empty for `scratch`.
    pub lowers: Vec<PathBuf>,
    /// The writable layer; after the run it holds exactly the changes (overlay format).
    pub upper: PathBuf,
    /// Overlay's work dir: empty, on the same filesystem as `upper`.
    pub work: PathBuf,
}

/// Network namespace of a run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Network {
    /// A new network namespace with only `lo`, which is brought up.
    #[default]
    Loopback,
    /// The host's network namespace.
    Host,
    /// An existing network namespace, entered by `setns` on its pinned file (a bridge
    /// attachment prepared by the caller), with these /etc/hosts and /etc/resolv.conf.
    Join {
        /// The pinned namespace file (`/run/kiln/netns/<id>` or `/proc/<pid>/ns/net`).
        netns: PathBuf,
        /// Contents of /etc/hosts.
        hosts: String,
        /// Contents of /etc/resolv.conf.
        resolv_conf: String,
    },
}

/// A process to run in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// The root filesystem.
    pub rootfs: Rootfs,
    /// argv; `args[0]` is looked up in the `PATH` of `env` when it has no `/`.
    pub args: Vec<String>,
    /// Environment, `KEY=value`. `PATH` and `HOME` get Docker's defaults when missing.
    pub env: Vec<String>,
    /// Absolute working directory, created when missing.
    pub cwd: String,
    /// `""` (root), `name`, `uid`, `user:group`, `uid:gid`; resolved in the rootfs.
    pub user: String,
    /// Hostname inside the sandbox (also written to /etc/hostname).
    pub hostname: String,
    /// Network namespace.
    pub network: Network,
    /// Extra mounts (RUN --mount, volumes), applied in order after the standard ones.
    pub mounts: Vec<MountSpec>,
    /// Allocate a pseudo-terminal in the sandbox's devpts for the process (its controlling
    /// terminal and stdio); `__init` relays it to its own stdin and stdout.
    pub tty: bool,
    /// seccomp and friends (`--security-opt`).
    #[serde(default)]
    pub security: Security,
}

/// Confinement set by `--security-opt` (the device cgroup is not optional), and the limits of
/// `kiln build --ulimit/--shm-size`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// The seccomp filter of the process.
    pub seccomp: Seccomp,
    /// `RUN --security=insecure` (with `--allow security.insecure`), as BuildKit's insecure
    /// spec: every capability kiln has, no seccomp filter, no masked or read-only /proc paths,
    /// writable /sys and cgroup filesystem, no device policy and the host's kmsg, fuse, cuse,
    /// kvm, tun, loop-control and loop devices (as root; rootless, no devices or cgroups).
    #[serde(default)]
    pub privileged: bool,
    /// Resource limits set right before exec (`--ulimit nofile=1024:2048`).
    #[serde(default)]
    pub ulimits: Vec<Ulimit>,
    /// Size of the /dev/shm tmpfs in bytes (default 64 MiB, as docker).
    #[serde(default)]
    pub shm_size: Option<u64>,
    /// `--add-host NAME:IP`: (name, ip) lines appended to /etc/hosts.
    #[serde(default)]
    pub extra_hosts: Vec<(String, String)>,
    /// `kiln run --read-only`: the root overlay is made read-only once every mount is in place
    /// (only the root: /dev, /proc, volumes and the /etc files keep their own modes, as docker).
    #[serde(default)]
    pub read_only_rootfs: bool,
    /// `kiln run --cap-add`: `CAP_X` names or `ALL`, added to docker's default set.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// `kiln run --cap-drop`: `CAP_X` names or `ALL`, dropped before the adds (docker's order).
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// `kiln run --group-add`: group names (the root's /etc/group) or numeric gids.
    #[serde(default)]
    pub group_add: Vec<String>,
    /// `kiln run --init`: PID 1 is kiln's reaper, which forwards signals to the command.
    #[serde(default)]
    pub init: bool,
    /// `kiln run --dns/--dns-search/--dns-option`: /etc/resolv.conf instead of the network's.
    #[serde(default)]
    pub resolv_conf: Option<String>,
    /// `kiln run --privileged`: with [`Security::privileged`], every device node of the
    /// host's /dev (an insecure RUN step gets BuildKit's few).
    #[serde(default)]
    pub all_devices: bool,
    /// `kiln run --device`: the device cgroup allows these besides the default list.
    #[serde(default)]
    pub devices: Vec<DeviceAllow>,
}

/// One device a container may use besides the default list (`--device HOST:CTR:rwm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAllow {
    /// Block (`true`) or character device.
    pub block: bool,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Some of `r`, `w`, `m`.
    pub access: String,
    /// The node on the host, bound at `target`.
    pub source: PathBuf,
    /// Its path in the container.
    pub target: String,
}

/// One `--ulimit NAME=SOFT[:HARD]`; `None` is unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// docker's name of the resource (`nofile`, `nproc`, `core`, ...).
    pub name: String,
    /// The soft limit.
    pub soft: Option<u64>,
    /// The hard limit.
    pub hard: Option<u64>,
}

/// docker's `--ulimit` names, as accepted (`as` is RLIMIT_AS).
pub const ULIMIT_NAMES: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
    "as",
];

/// Which seccomp filter a sandbox's process gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Seccomp {
    /// Docker's default profile ([`crate::seccomp::Profile::docker_default`]).
    #[default]
    Default,
    /// No filter (`--security-opt seccomp=unconfined`).
    Unconfined,
    /// A profile in docker's format (`--security-opt seccomp=PROFILE.json`).
    Profile(Box<crate::seccomp::Profile>),
}

/// An extra mount inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Absolute path inside the sandbox; created (as a placeholder that never reaches the
    /// layer) when missing.
    pub target: String,
    /// What is mounted there.
    pub kind: MountKind,
    /// Mount read-only.
    pub readonly: bool,
}

/// What a [`MountSpec`] mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// A host file or directory that kiln made itself (a cache dir, a secret file, an agent
    /// socket), never a path that a Dockerfile names: those are [`MountKind::Tree`].
    Bind {
        /// Absolute host path.
        source: PathBuf,
    },
    /// A path inside a tree kiln holds (the layers of a stage or an image, the build
    /// context). The tree is mounted inside the sandbox's own mount namespace, so it never
    /// outlives the sandbox, and `path`, which the Dockerfile wrote and kiln does not trust,
    /// is resolved inside it by [`crate::fsroot`]: `..`, absolute paths and symlinks all stay
    /// in the tree (BuildKit's behaviour).
    Tree {
        /// The tree's directories, top first: an overlay of them, or the directory itself
        /// when there is one and no `scratch`.
        lowers: Vec<PathBuf>,
        /// Upper and work dir (empty, same filesystem) of a writable mount whose writes
        /// are thrown away afterwards; read-only without.
        scratch: Option<(PathBuf, PathBuf)>,
        /// The untrusted path in the tree (`/` or empty for its root).
        path: String,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Size limit in bytes.
        size: Option<u64>,
    },
    /// A mount `kiln run` was asked for (`-v`, `--mount`, `--tmpfs`); kept in the container's
    /// spec.json, so `kiln start` mounts it again and `kiln inspect` shows it.
    Container(ContainerMount),
}

/// A `kiln run` mount, as docker's (`-v`, `--mount`, `--tmpfs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerMount {
    /// A host path the caller named (the caller's choice, so trusted), bound recursively as
    /// docker's binds (no nosuid/nodev added).
    Bind {
        /// Absolute host path.
        source: PathBuf,
        /// The mode field as given (`ro`, `rw`, `""`), for `kiln inspect`.
        mode: String,
    },
    /// A kiln volume ([`crate::volume`]): its data directory, bound.
    Volume {
        /// The volume's name (64 hex digits for an anonymous one).
        name: String,
        /// Its data directory.
        source: PathBuf,
        /// Anonymous (`-v /path`): removed with the container by `--rm` and `rm -v`.
        anonymous: bool,
        /// Fill an empty volume from the image's content at the target before mounting it
        /// (docker's copy-up; `nocopy` turns it off).
        copy_up: bool,
        /// The mode field as given, for `kiln inspect`.
        mode: String,
    },
    /// A fresh tmpfs, nosuid, nodev and noexec as docker's.
    Tmpfs {
        /// `size=`, in bytes.
        size: Option<u64>,
        /// `mode=`, octal.
        mode: Option<u32>,
    },
}

/// Filesystem edits on an overlay root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopySpec {
    /// The destination root: tasks write into its upper dir.
    pub rootfs: Rootfs,
    /// Edits, applied in order.
    pub tasks: Vec<CopyTask>,
}

/// One filesystem edit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyTask {
    /// COPY or ADD.
    Copy {
        /// Where sources are read.
        from: CopyFrom,
        /// Source paths or wildcard patterns, relative to the source root.
        sources: Vec<String>,
        /// Absolute destination; a trailing `/` means "into this directory".
        dest: String,
        /// `--chown=user[:group]`.
        chown: Option<String>,
        /// `--chmod=` in octal.
        chmod: Option<String>,
        /// `--exclude=` patterns.
        exclude: Vec<String>,
        /// `--parents`.
        parents: bool,
        /// ADD: extract local tar archives.
        unpack_archives: bool,
    },
    /// Create a directory and its missing parents (WORKDIR).
    Mkdir {
        /// Absolute path.
        path: String,
        /// `user[:group]` owning created directories; empty = root.
        owner: String,
    },
}

/// Where COPY sources come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyFrom {
    /// The build context directory, filtered by `.dockerignore` patterns.
    Context {
        /// Absolute host path.
        dir: PathBuf,
        /// `.dockerignore` lines.
        ignore: Vec<String>,
    },
    /// A stage's filesystem, mounted read-only.
    Layers {
        /// Newest first.
        lowers: Vec<PathBuf>,
    },
}

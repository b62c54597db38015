//! The re-executed `kiln __init` process: sandbox setup for RUN, and the COPY driver.
//!
//! This process is single-threaded and synchronous (STYLE.md): it unshares namespaces, forks
//! the command's pid 1, and waits. Its exit status is the command's (128+N when killed by
//! signal N); a setup failure is 125 with one `kiln: ` line on stderr.
//!
//! RUN, step by step:
//! - parent: joins the device cgroup ([`crate::devices`]), writes /etc/hosts, resolv.conf
//!   and hostname into a state dir next to the overlay work dir, unshares pid, uts, ipc (and
//!   net unless the host network is asked for), sets the hostname, brings `lo` up, and forks;
//! - child (pid 1 of the new pid namespace): unshares the mount namespace and makes every mount
//!   private, mounts the overlay root with the new mount API (`lowerdir+`, so there is no
//!   ~37-layer limit), executes the [`crate::mounts`] plan with every target resolved inside
//!   the root (`RESOLVE_IN_ROOT`), pivot_roots, resolves the user in the root's /etc/passwd,
//!   creates and enters the working dir, drops capabilities to Docker's default set, sets
//!   no_new_privs, switches user, loads the seccomp filter ([`crate::seccomp`]) and execs;
//! - parent: reads the mount points the child had to create (through a close-on-exec pipe),
//!   waits, and deletes those placeholders from the upper dir so they never reach the layer.
//!   The child had its own mount namespace, so by then nothing is mounted any more.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::mount::{MountPropagationFlags, UnmountFlags};
use rustix::thread::{CapabilitySet, CapabilitySets, UnshareFlags};

use crate::fsroot;
use crate::mounts::{self, HostPaths, Step};

pub(crate) mod apply;
mod caps;
mod cgroupfs;
mod insecure;
mod populate;
pub mod reaper;
use crate::seccomp;
use crate::spec::{InitSpec, Network, RunSpec, Seccomp, Security};
use crate::sys;
use crate::user::{self, UserError};
pub(crate) use apply::mount_overlay;
use apply::{Reporter, execute};

/// Exit status for a sandbox setup failure (Docker uses 125 for its own errors).
pub const EXIT_SETUP: i32 = 125;
const EXIT_CANNOT_EXEC: i32 = 126;
const EXIT_NOT_FOUND: i32 = 127;

/// Docker's default `PATH`, used when the environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set (moby `oci/caps/defaults.go`).
pub fn default_capabilities() -> CapabilitySet {
    CapabilitySet::CHOWN
        | CapabilitySet::DAC_OVERRIDE
        | CapabilitySet::FSETID
        | CapabilitySet::FOWNER
        | CapabilitySet::MKNOD
        | CapabilitySet::NET_RAW
        | CapabilitySet::SETGID
        | CapabilitySet::SETUID
        | CapabilitySet::SETFCAP
        | CapabilitySet::SETPCAP
        | CapabilitySet::NET_BIND_SERVICE
        | CapabilitySet::SYS_CHROOT
        | CapabilitySet::KILL
        | CapabilitySet::AUDIT_WRITE
}

/// Why the sandbox could not be set up (or the command not started).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The arguments were not `__init <json>`.
    #[error("usage: __init <spec-json>")]
    Usage,
    /// The JSON did not parse.
    #[error("invalid sandbox spec")]
    Spec(#[source] serde_json::Error),
    /// RunSpec.args was empty.
    #[error("no command given")]
    NoCommand,
    /// A file or directory of the sandbox's own could not be written or read.
    #[error("{path}")]
    File {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A namespace operation failed.
    #[error("{what}")]
    Namespace {
        /// What was attempted.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The overlay root could not be mounted.
    #[error("mounting overlay root (upper {upper}, {lowers} lower dirs)")]
    Overlay {
        /// Upper dir (or the first lower for a read-only overlay).
        upper: PathBuf,
        /// Number of lower dirs.
        lowers: usize,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Rootless: the kernel refused overlayfs in the user namespace.
    #[error(
        "mounting overlay root (upper {upper}) in a user namespace (rootless): the kernel's \
         overlayfs refused it (it needs Linux 5.11 or later and a store on a filesystem that \
         supports user xattrs: ext4, xfs, btrfs, tmpfs; not overlayfs itself or FUSE), and the \
         fuse-overlayfs fallback failed: {fuse}\n\
         hint: put KILN_ROOT on such a filesystem, or install fuse-overlayfs and make /dev/fuse \
         usable (KILN_ROOTLESS_OVERLAY=fuse|native chooses one)"
    )]
    OverlayRootless {
        /// Upper dir (or the first lower for a read-only overlay).
        upper: PathBuf,
        /// Why fuse-overlayfs did not do instead.
        fuse: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A lower dir could not be added to the overlay.
    #[error("adding overlay lower dir {path}")]
    Lower {
        /// The lower dir.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A mount of the plan failed.
    #[error("mounting {what} on {target}")]
    Mount {
        /// Filesystem type or bind source.
        what: String,
        /// Path inside the sandbox.
        target: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A mount point could not be created.
    #[error("creating mount point {path}")]
    MountPoint {
        /// Path inside the sandbox.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The user could not be resolved.
    #[error(transparent)]
    User(#[from] UserError),
    /// Switching to the user failed.
    #[error("switching to user {user:?}")]
    Credentials {
        /// The USER spec.
        user: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The working directory could not be created or entered.
    #[error("working directory {path}")]
    Cwd {
        /// The directory.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The command was not found.
    #[error("{cmd}: executable file not found in $PATH")]
    NotFound {
        /// `argv[0]`.
        cmd: String,
    },
    /// execve failed.
    #[error("exec {cmd}")]
    Exec {
        /// `argv[0]`.
        cmd: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The device policy could not be applied.
    #[error("device policy")]
    Devices(#[from] crate::devices::DeviceError),
    /// `kiln exec` could not join the container's cgroups.
    #[error("joining the container's cgroups")]
    Cgroup(#[source] crate::cgroup::CgroupError),
    /// A `--ulimit` could not be set.
    #[error("setting ulimit {name}")]
    Ulimit {
        /// Its docker name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The seccomp profile could not be compiled.
    #[error("seccomp profile")]
    Seccomp(#[from] seccomp::SeccompError),
    /// The kernel refused the seccomp filter.
    #[error("loading the seccomp filter")]
    SeccompLoad(#[source] io::Error),
    /// A COPY/ADD/WORKDIR task failed.
    #[error(transparent)]
    Copy(#[from] crate::copy::CopyError),
}

type Result<T> = std::result::Result<T, InitError>;

impl InitError {
    fn exit_code(&self) -> i32 {
        match self {
            InitError::NotFound { .. } => EXIT_NOT_FOUND,
            InitError::Exec { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                EXIT_NOT_FOUND
            }
            InitError::Exec { .. } => EXIT_CANNOT_EXEC,
            _ => EXIT_SETUP,
        }
    }
}

/// Renders an error and its causes on one line: `kiln: a: b: c`.
pub(crate) fn render(err: &dyn std::error::Error) -> String {
    let mut line = format!("kiln: {err}");
    let mut cur = err.source();
    while let Some(e) = cur {
        line.push_str(&format!(": {e}"));
        cur = e.source();
    }
    line
}

fn fail(err: &InitError) -> ! {
    let mut stderr = io::stderr().lock();
    // Nothing sensible to do if stderr is gone: the exit status still says it.
    let _ = writeln!(stderr, "{}", render(err));
    let _ = stderr.flush();
    sys::exit_immediately(err.exit_code())
}

/// Entry point of the hidden `kiln __init` subcommand. Never returns. Exit status = the
/// command's (128+N when killed by signal N); setup or copy failure = 125 with one line on
/// stderr starting `kiln: ` that names the path/user at fault.
///
/// `args` is the process's argv; the spec is the argument after `__init`.
pub fn main(args: Vec<String>) -> ! {
    let spec = match parse_args(&args) {
        Ok(spec) => spec,
        Err(e) => fail(&e),
    };
    let code = match spec {
        InitSpec::Run(run) => run_sandbox(&run),
        InitSpec::Copy(copy) => crate::copy::run(&copy).map(|()| 0),
        InitSpec::Exec(exec) => exec_in(&exec),
    };
    match code {
        Ok(code) => {
            let _ = io::stdout().flush();
            std::process::exit(code)
        }
        Err(e) => fail(&e),
    }
}

fn parse_args(args: &[String]) -> Result<InitSpec> {
    let pos = args
        .iter()
        .position(|a| a == "__init")
        .ok_or(InitError::Usage)?;
    let json = args.get(pos + 1).ok_or(InitError::Usage)?;
    serde_json::from_str(json).map_err(InitError::Spec)
}

pub(crate) fn file_err(path: &Path) -> impl FnOnce(io::Error) -> InitError + '_ {
    move |source| InitError::File {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn ns_err(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> InitError {
    move |e| InitError::Namespace {
        what,
        source: e.into(),
    }
}

/// A directory next to the overlay work dir holding the generated /etc files, the mount point
/// of the root and an empty dir (the lower of a scratch root). Removed on drop.
#[derive(Debug)]
pub(crate) struct StateDir {
    pub(crate) path: PathBuf,
}

impl StateDir {
    pub(crate) fn create(work: &Path) -> Result<StateDir> {
        let parent = work.parent().unwrap_or(Path::new("/"));
        let path = parent.join(format!(".kiln-init-{}", std::process::id()));
        // A stale one from a killed run with a recycled pid (nothing is mounted in it: the
        // mount namespace that had mounts there died with that run).
        if path.exists() {
            drop(StateDir { path: path.clone() });
        }
        std::fs::create_dir(&path).map_err(file_err(&path))?;
        let state = StateDir { path };
        for d in ["root", "empty"] {
            let p = state.path.join(d);
            std::fs::create_dir(&p).map_err(file_err(&p))?;
        }
        Ok(state)
    }
}

impl Drop for StateDir {
    /// Never recursive: a directory that is still a mount point (in this mount namespace)
    /// must not be emptied through the mount; `rmdir` just fails with EBUSY there.
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(&self.path) {
            for e in rd.flatten() {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(&p);
                } else {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn run_sandbox(spec: &RunSpec) -> Result<i32> {
    if spec.args.is_empty() {
        return Err(InitError::NoCommand);
    }
    // The device policy, or for `RUN --security=insecure` out of it with what the host adds.
    let insecure = match spec.security.privileged {
        false => {
            confine_devices_with(&spec.security.devices)?;
            mounts::InsecureHost::default()
        }
        true => insecure::host(spec.security.all_devices)?,
    };
    // After joining the cgroups above: the sandbox's own.
    let cgroups = cgroupfs::own(spec.security.privileged && insecure.writable_cgroups)?;
    let private_cgroupns = cgroupfs::private_namespace(&cgroups);
    let state = StateDir::create(&spec.rootfs.work)?;
    let read_host = |p: &str| std::fs::read_to_string(p).ok();
    for (name, text) in mounts::etc_files(
        spec,
        read_host("/etc/hosts").as_deref(),
        read_host("/etc/resolv.conf").as_deref(),
    ) {
        let p = state.path.join(name);
        std::fs::write(&p, text).map_err(file_err(&p))?;
    }
    let masked: Vec<Option<bool>> = mounts::MASKED_PATHS
        .iter()
        .map(|p| std::fs::metadata(p).ok().map(|m| m.is_dir()))
        .collect();
    let host = HostPaths {
        dev: "/dev".into(),
        state: state.path.clone(),
        cgroups,
        insecure,
    };
    let plan = mounts::plan(spec, &host, &masked);
    let before = upper_dirs_on_paths(&spec.rootfs.upper, &plan);

    let mut flags = UnshareFlags::NEWPID | UnshareFlags::NEWUTS | UnshareFlags::NEWIPC;
    if let Network::Join { netns, .. } = &spec.network {
        let ns = std::fs::File::open(netns).map_err(file_err(netns))?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(ns_err("joining the network namespace"))?;
    }
    if spec.network == Network::Loopback {
        flags |= UnshareFlags::NEWNET;
    }
    if private_cgroupns {
        flags |= UnshareFlags::NEWCGROUP;
    }
    sys::unshare(flags).map_err(ns_err("unsharing namespaces"))?;
    rustix::system::sethostname(spec.hostname.as_bytes()).map_err(ns_err("setting hostname"))?;
    if spec.network == Network::Loopback {
        sys::loopback_up().map_err(|source| InitError::Namespace {
            what: "bringing up lo",
            source,
        })?;
    }

    let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(ns_err("creating a pipe"))?;
    // Signals sent to this process (`kill`, a terminal, a supervisor) are relayed to pid 1:
    // they queue while blocked and are forwarded from the wait loop.
    let old_mask = sys::block_relayed_signals().map_err(|source| InitError::Namespace {
        what: "blocking signals",
        source,
    })?;
    let (console, console_child) = console_pair(spec.tty)?;
    let child = sys::fork().map_err(|source| InitError::Namespace {
        what: "fork",
        source,
    })?;
    let pid = match child {
        sys::Forked::Child => {
            drop(reader);
            drop(console);
            let err = match sys::restore_signal_mask(&old_mask)
                .map_err(|source| InitError::Namespace {
                    what: "restoring the signal mask",
                    source,
                })
                .and_then(|()| child_main(spec, &state.path, &plan, writer, console_child))
            {
                Err(e) => e,
                Ok(never) => match never {},
            };
            fail(&err)
        }
        sys::Forked::Parent(pid) => pid,
    };
    drop(writer);
    drop(console_child);
    let mut report = String::new();
    // The pipe closes when the child execs or dies; a read error only loses cleanup hints.
    let _ = std::fs::File::from(reader).read_to_string(&mut report);
    let status = wait_or_relay(pid, console)?;
    let created: Vec<&str> = report.lines().collect();
    remove_placeholders(&spec.rootfs, &created, &before, &plan);
    drop(state);
    Ok(status)
}

/// [`confine_devices`], with `kiln run --device`'s devices allowed too when there are any
/// ([`crate::devices::confine_self_with`]).
fn confine_devices_with(extra: &[crate::spec::DeviceAllow]) -> Result<()> {
    use crate::devices::{Kind, MKNOD, READ, Rule, WRITE};
    if extra.is_empty() || crate::rootless::in_user_namespace() {
        return confine_devices();
    }
    let rules: Vec<Rule> = extra
        .iter()
        .map(|d| Rule {
            kind: if d.block { Kind::Block } else { Kind::Char },
            major: Some(d.major),
            minor: Some(d.minor),
            access: [('r', READ), ('w', WRITE), ('m', MKNOD)]
                .into_iter()
                .filter(|(c, _)| d.access.contains(*c))
                .fold(0, |a, (_, b)| a | b),
        })
        .collect();
    Ok(crate::devices::confine_self_with(&rules)?)
}

/// Puts this process, and so the sandbox it forks, under the device policy
/// ([`crate::devices`]); usually it was born there. It opens no device itself afterwards:
/// stdio is inherited.
fn confine_devices() -> Result<()> {
    // Rootless: no device cgroup can be joined; the user namespace cannot create device nodes
    // and the sandbox's /dev holds only bind mounts of the host's harmless ones.
    if crate::rootless::in_user_namespace() {
        return Ok(());
    }
    Ok(crate::devices::confine_self()?)
}

/// With `tty`, the socket pair a pty master travels on (see [`crate::tty`]).
fn console_pair(tty: bool) -> Result<(Option<OwnedFd>, Option<OwnedFd>)> {
    if !tty {
        return Ok((None, None));
    }
    let (parent, child) = crate::tty::console_socket().map_err(|source| InitError::Namespace {
        what: "creating the console socket",
        source,
    })?;
    Ok((Some(parent), Some(child)))
}

/// Waits for `pid` like [`wait`]; with a console socket, first receives the pty master and
/// relays the terminal until then.
fn wait_or_relay(pid: i32, console: Option<OwnedFd>) -> Result<i32> {
    let tty_err = |source| InitError::Namespace {
        what: "relaying the terminal",
        source,
    };
    let master = match console {
        Some(sock) => crate::tty::receive_master(sock).map_err(tty_err)?,
        None => None,
    };
    match (master, rustix::process::Pid::from_raw(pid)) {
        (Some(m), Some(p)) => crate::tty::relay(m, p).map_err(tty_err),
        _ => wait(pid),
    }
}

/// Waits for pid 1 to exit, relaying the signals this process gets to it.
fn wait(pid: i32) -> Result<i32> {
    let pid = rustix::process::Pid::from_raw(pid).ok_or(InitError::Namespace {
        what: "fork returned pid 0 in the parent",
        source: io::Error::from(io::ErrorKind::InvalidData),
    })?;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return Ok(code);
                }
                if let Some(sig) = status.terminating_signal() {
                    return Ok(128 + sig);
                }
            }
            Ok(None) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(ns_err("waiting for the sandbox")(e)),
        }
        let sig = sys::wait_signal().map_err(|source| InitError::Namespace {
            what: "waiting for signals",
            source,
        })?;
        if sig != libc::SIGCHLD
            && let Some(signal) = rustix::process::Signal::from_named_raw(sig)
        {
            // The child may be gone already; its exit is collected on the next turn.
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

/// Which directories along the plan's targets already exist in the upper dir, so that the
/// cleanup can tell a directory the command made from one overlay copied up for a mount point.
fn upper_dirs_on_paths(upper: &Path, plan: &[Step]) -> BTreeSet<String> {
    let Ok(root) = fsroot::Root::open(upper) else {
        return BTreeSet::new();
    };
    plan.iter()
        .flat_map(|s| mounts::ancestors(s.target()))
        .filter(|a| root.lstat(a).is_ok_and(|st| st.is_some()))
        .collect()
}

/// Removes, from the upper dir, the mount points the child created (if still empty) and the
/// directories overlay copied up only to hold them (if empty and unchanged from the lower).
///
/// The command ran in between and may have put symlinks in the upper dir (`/a -> /host/dir`),
/// so every path is resolved inside the upper dir by [`fsroot`], never joined onto it.
fn remove_placeholders(
    rootfs: &crate::spec::Rootfs,
    created: &[&str],
    before: &BTreeSet<String>,
    plan: &[Step],
) {
    let Ok(upper) = fsroot::Root::open(&rootfs.upper) else {
        return;
    };
    for path in created.iter().rev() {
        match upper.lstat(path) {
            Ok(Some(st)) if is_kind(&st, FileType::RegularFile) && st.st_size == 0 => {
                remove_in(&upper, path, false);
            }
            Ok(Some(st)) if is_kind(&st, FileType::Directory) => remove_in(&upper, path, true),
            _ => {}
        }
    }
    let mut copied_up: Vec<String> = plan
        .iter()
        .flat_map(|s| mounts::ancestors(s.target()))
        .filter(|a| !before.contains(a))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Deepest first.
    copied_up.sort_by_key(|a| std::cmp::Reverse(a.matches('/').count()));
    let lowers: Vec<fsroot::Root> = rootfs
        .lowers
        .iter()
        .filter_map(|l| fsroot::Root::open(l).ok())
        .collect();
    for dir in copied_up {
        let Ok(Some(m)) = upper.lstat(&dir) else {
            continue;
        };
        if !is_kind(&m, FileType::Directory) {
            continue;
        }
        // Opened without following a final symlink: the directory itself.
        let Ok(fd) = upper.open_at(
            &dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Mode::empty(),
        ) else {
            continue;
        };
        if !is_empty_dir(&fd) || is_opaque(&fd) {
            continue;
        }
        let lower = lowers.iter().find_map(|l| l.lstat(&dir).ok().flatten());
        if let Some(l) = lower
            && is_kind(&l, FileType::Directory)
            && l.st_mode == m.st_mode
            && l.st_uid == m.st_uid
            && l.st_gid == m.st_gid
        {
            remove_in(&upper, &dir, true);
        }
    }
}

fn is_kind(st: &rustix::fs::Stat, kind: FileType) -> bool {
    FileType::from_raw_mode(st.st_mode) == kind
}

/// Unlinks `path` (a directory with `dir`) in its parent resolved inside `root`.
fn remove_in(root: &fsroot::Root, path: &str, dir: bool) {
    if let Ok(Some((parent, name))) = root.parent(path) {
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        let _ = rustix::fs::unlinkat(&parent, name, flags);
    }
}

fn is_empty_dir(fd: &OwnedFd) -> bool {
    let Ok(dup) = rustix::io::fcntl_dupfd_cloexec(fd, 0) else {
        return false;
    };
    let Ok(mut dir) = rustix::fs::Dir::new(dup) else {
        return false;
    };
    dir.all(|e| {
        e.is_ok_and(|e| {
            let n = e.file_name().to_bytes();
            n == b"." || n == b".."
        })
    })
}

fn is_opaque(fd: &OwnedFd) -> bool {
    let mut buf = [0u8; 8];
    rustix::fs::fgetxattr(fd, "trusted.overlay.opaque", &mut buf).is_ok()
        || rustix::fs::fgetxattr(fd, "user.overlay.opaque", &mut buf).is_ok()
}

fn child_main(
    spec: &RunSpec,
    state: &Path,
    plan: &[Step],
    report: OwnedFd,
    console: Option<OwnedFd>,
) -> Result<Infallible> {
    sys::die_with_parent().map_err(|source| InitError::Namespace {
        what: "setting the parent-death signal",
        source,
    })?;
    // `__init` may have died between the fork and the prctl above, which then never fires:
    // its end of the report pipe is closed in that case, so stop here.
    if sys::pipe_reader_gone(report.as_fd()) {
        sys::exit_immediately(EXIT_SETUP);
    }
    sys::unshare(UnshareFlags::NEWNS).map_err(ns_err("unsharing the mount namespace"))?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(ns_err("making mounts private"))?;

    let root_path = state.join("root");
    let lowers: Vec<PathBuf> = if spec.rootfs.lowers.is_empty() {
        vec![state.join("empty")]
    } else {
        spec.rootfs.lowers.clone()
    };
    mount_overlay(
        &lowers,
        Some((&spec.rootfs.upper, &spec.rootfs.work)),
        &root_path,
    )?;
    let root = rustix::fs::open(
        &root_path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| file_err(&root_path)(e.into()))?;
    let mut created = Reporter {
        fd: report,
        root_path: root_path.clone(),
        overlay_dev: rustix::fs::fstat(&root)
            .map_err(|e| file_err(&root_path)(e.into()))?
            .st_dev,
        empty: state.join("empty"),
    };
    for step in plan {
        execute(step, &root, &mut created)?;
    }

    rustix::process::chdir(&root_path).map_err(|e| file_err(&root_path)(e.into()))?;
    rustix::process::pivot_root(".", ".").map_err(ns_err("pivot_root"))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH).map_err(ns_err("detaching the old root"))?;
    rustix::process::chdir("/").map_err(ns_err("chdir /"))?;

    let passwd = std::fs::read_to_string("/etc/passwd").ok();
    let group = std::fs::read_to_string("/etc/group").ok();
    let id = user::resolve(&spec.user, passwd.as_deref(), group.as_deref())?;
    let id = caps::add_groups(id, &spec.security.group_add, group.as_deref())?;
    let env = complete_env(&spec.env, &id.home);

    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    let cwd_err = |source| InitError::Cwd {
        path: cwd.to_string(),
        source,
    };
    std::fs::create_dir_all(cwd).map_err(cwd_err)?;
    std::env::set_current_dir(cwd).map_err(cwd_err)?;
    if spec.security.read_only_rootfs {
        // Once the working directory exists (docker makes it at create time): only the root's
        // own mount, what is mounted on it keeps its modes (as runc's remount of `/`).
        sys::mount_setattr_top(&root, sys::attr::RDONLY).map_err(|source| InitError::Mount {
            what: "the read-only root".into(),
            target: "/".into(),
            source,
        })?;
    }

    if let Some(sock) = console {
        crate::tty::take_new_pty(sock).map_err(|source| InitError::Namespace {
            what: "allocating a terminal",
            source,
        })?;
    }

    exec_as(&spec.args, &env, &spec.user, &id, &spec.security)
}

/// `kiln exec`: joins the namespaces of `spec.pid` (all handles opened first, the mount
/// namespace last, which also moves the root and cwd to the container's root), forks so the
/// child is inside the PID namespace, and runs the command there; returns its exit code.
fn exec_in(spec: &crate::spec::ExecSpec) -> Result<i32> {
    use rustix::thread::LinkNameSpaceType as T;
    if spec.args.is_empty() {
        return Err(InitError::NoCommand);
    }
    let kinds = [
        ("ipc", T::InterProcessCommunication),
        ("uts", T::HostNameAndNISDomainName),
        ("net", T::Network),
        ("pid", T::ProcessID),
        ("mnt", T::Mount),
    ];
    // While the host's cgroup filesystems are still in view: the container's cgroups (its
    // limits hold for the command too, as runc's exec joins them), then the device policy.
    cgroupfs::join_those_of(spec.pid)?;
    confine_devices_with(&spec.security.devices)?;
    // Opened while this process's own /proc is in view (see `sys::fork_with`).
    let tasks = PathBuf::from("/proc/self/task");
    let tasks = std::fs::File::open(&tasks).map_err(file_err(&tasks))?;
    let mut handles = Vec::new();
    for (name, kind) in kinds {
        let p = PathBuf::from(format!("/proc/{}/ns/{name}", spec.pid));
        handles.push((std::fs::File::open(&p).map_err(file_err(&p))?, kind));
    }
    // A container with a cgroup namespace of its own (cgroup v2): the process joins it, as
    // `docker exec` does; joined first, while the mount namespace is still this one.
    let cgroupns = PathBuf::from(format!("/proc/{}/ns/cgroup", spec.pid));
    let inode = |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    if inode(&cgroupns).map_err(file_err(&cgroupns))?
        != inode(Path::new("/proc/self/ns/cgroup")).map_err(file_err(Path::new("/proc/self")))?
    {
        let f = std::fs::File::open(&cgroupns).map_err(file_err(&cgroupns))?;
        handles.insert(0, (f, T::ControlGroup));
    }
    for (f, kind) in &handles {
        rustix::thread::move_into_link_name_space(std::os::fd::AsFd::as_fd(f), Some(*kind))
            .map_err(ns_err("joining the container's namespaces"))?;
    }
    drop(handles);
    // As for RUN: signals to this process are relayed to the command, and `wait` needs
    // SIGCHLD blocked so that it queues for sigwaitinfo.
    let old_mask = sys::block_relayed_signals().map_err(|source| InitError::Namespace {
        what: "blocking signals",
        source,
    })?;
    let (console, console_child) = console_pair(spec.tty)?;
    let child = sys::fork_with(&tasks).map_err(|source| InitError::Namespace {
        what: "fork",
        source,
    })?;
    drop(tasks);
    match child {
        sys::Forked::Child => {
            drop(console);
            let err = match sys::restore_signal_mask(&old_mask)
                .map_err(|source| InitError::Namespace {
                    what: "restoring the signal mask",
                    source,
                })
                .and_then(|()| exec_child(spec, console_child))
            {
                Err(e) => e,
                Ok(never) => match never {},
            };
            // docker's exec: a command that cannot be started, found or not, is 126 (its
            // run says 127 for one not found).
            let mut stderr = io::stderr().lock();
            let _ = writeln!(stderr, "{}", render(&err));
            let _ = stderr.flush();
            let code = match err.exit_code() {
                EXIT_NOT_FOUND => EXIT_CANNOT_EXEC,
                c => c,
            };
            sys::exit_immediately(code)
        }
        sys::Forked::Parent(pid) => {
            drop(console_child);
            wait_or_relay(pid, console)
        }
    }
}

fn exec_child(spec: &crate::spec::ExecSpec, console: Option<OwnedFd>) -> Result<Infallible> {
    sys::die_with_parent().map_err(|source| InitError::Namespace {
        what: "setting the parent-death signal",
        source,
    })?;
    let passwd = std::fs::read_to_string("/etc/passwd").ok();
    let group = std::fs::read_to_string("/etc/group").ok();
    let id = user::resolve(&spec.user, passwd.as_deref(), group.as_deref())?;
    let id = caps::add_groups(id, &spec.security.group_add, group.as_deref())?;
    let env = complete_env(&spec.env, &id.home);
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    std::env::set_current_dir(cwd).map_err(|source| InitError::Cwd {
        path: cwd.to_string(),
        source,
    })?;
    if let Some(sock) = console {
        crate::tty::take_new_pty(sock).map_err(|source| InitError::Namespace {
            what: "allocating a terminal",
            source,
        })?;
    }
    // `--init` is the container's PID 1; an exec'd command is not under a reaper (docker's).
    let security = Security {
        init: false,
        ..spec.security.clone()
    };
    exec_as(&spec.args, &env, &spec.user, &id, &security)
}

/// The last step of RUN and `kiln exec`: finds `args[0]` on the `PATH` of `env` (while still
/// privileged), compiles the seccomp filter, drops to `user`/`id`, loads the filter and
/// execs. Returns only on failure.
fn exec_as(
    args: &[String],
    env: &[String],
    user: &str,
    id: &user::Identity,
    security: &Security,
) -> Result<Infallible> {
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    let exe = find_executable(&args[0], &path_var)?;
    let keep = caps::capabilities(security).map_err(|source| InitError::Credentials {
        user: user.to_string(),
        source,
    })?;
    let filter = match security.privileged {
        true => None,
        false => seccomp_filter(&security.seccomp, keep)?,
    };
    set_ulimits(&security.ulimits)?;
    drop_privileges(user, id, security.privileged, keep)?;

    let cstr =
        |s: &str| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let to_exec_err = |source| InitError::Exec {
        cmd: args[0].clone(),
        source,
    };
    let argv: Vec<CString> = args
        .iter()
        .map(|a| cstr(a))
        .collect::<io::Result<_>>()
        .map_err(to_exec_err)?;
    let envp: Vec<CString> = env
        .iter()
        .map(|a| cstr(a))
        .collect::<io::Result<_>>()
        .map_err(to_exec_err)?;
    let path = CString::new(exe.as_os_str().as_bytes())
        .map_err(|e| to_exec_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // Last, so that nothing of kiln's own runs under the filter; no_new_privs is set.
    if let Some(f) = &filter {
        sys::load_seccomp(&f.program).map_err(InitError::SeccompLoad)?;
    }
    if security.init {
        return match reaper::exec_under_reaper(&path, &argv, &envp) {
            Err(source) => Err(InitError::Namespace {
                what: "starting the init process",
                source,
            }),
            Ok(never) => match never {},
        };
    }
    Err(to_exec_err(sys::execve(&path, &argv, &envp)))
}

/// The filter `mode` asks for, compiled for this machine and Docker's capability set; None
/// when unconfined.
fn seccomp_filter(mode: &Seccomp, caps: CapabilitySet) -> Result<Option<seccomp::Filter>> {
    let default;
    let profile = match mode {
        Seccomp::Unconfined => return Ok(None),
        Seccomp::Default => {
            default = seccomp::Profile::docker_default();
            &default
        }
        Seccomp::Profile(p) => p.as_ref(),
    };
    let release = rustix::system::uname();
    let release = release.release().to_string_lossy();
    let caps = seccomp::capability_names(caps);
    let target = seccomp::Target::native(caps, &release)?;
    Ok(Some(seccomp::compile(profile, &target)?))
}

/// `env` plus Docker's defaults for `PATH` and `HOME` when they are missing.
pub fn complete_env(env: &[String], home: &str) -> Vec<String> {
    let mut env = env.to_vec();
    let has = |env: &[String], k: &str| env.iter().any(|e| e.split('=').next() == Some(k));
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    env
}

/// Finds `cmd` like execvp: as is when it has a `/`, else in each `PATH` entry (an empty
/// entry is the working directory).
///
/// Fails with [`InitError::NotFound`] when no executable regular file matches.
pub fn find_executable(cmd: &str, path: &str) -> Result<PathBuf> {
    if cmd.contains('/') {
        return Ok(PathBuf::from(cmd));
    }
    for dir in path.split(':') {
        let candidate = if dir.is_empty() {
            PathBuf::from(cmd)
        } else {
            Path::new(dir).join(cmd)
        };
        if let Ok(m) = std::fs::metadata(&candidate)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    Err(InitError::NotFound {
        cmd: cmd.to_string(),
    })
}

/// Sets the `--ulimit` resource limits (still as root, so hard limits may rise).
fn set_ulimits(limits: &[crate::spec::Ulimit]) -> Result<()> {
    use rustix::process::{Resource, Rlimit};
    for l in limits {
        let resource = match l.name.as_str() {
            "core" => Resource::Core,
            "cpu" => Resource::Cpu,
            "data" => Resource::Data,
            "fsize" => Resource::Fsize,
            "locks" => Resource::Locks,
            "memlock" => Resource::Memlock,
            "msgqueue" => Resource::Msgqueue,
            "nice" => Resource::Nice,
            "nofile" => Resource::Nofile,
            "nproc" => Resource::Nproc,
            "rss" => Resource::Rss,
            "rtprio" => Resource::Rtprio,
            "rttime" => Resource::Rttime,
            "sigpending" => Resource::Sigpending,
            "stack" => Resource::Stack,
            "as" => Resource::As,
            other => {
                return Err(InitError::Ulimit {
                    name: other.to_owned(),
                    source: io::Error::from(io::ErrorKind::InvalidInput),
                });
            }
        };
        let limit = Rlimit {
            current: l.soft,
            maximum: l.hard,
        };
        rustix::process::setrlimit(resource, limit).map_err(|e| InitError::Ulimit {
            name: l.name.clone(),
            source: e.into(),
        })?;
    }
    Ok(())
}

fn drop_privileges(
    user_spec: &str,
    id: &user::Identity,
    privileged: bool,
    keep: CapabilitySet,
) -> Result<()> {
    let cred = |source: io::Error| InitError::Credentials {
        user: user_spec.to_string(),
        source,
    };
    let errno = |e: rustix::io::Errno| cred(e.into());
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    // `keep` ([`capabilities`]): privileged, every capability kiln itself has (a container
    // around kiln may hold fewer than the kernel knows).
    for cap in 0..=last {
        if cap < 64 && !keep.contains(CapabilitySet::from_bits_retain(1 << cap)) {
            sys::drop_bounding_capability(cap).map_err(cred)?;
        }
    }
    rustix::thread::clear_ambient_capability_set().map_err(errno)?;
    rustix::thread::set_no_new_privs(true).map_err(errno)?;
    let groups: Vec<rustix::process::Gid> = id
        .groups
        .iter()
        .map(|g| rustix::process::Gid::from_raw(*g))
        .collect();
    match rustix::thread::set_thread_groups(&groups) {
        // Rootless with a single id: setgroups is denied in the user namespace (the
        // kernel's condition for an unprivileged gid_map), so the process keeps the groups
        // it was started with, which the namespace shows as unmapped (65534).
        Err(rustix::io::Errno::PERM)
            if std::fs::read_to_string("/proc/self/setgroups")
                .is_ok_and(|s| s.trim() == "deny") => {}
        r => r.map_err(errno)?,
    }
    // Insecure as another user: BuildKit's insecure spec puts every capability in the
    // inheritable and ambient sets too, so the user's process keeps them across setresuid
    // and exec.
    let ambient = privileged && id.uid != 0;
    if ambient {
        rustix::thread::set_keep_capabilities(true).map_err(errno)?;
    }
    let gid = rustix::process::Gid::from_raw(id.gid);
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(errno)?;
    let uid = rustix::process::Uid::from_raw(id.uid);
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(errno)?;
    // Otherwise a non-root uid already lost every capability in the setresuid above.
    if id.uid == 0 || ambient {
        rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective: keep,
                permitted: keep,
                inheritable: if ambient {
                    keep
                } else {
                    CapabilitySet::empty()
                },
            },
        )
        .map_err(errno)?;
    }
    if ambient {
        for bit in 0..64 {
            let cap = CapabilitySet::from_bits_retain(1 << bit);
            if keep.contains(cap) {
                rustix::thread::configure_capability_in_ambient_set(cap, true).map_err(errno)?;
            }
        }
        rustix::thread::set_keep_capabilities(false).map_err(errno)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_path_and_home_get_docker_defaults() {
        let env = complete_env(&["A=1".into()], "/home/u");
        assert_eq!(
            env,
            vec!["A=1", &format!("PATH={DEFAULT_PATH}"), "HOME=/home/u"]
        );
    }

    #[test]
    fn given_path_and_home_are_kept() {
        let env = complete_env(&["PATH=/x".into(), "HOME=/h".into()], "/root");
        assert_eq!(env, vec!["PATH=/x", "HOME=/h"]);
    }

    #[test]
    fn executable_lookup_follows_path_order_and_skips_non_executables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).expect("mkdir");
        std::fs::create_dir_all(&b).expect("mkdir");
        std::fs::write(a.join("tool"), "").expect("write");
        std::fs::write(b.join("tool"), "").expect("write");
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let path = format!("{}:{}", a.display(), b.display());
        assert_eq!(
            find_executable("tool", &path).expect("found"),
            b.join("tool")
        );
        let err = find_executable("nope", &path).expect_err("missing");
        assert_eq!(err.to_string(), "nope: executable file not found in $PATH");
        assert_eq!(err.exit_code(), 127);
    }

    #[test]
    fn spec_comes_after_the_init_argument() {
        let spec = InitSpec::Copy(crate::spec::CopySpec {
            rootfs: crate::spec::Rootfs {
                lowers: vec![],
                upper: "/u".into(),
                work: "/w".into(),
            },
            tasks: vec![],
        });
        let json = serde_json::to_string(&spec).expect("json");
        let args = vec!["kiln".to_string(), "__init".into(), json];
        assert_eq!(parse_args(&args).expect("parsed"), spec);
        assert!(matches!(parse_args(&args[..2]), Err(InitError::Usage)));
    }

    #[test]
    fn errors_render_on_one_line_with_causes() {
        let e = InitError::Mount {
            what: "proc".into(),
            target: "/proc".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        let line = render(&e);
        assert!(line.starts_with("kiln: mounting proc on /proc: "), "{line}");
        assert!(!line.contains('\n'));
    }
}

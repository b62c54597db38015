//! The device policy of every sandbox: runc's default device list, enforced by the device
//! cgroup (the v1 `devices` controller, or an eBPF program on cgroup v2).
//!
//! A process may create any device node (`c *:* m`, `b *:* m`, as runc allows mknod) but
//! open only the [`DEFAULT_RULES`] devices: null, zero, full, random, urandom, tty, console,
//! ptmx, the pts ptys and tun/tap. Docker's containers get exactly this list (runc's
//! `AllowedDevices`, libcontainer/specconv; a container's `devices.list` on this project's
//! machines shows the same twelve lines). A node for the host's disk made with mknod can
//! therefore not be read or written.
//!
//! The policy is the same for every sandbox, so every sandbox joins one cgroup that carries it
//! instead of paying for a cgroup of its own:
//! - v1 (`devices` controller mounted, hybrid hosts): `<devices>/kiln/sandbox`. It is
//!   configured under a temporary name and renamed into place, so that whoever finds it
//!   finds it complete.
//! - v2: the program is attached (`BPF_F_ALLOW_MULTI`, so it applies to every descendant)
//!   to `<unified>/kiln`, the parent of the containers' limit cgroups too; a process already
//!   below `kiln` (a container with limits) stays where it is, others join `kiln/sandbox`.
//!   The program carries a versioned name ([`PROGRAM_NAME`]) by which an attached one is
//!   recognised.
//!
//! Moving a process into a cgroup can wait for an RCU grace period (~15 ms on this project's
//! machines), more than a whole RUN costs otherwise. So the kiln process that starts
//! sandboxes joins once ([`confine_self`]) and every sandbox is born inside; `__init` checks
//! `/proc/self/cgroup` and joins only when it was started from elsewhere.
//!
//! A host where neither is possible fails the sandbox: kiln does not run untrusted code
//! without a device policy.

use std::io;
use std::path::{Path, PathBuf};

use crate::sys::bpf::{self, BpfInsn};

/// Errors setting up or joining the device cgroup.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// No `devices` controller (v1) nor cgroup2 hierarchy is mounted.
    #[error(
        "no cgroup hierarchy for the device policy: neither the v1 devices controller nor cgroup2 is mounted"
    )]
    NoHierarchy,
    /// A cgroup file or directory could not be used.
    #[error("device cgroup {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The eBPF device program could not be loaded or attached.
    #[error("device program on {path}: {what}")]
    Bpf {
        /// The cgroup directory.
        path: PathBuf,
        /// `loading`, `attaching`, `listing`.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `--cgroup-parent` cannot be honoured.
    #[error("--cgroup-parent {parent}: {why}")]
    CgroupParent {
        /// The parent asked for.
        parent: String,
        /// Why not.
        why: String,
    },
}

type Result<T> = std::result::Result<T, DeviceError>;

/// True when the v1 devices cgroup `dir` allows nothing beyond [`DEFAULT_RULES`] (its
/// `devices.list` holds only their lines): the device policy holds there.
pub fn holds_policy(dir: &Path) -> bool {
    let allowed: Vec<String> = DEFAULT_RULES.iter().map(Rule::v1_line).collect();
    std::fs::read_to_string(dir.join("devices.list")).is_ok_and(|list| {
        list.lines().all(|l| allowed.iter().any(|a| a == l.trim()))
            && list.lines().any(|l| !l.trim().is_empty())
    })
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DeviceError + '_ {
    move |source| DeviceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Device type of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `c`.
    Char,
    /// `b`.
    Block,
}

/// Access bits (`m`, `r`, `w`), as the eBPF context encodes them.
pub const MKNOD: u32 = 1;
/// Read.
pub const READ: u32 = 2;
/// Write.
pub const WRITE: u32 = 4;
const RWM: u32 = MKNOD | READ | WRITE;

/// An allow rule: type, major and minor (`None` = any), access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Char or block.
    pub kind: Kind,
    /// Major number, `None` for `*`.
    pub major: Option<u32>,
    /// Minor number, `None` for `*`.
    pub minor: Option<u32>,
    /// [`MKNOD`] | [`READ`] | [`WRITE`].
    pub access: u32,
}

const fn dev(kind: Kind, major: u32, minor: Option<u32>, access: u32) -> Rule {
    Rule {
        kind,
        major: Some(major),
        minor,
        access,
    }
}

/// runc's default allow list (everything else is denied).
pub const DEFAULT_RULES: [Rule; 12] = [
    // mknod of any device; opening it is another matter.
    Rule {
        kind: Kind::Char,
        major: None,
        minor: None,
        access: MKNOD,
    },
    Rule {
        kind: Kind::Block,
        major: None,
        minor: None,
        access: MKNOD,
    },
    dev(Kind::Char, 1, Some(3), RWM),    // null
    dev(Kind::Char, 1, Some(5), RWM),    // zero
    dev(Kind::Char, 1, Some(7), RWM),    // full
    dev(Kind::Char, 1, Some(8), RWM),    // random
    dev(Kind::Char, 1, Some(9), RWM),    // urandom
    dev(Kind::Char, 5, Some(0), RWM),    // tty
    dev(Kind::Char, 5, Some(1), RWM),    // console
    dev(Kind::Char, 5, Some(2), RWM),    // ptmx
    dev(Kind::Char, 10, Some(200), RWM), // tun/tap
    dev(Kind::Char, 136, None, RWM),     // /dev/pts/*
];

impl Rule {
    /// The rule as a v1 `devices.allow` line (`c 1:3 rwm`), also the format of `devices.list`.
    pub fn v1_line(&self) -> String {
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        let mut access = String::new();
        for (bit, c) in [(MKNOD, 'm'), (READ, 'r'), (WRITE, 'w')] {
            if self.access & bit != 0 {
                access.push(c);
            }
        }
        // The kernel prints access as r, w, m in that order.
        let access: String = ['r', 'w', 'm']
            .into_iter()
            .filter(|c| access.contains(*c))
            .collect();
        let kind = match self.kind {
            Kind::Char => 'c',
            Kind::Block => 'b',
        };
        format!("{kind} {}:{} {access}", num(self.major), num(self.minor))
    }
}

/// The name the v2 program is loaded with; a new policy needs a new name.
pub const PROGRAM_NAME: &str = "kiln_dev_v1";

const BPF_DEVCG_DEV_BLOCK: i32 = 1;
const BPF_DEVCG_DEV_CHAR: i32 = 2;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const MOV32_X: u8 = 0xbc; // dst = src
const MOV32_K: u8 = 0xb4; // dst = imm
const AND32_K: u8 = 0x54; // dst &= imm
const RSH32_K: u8 = 0x74; // dst >>= imm
const JNE_K: u8 = 0x55; // if dst != imm goto +off
const EXIT: u8 = 0x95;

/// The `BPF_PROG_TYPE_CGROUP_DEVICE` program for `rules`: returns 1 (allow) when a rule
/// covers the device and every requested access, 0 otherwise. The context is
/// `struct bpf_cgroup_dev_ctx { access_type = access << 16 | type, major, minor }`.
pub fn program(rules: &[Rule]) -> Vec<BpfInsn> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),        // r2 = access_type
        insn(MOV32_X, 3, 2, 0, 0),      // r3 = r2
        insn(AND32_K, 3, 0, 0, 0xffff), // r3 = type
        insn(RSH32_K, 2, 0, 0, 16),     // r2 = access
        insn(LDX_W, 4, 1, 4, 0),        // r4 = major
        insn(LDX_W, 5, 1, 8, 0),        // r5 = minor
    ];
    for r in rules {
        // Each check jumps past the rest of this rule's block when it fails.
        let mut block: Vec<(u8, u8, u8, i32)> = Vec::new();
        let kind = match r.kind {
            Kind::Char => BPF_DEVCG_DEV_CHAR,
            Kind::Block => BPF_DEVCG_DEV_BLOCK,
        };
        block.push((JNE_K, 3, 0, kind));
        if r.access & RWM != RWM {
            block.push((MOV32_X, 6, 2, 0));
            block.push((AND32_K, 6, 0, (!r.access & RWM) as i32));
            block.push((JNE_K, 6, 0, 0));
        }
        if let Some(m) = r.major {
            block.push((JNE_K, 4, 0, m as i32));
        }
        if let Some(m) = r.minor {
            block.push((JNE_K, 5, 0, m as i32));
        }
        let len = block.len() + 2;
        for (i, (code, dst, src, imm)) in block.into_iter().enumerate() {
            let off = if code == JNE_K {
                (len - i - 1) as i16
            } else {
                0
            };
            p.push(insn(code, dst, src, off, imm));
        }
        p.push(insn(MOV32_K, 0, 0, 0, 1));
        p.push(insn(EXIT, 0, 0, 0, 0));
    }
    p.push(insn(MOV32_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// Where the device policy lives on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCgroup {
    /// cgroup v1: the configured cgroup in the `devices` hierarchy that sandboxes join.
    V1 {
        /// The `devices` hierarchy's mount point.
        mount: PathBuf,
        /// The configured cgroup, relative to `mount` (`kiln/sandbox`).
        path: PathBuf,
    },
    /// cgroup v2: the program sits on `mount/parent`; sandboxes outside it join
    /// `mount/parent/sandbox`.
    V2 {
        /// The cgroup2 mount point.
        mount: PathBuf,
        /// The cgroup carrying the program, relative to `mount` (`kiln`).
        parent: PathBuf,
    },
}

impl DeviceCgroup {
    /// kiln's device cgroup in the hierarchies `/proc/self/mountinfo` text describes: v1
    /// when the `devices` controller is mounted, else the cgroup2 mount.
    pub fn parse(mountinfo: &str) -> Option<DeviceCgroup> {
        let mut v2 = None;
        for (mount, fstype, opts) in crate::cgroup::cgroup_mounts(mountinfo) {
            if fstype == "cgroup" && opts.split(',').any(|o| o == "devices") {
                return Some(DeviceCgroup::V1 {
                    mount,
                    path: "kiln/sandbox".into(),
                });
            }
            if fstype == "cgroup2" && v2.is_none() {
                v2 = Some(DeviceCgroup::V2 {
                    mount,
                    parent: "kiln".into(),
                });
            }
        }
        v2
    }

    /// The host's, from `/proc/self/mountinfo`. Fails when there is none.
    pub fn host() -> Result<DeviceCgroup> {
        let p = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(p).map_err(io_err(p))?;
        DeviceCgroup::parse(&text).ok_or(DeviceError::NoHierarchy)
    }

    /// True when `self_cgroup` (`/proc/self/cgroup` text) puts the process at or below the
    /// cgroup carrying the policy.
    pub fn contains(&self, self_cgroup: &str) -> bool {
        let (prefix, path) = match self {
            DeviceCgroup::V1 { path, .. } => ("devices", path),
            DeviceCgroup::V2 { parent, .. } => ("", parent),
        };
        self_cgroup.lines().any(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, p) = (f.next(), f.next(), f.next());
            let listed = match prefix {
                "" => controllers == Some(""),
                c => controllers.is_some_and(|cs| cs.split(',').any(|x| x == c)),
            };
            listed && p.is_some_and(|p| Path::new(p).starts_with(Path::new("/").join(path)))
        })
    }

    /// Puts the calling process (and so every process it starts later) under the policy,
    /// setting the policy up first if nobody has. `self_cgroup` is `/proc/self/cgroup` text:
    /// a process already [inside](DeviceCgroup::contains) stays where it is, which costs
    /// nothing (moving a process between cgroups can wait for an RCU grace period, ~15 ms
    /// here). Fails when a cgroup cannot be created or joined or the program cannot be
    /// loaded.
    pub fn enter(&self, self_cgroup: &str) -> Result<()> {
        match self {
            DeviceCgroup::V1 { mount, path } => {
                if self.contains(self_cgroup) {
                    return Ok(());
                }
                // Elsewhere with the policy in force (a `--cgroup-parent` build's cgroup,
                // [`crate::cgparent`]): stay there.
                let own = self_cgroup.lines().find_map(|l| {
                    let mut f = l.splitn(3, ':');
                    let (_, cs, p) = (f.next()?, f.next()?, f.next()?);
                    cs.split(',').any(|c| c == "devices").then_some(p)
                });
                if let Some(own) = own.filter(|p| *p != "/")
                    && holds_policy(&crate::cgparent::under(mount, own))
                {
                    return Ok(());
                }
                let dir = mount.join(path);
                let procs = dir.join("cgroup.procs");
                match std::fs::write(&procs, "0") {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        setup_v1(&dir)?;
                        std::fs::write(&procs, "0").map_err(io_err(&procs))
                    }
                    r => r.map_err(io_err(&procs)),
                }
            }
            DeviceCgroup::V2 { mount, parent } => {
                let dir = mount.join(parent);
                ensure_v2_program(&dir)?;
                if self.contains(self_cgroup) {
                    return Ok(());
                }
                // In a `--cgroup-parent` build's cgroup, which carries the program itself
                // ([`crate::cgparent`]): stay there.
                let own = self_cgroup.lines().find_map(|l| l.strip_prefix("0::"));
                if let Some(own) = own.filter(|p| *p != "/")
                    && holds_v2_program(&crate::cgparent::under(mount, own))
                {
                    return Ok(());
                }
                let leaf = dir.join("sandbox");
                let procs = leaf.join("cgroup.procs");
                match std::fs::write(&procs, "0") {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        match std::fs::create_dir(&leaf) {
                            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                                return Err(io_err(&leaf)(e));
                            }
                            _ => {}
                        }
                        std::fs::write(&procs, "0").map_err(io_err(&procs))
                    }
                    r => r.map_err(io_err(&procs)),
                }
            }
        }
    }
}

/// Puts the calling process under the host's device policy ([`DeviceCgroup::enter`]).
///
/// `kiln build`, `kiln run` and the container commands call it once at start, before any
/// thread exists, so that every sandbox they start is born inside and `__init` (which calls
/// it again) finds nothing to do. Fails as [`DeviceCgroup::host`] and
/// [`DeviceCgroup::enter`].
pub fn confine_self() -> Result<()> {
    let cg = DeviceCgroup::host()?;
    let p = Path::new("/proc/self/cgroup");
    let own = std::fs::read_to_string(p).map_err(io_err(p))?;
    cg.enter(&own)
}

/// Takes the calling process out of the device policy, for `RUN --security=insecure` (BuildKit
/// allows an insecure step every device, `c *:* rwm` and `b *:* rwm`): v1, into
/// `<devices>/kiln/insecure`, a sibling of the policy's cgroup that keeps its parent's
/// (unrestricted) list; v2, into `<unified>/kiln-insecure`, outside the cgroup the program is
/// attached to. Fails as [`DeviceCgroup::host`] or when the cgroup cannot be made or joined.
pub fn lift_self() -> Result<()> {
    let dir = match DeviceCgroup::host()? {
        DeviceCgroup::V1 { mount, .. } => mount.join("kiln/insecure"),
        DeviceCgroup::V2 { mount, .. } => mount.join("kiln-insecure"),
    };
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, "0").map_err(io_err(&procs))
}

/// Puts the calling process under the default policy plus `extra` (`kiln run --device`): v1,
/// into `<devices>/kiln/dev-<rules>`, a sibling of `kiln/sandbox` configured as
/// [`setup_v1`] does with `extra` allowed too; v2, into `<unified>/kiln-dev-<rules>` outside
/// the default program's cgroup, with a program of its own for both. The cgroup is named by
/// its rules, so containers asking for the same devices share it (kept, as `kiln/sandbox`).
/// Fails as [`DeviceCgroup::host`] or when the cgroup cannot be set up or joined.
pub fn confine_self_with(extra: &[Rule]) -> Result<()> {
    let mut rules = DEFAULT_RULES.to_vec();
    rules.extend_from_slice(extra);
    let key: String = extra
        .iter()
        .map(|r| r.v1_line())
        .collect::<Vec<_>>()
        .join("+")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let dir = match DeviceCgroup::host()? {
        DeviceCgroup::V1 { mount, .. } => {
            let dir = mount.join(format!("kiln/dev-{key}"));
            if !dir.join("cgroup.procs").exists() {
                setup_v1_rules(&dir, &rules)?;
            }
            dir
        }
        DeviceCgroup::V2 { mount, .. } => {
            let dir = mount.join(format!("kiln-dev-{key}"));
            ensure_v2_program_rules(&dir, &rules)?;
            dir
        }
    };
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, "0").map_err(io_err(&procs))
}

/// Creates the v1 cgroup `dir` with the default rules: configured under a temporary name,
/// then renamed, so that a concurrent sandbox never joins a half-configured one.
pub fn setup_v1(dir: &Path) -> Result<()> {
    setup_v1_rules(dir, &DEFAULT_RULES)
}

/// [`setup_v1`] with `rules`.
fn setup_v1_rules(dir: &Path, rules: &[Rule]) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = parent.join(format!(
        ".{}-{}",
        name.unwrap_or_default(),
        std::process::id()
    ));
    std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let configured = (|| {
        let deny = tmp.join("devices.deny");
        std::fs::write(&deny, "a").map_err(io_err(&deny))?;
        let allow = tmp.join("devices.allow");
        for r in rules {
            std::fs::write(&allow, r.v1_line()).map_err(io_err(&allow))?;
        }
        Ok(())
    })();
    let renamed = configured.and_then(|()| std::fs::rename(&tmp, dir).map_err(io_err(dir)));
    if let Err(e) = renamed {
        let _ = std::fs::remove_dir(&tmp);
        // Someone else won the race: theirs is complete.
        if !dir.join("cgroup.procs").exists() {
            return Err(e);
        }
    }
    Ok(())
}

/// Whether the v2 cgroup `cg` (an open directory) has a program named [`PROGRAM_NAME`]
/// attached to it directly.
fn v2_program_attached(cg: &std::fs::File) -> io::Result<bool> {
    // A program that went away meanwhile is no match.
    Ok(bpf::device_programs(cg)?
        .into_iter()
        .any(|id| bpf::program_name(id).is_ok_and(|n| n == PROGRAM_NAME)))
}

/// True when kiln's device program is attached to the v2 cgroup `dir` itself.
pub fn holds_v2_program(dir: &Path) -> bool {
    std::fs::File::open(dir).is_ok_and(|cg| v2_program_attached(&cg).unwrap_or(false))
}

/// Attaches the device program to the v2 cgroup `dir` (creating it) unless one named
/// [`PROGRAM_NAME`] already is.
pub fn ensure_v2_program(dir: &Path) -> Result<()> {
    ensure_v2_program_rules(dir, &DEFAULT_RULES)
}

/// [`ensure_v2_program`] with a program for `rules`.
fn ensure_v2_program_rules(dir: &Path, rules: &[Rule]) -> Result<()> {
    let bpf_err = |what| {
        move |source| DeviceError::Bpf {
            path: dir.to_path_buf(),
            what,
            source,
        }
    };
    match std::fs::create_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(dir)(e)),
        _ => {}
    }
    let cg = std::fs::File::open(dir).map_err(io_err(dir))?;
    if v2_program_attached(&cg).map_err(bpf_err("listing programs"))? {
        return Ok(());
    }
    let prog =
        bpf::load_device_program(&program(rules), PROGRAM_NAME).map_err(bpf_err("loading"))?;
    bpf::attach_device_program(&cg, &prog).map_err(bpf_err("attaching"))
}

#[cfg(test)]
mod tests;

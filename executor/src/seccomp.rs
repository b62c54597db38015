//! The seccomp filter of every RUN, `kiln run` and `kiln exec` process: docker's profile
//! format, read and compiled to a classic BPF program by kiln itself.
//!
//! [`Profile`] is docker's JSON format (`docker run --security-opt seccomp=PROFILE.json`):
//! `defaultAction`, `defaultErrnoRet`, `archMap`, and `syscalls` entries with `names`,
//! `action`, `errnoRet`, `args` (`index`, `value`, `valueTwo`, `op`) and `includes`/`excludes`
//! by `arches`, `caps` and `minKernel`. [`Profile::docker_default`] is docker's default
//! profile, kept as data in `seccomp/default.json`: a copy of moby's
//! `profiles/seccomp/default.json` (commit 00f3d189e420d485e42d15fe494f96d272284e0e,
//! Copyright Docker, Inc., Apache License 2.0, <https://github.com/moby/moby>), unmodified.
//!
//! [`compile`] resolves a profile the way moby's `seccomp_linux.go` and libseccomp do: entries
//! are kept or dropped by the native architecture (Go's names: `amd64`, `arm64`), the
//! capabilities the process keeps and the running kernel's version; names the architecture
//! does not have are skipped; the rules apply to the native architecture and its
//! sub-architectures (on x86_64 also the i386 syscall table). It yields a [`Filter`], the
//! program [`crate::sys::load_seccomp`] installs right before exec (after no_new_privs).
//!
//! Why our own compiler rather than libseccomp or seccompiler: libseccomp needs the C library
//! at build and run time; seccompiler (pure Rust) takes neither docker's format nor several
//! architectures in one filter, so the name tables and the format would be ours anyway. The
//! compiler is ~300 lines, allocation-light, and builds the default filter in well under a
//! millisecond (see the bench `sandbox_start`).
//!
//! Differences from docker, on purpose: x32 system calls (x86_64 numbers with bit 30 set)
//! get the default action instead of the x32 table (x32 binaries are practically absent
//! from images, and the x32 ABI is off in most kernels); `SCMP_ACT_NOTIFY` is refused (it
//! needs a supervisor listening on a socket); only little-endian x86_64 and aarch64 are
//! supported (the sub-architecture `arm` of aarch64 gets the default action).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod bpf;
mod tables;

pub use bpf::SockFilter;

/// Errors of reading or compiling a profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile is not docker's JSON format.
    #[error("invalid seccomp profile")]
    Json(#[source] serde_json::Error),
    /// An action kiln cannot carry out.
    #[error("seccomp action {0} is not supported")]
    UnsupportedAction(&'static str),
    /// An argument index outside 0..=5.
    #[error("seccomp rule for {syscall}: argument index {index} is out of range 0..=5")]
    ArgIndex {
        /// The syscall of the rule.
        syscall: String,
        /// The index given.
        index: u32,
    },
    /// kiln has no syscall table for this architecture.
    #[error("seccomp filters are not supported on {0}")]
    UnsupportedArch(&'static str),
    /// The compiled program exceeds the kernel's limit of 4096 instructions.
    #[error("seccomp profile compiles to {0} instructions, more than the kernel's 4096")]
    TooLong(usize),
}

type Result<T> = std::result::Result<T, SeccompError>;

/// A seccomp profile in docker's format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// Action for system calls no rule matches.
    pub default_action: Action,
    /// errno of the default action when it is `SCMP_ACT_ERRNO` (EPERM when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// Architectures and their sub-architectures (informational: kiln filters the native
    /// one and the sub-architectures it has tables for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch_map: Option<Vec<ArchMap>>,
    /// Older profiles' flat architecture list (informational, as `archMap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// The rules, in order.
    #[serde(default)]
    pub syscalls: Option<Vec<SyscallRule>>,
}

/// One `archMap` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    /// `SCMP_ARCH_X86_64`...
    pub architecture: String,
    /// `SCMP_ARCH_X86`...
    #[serde(default)]
    pub sub_architectures: Option<Vec<String>>,
}

/// One `syscalls` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    /// The system calls it applies to.
    #[serde(default)]
    pub names: Option<Vec<String>>,
    /// Older profiles' single name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What happens when the arguments match.
    pub action: Action,
    /// errno for `SCMP_ACT_ERRNO` (the profile's `defaultErrnoRet`, else EPERM, when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// Conditions on the arguments, all of which must hold.
    #[serde(default)]
    pub args: Option<Vec<ArgRule>>,
    /// The rule applies only when all of these hold.
    #[serde(default)]
    pub includes: Option<Conditions>,
    /// The rule is dropped when any of these holds.
    #[serde(default)]
    pub excludes: Option<Conditions>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// `includes` / `excludes` of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conditions {
    /// Go architecture names (`amd64`, `arm64`, `x86`...).
    #[serde(default)]
    pub arches: Option<Vec<String>>,
    /// Capabilities (`CAP_SYS_ADMIN`...).
    #[serde(default)]
    pub caps: Option<Vec<String>>,
    /// `major.minor` kernel version.
    #[serde(default)]
    pub min_kernel: Option<String>,
}

/// A condition on one argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArgRule {
    /// Argument number, 0..=5.
    pub index: u32,
    /// The operand (the mask for `SCMP_CMP_MASKED_EQ`).
    pub value: u64,
    /// The second operand (`SCMP_CMP_MASKED_EQ`: the value the masked argument must equal).
    #[serde(default)]
    pub value_two: u64,
    /// The comparison.
    pub op: Op,
}

/// Comparisons of an argument (64-bit, unsigned, as libseccomp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(non_camel_case_types, missing_docs)]
pub enum Op {
    SCMP_CMP_NE,
    SCMP_CMP_LT,
    SCMP_CMP_LE,
    SCMP_CMP_EQ,
    SCMP_CMP_GE,
    SCMP_CMP_GT,
    SCMP_CMP_MASKED_EQ,
}

/// Actions of docker's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(non_camel_case_types, missing_docs)]
pub enum Action {
    SCMP_ACT_KILL,
    SCMP_ACT_KILL_THREAD,
    SCMP_ACT_KILL_PROCESS,
    SCMP_ACT_TRAP,
    SCMP_ACT_ERRNO,
    SCMP_ACT_TRACE,
    SCMP_ACT_ALLOW,
    SCMP_ACT_LOG,
    SCMP_ACT_NOTIFY,
}

impl Profile {
    /// Docker's default profile (see the module doc for its origin and licence).
    pub fn docker_default() -> Profile {
        Profile::from_json(include_bytes!("seccomp/default.json"))
            .expect("invariant: the embedded default profile parses")
    }

    /// Reads a profile in docker's JSON format. Fails on malformed JSON, unknown actions or
    /// operators.
    pub fn from_json(bytes: &[u8]) -> Result<Profile> {
        serde_json::from_slice(bytes).map_err(SeccompError::Json)
    }
}

/// What the filter is compiled for: the process's architecture, the capabilities it keeps
/// and the kernel it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Go's name of the architecture (`amd64`, `arm64`): what `arches` conditions match.
    pub arch: &'static str,
    /// Capability names (`CAP_CHOWN`...) the process keeps.
    pub caps: Vec<String>,
    /// `(major, minor)` of the running kernel.
    pub kernel: (u32, u32),
}

impl Target {
    /// The native architecture, with `caps` and the kernel version from `uname -r` text
    /// (`6.1.0-18-amd64`). Fails on architectures kiln has no syscall table for.
    pub fn native(caps: Vec<String>, kernel_release: &str) -> Result<Target> {
        let arch = if cfg!(target_arch = "x86_64") {
            "amd64"
        } else if cfg!(target_arch = "aarch64") {
            "arm64"
        } else {
            return Err(SeccompError::UnsupportedArch(std::env::consts::ARCH));
        };
        Ok(Target {
            arch,
            caps,
            kernel: parse_kernel(kernel_release).unwrap_or((0, 0)),
        })
    }
}

fn parse_kernel(s: &str) -> Option<(u32, u32)> {
    let mut it = s.trim().split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// A compiled filter: classic BPF instructions for `seccomp(SECCOMP_SET_MODE_FILTER)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The program.
    pub program: Vec<SockFilter>,
}

/// The return value of the filter for an action (`SECCOMP_RET_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ret(pub(crate) u32);

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

fn ret(action: Action, errno: Option<u32>, default_errno: Option<u32>) -> Result<Ret> {
    let errno = errno
        .or(default_errno)
        .unwrap_or(libc::EPERM as u32)
        .min(0xffff);
    Ok(Ret(match action {
        Action::SCMP_ACT_KILL | Action::SCMP_ACT_KILL_THREAD => RET_KILL_THREAD,
        Action::SCMP_ACT_KILL_PROCESS => RET_KILL_PROCESS,
        Action::SCMP_ACT_TRAP => RET_TRAP,
        Action::SCMP_ACT_ERRNO => RET_ERRNO | errno,
        Action::SCMP_ACT_TRACE => RET_TRACE | errno,
        Action::SCMP_ACT_ALLOW => RET_ALLOW,
        Action::SCMP_ACT_LOG => RET_LOG,
        Action::SCMP_ACT_NOTIFY => return Err(SeccompError::UnsupportedAction("SCMP_ACT_NOTIFY")),
    }))
}

/// One rule of one syscall after `includes`/`excludes` were applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) args: Vec<ArgRule>,
    pub(crate) ret: Ret,
}

/// The rules of one architecture: syscall number to its rules, in profile order.
pub(crate) type Rules = BTreeMap<u32, Vec<Rule>>;

/// `AUDIT_ARCH_*` values of `seccomp_data.arch`.
pub(crate) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
pub(crate) const AUDIT_ARCH_I386: u32 = 0x4000_0003;
pub(crate) const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;

/// One architecture the filter handles: its audit value, syscall table and word size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ArchTable {
    pub(crate) audit: u32,
    pub(crate) table: &'static [(&'static str, u32)],
    /// Arguments are 64-bit (else only the low word is compared, as libseccomp does).
    pub(crate) wide: bool,
    /// Numbers at or above this are another ABI (x32) and get the default action.
    pub(crate) limit: u32,
}

fn arch_tables(arch: &str) -> Result<Vec<ArchTable>> {
    Ok(match arch {
        "amd64" => vec![
            ArchTable {
                audit: AUDIT_ARCH_X86_64,
                table: tables::X86_64,
                wide: true,
                limit: 0x4000_0000,
            },
            ArchTable {
                audit: AUDIT_ARCH_I386,
                table: tables::X86,
                wide: false,
                limit: u32::MAX,
            },
        ],
        "arm64" => vec![ArchTable {
            audit: AUDIT_ARCH_AARCH64,
            table: tables::AARCH64,
            wide: true,
            limit: u32::MAX,
        }],
        _ => return Err(SeccompError::UnsupportedArch("this architecture")),
    })
}

fn lookup(table: &[(&str, u32)], name: &str) -> Option<u32> {
    table
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| table[i].1)
}

/// True when the entry applies to `target` (moby's `seccomp_linux.go` rules: every
/// included arch/cap/kernel must hold, no excluded one may).
fn applies(rule: &SyscallRule, target: &Target) -> bool {
    let has_cap = |c: &String| target.caps.iter().any(|t| t.eq_ignore_ascii_case(c));
    if let Some(inc) = &rule.includes {
        if let Some(a) = &inc.arches
            && !a.is_empty()
            && !a.iter().any(|a| a == target.arch)
        {
            return false;
        }
        if let Some(c) = &inc.caps
            && !c.iter().all(has_cap)
        {
            return false;
        }
        if let Some(k) = &inc.min_kernel
            && parse_kernel(k).is_some_and(|min| target.kernel < min)
        {
            return false;
        }
    }
    if let Some(exc) = &rule.excludes {
        if let Some(a) = &exc.arches
            && a.iter().any(|a| a == target.arch)
        {
            return false;
        }
        if let Some(c) = &exc.caps
            && c.iter().any(has_cap)
        {
            return false;
        }
        if let Some(k) = &exc.min_kernel
            && parse_kernel(k).is_some_and(|min| target.kernel >= min)
        {
            return false;
        }
    }
    true
}

/// Compiles `profile` for `target`. Fails on unsupported actions, argument indexes past 5, or
/// a program longer than the kernel accepts.
pub fn compile(profile: &Profile, target: &Target) -> Result<Filter> {
    let default = ret(profile.default_action, None, profile.default_errno_ret)?;
    let mut arches = Vec::new();
    for arch in arch_tables(target.arch)? {
        let mut rules = Rules::new();
        for entry in profile.syscalls.iter().flatten() {
            if !applies(entry, target) {
                continue;
            }
            let r = ret(entry.action, entry.errno_ret, profile.default_errno_ret)?;
            let names = entry.names.iter().flatten().chain(entry.name.iter());
            for name in names {
                if let Some(a) = entry.args.iter().flatten().find(|a| a.index > 5) {
                    return Err(SeccompError::ArgIndex {
                        syscall: name.clone(),
                        index: a.index,
                    });
                }
                // As libseccomp: a name this architecture lacks is skipped.
                let Some(nr) = lookup(arch.table, name) else {
                    continue;
                };
                rules.entry(nr).or_default().push(Rule {
                    args: entry.args.clone().unwrap_or_default(),
                    ret: r,
                });
            }
        }
        arches.push((arch, rules));
    }
    let program = bpf::assemble(&arches, default);
    if program.len() > 4096 {
        return Err(SeccompError::TooLong(program.len()));
    }
    Ok(Filter { program })
}

/// Capability names of a capability set, as profiles spell them (`CAP_CHOWN`).
pub fn capability_names(set: rustix::thread::CapabilitySet) -> Vec<String> {
    use rustix::thread::CapabilitySet as C;
    let all = [
        (C::CHOWN, "CAP_CHOWN"),
        (C::DAC_OVERRIDE, "CAP_DAC_OVERRIDE"),
        (C::DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
        (C::FOWNER, "CAP_FOWNER"),
        (C::FSETID, "CAP_FSETID"),
        (C::KILL, "CAP_KILL"),
        (C::SETGID, "CAP_SETGID"),
        (C::SETUID, "CAP_SETUID"),
        (C::SETPCAP, "CAP_SETPCAP"),
        (C::LINUX_IMMUTABLE, "CAP_LINUX_IMMUTABLE"),
        (C::NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"),
        (C::NET_BROADCAST, "CAP_NET_BROADCAST"),
        (C::NET_ADMIN, "CAP_NET_ADMIN"),
        (C::NET_RAW, "CAP_NET_RAW"),
        (C::IPC_LOCK, "CAP_IPC_LOCK"),
        (C::IPC_OWNER, "CAP_IPC_OWNER"),
        (C::SYS_MODULE, "CAP_SYS_MODULE"),
        (C::SYS_RAWIO, "CAP_SYS_RAWIO"),
        (C::SYS_CHROOT, "CAP_SYS_CHROOT"),
        (C::SYS_PTRACE, "CAP_SYS_PTRACE"),
        (C::SYS_PACCT, "CAP_SYS_PACCT"),
        (C::SYS_ADMIN, "CAP_SYS_ADMIN"),
        (C::SYS_BOOT, "CAP_SYS_BOOT"),
        (C::SYS_NICE, "CAP_SYS_NICE"),
        (C::SYS_RESOURCE, "CAP_SYS_RESOURCE"),
        (C::SYS_TIME, "CAP_SYS_TIME"),
        (C::SYS_TTY_CONFIG, "CAP_SYS_TTY_CONFIG"),
        (C::MKNOD, "CAP_MKNOD"),
        (C::LEASE, "CAP_LEASE"),
        (C::AUDIT_WRITE, "CAP_AUDIT_WRITE"),
        (C::AUDIT_CONTROL, "CAP_AUDIT_CONTROL"),
        (C::SETFCAP, "CAP_SETFCAP"),
        (C::MAC_OVERRIDE, "CAP_MAC_OVERRIDE"),
        (C::MAC_ADMIN, "CAP_MAC_ADMIN"),
        (C::SYSLOG, "CAP_SYSLOG"),
        (C::WAKE_ALARM, "CAP_WAKE_ALARM"),
        (C::BLOCK_SUSPEND, "CAP_BLOCK_SUSPEND"),
        (C::AUDIT_READ, "CAP_AUDIT_READ"),
        (C::PERFMON, "CAP_PERFMON"),
        (C::BPF, "CAP_BPF"),
        (C::CHECKPOINT_RESTORE, "CAP_CHECKPOINT_RESTORE"),
    ];
    all.iter()
        .filter(|(c, _)| set.contains(*c))
        .map(|(_, n)| n.to_string())
        .collect()
}

#[cfg(test)]
mod tests;

//! A pure cgroup v2 guest for tests: boots Debian's own kernel in qemu with a small initramfs
//! generated here, shares the host's root read-only (9p), and runs a shell script as root in
//! it. The host (and CI) is a hybrid cgroup v1 machine, so this is where kiln's cgroup v2
//! code (limits, the eBPF device program, rootless delegation) really runs.
//!
//! The guest: the script runs under the host's `/bin/sh` (so the host's tools, not busybox's
//! applets); `/` is the host's root (read-only 9p), with tmpfs on /tmp, /run, /root, /home,
//! /var/tmp and an overlay on /etc (so tests can add users); cgroup2 alone on
//! /sys/fs/cgroup (`nsdelegate`); no network device. The script and the files a test passes
//! are in `/run/vm` (a writable 9p share of a host temp dir); its output (stdout and stderr)
//! and exit code come back through it. The kernel is the `linux-image-*` package that
//! `.ci/run` extracts into [`KERNEL_DIR`] (override with KILN_VM_KERNEL_DIR).
//!
//! KVM is used when `/dev/kvm` opens (and is not `kvm_pvm`, whose guests need a PVM kernel:
//! this project's machines) and a guest comes up under it within [`KVM_GRACE`]; otherwise TCG
//! (a guest test then takes ~10 s instead of a few). The choice is made once per test
//! process; KILN_VM_ACCEL=kvm|tcg forces it. Boots are serialised: two TCG guests at once on
//! a 2-core machine only slow each other down.

use anyhow::{Context as _, bail, ensure};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where `.ci/run` extracts `linux-image-<version>-amd64` (`dpkg-deb -x`).
pub const KERNEL_DIR: &str = "/var/cache/kiln-ci/vm/root";
/// How long a KVM guest may take to reach its init: then KVM is given up for TCG (or, when
/// KILN_VM_ACCEL=kvm forces it, the test fails).
const KVM_GRACE: Duration = Duration::from_secs(20);
/// The longest a guest may run (TCG included) before the test fails.
const TIMEOUT: Duration = Duration::from_secs(600);
/// Modules the guest's init loads (with their dependencies, read from the modules).
const MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// What a guest run gave back.
#[derive(Debug)]
pub struct Guest {
    /// The script's stdout and stderr, interleaved.
    pub output: String,
    /// The script's exit code.
    pub rc: i32,
    /// `kvm` or `tcg`.
    pub accel: &'static str,
    /// From qemu's start to the guest's init running the script.
    pub boot: Duration,
    /// From qemu's start to its exit.
    pub total: Duration,
}

impl Guest {
    /// Fails with the output unless the script exited 0; logs the accelerator and times.
    pub fn ok(self) -> anyhow::Result<Guest> {
        eprintln!(
            "vm: {}: init after {:?}, done after {:?}; output:\n{}",
            self.accel, self.boot, self.total, self.output
        );
        ensure!(
            self.rc == 0,
            "guest script exited {} ({}):\n{}",
            self.rc,
            self.accel,
            self.output
        );
        Ok(self)
    }

    /// The value printed on a `KEY=value` line of the output.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.output
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The kernel image and its modules directory, or the reason they are missing.
fn kernel() -> Result<(PathBuf, PathBuf), String> {
    let dir =
        std::env::var_os("KILN_VM_KERNEL_DIR").map_or(PathBuf::from(KERNEL_DIR), PathBuf::from);
    let boot = dir.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| {
            format!(
                "no {}/vmlinuz-* (see .ci/run: linux-image .deb)",
                boot.display()
            )
        })?;
    let version =
        vmlinuz.file_name().expect("a name").to_string_lossy()["vmlinuz-".len()..].to_owned();
    let modules = dir.join("lib/modules").join(version);
    if !modules.is_dir() {
        return Err(format!("no {}", modules.display()));
    }
    Ok((vmlinuz, modules))
}

/// The uncompressed kernel beside `vmlinuz` (`vmlinux-<version>`, made once from the xz
/// payload of the bzImage and kept there), which qemu boots through its PVH entry point:
/// that skips the firmware's real-mode path and the in-guest decompression, 7.7 s -> 3.1 s
/// to a finished guest under TCG here. `vmlinuz` itself when there is no xz payload.
fn uncompressed(vmlinuz: &Path) -> anyhow::Result<PathBuf> {
    let name = vmlinuz.file_name().expect("a name").to_string_lossy();
    let out = vmlinuz.with_file_name(name.replacen("vmlinuz-", "vmlinux-", 1));
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    if out.exists() {
        return Ok(out);
    }
    let image = std::fs::read(vmlinuz)?;
    let Some(at) = image.windows(6).position(|w| w == b"\xfd7zXZ\0") else {
        return Ok(vmlinuz.to_path_buf());
    };
    let mut elf = Vec::new();
    std::io::Read::read_to_end(&mut liblzma::read::XzDecoder::new(&image[at..]), &mut elf)
        .with_context(|| format!("decompressing the kernel in {}", vmlinuz.display()))?;
    if !elf.starts_with(b"\x7fELF") {
        return Ok(vmlinuz.to_path_buf());
    }
    // Atomic: another test process may be making the same file (threads wait on ONE).
    let tmp = out.with_file_name(format!(".vmlinux.tmp-{}", std::process::id()));
    std::fs::write(&tmp, &elf)?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// Whether the guest can be booted: root, qemu, the kernel, busybox, and `tools` (which the
/// guest finds in the host's root). Skips (false) or, with REQUIRE_PRIVILEGED_TESTS=1, panics
/// naming what is missing.
pub fn available(tools: &[&str]) -> bool {
    let mut needs = vec!["qemu-system-x86_64"];
    needs.extend_from_slice(tools);
    if !crate::harness::privileged(&needs) {
        return false;
    }
    match kernel() {
        Ok(_) => true,
        Err(why) => {
            if std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
                panic!("privileged test required but missing: the guest kernel: {why}");
            }
            eprintln!("skipped: missing the guest kernel: {why}");
            false
        }
    }
}

/// The `depends=` of a module file (its `.modinfo` section is NUL-separated `key=value`).
fn depends(ko: &[u8]) -> Vec<String> {
    ko.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"depends="))
        .map(|d| {
            String::from_utf8_lossy(d)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `wanted` and everything they depend on, in load order (dependencies first).
fn load_order(modules: &Path, wanted: &[&str]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut by_name = BTreeMap::new();
    let mut stack = vec![modules.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| d.display().to_string())? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                by_name.insert(n.replace('-', "_"), p);
            }
        }
    }
    fn visit(
        name: &str,
        by_name: &BTreeMap<String, PathBuf>,
        out: &mut Vec<(String, PathBuf)>,
    ) -> anyhow::Result<()> {
        let name = name.replace('-', "_");
        if out.iter().any(|(n, _)| *n == name) {
            return Ok(());
        }
        let path = by_name.get(&name).with_context(|| {
            format!("kernel module {name} is not in the guest kernel's package")
        })?;
        let bytes = std::fs::read(path)?;
        ensure!(
            bytes.starts_with(b"\x7fELF"),
            "{} is not an uncompressed module (busybox insmod needs one)",
            path.display()
        );
        for d in depends(&bytes) {
            visit(&d, by_name, out)?;
        }
        out.push((name, path.clone()));
        Ok(())
    }
    let mut out = Vec::new();
    for w in wanted {
        visit(w, &by_name, &mut out)?;
    }
    Ok(out)
}

/// A `newc` cpio archive (what the kernel unpacks as the initramfs) of `(path, mode, data)`;
/// directories have mode `0o040755` and no data.
fn cpio(entries: &[(String, u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let pad = |out: &mut Vec<u8>| {
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    };
    let mut ino = 1u32;
    let mut push = |out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]| {
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        ino += 1;
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad(out);
        out.extend_from_slice(data);
        pad(out);
    };
    for (name, mode, data) in entries {
        push(&mut out, name, *mode, data);
    }
    push(&mut out, "TRAILER!!!", 0, &[]);
    out
}

/// The guest's /init: modules, the host's root, the writable dirs, cgroup2; then the script
/// as PID 1 of the host's root (switch_root), and power off. The host directories `keep`
/// stay visible where a writable tmpfs would hide them (the kiln binary of a checkout under
/// /tmp, as CI's clean clone may be).
fn init_script(modules: &[(String, PathBuf)], keep: &[&Path]) -> String {
    let names: Vec<&str> = modules.iter().map(|(n, _)| n.as_str()).collect();
    let keep: Vec<String> = keep.iter().map(|k| format!("'{}'", k.display())).collect();
    format!(
        r#"#!/bin/busybox sh
B=/bin/busybox
R=/newroot
fail() {{ echo "vm: $*"; $B poweroff -f; }}
$B mkdir -p /proc /sys /dev $R
$B mount -t proc proc /proc
$B mount -t devtmpfs dev /dev
for m in {names}; do $B insmod /modules/$m.ko || fail "insmod $m failed"; done
$B mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host $R || fail "9p mount of the host failed"
$B mkdir /hostview && $B mount --bind $R /hostview
$B mount -t proc proc $R/proc
$B mount -t sysfs sys $R/sys
$B mount -t cgroup2 -o nsdelegate cgroup2 $R/sys/fs/cgroup || fail "cgroup2 mount failed"
$B mount -t devtmpfs dev $R/dev
$B mkdir -p $R/dev/pts $R/dev/shm
$B mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
$B mount -t tmpfs shm $R/dev/shm
for d in tmp run root home var/tmp; do $B mount -t tmpfs -o mode=0755 tmpfs $R/$d; done
$B chmod 1777 $R/tmp $R/var/tmp
for k in {keep}; do $B mkdir -p "$R$k" && $B mount --bind "/hostview$k" "$R$k" || fail "bind of $k failed"; done
$B mkdir /etcw && $B mount -t tmpfs tmpfs /etcw && $B mkdir /etcw/u /etcw/w
$B mount -t overlay -o lowerdir=$R/etc,upperdir=/etcw/u,workdir=/etcw/w etc $R/etc || fail "the /etc overlay failed"
$B mkdir -p $R/run/vm
$B mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out $R/run/vm || fail "9p mount of the share failed"
echo "vm: up $($B cat /proc/uptime)"
exec $B switch_root $R /bin/sh -c 'cd /run/vm; PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root sh /run/vm/script.sh >/run/vm/output 2>&1; echo $? >/run/vm/rc; sync; echo "vm: done $(cat /proc/uptime)"; /bin/busybox poweroff -f'
"#,
        names = names.join(" "),
        keep = keep.join(" ")
    )
}

/// The accelerator decided for this process (None: not yet).
static ACCEL: Mutex<Option<&'static str>> = Mutex::new(None);

/// Boots a guest that runs `script` (POSIX sh, as root, in /run/vm) with `files` (name,
/// bytes) beside it in /run/vm, and returns what it printed. Fails when the guest does not
/// finish (the serial console's tail says why).
pub fn run(script: &str, files: &[(&str, &[u8])]) -> anyhow::Result<Guest> {
    let (vmlinuz, modules) = kernel().map_err(anyhow::Error::msg)?;
    let vmlinuz = uncompressed(&vmlinuz)?;
    let work = tempfile::Builder::new().prefix("kiln-vm-").tempdir()?;
    let share = work.path().join("share");
    std::fs::create_dir(&share)?;
    std::fs::write(share.join("script.sh"), script)?;
    for (name, bytes) in files {
        std::fs::write(share.join(name), bytes)?;
    }
    let mods = load_order(&modules, MODULES)?;
    let kiln = crate::harness::kiln_bin();
    let kiln_dir = kiln.parent().context("the kiln binary's directory")?;
    let mut entries = vec![
        ("bin".to_owned(), 0o040755, Vec::new()),
        ("modules".to_owned(), 0o040755, Vec::new()),
        (
            "init".to_owned(),
            0o100755,
            init_script(&mods, &[kiln_dir]).into_bytes(),
        ),
        (
            "bin/busybox".to_owned(),
            0o100755,
            std::fs::read("/bin/busybox").context("reading /bin/busybox")?,
        ),
    ];
    for (n, p) in &mods {
        entries.push((format!("modules/{n}.ko"), 0o100644, std::fs::read(p)?));
    }
    let initrd = work.path().join("initrd.cpio");
    std::fs::write(&initrd, cpio(&entries))?;

    let mut decided = ACCEL.lock().unwrap_or_else(|p| p.into_inner());
    let forced = std::env::var("KILN_VM_ACCEL").ok();
    // kvm_pvm (this project's machines: KVM without hardware virtualisation) runs only guest
    // kernels built for it; Debian's hangs in its decompressor there.
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
        && !Path::new("/sys/module/kvm_pvm").exists();
    let accel = match (forced.as_deref(), *decided) {
        (Some("kvm"), _) => "kvm",
        (Some("tcg"), _) => "tcg",
        (Some(other), _) => bail!("KILN_VM_ACCEL={other}: expected kvm or tcg"),
        (None, Some(a)) => a,
        (None, None) if kvm_opens => "kvm",
        (None, None) => "tcg",
    };
    let first = accel == "kvm" && forced.is_none() && decided.is_none();
    let result = boot(
        &vmlinuz,
        &initrd,
        &share,
        work.path(),
        accel,
        (accel == "kvm").then_some(KVM_GRACE),
    );
    let result = match result {
        Err(BootError::NeverUp(serial)) if first => {
            eprintln!(
                "vm: no init under KVM within {KVM_GRACE:?} (serial: {}); using TCG",
                serial.lines().last().unwrap_or("")
            );
            *decided = Some("tcg");
            boot(&vmlinuz, &initrd, &share, work.path(), "tcg", None)
        }
        r => {
            if forced.is_none() {
                *decided = Some(accel);
            }
            r
        }
    };
    drop(decided);
    let (accel, boot, total) = result.map_err(|e| anyhow::anyhow!("{e}"))?;
    let output = std::fs::read_to_string(share.join("output")).unwrap_or_default();
    let rc = std::fs::read_to_string(share.join("rc"))
        .context("the guest wrote no exit code")?
        .trim()
        .parse()?;
    Ok(Guest {
        output,
        rc,
        accel,
        boot,
        total,
    })
}

#[derive(Debug)]
enum BootError {
    /// The guest did not reach its init in time (the serial console so far).
    NeverUp(String),
    Other(String),
}

impl std::fmt::Display for BootError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootError::NeverUp(s) => {
                write!(f, "the guest never reached its init; serial console:\n{s}")
            }
            BootError::Other(s) => f.write_str(s),
        }
    }
}

/// One qemu run; `grace`: kill it when the init has not started by then.
fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    share: &Path,
    work: &Path,
    accel: &'static str,
    grace: Option<Duration>,
) -> Result<(&'static str, Duration, Duration), BootError> {
    let serial = work.join(format!("serial-{accel}.log"));
    let tail = |serial: &Path| {
        let s = std::fs::read_to_string(serial).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", accel, "-m", "768", "-smp", "1", "-machine", "q35"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=out,security_model=none",
            share.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BootError::Other(format!("starting qemu-system-x86_64: {e}")))?;
    let mut up = None;
    loop {
        if up.is_none() && std::fs::read_to_string(&serial).is_ok_and(|s| s.contains("vm: up")) {
            up = Some(start.elapsed());
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                let Some(up) = up else {
                    return Err(BootError::Other(format!(
                        "qemu ({accel}) exited {status} before the guest's init ran: {err}\nserial console:\n{}",
                        tail(&serial)
                    )));
                };
                return Ok((accel, up, start.elapsed()));
            }
            Ok(None) => {}
            Err(e) => return Err(BootError::Other(format!("waiting for qemu: {e}"))),
        }
        let late = match (up, grace) {
            (None, Some(g)) => start.elapsed() > g,
            _ => start.elapsed() > TIMEOUT,
        };
        if late {
            let _ = child.kill();
            let _ = child.wait();
            return Err(if up.is_none() {
                BootError::NeverUp(tail(&serial))
            } else {
                BootError::Other(format!(
                    "the guest ({accel}) did not finish within {TIMEOUT:?}; serial console:\n{}",
                    tail(&serial)
                ))
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn vm_modules_come_with_their_dependencies_first() -> anyhow::Result<()> {
    let ko = b"\x7fELF....\0license=GPL\0depends=virtio,virtio_ring\0name=x\0";
    assert_eq!(depends(ko), ["virtio", "virtio_ring"]);
    assert!(depends(b"\0depends=\0").is_empty());
    let a = cpio(&[("init".into(), 0o100755, b"x".to_vec())]);
    assert!(a.starts_with(b"070701"));
    assert_eq!(a.len() % 4, 0);
    assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    Ok(())
}

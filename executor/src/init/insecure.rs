//! What `RUN --security=insecure` gets from the host, as BuildKit's insecure spec
//! (`util/entitlements/security`, `executor/oci/spec_linux.go`): out of the device policy
//! ([`crate::devices::lift_self`]), BuildKit's extra devices the host has and the loop
//! devices, and a writable /sys/fs/cgroup (as root). The plan ([`crate::mounts::plan`]) drops
//! the masks and makes /sys and the cgroup binds writable.

use std::path::Path;

use super::Result;
use crate::mounts::{self, InsecureHost};

/// Lifts the device policy from this process (and so the step it forks) and finds what the
/// step sees of the host. Rootless, nothing: no device cgroup to leave, no more devices (as
/// BuildKit in a user namespace) and the cgroup filesystem read-only, as every sandbox's.
///
/// Fails when the device cgroup cannot be left or /proc cannot be read.
/// With `all_devices` (`kiln run --privileged`), every device node under the host's /dev
/// instead, as docker's privileged containers get them.
pub(super) fn host(all_devices: bool) -> Result<InsecureHost> {
    if crate::rootless::in_user_namespace() {
        return Ok(InsecureHost::default());
    }
    crate::devices::lift_self()?;
    if all_devices {
        let mut devices = Vec::new();
        host_devices(Path::new("/dev"), "", &mut devices);
        // kiln's own (the standard devices; ptmx and console belong to its devpts).
        devices.retain(|d| !mounts::DEVICES.contains(&d.as_str()) && d != "ptmx" && d != "console");
        devices.sort();
        return Ok(InsecureHost {
            devices,
            writable_cgroups: true,
        });
    }
    let exists = |d: &str| std::fs::symlink_metadata(Path::new("/dev").join(d)).is_ok();
    let mut devices: Vec<String> = mounts::INSECURE_DEVICES
        .iter()
        .filter(|d| exists(d))
        .map(|d| (*d).to_owned())
        .collect();
    // BuildKit makes loop0 to loop<first free + 7>; kiln binds the host's (the kernel makes
    // more on LOOP_CTL_GET_FREE, which a step may then not see).
    let mut loops: Vec<u32> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("loop")?.parse().ok())
        .collect();
    loops.sort_unstable();
    devices.extend(loops.iter().map(|n| format!("loop{n}")));
    Ok(InsecureHost {
        devices,
        writable_cgroups: true,
    })
}

/// The character and block devices under `dir` (relative names with `prefix`), below the
/// subdirectories too, apart from the filesystems kiln mounts itself (pts, shm, mqueue).
fn host_devices(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    use std::os::unix::fs::FileTypeExt as _;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let (Ok(t), Some(name)) = (e.file_type(), e.file_name().to_str().map(str::to_owned)) else {
            continue;
        };
        let rel = format!("{prefix}{name}");
        if t.is_char_device() || t.is_block_device() {
            out.push(rel);
        } else if t.is_dir() && !["pts", "shm", "mqueue"].contains(&rel.as_str()) {
            host_devices(&e.path(), &format!("{rel}/"), out);
        }
    }
}

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
pub(super) fn host() -> Result<InsecureHost> {
    if crate::rootless::in_user_namespace() {
        return Ok(InsecureHost::default());
    }
    crate::devices::lift_self()?;
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

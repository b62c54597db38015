//! What a container's process keeps of the credentials kiln holds: the capabilities of
//! `kiln run --cap-add/--cap-drop/--privileged` (docker's default set otherwise) and the
//! supplementary groups of `--group-add`.

use std::io;

use rustix::thread::CapabilitySet;

use super::{Result, default_capabilities};
use crate::spec::Security;
use crate::{seccomp, user};

/// `id` with the `--group-add` groups (names from the root's /etc/group `group`, or gids).
pub(super) fn add_groups(
    mut id: user::Identity,
    add: &[String],
    group: Option<&str>,
) -> Result<user::Identity> {
    for g in add {
        let gid = user::resolve_group_spec(g, group)?;
        if !id.groups.contains(&gid) {
            id.groups.push(gid);
        }
    }
    Ok(id)
}

/// The bit of capability `name` (`CAP_CHOWN`).
fn capability_bit(name: &str) -> Option<CapabilitySet> {
    (0..64)
        .map(|b| CapabilitySet::from_bits_retain(1 << b))
        .find(|c| seccomp::capability_names(*c).first().map(String::as_str) == Some(name))
}

/// The capabilities the process keeps: every one kiln has when privileged, else docker's
/// default set with `--cap-drop` and then `--cap-add` applied (moby's order: `ALL` in the
/// adds starts from every capability, `ALL` in the drops from none).
pub(super) fn capabilities(security: &Security) -> io::Result<CapabilitySet> {
    let all = rustix::thread::capabilities(None)?.permitted;
    if security.privileged {
        return Ok(all);
    }
    let has_all = |l: &[String]| l.iter().any(|c| c == "ALL");
    let mut keep = match has_all(&security.cap_add) {
        true => all,
        false => default_capabilities(),
    };
    if has_all(&security.cap_drop) {
        keep = CapabilitySet::empty();
    }
    for c in security.cap_drop.iter().filter_map(|c| capability_bit(c)) {
        keep.remove(c);
    }
    for c in security.cap_add.iter().filter_map(|c| capability_bit(c)) {
        keep.insert(c);
    }
    Ok(keep & all)
}

//! Rootless kiln: every kiln command started by an ordinary user runs inside one user
//! namespace per user (with its own mount and network namespaces), held open by a small pause
//! process (`kiln __rootless-pause`), the way rootless podman does.
//!
//! - [`session::enter`] (called by cli first thing, while the process is single-threaded)
//!   finds the pause process of `$XDG_RUNTIME_DIR/kiln/pause.pid` or starts one, maps its
//!   user namespace with `newuidmap`/`newgidmap` (uid 0 inside = the user, then the
//!   subordinate ranges of /etc/subuid and /etc/subgid; without ranges, the single id 0 with a
//!   warning), starts the network helper ([`net`]: slirp4netns or pasta) on its network
//!   namespace, and joins the three namespaces with `setns`. From then on kiln is root in that
//!   namespace and runs as in root mode: layer tars keep the image's ids (the ids kiln sees
//!   are the namespace's), overlayfs is mounted with `userxattr`, bridges, nft and the RUN
//!   netns pool live in the session's network namespace, and `-p` goes through the network
//!   helper's port forwarder.
//! - [`in_user_namespace`] is how the rest of the executor tells: it reads
//!   `/proc/self/uid_map`.

pub mod fuse;
pub mod net;
pub mod session;
pub mod subid;

use std::path::Path;

/// True when this process is in a user namespace other than the initial one (its uid_map is
/// not the identity map of every id): rootless kiln, or kiln inside an unprivileged container.
pub fn in_user_namespace() -> bool {
    in_user_namespace_at(Path::new("/proc/self/uid_map"))
}

/// [`in_user_namespace`] reading the given uid_map file.
pub fn in_user_namespace_at(uid_map: &Path) -> bool {
    match std::fs::read_to_string(uid_map) {
        Ok(text) => !is_identity_map(&text),
        Err(_) => false,
    }
}

fn is_identity_map(text: &str) -> bool {
    let fields: Vec<&str> = text.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

#[cfg(test)]
mod tests {
    #[test]
    fn identity_map_is_the_initial_namespace() {
        assert!(super::is_identity_map("         0          0 4294967295\n"));
        assert!(!super::is_identity_map("0 1000 1\n1 100000 65536\n"));
        assert!(!super::is_identity_map("0 0 1\n"));
    }
}

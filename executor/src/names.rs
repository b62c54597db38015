//! Names that become path components: container names and ids, network names.
//!
//! A container's name is its directory under `KILN_ROOT/containers/`, its cgroup and its
//! pinned network namespace; a network's name is its directory in the lease store. A name with
//! `/` or `..` in it would put that state anywhere on the host, so every place that turns one
//! into a path checks it here first, and the CLI checks again where the name enters so the
//! user sees docker's message before anything is created.
//!
//! Container names follow docker's rule (`RestrictedNamePattern` in moby's
//! daemon/names/names.go): `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, so at least two characters, and
//! docker's message. Network names use the same characters but may be a single character (as
//! `kiln network create` always allowed); docker itself accepts any network name because it
//! never makes a path of it, kiln does.

/// A name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A container name outside `[a-zA-Z0-9][a-zA-Z0-9_.-]+` (docker's message).
    #[error("Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    Container {
        /// The name as given.
        name: String,
    },
    /// A network name outside `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, or longer than 64 bytes.
    #[error(
        "invalid network name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, at most 64 characters"
    )]
    Network {
        /// The name as given.
        name: String,
    },
}

/// The longest container name: one path component (NAME_MAX).
const MAX_CONTAINER: usize = 255;
/// The longest network name.
const MAX_NETWORK: usize = 64;

fn restricted(name: &str, min: usize, max: usize) -> bool {
    let b = name.as_bytes();
    b.len() >= min
        && b.len() <= max
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// Checks a container name or id (`kiln run --name`). Fails unless it matches
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]+` and fits in one path component.
pub fn check_container(name: &str) -> Result<(), NameError> {
    if restricted(name, 2, MAX_CONTAINER) {
        Ok(())
    } else {
        Err(NameError::Container {
            name: name.to_owned(),
        })
    }
}

/// Checks a network name (`kiln network create`, `--network`). Fails unless it matches
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*` and has at most 64 bytes.
pub fn check_network(name: &str) -> Result<(), NameError> {
    if restricted(name, 1, MAX_NETWORK) {
        Ok(())
    } else {
        Err(NameError::Network {
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_follow_dockers_pattern() {
        for ok in ["ab", "a_b.c-d", "0x", "web1", "A.", &"a".repeat(255)] {
            assert_eq!(check_container(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a",
            "../../x",
            "a/b",
            "..",
            ".ab",
            "_a",
            "-a",
            "a b",
            "a\0b",
            "é1",
            &"a".repeat(256),
        ] {
            assert!(check_container(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_container("a/b").expect_err("slash").to_string(),
            "Invalid container name (a/b), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        );
    }

    #[test]
    fn network_names_allow_one_character_but_no_path_syntax() {
        for ok in ["a", "bridge", "my-net_1.x", &"n".repeat(64)] {
            assert_eq!(check_network(ok), Ok(()), "{ok}");
        }
        for bad in ["", "..", "../x", "a/b", ".n", "-n", "n n", &"n".repeat(65)] {
            assert!(check_network(bad).is_err(), "{bad:?}");
        }
    }
}

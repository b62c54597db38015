//! Image references with docker's normalisation.
//!
//! `alpine` is `docker.io/library/alpine:latest`; `host:5000/app` keeps its registry; a name
//! may carry a tag, a digest or both (`name:tag@sha256:...`). The grammar follows
//! distribution's reference package: a first path component is a registry when it contains
//! `.` or `:`, or is `localhost`.

use crate::oci::Digest;
use std::fmt;

/// The registry of names without one.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag of references without tag or digest.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Registry host (with port), `docker.io` by default.
    pub registry: String,
    /// Repository path (`library/alpine`).
    pub repository: String,
    /// Tag, if given (or `latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// Digest, if given.
    pub digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The reference is empty.
    #[error("invalid reference format: empty name")]
    Empty,
    /// Uppercase letters or other characters not allowed in a repository path.
    #[error(
        "invalid reference format `{reference}`: repository name must be lowercase and use only [a-z0-9._-/]"
    )]
    InvalidName {
        /// The input.
        reference: String,
    },
    /// The tag is malformed.
    #[error(
        "invalid reference format `{reference}`: tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
    )]
    InvalidTag {
        /// The input.
        reference: String,
    },
    /// The digest is malformed.
    #[error("invalid reference format `{reference}`")]
    InvalidDigest {
        /// The input.
        reference: String,
        /// The digest parse error.
        #[source]
        source: crate::oci::InvalidDigest,
    },
}

impl Reference {
    /// Parses and normalises `s`.
    ///
    /// Fails when `s` is empty or breaks the reference grammar (uppercase repository, bad tag,
    /// bad digest).
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let digest = d.parse().map_err(|source| ReferenceError::InvalidDigest {
                    reference: s.to_owned(),
                    source,
                })?;
                (r, Some(digest))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                return Err(ReferenceError::InvalidTag {
                    reference: s.to_owned(),
                });
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), path.to_owned())
            }
            _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" {
            DEFAULT_REGISTRY.to_owned()
        } else {
            registry
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let valid_component = |c: &str| {
            !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
                && c.chars()
                    .next()
                    .is_some_and(|ch| ch.is_ascii_alphanumeric())
                && c.chars()
                    .last()
                    .is_some_and(|ch| ch.is_ascii_alphanumeric())
        };
        if repository.is_empty()
            || !repository.split('/').all(valid_component)
            || registry.is_empty()
        {
            return Err(ReferenceError::InvalidName {
                reference: s.to_owned(),
            });
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short form docker prints: `alpine:latest` for docker.io/library names.
    pub fn familiar(&self) -> String {
        let name = if self.registry == DEFAULT_REGISTRY {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_owned()
        } else {
            self.name()
        };
        let mut out = name;
        if let Some(t) = &self.tag {
            out.push(':');
            out.push_str(t);
        }
        if let Some(d) = &self.digest {
            out.push('@');
            out.push_str(&d.to_string());
        }
        out
    }
}

impl fmt::Display for Reference {
    /// The fully qualified form: `docker.io/library/alpine:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_normalise_like_docker() {
        let r = Reference::parse("alpine").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        assert_eq!(r.familiar(), "alpine:latest");
        assert_eq!(
            Reference::parse("user/app:1").unwrap().to_string(),
            "docker.io/user/app:1"
        );
    }

    #[test]
    fn registries_with_ports_and_digests_are_kept() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("127.0.0.1:5000/a/b:v1@{d}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest.unwrap().to_string(), d);
        assert_eq!(
            Reference::parse("localhost/x").unwrap().registry,
            "localhost"
        );
        assert_eq!(
            Reference::parse("localhost:5000/x").unwrap().tag.as_deref(),
            Some("latest")
        );
    }

    #[test]
    fn invalid_references_are_rejected() {
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("Upper/case").is_err());
        assert!(Reference::parse("a:b:c").is_err());
        assert!(Reference::parse("a@sha256:xyz").is_err());
    }
}

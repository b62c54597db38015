//! `RUN --mount=type=...,k=v` specs, parsed as BuildKit's `commands_runmount.go` reads them.

use crate::error::ErrorKind;
use crate::lower::clean_path;
use graph::{CacheSharing, CopySource, Mount, MountKind};

/// The target of the first `type=ssh` mount without one (the next get `.1`, `.2`...).
pub const SSH_DEFAULT_TARGET: &str = "/run/buildkit/ssh_agent.0";

/// The kind of a parsed mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    /// `type=bind` (the default).
    Bind,
    /// `type=cache`.
    Cache,
    /// `type=tmpfs`.
    Tmpfs,
    /// `type=secret`.
    Secret,
    /// `type=ssh`.
    Ssh,
}

/// A parsed `--mount`, before `from=` is resolved to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedMount {
    /// Type.
    pub kind: MountType,
    /// Absolute target.
    pub target: String,
    /// `from=` (stage or image), unresolved.
    pub from: Option<String>,
    /// `source=`.
    pub source: Option<String>,
    /// Read-only.
    pub readonly: bool,
    /// `id=`.
    pub id: Option<String>,
    /// `sharing=`.
    pub sharing: CacheSharing,
    /// `mode=`.
    pub mode: Option<u32>,
    /// `uid=`.
    pub uid: u32,
    /// `gid=`.
    pub gid: u32,
    /// `required=`.
    pub required: bool,
    /// `env=` (secret).
    pub env: Option<String>,
    /// `size=` (tmpfs), bytes.
    pub size: Option<u64>,
}

fn parse_bool(key: &str, v: Option<&str>) -> Result<bool, ErrorKind> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(other) => Err(ErrorKind::BadMount {
            value: format!("{key}={other}"),
            reason: "expected true or false".into(),
        }),
    }
}

/// Parses one `--mount` value; relative targets are resolved against `cwd`.
///
/// Fails on unknown keys or types, bad numbers, or a missing target where one is required.
pub fn parse_mount(spec: &str, cwd: &str) -> Result<ParsedMount, ErrorKind> {
    let bad = |reason: String| ErrorKind::BadMount {
        value: spec.to_owned(),
        reason,
    };
    let mut m = ParsedMount {
        kind: MountType::Bind,
        target: String::new(),
        from: None,
        source: None,
        readonly: false,
        id: None,
        sharing: CacheSharing::Shared,
        mode: None,
        uid: 0,
        gid: 0,
        required: false,
        env: None,
        size: None,
    };
    let mut ro: Option<bool> = None;
    let fields: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .collect();
    // `type` first: it decides the defaults.
    for f in &fields {
        if let Some(t) = f.strip_prefix("type=") {
            m.kind = match t.to_ascii_lowercase().as_str() {
                "bind" => MountType::Bind,
                "cache" => MountType::Cache,
                "tmpfs" => MountType::Tmpfs,
                "secret" => MountType::Secret,
                "ssh" => MountType::Ssh,
                other => {
                    return Err(bad(format!(
                        "unknown mount type {other:?} (bind, cache, tmpfs, secret, ssh)"
                    )));
                }
            };
        }
    }
    for f in &fields {
        let (k, v) = match f.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v)),
            None => (f.to_ascii_lowercase(), None),
        };
        let need = |v: Option<&str>| {
            v.map(str::to_owned)
                .ok_or_else(|| bad(format!("{k} needs a value")))
        };
        match k.as_str() {
            "type" => {}
            "target" | "dst" | "destination" => m.target = need(v)?,
            "source" | "src" => m.source = Some(need(v)?),
            "from" => m.from = Some(need(v)?),
            "readonly" | "ro" => ro = Some(parse_bool(&k, v)?),
            "readwrite" | "rw" => ro = Some(!parse_bool(&k, v)?),
            "required" => m.required = parse_bool(&k, v)?,
            "id" => m.id = Some(need(v)?),
            "sharing" => {
                m.sharing = match need(v)?.as_str() {
                    "shared" => CacheSharing::Shared,
                    "private" => CacheSharing::Private,
                    "locked" => CacheSharing::Locked,
                    other => {
                        return Err(bad(format!(
                            "unknown sharing {other:?} (shared, private, locked)"
                        )));
                    }
                }
            }
            "mode" => {
                let s = need(v)?;
                m.mode = Some(
                    u32::from_str_radix(&s, 8)
                        .map_err(|_| bad(format!("mode {s:?} is not octal")))?,
                );
            }
            "uid" | "gid" => {
                let s = need(v)?;
                // docker's range: 4294967295 is (uid_t)-1, "unchanged" to chown.
                let n = s
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n <= 2_147_483_647)
                    .ok_or_else(|| bad(format!("{k} {s:?} is not a number in 0-2147483647")))?;
                if k == "uid" {
                    m.uid = n;
                } else {
                    m.gid = n;
                }
            }
            "env" => m.env = Some(need(v)?),
            "size" => {
                let s = need(v)?;
                m.size = Some(
                    kroot::size::parse(&s)
                        .ok()
                        .ok_or_else(|| bad(format!("size {s:?} is not a size")))?,
                );
            }
            other => return Err(bad(format!("unknown key {other:?}"))),
        }
    }
    match m.kind {
        MountType::Secret => {
            let id = match (&m.id, m.target.is_empty()) {
                (Some(id), _) => id.clone(),
                (None, false) => m.target.rsplit('/').next().unwrap_or_default().to_owned(),
                (None, true) => return Err(bad("a secret mount needs id= or target=".into())),
            };
            if m.target.is_empty() && m.env.is_none() {
                m.target = format!("/run/secrets/{id}");
            }
            m.id = Some(id);
        }
        MountType::Ssh => {
            if m.id.is_none() {
                m.id = Some("default".into());
            }
            if m.target.is_empty() {
                m.target = SSH_DEFAULT_TARGET.into();
            }
        }
        _ => {}
    }
    // BuildKit joins a relative target onto WORKDIR, so an empty one means WORKDIR itself.
    let secret_without_target = m.target.is_empty() && m.kind == MountType::Secret;
    if !m.target.starts_with('/') && !secret_without_target {
        m.target = clean_path(&format!("{cwd}/{}", m.target));
    }
    // BuildKit: bind mounts are read-only unless rw; cache and tmpfs are writable.
    m.readonly = ro.unwrap_or(matches!(
        m.kind,
        MountType::Bind | MountType::Secret | MountType::Ssh
    ));
    if m.kind != MountType::Bind && m.kind != MountType::Cache && m.from.is_some() {
        return Err(bad("from= only applies to bind and cache mounts".into()));
    }
    Ok(m)
}

impl ParsedMount {
    /// The graph mount, with `from=` resolved by the caller (`None` = the build context).
    pub fn into_mount(self, from: Option<CopySource>) -> Mount {
        let kind = match self.kind {
            MountType::Bind => MountKind::Bind {
                from: from.unwrap_or(CopySource::Context),
                source: self.source.unwrap_or_else(|| "/".into()),
            },
            MountType::Cache => MountKind::Cache {
                id: self.id.unwrap_or_else(|| self.target.clone()),
                sharing: self.sharing,
                mode: self.mode.unwrap_or(0o755),
                uid: self.uid,
                gid: self.gid,
                from: from.map(|f| (f, self.source.unwrap_or_else(|| "/".into()))),
            },
            MountType::Tmpfs => MountKind::Tmpfs { size: self.size },
            MountType::Secret => MountKind::Secret {
                id: self.id.unwrap_or_default(),
                required: self.required,
                mode: self.mode.unwrap_or(0o400),
                uid: self.uid,
                gid: self.gid,
                env: self.env,
            },
            MountType::Ssh => MountKind::Ssh {
                id: self.id.unwrap_or_default(),
                required: self.required,
                mode: self.mode.unwrap_or(0o600),
                uid: self.uid,
                gid: self.gid,
            },
        };
        Mount {
            target: self.target,
            kind,
            readonly: self.readonly,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_mount_defaults_and_options() {
        let m = parse_mount(
            "type=cache,target=/root/.cache,sharing=locked,mode=0700,uid=1",
            "/",
        )
        .expect("parses");
        assert_eq!(m.kind, MountType::Cache);
        assert!(!m.readonly);
        let g = m.into_mount(None);
        assert_eq!(g.target, "/root/.cache");
        assert_eq!(
            g.kind,
            MountKind::Cache {
                id: "/root/.cache".into(),
                sharing: CacheSharing::Locked,
                mode: 0o700,
                uid: 1,
                gid: 0,
                from: None
            }
        );
    }

    #[test]
    fn bind_is_readonly_and_relative_targets_use_workdir() {
        let m = parse_mount("target=src,source=x", "/app").expect("parses");
        assert_eq!(m.target, "/app/src");
        assert!(m.readonly);
        assert!(
            !parse_mount("type=bind,target=/a,rw", "/")
                .expect("parses")
                .readonly
        );
    }

    #[test]
    fn missing_target_means_workdir() {
        assert_eq!(
            parse_mount("from=src,rw", "/usr/src/app")
                .expect("parses")
                .target,
            "/usr/src/app"
        );
    }

    #[test]
    fn secret_and_ssh_defaults() {
        let s = parse_mount("type=secret,id=npm", "/").expect("parses");
        assert_eq!(s.target, "/run/secrets/npm");
        let s = parse_mount("type=ssh", "/").expect("parses");
        assert_eq!(
            (s.id.as_deref(), s.target.as_str()),
            (Some("default"), "/run/buildkit/ssh_agent.0")
        );
    }

    #[test]
    fn bad_specs_are_rejected() {
        assert!(parse_mount("type=nfs,target=/a", "/").is_err());
        assert!(parse_mount("type=cache,target=/a,sharing=odd", "/").is_err());
        assert!(parse_mount("type=cache,target=/a,mode=9z", "/").is_err());
        assert!(parse_mount("type=bind,target=/a,bogus=1", "/").is_err());
    }

    /// Issue 10: 4294967295 is (uid_t)-1, which chown reads as "leave unchanged".
    #[test]
    fn mount_owners_outside_dockers_id_range_are_rejected() {
        for spec in [
            "type=secret,id=s,uid=4294967295",
            "type=secret,id=s,gid=2147483648",
            "type=cache,target=/c,uid=-1",
        ] {
            let e = parse_mount(spec, "/").expect_err(spec);
            assert!(
                e.to_string().contains("not a number in 0-2147483647"),
                "{e}"
            );
        }
        let m = parse_mount("type=cache,target=/c,uid=2147483647", "/").expect("top of range");
        assert_eq!(m.uid, 2_147_483_647);
    }
}

//! Resolving `USER`/`--chown` strings against a root filesystem's /etc/passwd and /etc/group.
//!
//! Pure: callers read the files (inside the sandbox root) and pass their text. The rules follow
//! runc's `GetExecUser`, which Docker and BuildKit use: a numeric user or group that is not in
//! the files is accepted as is, a name that is not there is an error, and supplementary groups
//! come from /etc/group membership only when no group was given explicitly.

/// Errors resolving a user or group.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// A user name that /etc/passwd does not list.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// A group name that /etc/group does not list.
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    /// An empty user or group part (`":"`, `"user:"`).
    #[error("invalid user specification {0:?}")]
    Invalid(String),
    /// An id outside 0..=2147483647, given as a number or found in /etc/passwd or /etc/group
    /// (docker's and runc's message). 4294967295 is `(uid_t)-1`, which `setresuid` reads as
    /// "leave unchanged": accepting it would run the process as root.
    #[error("uids and gids must be in range 0-{MAX_ID}: {id} ({origin})")]
    Range {
        /// The id as written.
        id: String,
        /// Where it came from: `user spec "4294967295"`, `/etc/passwd entry "alice"`.
        origin: String,
    },
}

/// The largest uid or gid docker, runc and BuildKit accept (`math.MaxInt32`).
pub const MAX_ID: u32 = 2_147_483_647;

type Result<T> = std::result::Result<T, UserError>;

/// One line of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// One line of /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Member login names.
    pub members: Vec<String>,
}

/// A resolved identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (may include `gid`).
    pub groups: Vec<u32>,
    /// Home directory (`/` when the user has no passwd entry).
    pub home: String,
}

/// Parses /etc/passwd text, skipping malformed lines and comments.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// Parses /etc/group text, skipping malformed lines and comments.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// A user or group part that is a number (`-?[0-9]+`): Some(its id), or Some(Err) when it is
/// outside 0..=[`MAX_ID`]; None for a name.
fn numeric(part: &str, spec: &str) -> Option<Result<u32>> {
    let digits = part.strip_prefix('-').unwrap_or(part);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        part.parse::<u32>()
            .ok()
            .filter(|id| *id <= MAX_ID)
            .ok_or_else(|| UserError::Range {
                id: part.to_string(),
                origin: format!("user spec {spec:?}"),
            }),
    )
}

/// Checks the numeric parts of a user spec (`-u`, `--user`, `USER`, `--chown`) without any
/// /etc files, so a command line can be refused before anything runs.
///
/// Fails when a numeric user or group is outside 0..=[`MAX_ID`].
pub fn check_spec(spec: &str) -> Result<()> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    for part in std::iter::once(user_part).chain(group_part) {
        if let Some(Err(e)) = numeric(part, spec) {
            return Err(e);
        }
    }
    Ok(())
}

fn check_entry_id(id: u32, file: &str, name: &str) -> Result<u32> {
    if id <= MAX_ID {
        Ok(id)
    } else {
        Err(UserError::Range {
            id: id.to_string(),
            origin: format!("{file} entry {name:?}"),
        })
    }
}

/// Resolves `""`, `name`, `uid`, `name:group`, `uid:gid` (any mix) given the text of the root's
/// /etc/passwd and /etc/group (`None` when the file is missing).
///
/// Fails when a name is not listed, the spec has an empty part, or an id (given or found in
/// the files) is outside 0..=[`MAX_ID`].
pub fn resolve(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<Identity> {
    let users = passwd.map(parse_passwd).unwrap_or_default();
    let groups = group.map(parse_group).unwrap_or_default();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if spec.is_empty() {
        return with_entry(0, users.iter().find(|e| e.uid == 0), &groups);
    }
    if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
        return Err(UserError::Invalid(spec.to_string()));
    }
    let mut id = match numeric(user_part, spec) {
        Some(uid) => {
            let uid = uid?;
            with_entry(uid, users.iter().find(|e| e.uid == uid), &groups)?
        }
        None => {
            let entry = users
                .iter()
                .find(|e| e.name == user_part)
                .ok_or_else(|| UserError::UnknownUser(user_part.to_string()))?;
            with_entry(entry.uid, Some(entry), &groups)?
        }
    };
    if let Some(g) = group_part {
        id.gid = resolve_group(g, spec, &groups)?;
        // An explicit group replaces the membership-derived supplementary groups (runc).
        id.groups = vec![id.gid];
    }
    Ok(id)
}

/// Resolves a `--chown`/WORKDIR owner as BuildKit does: a user name takes its uid and primary
/// gid from /etc/passwd, a numeric user uses its uid as gid too, and an explicit group (name or
/// number) overrides the gid. No supplementary groups.
///
/// Fails when a name is not listed, a part is empty, or an id is outside 0..=[`MAX_ID`].
pub fn resolve_owner(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<(u32, u32)> {
    if spec.is_empty() {
        return Ok((0, 0));
    }
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
        return Err(UserError::Invalid(spec.to_string()));
    }
    let (uid, mut gid) = match numeric(user_part, spec) {
        Some(uid) => {
            let uid = uid?;
            (uid, uid)
        }
        None => {
            let users = passwd.map(parse_passwd).unwrap_or_default();
            let e = users
                .iter()
                .find(|e| e.name == user_part)
                .ok_or_else(|| UserError::UnknownUser(user_part.to_string()))?;
            (
                check_entry_id(e.uid, "/etc/passwd", &e.name)?,
                check_entry_id(e.gid, "/etc/passwd", &e.name)?,
            )
        }
    };
    if let Some(g) = group_part {
        gid = resolve_group(g, spec, &group.map(parse_group).unwrap_or_default())?;
    }
    Ok((uid, gid))
}

/// Resolves a group name or number.
///
/// Fails when a name is not listed or an id is outside 0..=[`MAX_ID`].
pub fn resolve_group_spec(g: &str, group: Option<&str>) -> Result<u32> {
    resolve_group(g, g, &group.map(parse_group).unwrap_or_default())
}

fn resolve_group(g: &str, spec: &str, groups: &[GroupEntry]) -> Result<u32> {
    if let Some(gid) = numeric(g, spec) {
        return gid;
    }
    let e = groups
        .iter()
        .find(|e| e.name == g)
        .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?;
    check_entry_id(e.gid, "/etc/group", &e.name)
}

fn with_entry(uid: u32, entry: Option<&PasswdEntry>, groups: &[GroupEntry]) -> Result<Identity> {
    let gid = match entry {
        Some(e) => {
            check_entry_id(e.uid, "/etc/passwd", &e.name)?;
            check_entry_id(e.gid, "/etc/passwd", &e.name)?
        }
        None => 0,
    };
    let mut sup = vec![gid];
    if let Some(e) = entry {
        for g in groups {
            if g.members.contains(&e.name) && !sup.contains(&g.gid) {
                sup.push(check_entry_id(g.gid, "/etc/group", &g.name)?);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups: sup,
        home: entry
            .map(|e| e.home.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "/".to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:100:Bob:/home/bob:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nusers:x:100:\nalice:x:1000:\nwheel:x:10:alice,bob\naudio:x:29:bob\n";

    #[test]
    fn empty_user_is_root_with_passwd_home() {
        let id = resolve("", Some(PASSWD), Some(GROUP)).expect("root");
        assert_eq!((id.uid, id.gid, id.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn root_without_passwd_has_home_slash() {
        let id = resolve("", None, None).expect("root");
        assert_eq!((id.uid, id.gid, id.home.as_str()), (0, 0, "/"));
    }

    #[test]
    fn name_resolves_uid_gid_home_and_supplementary_groups() {
        let id = resolve("bob", Some(PASSWD), Some(GROUP)).expect("bob");
        assert_eq!(id.uid, 1001);
        assert_eq!(id.gid, 100);
        assert_eq!(id.groups, vec![100, 10, 29]);
        assert_eq!(id.home, "/home/bob");
    }

    #[test]
    fn numeric_uid_uses_passwd_entry_when_present() {
        let id = resolve("1000", Some(PASSWD), Some(GROUP)).expect("1000");
        assert_eq!((id.uid, id.gid), (1000, 1000));
        assert_eq!(id.groups, vec![1000, 10]);
    }

    #[test]
    fn unknown_numeric_uid_is_accepted_with_gid_zero() {
        let id = resolve("4242", Some(PASSWD), None).expect("4242");
        assert_eq!((id.uid, id.gid, id.home.as_str()), (4242, 0, "/"));
    }

    #[test]
    fn uid_gid_pair_needs_no_files() {
        let id = resolve("12:34", None, None).expect("12:34");
        assert_eq!((id.uid, id.gid), (12, 34));
        assert_eq!(id.groups, vec![34]);
    }

    #[test]
    fn explicit_group_name_replaces_supplementary_groups() {
        let id = resolve("bob:wheel", Some(PASSWD), Some(GROUP)).expect("bob:wheel");
        assert_eq!((id.uid, id.gid), (1001, 10));
        assert_eq!(id.groups, vec![10]);
    }

    #[test]
    fn unknown_user_name_is_an_error_naming_it() {
        let err = resolve("nobody", Some(PASSWD), Some(GROUP)).expect_err("missing");
        assert_eq!(err, UserError::UnknownUser("nobody".into()));
        assert!(err.to_string().contains("nobody"));
    }

    #[test]
    fn unknown_group_name_is_an_error_naming_it() {
        let err = resolve("bob:staff", Some(PASSWD), Some(GROUP)).expect_err("missing");
        assert_eq!(err, UserError::UnknownGroup("staff".into()));
    }

    #[test]
    fn owner_by_name_takes_primary_gid_and_numeric_uid_doubles_as_gid() {
        assert_eq!(
            resolve_owner("bob", Some(PASSWD), Some(GROUP)),
            Ok((1001, 100))
        );
        assert_eq!(resolve_owner("55", None, None), Ok((55, 55)));
        assert_eq!(resolve_owner("55:wheel", None, Some(GROUP)), Ok((55, 10)));
        assert_eq!(resolve_owner("bob:7", Some(PASSWD), None), Ok((1001, 7)));
        assert_eq!(resolve_owner("", None, None), Ok((0, 0)));
        assert_eq!(
            resolve_owner("ghost", Some(PASSWD), None),
            Err(UserError::UnknownUser("ghost".into()))
        );
    }

    #[test]
    fn empty_parts_are_invalid() {
        assert!(matches!(
            resolve(":", None, None),
            Err(UserError::Invalid(_))
        ));
        assert!(matches!(
            resolve("bob:", Some(PASSWD), None),
            Err(UserError::Invalid(_))
        ));
    }

    /// Issue 10: `(uid_t)-1` must never reach setresuid, where it means "unchanged" (root).
    #[test]
    fn ids_outside_docker_range_are_refused_wherever_they_come_from() {
        for spec in [
            "4294967295",
            "2147483648",
            "-1",
            "0:4294967295",
            "alice:2147483648",
            "99999999999999999999",
        ] {
            let err = resolve(spec, Some(PASSWD), Some(GROUP)).expect_err(spec);
            assert!(matches!(err, UserError::Range { .. }), "{spec}: {err}");
            assert!(
                err.to_string()
                    .starts_with("uids and gids must be in range 0-2147483647"),
                "{err}"
            );
            assert!(check_spec(spec).is_err(), "{spec}");
            assert!(resolve_owner(spec, Some(PASSWD), Some(GROUP)).is_err());
        }
        let top = resolve("2147483647:2147483647", None, None).expect("MAX_ID is allowed");
        assert_eq!((top.uid, top.gid), (MAX_ID, MAX_ID));
        assert_eq!(check_spec("alice:wheel"), Ok(()));
        assert_eq!(check_spec("2147483647"), Ok(()));
    }

    #[test]
    fn passwd_and_group_entries_out_of_range_name_the_entry() {
        let passwd =
            "evil:x:4294967295:0::/:/bin/sh\nlow:x:5:4294967295::/:/bin/sh\nok:x:7:7::/:/bin/sh\n";
        let group = "bad:x:4294967295:ok\n";
        let err = resolve("evil", Some(passwd), None).expect_err("uid");
        assert_eq!(
            err.to_string(),
            "uids and gids must be in range 0-2147483647: 4294967295 (/etc/passwd entry \"evil\")"
        );
        assert!(resolve("low", Some(passwd), None).is_err());
        // A numeric uid that matches such an entry is refused too (its gid comes from it).
        assert!(resolve("5", Some(passwd), None).is_err());
        let err = resolve("ok", Some(passwd), Some(group)).expect_err("group");
        assert!(
            err.to_string().contains("/etc/group entry \"bad\""),
            "{err}"
        );
        assert!(resolve("ok:bad", Some(passwd), Some(group)).is_err());
        assert!(resolve_owner("evil", Some(passwd), None).is_err());
        assert!(resolve_owner("ok:bad", Some(passwd), Some(group)).is_err());
    }
}

//! Subordinate id ranges (`/etc/subuid`, `/etc/subgid`) and the id map they give (pure).

/// One `inside outside count` line of a uid_map or gid_map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id inside the namespace.
    pub inside: u32,
    /// First id outside (on the host).
    pub outside: u32,
    /// How many ids.
    pub count: u32,
}

/// The subordinate ranges of a user in a subuid/subgid file: lines `NAME:START:COUNT` or
/// `UID:START:COUNT`, in file order. Malformed lines and comments are skipped, as shadow's
/// `newuidmap` skips them.
pub fn ranges(text: &str, name: &str, id: u32) -> Vec<(u32, u32)> {
    let id = id.to_string();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.trim().splitn(3, ':');
            let (who, start, count) = (parts.next()?, parts.next()?, parts.next()?);
            if who != name && who != id {
                return None;
            }
            let start: u32 = start.parse().ok()?;
            let count: u32 = count.parse().ok()?;
            (count > 0).then_some((start, count))
        })
        .collect()
}

/// The map of a rootless session: id 0 inside is the user's own id, then the subordinate
/// ranges in order from 1 on. With no ranges, only the single id 0.
pub fn id_map(own: u32, subordinate: &[(u32, u32)]) -> Vec<IdRange> {
    let mut map = vec![IdRange {
        inside: 0,
        outside: own,
        count: 1,
    }];
    let mut next = 1u32;
    for &(start, count) in subordinate {
        let Some(end) = next.checked_add(count) else {
            break;
        };
        map.push(IdRange {
            inside: next,
            outside: start,
            count,
        });
        next = end;
    }
    map
}

/// The arguments of `newuidmap PID ...` / `newgidmap PID ...` after the pid.
pub fn map_args(map: &[IdRange]) -> Vec<String> {
    map.iter()
        .flat_map(|r| [r.inside, r.outside, r.count])
        .map(|n| n.to_string())
        .collect()
}

/// The highest id inside the namespace (the 65534 of `nobody` needs a range of 65534 or more).
pub fn max_inside(map: &[IdRange]) -> u32 {
    map.iter()
        .map(|r| r.inside + r.count - 1)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_name_or_uid_and_skip_junk() {
        let text = "# comment\nalice:100000:65536\nbob:165536:65536\n1001:300000:10\nalice:bad:1\nalice:500000:0\n";
        assert_eq!(ranges(text, "alice", 1000), vec![(100000, 65536)]);
        assert_eq!(ranges(text, "carol", 1001), vec![(300000, 10)]);
        assert!(ranges(text, "dave", 1002).is_empty());
    }

    #[test]
    fn id_map_puts_the_user_at_zero_and_ranges_after() {
        let map = id_map(1000, &[(100000, 65536), (300000, 10)]);
        assert_eq!(
            map_args(&map),
            [
                "0", "1000", "1", "1", "100000", "65536", "65537", "300000", "10"
            ]
        );
        assert_eq!(max_inside(&map), 65546);
        let single = id_map(1000, &[]);
        assert_eq!(map_args(&single), ["0", "1000", "1"]);
        assert_eq!(max_inside(&single), 0);
    }
}

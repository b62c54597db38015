//! Container times as docker shows them: RFC 3339 in UTC (`Created`, `StartedAt`), and
//! durations in docker's words (`ps`'s `Up 5 minutes`).

/// The current time as RFC 3339 (UTC, second precision), as docker's `StartedAt`.
pub fn now_rfc3339() -> String {
    rfc3339(i64::try_from(now_secs()).unwrap_or(i64::MAX))
}

/// Seconds since the epoch now (0 before it).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `secs` since the epoch as RFC 3339 (UTC, second precision: `2026-11-18T11:06:40Z`); also
/// the image dates the solver writes. Times outside RFC 3339's four-digit years are clamped to
/// its first or last second.
pub fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .unwrap_or(if secs < 0 {
            jiff::Timestamp::MIN
        } else {
            jiff::Timestamp::MAX
        })
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Seconds since the epoch of an RFC 3339 time (as [`rfc3339`] writes it, or any offset).
pub fn parse_rfc3339(t: &str) -> Option<u64> {
    let ts: jiff::Timestamp = t.parse().ok()?;
    u64::try_from(ts.as_second()).ok()
}

/// A duration as docker's `units.HumanDuration` words it (`5 seconds`, `About a minute`).
pub fn human_duration(secs: u64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        0 => "Less than a second".to_owned(),
        1 => "1 second".to_owned(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".to_owned(),
        s if s < 3600 => format!("{m} minutes"),
        s if s < 7200 => "About an hour".to_owned(),
        s if s < 48 * 3600 => format!("{h} hours"),
        s if s < 14 * 86400 => format!("{d} days"),
        s if s < 60 * 86400 => format!("{} weeks", d / 7),
        s if s < 730 * 86400 => format!("{} months", d / 30),
        _ => format!("{} years", d / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 + 3661), "2000-02-29T01:01:01Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        for t in [0_i64, 951_782_400 + 3661, 1_795_000_000, 4_102_444_799] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t as u64), "{}", rfc3339(t));
        }
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn durations_read_as_docker_words_them() {
        for (s, want) in [
            (0, "Less than a second"),
            (1, "1 second"),
            (59, "59 seconds"),
            (90, "About a minute"),
            (600, "10 minutes"),
            (3700, "About an hour"),
            (5 * 3600, "5 hours"),
            (3 * 86400, "3 days"),
            (21 * 86400, "3 weeks"),
            (90 * 86400, "3 months"),
            (800 * 86400, "2 years"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }
}

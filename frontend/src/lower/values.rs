//! Small value parsers and path helpers used by lowering (and `--change`).

use crate::error::ErrorKind;

pub(super) fn set_env(env: &mut Vec<String>, k: &str, v: &str) {
    let entry = format!("{k}={v}");
    for e in env.iter_mut() {
        if e.split_once('=')
            .map_or(e.as_str() == k, |(key, _)| key == k)
        {
            *e = entry;
            return;
        }
    }
    env.push(entry);
}

/// `path.Clean` for absolute paths.
pub(crate) fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// COPY destinations are relative to WORKDIR; a trailing `/` (or `.`) means "into".
pub(super) fn resolve_dest(dest: &str, cwd: &str) -> String {
    // An empty destination is the working directory, as `.` (BuildKit adds the `/` for
    // both; it matters where the copy cannot look, as `COPY --link`).
    let dir_like = dest.is_empty()
        || dest.ends_with('/')
        || dest == "."
        || dest.ends_with("/.")
        || dest == "..";
    let joined = if dest.starts_with('/') {
        dest.to_owned()
    } else {
        format!("{}/{dest}", cwd.trim_end_matches('/'))
    };
    let mut out = clean_path(&joined);
    if dir_like && !out.ends_with('/') {
        out.push('/');
    }
    out
}

pub(super) fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

pub(super) fn looks_like_image(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | ':' | '@'))
        && !s.starts_with(['-', '.', '/', ':'])
}

pub(super) fn valid_signal(s: &str) -> bool {
    // BuildKit's dispatchStopSignal runs moby/sys/signal's ParseSignal: a nonzero integer as
    // Go's Atoi reads it (sign allowed, no range check), or a name of its Linux SignalMap,
    // upper-cased, with or without `SIG`.
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
        "RTMIN", "RTMAX",
    ];
    if let Ok(n) = s.parse::<i64>() {
        return n != 0;
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let offset = |prefix: &str, sign: char| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix(sign))
            .is_some_and(|n| {
                // Exactly the map's spellings: `RTMIN+1`..`RTMIN+15`, `RTMAX-14`..`RTMAX-1`.
                !n.starts_with('0') && n.parse::<u8>().is_ok_and(|n| (1..=15).contains(&n))
            })
    };
    NAMES.contains(&name) || offset("RTMIN", '+') || (offset("RTMAX", '-') && name != "RTMAX-15")
}

pub(super) fn valid_chmod(s: &str) -> bool {
    if !s.is_empty() && s.len() <= 4 && s.chars().all(|c| ('0'..='7').contains(&c)) {
        return true;
    }
    // Symbolic: [ugoa]*[+-=][rwxXst]* joined by commas.
    !s.is_empty()
        && s.split(',').all(|clause| {
            let who = clause.chars().take_while(|c| "ugoa".contains(*c)).count();
            let rest = &clause[who..];
            !rest.is_empty()
                && rest.starts_with(['+', '-', '='])
                && rest[1..].chars().all(|c| "rwxXst+-=".contains(c))
        })
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub(super) fn go_quote_list(v: &[String]) -> String {
    let q: Vec<String> = v.iter().map(|s| crate::ast::go_quote(s)).collect();
    format!("[{}]", q.join(" "))
}

/// Expands one EXPOSE word: `80`, `53/udp`, `9000-9002`, `8000-8001/tcp` into `port/proto`.
pub(crate) fn parse_port_spec(w: &str) -> Result<Vec<String>, ErrorKind> {
    let bad = |reason: &str| ErrorKind::BadPort {
        port: w.to_owned(),
        reason: reason.to_owned(),
    };
    let (ports, proto) = match w.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (w, "tcp".to_owned()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad("protocol must be tcp, udp or sctp"));
    }
    // `ip:hostport:containerport` forms: only the container port matters for EXPOSE.
    let ports = ports.rsplit(':').next().unwrap_or(ports);
    let num = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| bad("not a port number (0-65535)"))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let p = num(ports)?;
            (p, p)
        }
    };
    if hi < lo {
        return Err(bad("range end is below its start"));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

#[cfg(test)]
mod tests {
    use super::{resolve_dest, valid_signal};

    /// STOPSIGNAL takes what moby/sys/signal's ParseSignal takes (BuildKit calls it), and
    /// nothing else (issue 11: an invalid STOPSIGNAL was accepted).
    #[test]
    fn destinations_that_name_the_working_directory_end_in_a_slash() {
        for (dest, want) in [
            ("", "/w/"),
            (".", "/w/"),
            ("./", "/w/"),
            ("sub/.", "/w/sub/"),
            ("..", "/"),
            ("f", "/w/f"),
            ("/abs", "/abs"),
            ("/abs/", "/abs/"),
        ] {
            assert_eq!(resolve_dest(dest, "/w"), want, "{dest:?}");
        }
    }

    #[test]
    fn stop_signals_are_those_buildkit_parses() {
        for ok in [
            "SIGTERM",
            "term",
            "SigKill",
            "9",
            "-5",
            "+3",
            "100",
            "SIGRTMIN",
            "RTMIN+15",
            "SIGRTMAX-14",
            "rtmax-1",
            "CLD",
            "STKFLT",
        ] {
            assert!(valid_signal(ok), "{ok}");
        }
        for bad in [
            "0",
            "SIGFOO",
            "FOO",
            "SIG",
            "",
            "RTMIN+16",
            "RTMIN+0",
            "RTMIN+01",
            "RTMAX-15",
            "RTMAX+1",
            "RTMIN-1",
            "SIGSIGTERM",
            "TERM ",
        ] {
            assert!(!valid_signal(bad), "{bad:?}");
        }
    }
}

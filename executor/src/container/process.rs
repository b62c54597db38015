//! The processes of a container, read from `/proc`: whether one is alive (a zombie is not),
//! its start time (so a recycled pid is not mistaken for it), the container's PID 1, and
//! signals by name.

use rustix::process::Signal;

/// Whether `pid` is a live process (a zombie, not yet reaped, is dead).
pub fn alive(pid: Option<i32>) -> bool {
    pid.is_some_and(|p| stat_fields(p).is_some_and(|f| f.first().is_some_and(|s| *s != "Z")))
}

/// The fields of `/proc/PID/stat` after the command name (state first).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        s.rsplit(')')
            .next()?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

/// When `pid` started, in clock ticks since boot (`/proc/PID/stat` field 22); None when it is
/// gone. A pid and its start time name one process for the life of the machine.
pub fn start_time(pid: i32) -> Option<u64> {
    // Field 22 of the whole line is the 20th after the command name (state is field 3).
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether the process `pid` that started at `start` (see [`start_time`]) is still alive.
pub fn same_alive(pid: i32, start: u64) -> bool {
    alive(Some(pid)) && start_time(pid) == Some(start)
}

/// The container's PID 1 (a host pid): the sandbox process's only child.
pub fn init_pid(sandbox: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{sandbox}/task/{sandbox}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The container's PID 1 once it has exec'd the container's command: before that it is still
/// `kiln __init` setting up mounts, and a `kiln exec` joining its mount namespace then would
/// see a half-built one.
pub fn ready_init_pid(sandbox: i32) -> Option<i32> {
    let pid = init_pid(sandbox)?;
    let exe = |p: i32| std::fs::read_link(format!("/proc/{p}/exe")).ok();
    let own = exe(pid)?;
    // `--init`: PID 1 stays kiln, as the reaper ([`crate::init::reaper`]) named so.
    let reaper = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.trim_end() == crate::init::reaper::NAME);
    (reaper || Some(own) != exe(sandbox)).then_some(pid)
}

/// Sends `sig` to `pid`, if there is one; a process already gone is fine.
pub fn kill(pid: Option<i32>, sig: Signal) {
    if let Some(p) = pid.and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// An unknown or unsupported signal name.
#[derive(Debug, thiserror::Error)]
#[error("unsupported stop signal {0:?}")]
pub struct UnknownSignal(pub String);

/// A signal by name (`SIGTERM`, `TERM`, `term`) or number, as STOPSIGNAL gives it.
pub fn parse_signal(s: &str) -> Result<Signal, UnknownSignal> {
    let t = s.trim().to_ascii_uppercase();
    let name = t.strip_prefix("SIG").unwrap_or(&t);
    let sig = match name {
        "HUP" | "1" => Signal::HUP,
        "INT" | "2" => Signal::INT,
        "QUIT" | "3" => Signal::QUIT,
        "KILL" | "9" => Signal::KILL,
        "USR1" | "10" => Signal::USR1,
        "USR2" | "12" => Signal::USR2,
        "TERM" | "15" => Signal::TERM,
        "WINCH" | "28" => Signal::WINCH,
        "PWR" | "30" => Signal::POWER,
        _ => return Err(UnknownSignal(s.to_owned())),
    };
    Ok(sig)
}

/// Sends the stop signal `sig` to the container whose sandbox process is `sandbox`: the
/// signals `__init` relays go to it (it forwards them to PID 1), others straight to PID 1.
pub fn send_stop_signal(sandbox: Option<i32>, sig: Signal) {
    let relayed = [
        Signal::TERM,
        Signal::INT,
        Signal::HUP,
        Signal::QUIT,
        Signal::USR1,
        Signal::USR2,
        Signal::WINCH,
    ];
    let target = if relayed.contains(&sig) {
        sandbox
    } else {
        sandbox.and_then(init_pid).or(sandbox)
    };
    kill(target, sig);
}

/// A process's exit status as a shell reports it: its code, or 128 + the signal that killed it.
pub fn exit_code(st: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse_by_name_or_number() {
        for (s, want) in [
            ("SIGTERM", Signal::TERM),
            ("term", Signal::TERM),
            ("15", Signal::TERM),
            ("SIGUSR1", Signal::USR1),
            ("QUIT", Signal::QUIT),
        ] {
            assert_eq!(parse_signal(s).expect(s), want, "{s}");
        }
        assert!(parse_signal("SIGRTMIN+3").is_err());
    }

    #[test]
    fn this_process_is_alive_with_its_start_time() {
        let me = i32::try_from(std::process::id()).expect("pids fit i32");
        let start = start_time(me).expect("own start time");
        assert!(same_alive(me, start));
        assert!(!same_alive(me, start + 1));
        assert!(!alive(None));
    }
}

//! Runs one sandbox (`kiln __init <spec>`) and pumps its output into progress events,
//! keeping the last lines for the failure message.

use super::runner::Runner;
use super::{SolveError, location};
use crate::graph::NodeId;
use crate::progress::{EventKind, Stream};
use executor::spec::InitSpec;
use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::Mutex;
use tokio::io::AsyncReadExt;

/// Lines of output kept for a failure message.
pub(super) const TAIL_LINES: usize = 10;

/// The last lines of a process's output.
#[derive(Debug, Default)]
pub(super) struct Tail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl Tail {
    pub(super) fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                self.lines.push_back(line);
                if self.lines.len() > TAIL_LINES {
                    self.lines.pop_front();
                }
            } else {
                self.partial.push(b);
            }
        }
    }
    pub(super) fn into_lines(mut self) -> Vec<String> {
        if !self.partial.is_empty() {
            self.push(b"\n");
        }
        self.lines.into()
    }
}

impl Runner {
    /// Runs the sandbox for `spec`, streaming its output; fails on a non-zero exit.
    pub(super) async fn sandbox(&self, n: NodeId, spec: &InitSpec) -> Result<(), SolveError> {
        let at = || location(&self.opts, &self.graph.nodes[n]);
        let spawn_err = |source| SolveError::Spawn {
            at: at(),
            exe: self.opts.kiln_exe.clone(),
            source,
        };
        let mut cmd = executor::sandbox::command(&self.opts.kiln_exe, spec).map_err(spawn_err)?;
        // A killed build takes its sandbox with it.
        executor::sys::kill_with_spawner(&mut cmd);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = crate::spawn::spawn(cmd).await.map_err(spawn_err)?;
        let tail = Mutex::new(Tail::default());
        let pump = |mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>, stream: Stream| {
            let tail = &tail;
            async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            tail.lock().expect("not poisoned").push(&buf[..k]);
                            self.emit(
                                n,
                                EventKind::Log {
                                    stream,
                                    bytes: buf[..k].to_vec(),
                                },
                            );
                        }
                    }
                }
            }
        };
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        let (_, _, status) = tokio::join!(
            pump(Box::new(out), Stream::Stdout),
            pump(Box::new(err), Stream::Stderr),
            child.wait()
        );
        let status = status.map_err(spawn_err)?;
        if status.success() {
            return Ok(());
        }
        let code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        });
        let tail = tail.into_inner().expect("not poisoned").into_lines();
        // Setup and copy failures: one `kiln: ` line naming the culprit.
        if code == executor::init::EXIT_SETUP
            && let Some(msg) = tail.iter().rev().find_map(|l| l.strip_prefix("kiln: "))
        {
            return Err(SolveError::Sandbox {
                at: at(),
                message: msg.to_owned(),
            });
        }
        Err(SolveError::Exit {
            at: at(),
            code,
            tail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn tail_keeps_the_last_lines_and_a_partial_one() {
        let mut t = Tail::default();
        for i in 0..15 {
            t.push(format!("line {i}\n").as_bytes());
        }
        t.push(b"no newline");
        let lines = t.into_lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines.first().map(String::as_str), Some("line 6"));
        assert_eq!(lines.last().map(String::as_str), Some("no newline"));
    }
}

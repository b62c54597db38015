//! Progress rendering: BuildKit-style plain lines, a small live view for terminals, and raw
//! JSON events (one per line, for tests and tools). Everything goes to stderr.

use solver::progress::{Event, EventKind, Stream};
use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `--progress` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// tty on a terminal, plain otherwise.
    Auto,
    /// Plain lines, BuildKit's format.
    Plain,
    /// A live view.
    Tty,
    /// One JSON object per event.
    Rawjson,
}

impl Mode {
    /// Resolves `auto` against stderr.
    pub fn resolve(self) -> Mode {
        match self {
            Mode::Auto if io::stderr().is_terminal() => Mode::Tty,
            Mode::Auto => Mode::Plain,
            m => m,
        }
    }
}

#[derive(Debug)]
struct Vertex {
    number: usize,
    name: String,
    started: SystemTime,
    finished: Option<SystemTime>,
    state: &'static str,
    partial: Vec<u8>,
    last_line: String,
}

/// Renders events as they arrive.
#[derive(Debug)]
pub struct Renderer {
    mode: Mode,
    vertices: BTreeMap<usize, Vertex>,
    order: Vec<usize>,
    drawn: usize,
    last_vertex: Option<usize>,
    /// The terminal's columns and rows; None: ask stderr at each redraw.
    size: Option<(usize, usize)>,
}

/// How a cache miss shows in plain and tty progress (`cache miss: file changed: a.txt`).
fn miss_line(reason: &str) -> String {
    format!("cache miss: {reason}")
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Renderer {
    /// A renderer for a resolved mode.
    pub fn new(mode: Mode) -> Renderer {
        Renderer {
            mode: mode.resolve(),
            vertices: BTreeMap::new(),
            order: Vec::new(),
            drawn: 0,
            last_vertex: None,
            size: None,
        }
    }

    /// Redraws the live view so running steps' timers advance between events (call it on a
    /// timer tick); does nothing in other modes or before anything is drawn.
    pub fn tick(&mut self) -> io::Result<()> {
        if self.mode != Mode::Tty || self.order.is_empty() {
            return Ok(());
        }
        self.redraw(&mut io::stderr().lock())
    }

    /// The terminal's size (columns, rows); 80x24 when stderr is not a terminal.
    fn size(&self) -> (usize, usize) {
        if let Some(s) = self.size {
            return s;
        }
        match rustix::termios::tcgetwinsize(rustix::stdio::stderr()) {
            Ok(w) if w.ws_col > 0 && w.ws_row > 0 => (usize::from(w.ws_col), usize::from(w.ws_row)),
            _ => (80, 24),
        }
    }

    /// Renders one event.
    pub fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.event_to(ev, &mut io::stderr().lock())
    }

    /// Renders one event to `err`.
    fn event_to(&mut self, ev: &Event, err: &mut impl Write) -> io::Result<()> {
        if self.mode == Mode::Rawjson {
            let nanos = ev.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let mut obj = serde_json::json!({
                "vertex": ev.vertex, "name": ev.name, "kind": ev.kind.label(), "time": nanos as u64,
            });
            match &ev.kind {
                EventKind::Log { stream, bytes } => {
                    obj["stream"] = (if *stream == Stream::Stdout {
                        "stdout"
                    } else {
                        "stderr"
                    })
                    .into();
                    obj["data"] = String::from_utf8_lossy(bytes).into();
                }
                EventKind::Error { message } => obj["message"] = message.clone().into(),
                EventKind::CacheMiss { reason } => obj["reason"] = reason.clone().into(),
                _ => {}
            }
            return writeln!(err, "{obj}");
        }
        let next = self.vertices.len() + 1;
        let v = self.vertices.entry(ev.vertex).or_insert_with(|| Vertex {
            number: next,
            name: ev.name.clone(),
            started: ev.at,
            finished: None,
            state: "",
            partial: Vec::new(),
            last_line: String::new(),
        });
        if v.number == next {
            self.order.push(ev.vertex);
        }
        let n = v.number;
        if self.mode == Mode::Tty {
            match &ev.kind {
                EventKind::Started => v.state = "",
                EventKind::Cached => v.state = "CACHED",
                EventKind::Done => {
                    v.finished = Some(ev.at);
                    if v.state.is_empty() {
                        v.state = "DONE";
                    }
                }
                EventKind::Error { .. } => {
                    v.finished = Some(ev.at);
                    v.state = "ERROR";
                }
                EventKind::CacheMiss { reason } => v.last_line = miss_line(reason),
                EventKind::Log { bytes, .. } => {
                    v.partial.extend_from_slice(bytes);
                    if let Some(pos) = v.partial.iter().rposition(|&b| b == b'\n') {
                        let text = String::from_utf8_lossy(&v.partial[..pos]).into_owned();
                        v.last_line = text.rsplit('\n').next().unwrap_or("").to_owned();
                        v.partial.drain(..=pos);
                    }
                }
            }
            return self.redraw(err);
        }
        let since = ev.at.duration_since(v.started).unwrap_or_default();
        match &ev.kind {
            EventKind::Started => {
                if self.last_vertex.is_some() {
                    writeln!(err)?;
                }
                writeln!(err, "#{n} {}", v.name)?;
            }
            EventKind::Cached => {
                v.state = "CACHED";
                writeln!(err, "#{n} CACHED")?;
            }
            EventKind::CacheMiss { reason } => {
                writeln!(err, "#{n} {:.3} {}", since.as_secs_f64(), miss_line(reason))?;
            }
            EventKind::Log { bytes, .. } => {
                v.partial.extend_from_slice(bytes);
                while let Some(pos) = v.partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = v.partial.drain(..=pos).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                    writeln!(err, "#{n} {:.3} {text}", since.as_secs_f64())?;
                }
            }
            // BuildKit prints no DONE line for a cached step.
            EventKind::Done if v.state == "CACHED" => {}
            EventKind::Done => {
                if !v.partial.is_empty() {
                    let text = String::from_utf8_lossy(&v.partial).into_owned();
                    v.partial.clear();
                    writeln!(err, "#{n} {:.3} {text}", since.as_secs_f64())?;
                }
                writeln!(err, "#{n} DONE {}", secs(since))?;
            }
            // The step's output was streamed just above: the first line says what failed
            // (the rest of the message repeats that output's last lines).
            EventKind::Error { message } => {
                let first = message.lines().next().unwrap_or_default();
                writeln!(err, "#{n} ERROR: {first}")?;
            }
        }
        self.last_vertex = Some(ev.vertex);
        Ok(())
    }

    /// Draws the view over the previous frame. Every line is clipped to the terminal's width
    /// (a wrapped line would make the cursor-up count wrong) and the frame to its height less
    /// one (the cursor cannot move above the screen's top): when the steps do not fit, the
    /// oldest finished ones give way first, then the oldest running ones.
    fn redraw(&mut self, err: &mut impl Write) -> io::Result<()> {
        let (cols, rows) = self.size();
        let width = cols.saturating_sub(1).max(1);
        let max_lines = rows.saturating_sub(1).max(1);
        let now = SystemTime::now();
        // (line, finished) per step, with its output line under a running one.
        let mut frame: Vec<(String, bool)> = Vec::new();
        for id in &self.order {
            let v = &self.vertices[id];
            let took = v
                .finished
                .unwrap_or(now)
                .duration_since(v.started)
                .unwrap_or_default();
            let done = v.finished.is_some();
            frame.push((format!("=> {} {} {}", v.name, v.state, secs(took)), done));
            if !done && !v.last_line.is_empty() {
                frame.push((format!("   > {}", v.last_line), false));
            }
        }
        let mut excess = frame.len().saturating_sub(max_lines);
        if excess > 0 {
            frame.retain(|(_, done)| {
                if *done && excess > 0 {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
            let extra = frame.len().saturating_sub(max_lines);
            frame.drain(..extra);
        }
        if self.drawn > 0 {
            write!(err, "\x1b[{}A", self.drawn)?;
        }
        let mut lines = 0;
        for (line, _) in &frame {
            let clipped: String = line
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(width)
                .collect();
            writeln!(err, "\x1b[2K{clipped}")?;
            lines += 1;
        }
        // Clear lines left over from a taller previous frame.
        let blank = self.drawn.saturating_sub(lines);
        for _ in 0..blank {
            writeln!(err, "\x1b[2K")?;
        }
        lines += blank;
        self.drawn = lines;
        err.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use solver::progress::Stream;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_000_000 + ms)
    }

    fn ev(vertex: usize, name: &str, kind: EventKind, ms: u64) -> Event {
        Event {
            vertex,
            name: name.to_owned(),
            kind,
            at: at(ms),
        }
    }

    fn render(mode: Mode, events: &[Event]) -> String {
        let mut r = Renderer::new(mode);
        let mut out = Vec::new();
        for e in events {
            r.event_to(e, &mut out).expect("writing to a Vec");
        }
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn plain_output_follows_buildkit() {
        let run = "[2/3] RUN make";
        let events = [
            ev(0, "[1/3] FROM busybox", EventKind::Started, 0),
            ev(0, "[1/3] FROM busybox", EventKind::Done, 0),
            ev(1, run, EventKind::Started, 0),
            ev(
                1,
                run,
                EventKind::Log {
                    stream: Stream::Stdout,
                    bytes: b"cc -o app\nlin".to_vec(),
                },
                123,
            ),
            ev(
                1,
                run,
                EventKind::Log {
                    stream: Stream::Stderr,
                    bytes: b"king\n".to_vec(),
                },
                456,
            ),
            ev(1, run, EventKind::Done, 1234),
            ev(2, "[3/3] COPY a /a", EventKind::Started, 1300),
            ev(2, "[3/3] COPY a /a", EventKind::Cached, 1300),
            ev(2, "[3/3] COPY a /a", EventKind::Done, 1300),
        ];
        assert_eq!(
            render(Mode::Plain, &events),
            "#1 [1/3] FROM busybox\n#1 DONE 0.0s\n\n#2 [2/3] RUN make\n#2 0.123 cc -o app\n\
             #2 0.456 linking\n#2 DONE 1.2s\n\n#3 [3/3] COPY a /a\n#3 CACHED\n"
        );
    }

    /// The visible lines of a tty frame sequence: escapes removed, one entry per line.
    fn visible(out: &str) -> Vec<String> {
        out.split('\n')
            .map(|l| {
                let mut s = String::new();
                let mut chars = l.chars();
                while let Some(c) = chars.next() {
                    if c == '\x1b' {
                        // CSI: ESC [ params final-byte
                        for d in chars.by_ref() {
                            if d.is_ascii_alphabetic() {
                                break;
                            }
                        }
                    } else {
                        s.push(c);
                    }
                }
                s
            })
            .collect()
    }

    #[test]
    fn tty_frames_fit_narrow_and_short_terminals() {
        for (cols, rows) in [(40, 10), (200, 50), (10, 3)] {
            let mut r = Renderer::new(Mode::Tty);
            r.size = Some((cols, rows));
            let mut out = Vec::new();
            for i in 0..30 {
                let name = format!("[{i}/30] RUN a very long command line that goes on and on {i}");
                r.event_to(&ev(i, &name, EventKind::Started, 0), &mut out)
                    .expect("vec");
                r.event_to(
                    &ev(
                        i,
                        &name,
                        EventKind::Log {
                            stream: Stream::Stdout,
                            bytes: format!("output of step {i} {}\n", "x".repeat(300)).into_bytes(),
                        },
                        1,
                    ),
                    &mut out,
                )
                .expect("vec");
                if i % 3 != 0 {
                    r.event_to(&ev(i, &name, EventKind::Done, 2), &mut out)
                        .expect("vec");
                }
                assert!(
                    r.drawn < rows,
                    "{cols}x{rows}: a frame of {} lines",
                    r.drawn
                );
            }
            let text = String::from_utf8(out).expect("utf-8");
            for l in visible(&text) {
                assert!(l.chars().count() < cols, "{cols}x{rows}: {l:?} wraps");
            }
            // The newest running step is on the last frame (finished ones gave way first).
            let last: Vec<String> = visible(&text).into_iter().rev().take(rows).collect();
            assert!(
                last.iter().any(|l| l.contains("[27/30]")) || cols < 20,
                "{cols}x{rows}: {last:?}"
            );
        }
    }

    #[test]
    fn plain_prints_a_failed_steps_output_once() {
        let run = "[2/2] RUN make";
        let out = render(
            Mode::Plain,
            &[
                ev(1, run, EventKind::Started, 0),
                ev(
                    1,
                    run,
                    EventKind::Log {
                        stream: Stream::Stderr,
                        bytes: b"boom\n".to_vec(),
                    },
                    5,
                ),
                ev(
                    1,
                    run,
                    EventKind::Error {
                        message: "Dockerfile:2: RUN make: exit code 2\nboom".to_owned(),
                    },
                    6,
                ),
            ],
        );
        assert_eq!(
            out,
            "#1 [2/2] RUN make\n#1 0.005 boom\n#1 ERROR: Dockerfile:2: RUN make: exit code 2\n"
        );
    }

    #[test]
    fn rawjson_is_one_object_per_event_with_nanosecond_times() {
        let out = render(
            Mode::Rawjson,
            &[ev(
                4,
                "[a 2/2] RUN x",
                EventKind::Log {
                    stream: Stream::Stderr,
                    bytes: b"oops\n".to_vec(),
                },
                5,
            )],
        );
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).expect("one JSON object");
        assert_eq!(v["vertex"], 4);
        assert_eq!(v["kind"], "log");
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["data"], "oops\n");
        assert_eq!(v["time"], 1_000_005_000_000u64);
    }

    #[test]
    fn a_cache_miss_is_a_progress_line_in_plain_and_a_reason_in_rawjson() {
        let run = "[2/2] RUN make";
        let miss = EventKind::CacheMiss {
            reason: "file changed: a.txt".to_owned(),
        };
        let plain = render(
            Mode::Plain,
            &[
                ev(1, run, EventKind::Started, 0),
                ev(1, run, miss.clone(), 7),
            ],
        );
        assert_eq!(
            plain,
            "#1 [2/2] RUN make\n#1 0.007 cache miss: file changed: a.txt\n"
        );
        let raw = render(Mode::Rawjson, &[ev(1, run, miss, 7)]);
        let v: serde_json::Value = serde_json::from_str(raw.trim_end()).expect("one JSON object");
        assert_eq!(v["kind"], "cache_miss");
        assert_eq!(v["reason"], "file changed: a.txt");
    }
}

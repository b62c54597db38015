//! Progress events: what the solver tells the cli about each vertex while it runs.
//!
//! The solver never prints. Each node the build touches emits `Started` then either `Cached`
//! or a `CacheMiss` and some `Log`s followed by `Done` or `Error`. Events go out on an unbounded channel so a
//! slow renderer never blocks a build; the cli renders them as plain text, a live view or raw
//! JSON lines.

use crate::graph::NodeId;
use std::time::SystemTime;

/// Which output stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The process's stdout.
    Stdout,
    /// The process's stderr.
    Stderr,
}

/// What happened to a vertex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The vertex started (it is about to run or be looked up in the cache).
    Started,
    /// The vertex's result came from the cache: nothing ran.
    Cached,
    /// The vertex misses the cache and runs; `reason` says why (`file changed: a.txt`,
    /// `--no-cache`, `no cache entry`; see [`crate::explain`]).
    CacheMiss {
        /// Why, as one line.
        reason: String,
    },
    /// Output of the vertex's process.
    Log {
        /// Which stream.
        stream: Stream,
        /// The bytes, as read (not necessarily whole lines).
        bytes: Vec<u8>,
    },
    /// The vertex finished successfully.
    Done,
    /// The vertex failed.
    Error {
        /// The failure, rendered.
        message: String,
    },
}

impl EventKind {
    /// A short lowercase name (`started`, `cached`, `cache_miss`, `log`, `done`, `error`), as
    /// used in rawjson.
    pub fn label(&self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Cached => "cached",
            EventKind::CacheMiss { .. } => "cache_miss",
            EventKind::Log { .. } => "log",
            EventKind::Done => "done",
            EventKind::Error { .. } => "error",
        }
    }
}

/// One progress event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The graph node it concerns.
    pub vertex: NodeId,
    /// The node's progress name (`[builder 2/4] RUN make`).
    pub name: String,
    /// What happened.
    pub kind: EventKind,
    /// When.
    pub at: SystemTime,
}

/// The sending half the solver writes events to.
pub type Sender = tokio::sync::mpsc::UnboundedSender<Event>;

/// Sends `kind` for `vertex` stamped now; a closed receiver is ignored (the build goes on
/// even when nobody is watching).
#[allow(dead_code)] // used by the op runner
pub(crate) fn emit(tx: &Sender, vertex: NodeId, name: &str, kind: EventKind) {
    let _ = tx.send(Event {
        vertex,
        name: name.to_owned(),
        kind,
        at: SystemTime::now(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_to_a_closed_channel_is_ignored() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        drop(rx);
        emit(&tx, 1, "x", EventKind::Started);
    }

    #[test]
    fn emitted_events_carry_vertex_name_and_kind() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        emit(&tx, 3, "[a 1/2] RUN true", EventKind::Done);
        let ev = rx.try_recv().expect("one event");
        assert_eq!(
            (ev.vertex, ev.name.as_str(), ev.kind.label()),
            (3, "[a 1/2] RUN true", "done")
        );
    }
}

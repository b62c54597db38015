//! Why a step missed the cache: each build records, per step, the inputs that made its key
//! (parent keys, the content digests of its COPY sources, the environment of a RUN, the base
//! image digest, the instruction), and the next build compares a changed key with that record.
//!
//! Steps are matched by their stage position (`[builder 2/4]` of the progress name), so a
//! step whose instruction was edited still finds its previous record. Records live in
//! `KILN_ROOT/explain/<sha256 of context path and Dockerfile name>` (JSON, atomic writes); they
//! are diagnostics only and never enter a key.
//!
//! The per-file metadata behind a COPY's content digest (which file changed) is large (tens of
//! thousands of files in a big context), so it is kept apart, content-addressed:
//! `KILN_ROOT/explain/files/<content digest hex>`, written once when that content is first
//! seen ([`remember_files`]) and read only to explain a miss. A warm build with nothing changed
//! reads and writes none of it: the step records hold only the digests.
//!
//! [`Explain`] is the observer: key computation tells it each step's inputs (it answers why the
//! step would miss, compared with the last build) and the file details behind each content
//! digest; it writes all of that only after the solve, with [`Explain::write`].

use crate::graph::{CopySource, FileAction, Node, NodeId, Op, SourceOp};
use crate::key::SourceMeta;
use cache::oci::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The inputs that made one step's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StepInputs {
    /// The key they made.
    pub key: String,
    /// The instruction as written.
    pub instruction: String,
    /// Keys of the steps it builds on.
    pub parents: Vec<String>,
    /// Content digests of its context COPY sources, in action order (per-file details in
    /// `explain/files/<hex>`).
    #[serde(default)]
    pub contents: Vec<String>,
    /// The environment a RUN sees (ARG and ENV values), by name.
    pub env: BTreeMap<String, String>,
    /// The base image's manifest digest.
    pub base: Option<String>,
}

/// The inputs of `node`, whose key is `key`; `contents` are the content digests of its COPY
/// actions (`None` for actions that read no context).
pub fn inputs(
    node: &Node,
    key: &Digest,
    keys: &[Option<Digest>],
    contents: &[Option<Digest>],
) -> StepInputs {
    let parent = |id: NodeId| keys.get(id).cloned().flatten().map(|d| d.to_string());
    let mut s = StepInputs {
        key: key.to_string(),
        instruction: node.instruction.clone(),
        ..StepInputs::default()
    };
    match &node.op {
        Op::Source(SourceOp::Image { manifest, .. }) => s.base = Some(manifest.to_string()),
        Op::Source(SourceOp::Scratch) => {}
        Op::Exec(x) => {
            s.parents.extend(parent(x.root));
            for m in &x.mounts {
                if let Some(d) = m_source(m).and_then(parent) {
                    s.parents.push(d);
                }
            }
            for kv in &x.env {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                s.env.insert(k.to_owned(), v.to_owned());
            }
        }
        Op::File(f) => {
            s.parents.extend(parent(f.root));
            for a in &f.actions {
                if let FileAction::Copy(c) = a
                    && let CopySource::Node(id) = c.from
                {
                    s.parents.extend(parent(id));
                }
            }
        }
    }
    s.contents = contents.iter().flatten().map(|d| d.to_string()).collect();
    s
}

/// Per path, a summary of what the key covers (kind, mode, owner, size, content, link).
fn summaries(files: &[SourceMeta]) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|m| {
            let content = m
                .content
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default();
            let summary = format!(
                "{:?} {:o} {}:{} {} {} {}",
                m.kind,
                m.mode,
                m.uid,
                m.gid,
                m.size,
                content,
                m.link_target.as_deref().unwrap_or("")
            );
            (m.rel.clone(), summary)
        })
        .collect()
}

/// The `--explain` observer of one build: the last build's step records, this build's, and the
/// file details not yet kept.
#[derive(Debug)]
pub struct Explain {
    file: PathBuf,
    files_dir: PathBuf,
    history: BTreeMap<String, StepInputs>,
    recorded: BTreeMap<String, StepInputs>,
    /// Content digest to per-file summaries, for digests not yet under `files_dir`.
    pending: BTreeMap<Digest, BTreeMap<String, String>>,
}

impl Explain {
    /// The observer of a build of `dockerfile` in `context`, with the records of the last one
    /// (see [`file_for`]; unreadable records count as none).
    pub fn open(kiln_root: &Path, context: &Path, dockerfile: &str) -> Explain {
        let file = file_for(kiln_root, context, dockerfile);
        let history = load(&file);
        Explain {
            files_dir: files_dir(&file),
            recorded: history.clone(),
            history,
            file,
            pending: BTreeMap::new(),
        }
    }

    /// Notes the per-file details behind `content` (kept by [`Explain::write`] unless they
    /// are kept already: then this is one `stat`).
    pub fn saw_files(&mut self, content: &Digest, files: &[SourceMeta]) {
        if !self.pending.contains_key(content) && !self.files_dir.join(content.hex()).exists() {
            self.pending.insert(content.clone(), summaries(files));
        }
    }

    /// Records step `id`'s inputs `now` (its walked COPY sources are `files`) and says why it
    /// would miss the cache, compared with the last build's record of the same step.
    pub fn observe(&mut self, id: String, now: StepInputs, files: &[SourceMeta]) -> String {
        let why = reason(self.history.get(&id), &now, files, &self.files_dir);
        self.recorded.insert(id, now);
        why
    }

    /// Writes what this build observed: the file details first seen, then the step records
    /// when they changed.
    ///
    /// Fails on the first file that cannot be written (the rest are still tried).
    pub fn write(&self) -> std::io::Result<()> {
        let mut first = Ok(());
        for (content, summaries) in &self.pending {
            let bytes = serde_json::to_vec(summaries).map_err(std::io::Error::other)?;
            let r = write_atomic(&self.files_dir.join(content.hex()), &bytes);
            first = first.and(r);
        }
        if self.recorded != self.history {
            first = first.and(save(&self.file, &self.recorded));
        }
        first
    }
}

/// `explain/files` beside the step records in `record_file`'s directory.
pub fn files_dir(record_file: &Path) -> PathBuf {
    record_file.parent().unwrap_or(Path::new(".")).join(FILES)
}

/// [`kroot::Dir::ExplainFiles`] relative to [`kroot::Dir::Explain`] (a test checks).
const FILES: &str = "files";

/// Keeps the per-file details of one COPY's sources under their content digest, unless they
/// are there already (then this is one `stat`).
///
/// Fails when the file cannot be written.
pub fn remember_files(dir: &Path, content: &Digest, files: &[SourceMeta]) -> std::io::Result<()> {
    let file = dir.join(content.hex());
    if file.exists() {
        return Ok(());
    }
    write_atomic(
        &file,
        &serde_json::to_vec(&summaries(files)).map_err(std::io::Error::other)?,
    )
}

/// The per-file details of a content digest (`None` when never recorded or unreadable).
fn recall_files(dir: &Path, content: &str) -> Option<BTreeMap<String, String>> {
    let d: Digest = content.parse().ok()?;
    let bytes = std::fs::read(dir.join(d.hex())).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn m_source(m: &crate::graph::Mount) -> Option<NodeId> {
    match &m.kind {
        crate::graph::MountKind::Bind {
            from: CopySource::Node(id),
            ..
        } => Some(*id),
        _ => None,
    }
}

/// Why `now` missed, compared with the previous record of the same step. `files` are the
/// step's walked COPY sources; the previous ones are read from `files_dir` when the content
/// digests differ.
pub fn reason(
    prev: Option<&StepInputs>,
    now: &StepInputs,
    files: &[SourceMeta],
    files_dir: &Path,
) -> String {
    let Some(prev) = prev else {
        return "no cache entry".into();
    };
    if prev.key == now.key {
        return "no cache entry (same key as the last build: its record or layers are gone)".into();
    }
    if prev.base != now.base {
        return "base image digest moved".into();
    }
    if prev.instruction != now.instruction {
        return "instruction changed".into();
    }
    if prev.contents != now.contents {
        return files_reason(prev, files, files_dir);
    }
    let env: Vec<&str> = now
        .env
        .iter()
        .filter(|(k, v)| prev.env.get(*k) != Some(v))
        .map(|(k, _)| k.as_str())
        .chain(
            prev.env
                .keys()
                .filter(|k| !now.env.contains_key(*k))
                .map(String::as_str),
        )
        .collect();
    if !env.is_empty() {
        return format!("ARG or ENV {} changed", env.join(", "));
    }
    if prev.parents != now.parents {
        return "parent step changed".into();
    }
    "key changed (flags or options)".into()
}

/// Which COPY source files differ from the previous record's.
fn files_reason(prev: &StepInputs, files: &[SourceMeta], files_dir: &Path) -> String {
    let mut before = BTreeMap::new();
    for c in &prev.contents {
        match recall_files(files_dir, c) {
            Some(m) => before.extend(m),
            None => return "COPY sources changed (no per-file record of the last build)".into(),
        }
    }
    let now = summaries(files);
    let mut changed: Vec<&str> = now
        .iter()
        .filter(|(p, v)| before.get(*p) != Some(v))
        .map(|(p, _)| p.as_str())
        .collect();
    changed.extend(
        before
            .keys()
            .filter(|p| !now.contains_key(*p))
            .map(String::as_str),
    );
    if changed.is_empty() {
        return "COPY sources changed".into();
    }
    let more = changed.len().saturating_sub(3);
    let list = changed[..changed.len().min(3)].join(", ");
    if more > 0 {
        format!("file changed: {list} (and {more} more)")
    } else {
        format!("file changed: {list}")
    }
}

/// The step identity: the stage position of a progress name (`[builder 2/4]`), else the name.
pub fn step_id(name: &str) -> &str {
    match name.find("] ") {
        Some(i) if name.starts_with('[') => &name[..=i],
        _ => name,
    }
}

/// The record file for a context directory and Dockerfile.
pub fn file_for(kiln_root: &Path, context: &Path, dockerfile: &str) -> PathBuf {
    let abs = std::fs::canonicalize(context).unwrap_or_else(|_| context.to_path_buf());
    let mut id = abs.to_string_lossy().into_owned().into_bytes();
    id.push(0);
    id.extend_from_slice(dockerfile.as_bytes());
    kroot::Dir::Explain
        .path(kiln_root)
        .join(Digest::of(&id).hex())
}

/// Reads the records (empty when missing or unreadable: they are only diagnostics).
pub fn load(file: &Path) -> BTreeMap<String, StepInputs> {
    std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes the records atomically.
///
/// Fails when the directory or file cannot be written.
pub fn save(file: &Path, records: &BTreeMap<String, StepInputs>) -> std::io::Result<()> {
    write_atomic(
        file,
        &serde_json::to_vec(records).map_err(std::io::Error::other)?,
    )
}

use kroot::write_atomic;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_dir_is_the_layouts_explain_files() {
        let root = Path::new("/r");
        assert_eq!(
            files_dir(&file_for(root, Path::new("/ctx"), "Dockerfile")),
            kroot::Dir::ExplainFiles.path(root)
        );
    }

    fn step(key: &str) -> StepInputs {
        StepInputs {
            key: key.into(),
            instruction: "COPY src /src".into(),
            parents: vec!["p".into()],
            contents: vec![],
            env: [("X".to_owned(), "1".to_owned())].into(),
            base: None,
        }
    }

    fn meta(rel: &str, data: &[u8]) -> SourceMeta {
        SourceMeta {
            rel: rel.into(),
            kind: crate::key::EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: data.len() as u64,
            content: Some(Digest::of(data)),
            link_target: None,
        }
    }

    #[test]
    fn reasons_name_what_changed() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path();
        let why = |p: &StepInputs, n: &StepInputs| reason(Some(p), n, &[], dir);
        let prev = step("k1");
        assert_eq!(reason(None, &prev, &[], dir), "no cache entry");
        assert!(why(&prev, &prev).starts_with("no cache entry"));
        let mut e = step("k2");
        e.env.insert("X".into(), "2".into());
        assert_eq!(why(&prev, &e), "ARG or ENV X changed");
        let mut p = step("k2");
        p.parents = vec!["q".into()];
        assert_eq!(why(&prev, &p), "parent step changed");
        let mut b = step("k2");
        b.base = Some("sha256:x".into());
        assert_eq!(why(&prev, &b), "base image digest moved");
    }

    #[test]
    fn file_reasons_come_from_the_remembered_details() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path();
        let old = [meta("src/a.txt", b"a"), meta("src/b.txt", b"b")];
        let new = [meta("src/a.txt", b"A"), meta("src/b.txt", b"b")];
        let (c_old, c_new) = (
            crate::key::content_digest(&old),
            crate::key::content_digest(&new),
        );
        remember_files(dir, &c_old, &old).expect("remember");
        let mut prev = step("k1");
        prev.contents = vec![c_old.to_string()];
        let mut now = step("k2");
        now.contents = vec![c_new.to_string()];
        assert_eq!(
            reason(Some(&prev), &now, &new, dir),
            "file changed: src/a.txt"
        );
        assert_eq!(
            reason(Some(&prev), &now, &new[1..], dir),
            "file changed: src/a.txt",
            "a removed file"
        );
        // Without the previous details, the reason is still a file reason.
        let mut lost = prev.clone();
        lost.contents = vec![Digest::of(b"never seen").to_string()];
        assert!(reason(Some(&lost), &now, &new, dir).starts_with("COPY sources changed"));
        // Remembering is idempotent and content-addressed.
        remember_files(dir, &c_old, &old).expect("again");
        assert_eq!(std::fs::read_dir(dir).expect("dir").count(), 1);
    }

    #[test]
    fn step_id_is_the_stage_position() {
        assert_eq!(step_id("[builder 2/4] RUN make"), "[builder 2/4]");
        assert_eq!(step_id("[stage] FROM busybox"), "[stage]");
        assert_eq!(step_id("plain"), "plain");
    }

    #[test]
    fn records_round_trip() {
        let d = tempfile::tempdir().expect("tempdir");
        let f = file_for(d.path(), d.path(), "Dockerfile");
        let recs: BTreeMap<_, _> = [("[s 1/2]".to_owned(), step("k"))].into();
        save(&f, &recs).expect("save");
        assert_eq!(load(&f), recs);
        assert!(load(&d.path().join("missing")).is_empty());
    }

    #[test]
    fn the_observer_writes_nothing_until_the_solve_is_over_then_explains_the_next_build() {
        let d = tempfile::tempdir().expect("tempdir");
        let (root, ctx) = (d.path().join("root"), d.path());
        let old = [meta("src/a.txt", b"a")];
        let new = [meta("src/a.txt", b"A")];
        let (c_old, c_new) = (
            crate::key::content_digest(&old),
            crate::key::content_digest(&new),
        );
        let mut first = Explain::open(&root, ctx, "Dockerfile");
        first.saw_files(&c_old, &old);
        let mut s1 = step("k1");
        s1.contents = vec![c_old.to_string()];
        assert_eq!(first.observe("[1/2]".into(), s1, &old), "no cache entry");
        assert!(
            !kroot::Dir::Explain.path(&root).exists(),
            "nothing written while observing"
        );
        first.write().expect("write");
        let mut second = Explain::open(&root, ctx, "Dockerfile");
        second.saw_files(&c_new, &new);
        let mut s2 = step("k2");
        s2.contents = vec![c_new.to_string()];
        assert_eq!(
            second.observe("[1/2]".into(), s2, &new),
            "file changed: src/a.txt"
        );
    }
}

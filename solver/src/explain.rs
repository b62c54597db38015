//! Why a step missed the cache: each build records, per step, the inputs that made its key
//! (parent keys, per-file content of its COPY sources, the environment of a RUN, the base image
//! digest, the instruction), and the next build compares a changed key with that record.
//!
//! Steps are matched by their stage position (`[builder 2/4]` of the progress name), so a
//! step whose instruction was edited still finds its previous record. Records live in
//! `KILN_ROOT/explain/<sha256 of context path and Dockerfile name>` (JSON, atomic writes); they
//! are diagnostics only and never enter a key.

use crate::graph::{CopySource, FileAction, Node, NodeId, Op, SourceOp};
use crate::key::SourceMeta;
use cache::oci::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How the miss line starts in a step's progress output (`cache miss: file changed: a.txt`).
pub const PREFIX: &str = "cache miss: ";

/// The inputs that made one step's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StepInputs {
    /// The key they made.
    pub key: String,
    /// The instruction as written.
    pub instruction: String,
    /// Keys of the steps it builds on.
    pub parents: Vec<String>,
    /// Per COPY source path: a summary of its metadata and content digest.
    pub files: BTreeMap<String, String>,
    /// The environment a RUN sees (ARG and ENV values), by name.
    pub env: BTreeMap<String, String>,
    /// The base image's manifest digest.
    pub base: Option<String>,
}

/// The inputs of `node`, whose key is `key`; `files` are its walked COPY sources.
pub fn inputs(
    node: &Node,
    key: &Digest,
    keys: &[Option<Digest>],
    files: &[SourceMeta],
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
                // A moved branch shows as a changed source: `file changed: <url> (git)`.
                if let FileAction::Copy(c) = a
                    && let CopySource::Git(g) = &c.from
                {
                    s.files.insert(
                        format!("{} (git)", g.url),
                        format!("commit {}", g.commit.as_deref().unwrap_or("")),
                    );
                }
            }
        }
    }
    for m in files {
        let content = m
            .content
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default();
        s.files.insert(
            m.rel.clone(),
            format!(
                "{:?} {:o} {}:{} {} {} {}",
                m.kind,
                m.mode,
                m.uid,
                m.gid,
                m.size,
                content,
                m.link_target.as_deref().unwrap_or("")
            ),
        );
    }
    s
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

/// Why `now` missed, compared with the previous record of the same step.
pub fn reason(prev: Option<&StepInputs>, now: &StepInputs) -> String {
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
    let mut changed: Vec<&str> = now
        .files
        .iter()
        .filter(|(p, v)| prev.files.get(*p) != Some(v))
        .map(|(p, _)| p.as_str())
        .collect();
    changed.extend(
        prev.files
            .keys()
            .filter(|p| !now.files.contains_key(*p))
            .map(String::as_str),
    );
    if !changed.is_empty() {
        let more = changed.len().saturating_sub(3);
        let list = changed[..changed.len().min(3)].join(", ");
        return if more > 0 {
            format!("file changed: {list} (and {more} more)")
        } else {
            format!("file changed: {list}")
        };
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
    kiln_root.join("explain").join(Digest::of(&id).hex())
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
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}", std::process::id()));
    std::fs::write(
        &tmp,
        serde_json::to_vec(records).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(key: &str) -> StepInputs {
        StepInputs {
            key: key.into(),
            instruction: "COPY src /src".into(),
            parents: vec!["p".into()],
            files: [("src/a.txt".to_owned(), "File 644 a".to_owned())].into(),
            env: [("X".to_owned(), "1".to_owned())].into(),
            base: None,
        }
    }

    #[test]
    fn reasons_name_what_changed() {
        let prev = step("k1");
        assert_eq!(reason(None, &prev), "no cache entry");
        assert!(reason(Some(&prev), &prev).starts_with("no cache entry"));
        let mut f = step("k2");
        f.files.insert("src/a.txt".into(), "File 644 b".into());
        assert_eq!(reason(Some(&prev), &f), "file changed: src/a.txt");
        let mut gone = step("k2");
        gone.files.clear();
        assert_eq!(reason(Some(&prev), &gone), "file changed: src/a.txt");
        let mut e = step("k2");
        e.env.insert("X".into(), "2".into());
        assert_eq!(reason(Some(&prev), &e), "ARG or ENV X changed");
        let mut p = step("k2");
        p.parents = vec!["q".into()];
        assert_eq!(reason(Some(&prev), &p), "parent step changed");
        let mut b = step("k2");
        b.base = Some("sha256:x".into());
        assert_eq!(reason(Some(&prev), &b), "base image digest moved");
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
}

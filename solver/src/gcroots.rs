//! The solver's part in `kiln prune` ([`cache::gc::GcRoots`]): its `RUN --mount=type=cache`
//! directories are build cache entries (last use: the newer of the directory's mtime and its
//! lock file's, which every RUN that mounts it touches; a build holding the lock keeps it), and
//! the per-file details of `--explain` (`explain/files/<digest>`) go once no step record names
//! them. The cache never reads these files itself.

use cache::gc::{GcRoots, TenantEntry};
use cache::store::StoreError;
use kroot::Dir;
use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The solver's state under one `KILN_ROOT`.
#[derive(Debug, Clone)]
pub struct SolverRoots {
    root: PathBuf,
}

impl SolverRoots {
    /// The solver's state under `kiln_root`.
    pub fn new(kiln_root: impl Into<PathBuf>) -> SolverRoots {
        SolverRoots {
            root: kiln_root.into(),
        }
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, StoreError> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(rd.flatten().collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(StoreError::Io {
            op: "read directory",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn mtime(p: &Path) -> SystemTime {
    fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Bytes of the regular files at or below `path`, each inode once; unreadable parts count 0.
fn tree_bytes(path: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = fs::symlink_metadata(path) else {
        return 0;
    };
    if md.is_dir() {
        fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| tree_bytes(&e.path(), seen))
            .sum()
    } else if md.is_file() && seen.insert((md.dev(), md.ino())) {
        md.len()
    } else {
        0
    }
}

impl GcRoots for SolverRoots {
    fn cache_entries(&self) -> Result<Vec<TenantEntry>, StoreError> {
        let mut out = Vec::new();
        for ent in read_dir(&Dir::CacheMounts.path(&self.root))? {
            if !ent.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = ent.path();
            let lock = crate::mounts::lock_path(&path);
            let mut seen = HashSet::new();
            out.push(TenantEntry {
                id: ent.file_name().to_string_lossy().into_owned(),
                last_used: mtime(&path).max(mtime(&lock)),
                bytes: tree_bytes(&path, &mut seen),
                lock: Some(lock),
                path,
            });
        }
        Ok(out)
    }

    /// Removes `explain/files/<digest>` that no step record in `explain/` names.
    fn sweep(&self) -> Result<u64, StoreError> {
        let mut named = HashSet::new();
        for ent in read_dir(&Dir::Explain.path(&self.root))? {
            if !ent.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            for step in crate::explain::load(&ent.path()).into_values() {
                named.extend(
                    step.contents
                        .iter()
                        .filter_map(|c| c.parse::<cache::oci::Digest>().ok())
                        .map(|d| d.hex().to_owned()),
                );
            }
        }
        let mut bytes = 0;
        for ent in read_dir(&Dir::ExplainFiles.path(&self.root))? {
            if named.contains(ent.file_name().to_string_lossy().as_ref()) {
                continue;
            }
            let path = ent.path();
            let len = fs::symlink_metadata(&path).map_or(0, |m| m.len());
            match fs::remove_file(&path) {
                Ok(()) => bytes += len,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StoreError::Io {
                        op: "remove",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache::gc::{EntryKind, PruneOptions};
    use cache::oci::Digest;
    use cache::store::Store;

    #[test]
    fn prune_removes_cache_mounts_unless_a_build_holds_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let mounts = store.dir(Dir::CacheMounts);
        for m in ["free", "held"] {
            fs::create_dir_all(mounts.join(m)).expect("mkdir");
            fs::write(mounts.join(m).join("pkg"), b"downloaded").expect("write");
            fs::write(mounts.join(format!("{m}.lock")), b"").expect("lock file");
        }
        let held = fs::File::open(mounts.join("held.lock")).expect("open");
        held.lock_shared().expect("lock");
        let roots = SolverRoots::new(store.root());
        let entries = roots.cache_entries().expect("entries");
        assert_eq!(entries.len(), 2, "the lock files are not entries");
        assert!(entries.iter().all(|e| e.bytes == 10), "{entries:?}");
        let r = store
            .prune(&PruneOptions::default(), &[&roots])
            .expect("prune");
        assert!(!mounts.join("free").exists());
        assert!(!mounts.join("free.lock").exists());
        assert!(mounts.join("held/pkg").exists(), "in use: kept");
        assert_eq!(
            r.removed
                .iter()
                .map(|e| (e.kind, e.id.as_str()))
                .collect::<Vec<_>>(),
            [(EntryKind::CacheMount, "free")]
        );
    }

    #[test]
    fn explain_details_go_when_no_step_record_names_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let files = store.dir(Dir::ExplainFiles);
        fs::create_dir_all(&files).expect("mkdir");
        let (named, orphan) = (Digest::of(b"named"), Digest::of(b"orphan"));
        for d in [&named, &orphan] {
            fs::write(files.join(d.hex()), b"{}").expect("write");
        }
        let record = crate::explain::file_for(store.root(), dir.path(), "Dockerfile");
        let step = crate::explain::StepInputs {
            key: Digest::of(b"key").to_string(),
            instruction: "COPY . /".into(),
            parents: Vec::new(),
            contents: vec![named.to_string()],
            env: Default::default(),
            base: None,
        };
        crate::explain::save(&record, &[("[1/2]".to_owned(), step)].into()).expect("save record");
        let roots = SolverRoots::new(store.root());
        store
            .prune(&PruneOptions::default(), &[&roots])
            .expect("prune");
        assert!(files.join(named.hex()).exists());
        assert!(!files.join(orphan.hex()).exists());
        assert!(record.exists(), "records are not the sweep's to remove");
    }
}

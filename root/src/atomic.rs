//! The one way kiln replaces a file: a temp file in the destination's directory, written,
//! fsynced, renamed over the destination, and the directory fsynced so that the rename itself
//! survives a crash. A reader sees the old file or the new one, never a part of either.
//!
//! Temp names are `.<name>.tmp-<pid>-<n>`: hidden, unique per process and call, and in the
//! same directory (the rename never crosses a filesystem). A failed write removes its temp; a
//! crash can leave one, which no reader takes for an entry (they open entries by name, and
//! directory scans skip names starting with `.`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with `data` (mode 0644), creating missing parent directories.
///
/// Fails on any I/O error; `path` then still holds its old content (or is still absent).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_with(path, 0o644, |f| f.write_all(data))
}

/// Replaces `path` with what `write` writes into the temp file (created with `mode`), creating
/// missing parent directories. Use it to stream large files (`kiln save`) or to set a mode.
///
/// Fails on any I/O error, `write`'s included; the temp file is removed and `path` keeps its
/// old content.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    replace(path, mode, write, &mut |_| {})
}

/// Makes the finished temp file `tmp` (at `tmp_path`, on the same filesystem as `dest`) the
/// file `dest`: fsync, rename, fsync `dest`'s directory. For temps that live elsewhere than
/// beside their destination (the content store writes under `KILN_ROOT/tmp`, where gc finds
/// what a killed process left).
///
/// Fails on any I/O error; the caller removes `tmp_path`.
pub fn commit(tmp: &File, tmp_path: &Path, dest: &Path) -> io::Result<()> {
    tmp.sync_all()?;
    fs::rename(tmp_path, dest)?;
    sync_dir(parent(dest))
}

/// fsyncs the directory `dir`, which makes the renames and creations in it durable.
///
/// Fails when `dir` cannot be opened as a directory or synced.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?
        .sync_all()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The steps of a replace, in order; tests observe them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Created,
    Written,
    SyncedFile,
    Renamed,
    SyncedDir,
}

fn replace(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut File) -> io::Result<()>,
    seen: &mut dyn FnMut(Step),
) -> io::Result<()> {
    let dir = parent(path);
    fs::create_dir_all(dir)?;
    let (tmp_path, mut file) = create_temp(dir, path, mode)?;
    seen(Step::Created);
    let result = (|| {
        write(&mut file)?;
        seen(Step::Written);
        file.sync_all()?;
        seen(Step::SyncedFile);
        fs::rename(&tmp_path, path)?;
        seen(Step::Renamed);
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    sync_dir(dir)?;
    seen(Step::SyncedDir);
    Ok(())
}

fn create_temp(dir: &Path, path: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    loop {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            // Left by a dead process with a recycled pid: take the next number.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temp() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("sub/state.json");
        write_atomic(&p, b"one").expect("first write");
        write_atomic(&p, b"two").expect("second write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert_eq!(names(&d.path().join("sub")), ["state.json"]);
        assert_eq!(
            fs::metadata(&p).expect("stat").permissions().mode() & 0o777,
            0o644
        );
    }

    #[test]
    fn a_partial_write_is_never_visible() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("f");
        fs::write(&p, b"old content").expect("seed");
        write_atomic_with(&p, 0o600, |f| {
            f.write_all(b"new ")?;
            // Half written: the destination still reads whole and old.
            assert_eq!(fs::read(&p).expect("read"), b"old content");
            f.write_all(b"content")
        })
        .expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"new content");
        assert_eq!(
            fs::metadata(&p).expect("stat").permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_failed_write_removes_its_temp_and_keeps_the_old_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("f");
        fs::write(&p, b"old").expect("seed");
        let err = write_atomic_with(&p, 0o644, |f| {
            f.write_all(b"partial")?;
            Err(io::Error::other("disk full"))
        })
        .expect_err("the writer failed");
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(fs::read(&p).expect("read"), b"old");
        assert_eq!(names(d.path()), ["f"]);
    }

    #[test]
    fn a_failed_rename_removes_its_temp() {
        let d = tempfile::tempdir().expect("tempdir");
        // A non-empty directory where the file should go: rename(2) fails with EISDIR.
        let p = d.path().join("f");
        fs::create_dir_all(p.join("x")).expect("mkdir");
        write_atomic(&p, b"data").expect_err("cannot replace a directory");
        assert_eq!(names(d.path()), ["f"]);
    }

    #[test]
    fn file_is_synced_before_the_rename_and_the_directory_after() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut steps = Vec::new();
        replace(
            &d.path().join("f"),
            0o644,
            |f| f.write_all(b"x"),
            &mut |s| steps.push(s),
        )
        .expect("write");
        assert_eq!(
            steps,
            [
                Step::Created,
                Step::Written,
                Step::SyncedFile,
                Step::Renamed,
                Step::SyncedDir
            ]
        );
    }

    #[test]
    fn sync_dir_opens_a_directory_only() {
        let d = tempfile::tempdir().expect("tempdir");
        sync_dir(d.path()).expect("a directory syncs");
        let f = d.path().join("f");
        fs::write(&f, b"").expect("write");
        assert_eq!(
            sync_dir(&f).expect_err("not a directory").raw_os_error(),
            Some(20) // ENOTDIR
        );
    }

    #[test]
    fn commit_moves_a_temp_from_another_directory() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::create_dir(d.path().join("tmp")).expect("mkdir");
        fs::create_dir(d.path().join("blobs")).expect("mkdir");
        let tmp = d.path().join("tmp/t");
        let mut f = File::create(&tmp).expect("create");
        f.write_all(b"blob").expect("write");
        let dest = d.path().join("blobs/b");
        commit(&f, &tmp, &dest).expect("commit");
        assert_eq!(fs::read(&dest).expect("read"), b"blob");
        assert!(names(&d.path().join("tmp")).is_empty());
    }
}

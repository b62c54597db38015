//! Hostile and broken layer tars: each fails cleanly, writes nothing outside the snapshot and
//! leaves nothing in snapshots/, blobs/ or tmp/. Also: killed writers and concurrent writers.

use cache::layer::apply::ApplyError;
use cache::store::{CommitOptions, Store, StoreError};
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use tar::{EntryType, Header};

/// Appends an entry with `name` written raw into the header (no validation), like an attacker.
fn raw_entry(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: EntryType, link: &str, data: &[u8]) {
    let mut h = Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(if kind == EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn tar_of(entries: &[(&str, EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link) in entries {
        let data: &[u8] = if *kind == EntryType::Regular {
            b"pwned\n"
        } else {
            b""
        };
        raw_entry(&mut b, name, *kind, link, data);
    }
    b.into_inner().unwrap()
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn assert_clean(store: &Store, outside: &Path) {
    assert_eq!(count(outside), 0, "something was written outside the root");
    for d in ["snapshots", "blobs/sha256", "tmp"] {
        assert_eq!(count(&store.root().join(d)), 0, "{d} is not empty");
    }
}

fn run_hostile(entries: &[(&str, EntryType, &str)], check: impl Fn(&ApplyError) -> bool) {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let store = Store::open(dir.path().join("store/root")).unwrap();
    let entries: Vec<(String, EntryType, String)> = entries
        .iter()
        .map(|(n, k, l)| {
            (
                n.to_string(),
                *k,
                l.replace("OUTSIDE", outside.to_str().unwrap()),
            )
        })
        .collect();
    let view: Vec<(&str, EntryType, &str)> = entries
        .iter()
        .map(|(n, k, l)| (n.as_str(), *k, l.as_str()))
        .collect();
    let tar = tar_of(&view);
    let err = store.unpack_layer(&tar[..], None).unwrap_err();
    match &err {
        StoreError::Unpack { source } => assert!(check(source), "unexpected error: {source:?}"),
        other => panic!("unexpected error: {other:?}"),
    }
    assert_clean(&store, &outside);
    // import_rootfs goes through the same applier.
    let cfg = cache::oci::ImageConfig::empty(&cache::oci::Platform::host());
    assert!(store.import_rootfs(&tar[..], cfg).is_err());
    assert_clean(&store, &outside);
}

#[test]
fn dotdot_entry_is_rejected() {
    run_hostile(
        &[("../../etc/x", EntryType::Regular, "")],
        |e| matches!(e, ApplyError::UnsafePath { path, .. } if path == "../../etc/x"),
    );
    run_hostile(
        &[
            ("a/", EntryType::Directory, ""),
            ("a/../../x", EntryType::Regular, ""),
        ],
        |e| matches!(e, ApplyError::UnsafePath { .. }),
    );
}

#[test]
fn absolute_entry_is_rejected() {
    run_hostile(&[("/etc/x", EntryType::Regular, "")], |e| {
        matches!(
            e,
            ApplyError::UnsafePath {
                reason: "absolute path",
                ..
            }
        )
    });
}

#[test]
fn write_through_symlink_is_rejected() {
    // Absolute symlink to outside, then a write through it.
    run_hostile(
        &[
            ("evil", EntryType::Symlink, "OUTSIDE"),
            ("evil/x", EntryType::Regular, ""),
        ],
        |e| matches!(e, ApplyError::ThroughSymlink { path } if path == "evil/x"),
    );
    // Relative symlink climbing out, then a write through it.
    run_hostile(
        &[
            ("up", EntryType::Symlink, "../../../../../../../.."),
            ("up/tmp/x", EntryType::Regular, ""),
        ],
        |e| matches!(e, ApplyError::ThroughSymlink { .. }),
    );
}

#[test]
fn hardlink_to_outside_is_rejected() {
    run_hostile(&[("h", EntryType::Link, "../../../../etc/passwd")], |e| {
        matches!(e, ApplyError::BadHardlink { .. })
    });
    run_hostile(&[("h", EntryType::Link, "/etc/passwd")], |e| {
        matches!(e, ApplyError::BadHardlink { .. })
    });
    // Through a symlink to a directory outside.
    run_hostile(
        &[
            ("s", EntryType::Symlink, "/etc"),
            ("h", EntryType::Link, "s/passwd"),
        ],
        |e| matches!(e, ApplyError::BadHardlink { .. }),
    );
}

#[test]
fn directory_replaced_by_symlink_is_not_followed() {
    run_hostile(
        &[
            ("d/", EntryType::Directory, ""),
            ("d/ok", EntryType::Regular, ""),
            ("d", EntryType::Symlink, "OUTSIDE"),
            ("d/x", EntryType::Regular, ""),
        ],
        |e| matches!(e, ApplyError::ThroughSymlink { path } if path == "d/x"),
    );
}

#[test]
fn truncated_stream_and_wrong_diff_id_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, "big", EntryType::Regular, "", &vec![1u8; 100_000]);
    let tar = b.into_inner().unwrap();
    let err = store.unpack_layer(&tar[..50_000], None).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Unpack {
                source: ApplyError::Read { .. }
            }
        ),
        "{err:?}"
    );
    assert_clean(&store, &outside);
    let wrong = cache::oci::Digest::of(b"not this");
    let err = store.unpack_layer(&tar[..], Some(&wrong)).unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err:?}");
    assert_clean(&store, &outside);
    // The good stream still works afterwards.
    let layer = store.unpack_layer(&tar[..], None).unwrap();
    assert!(store.has_layer(&layer.diff_id));
}

/// A reader that hands out `data` and then blocks forever (a sender that hangs).
struct Stalling {
    data: Vec<u8>,
    pos: usize,
}

impl Read for Stalling {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.data.len() {
            loop {
                std::thread::park();
            }
        }
        let n = buf.len().min(self.data.len() - self.pos).min(4096);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Child half of `killed_unpack_leaves_nothing_trusted`: unpacks half a layer into the store
/// named by its argument, then stalls until it is killed.
#[test]
#[ignore = "helper run by killed_unpack_leaves_nothing_trusted in a child process"]
fn child_unpack_then_stall() {
    let Ok(root) = std::env::var("KILN_TEST_CHILD_STORE") else {
        return;
    };
    let store = Store::open(root).unwrap();
    let mut tar = Vec::new();
    io::stdin().read_to_end(&mut tar).unwrap();
    let half = tar[..tar.len() / 2].to_vec();
    let _ = store.unpack_layer(Stalling { data: half, pos: 0 }, None);
}

#[test]
fn killed_unpack_leaves_nothing_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let store = Store::open(&root).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..50 {
        raw_entry(
            &mut b,
            &format!("f{i:02}"),
            EntryType::Regular,
            "",
            &vec![i as u8; 10_000],
        );
    }
    let tar = b.into_inner().unwrap();
    let diff_id = cache::oci::Digest::of(&tar);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hostile::child_unpack_then_stall",
            "--ignored",
            "--nocapture",
        ])
        .env("KILN_TEST_CHILD_STORE", &root)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&tar).unwrap();
    // Wait until the child has files in its temp snapshot, then kill it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let partial = fs::read_dir(root.join("tmp"))
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name().to_string_lossy().starts_with("unpack-")
                    && count(&e.path().join("root")) > 0
            });
        if partial {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "child never started unpacking"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Garbage stays under tmp/ only; nothing is visible as a blob or snapshot.
    assert!(count(&root.join("tmp")) > 0);
    assert_eq!(count(&root.join("snapshots")), 0);
    assert_eq!(count(&root.join("blobs/sha256")), 0);
    assert!(!store.has_layer(&diff_id));
    // A later unpack of the same layer succeeds and gives the full tree.
    let layer = store.unpack_layer(&tar[..], Some(&diff_id)).unwrap();
    assert_eq!(count(&store.snapshot_path(&layer.diff_id)), 50);
}

#[test]
fn concurrent_commits_and_unpacks_of_the_same_content_agree() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let threads = 4;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let store = store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let upper = store.temp_dir("upper").unwrap().into_path();
                for j in 0..200 {
                    fs::write(upper.join(format!("file{j:03}")), format!("content {j}")).unwrap();
                }
                let opts = CommitOptions {
                    clamp_mtime: Some(0),
                };
                barrier.wait();
                let layer = if i % 2 == 0 {
                    store.commit_layer(&upper, &opts).unwrap().unwrap()
                } else {
                    // Half the threads race an unpack of the same (clamped, deterministic) tar.
                    let mut other = Vec::new();
                    let (_, n) =
                        cache::layer::writer::write_layer(&upper, Some(0), &mut other).unwrap();
                    assert_eq!(n, 200);
                    fs::remove_dir_all(&upper).unwrap();
                    store.unpack_layer(&other[..], None).unwrap()
                };
                assert!(!upper.exists());
                layer
            })
        })
        .collect();
    let layers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(layers.windows(2).all(|w| w[0] == w[1]), "{layers:?}");
    assert!(store.has_layer(&layers[0].diff_id));
    assert_eq!(count(&store.root().join("snapshots")), 1);
    assert_eq!(count(&store.snapshot_path(&layers[0].diff_id)), 200);
    assert_eq!(count(&store.root().join("tmp")), 0);
}

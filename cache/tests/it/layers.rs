//! commit_layer / unpack_layer / images: real trees with every entry type.

use crate::{describe_tree, is_root, precondition};
use cache::oci::{Digest, ImageConfig, Platform};
use cache::store::{CommitOptions, Store, StoreError};
use rustix::fs::{FileType, Mode, makedev};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

fn set_mtime(p: &Path, secs: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// An overlay-upper-style tree using every kind of entry. Needs root (devices, chown, trusted.*).
pub fn make_upper(dir: &Path, mtime: i64) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("etc/ssl")).unwrap();
    fs::create_dir_all(dir.join("opaque/sub")).unwrap();
    fs::write(dir.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(dir.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(dir.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    fs::hard_link(dir.join("etc/passwd"), dir.join("etc/passwd.hard")).unwrap();
    symlink("../bin/tool", dir.join("etc/tool-link")).unwrap();
    symlink("/nonexistent/absolute", dir.join("etc/abs-link")).unwrap();
    fs::set_permissions(dir.join("etc/ssl"), fs::Permissions::from_mode(0o1777)).unwrap();
    let long = "d".repeat(120);
    fs::create_dir_all(dir.join(&long)).unwrap();
    fs::write(dir.join(&long).join("f".repeat(150)), b"long").unwrap();
    fs::write(dir.join("opaque/sub/x"), b"x").unwrap();
    fs::write(dir.join("owned"), b"o").unwrap();
    std::os::unix::fs::lchown(dir.join("owned"), Some(3_000_000), Some(1234)).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("etc/deleted"),
        FileType::CharacterDevice,
        Mode::empty(),
        makedev(0, 0),
    )
    .unwrap();
    rustix::fs::chmodat(
        rustix::fs::CWD,
        dir.join("null"),
        Mode::from_raw_mode(0o666),
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        dir.join("opaque"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        dir.join("bin/tool"),
        "user.kiln.test",
        b"v1",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        dir.join("bin/tool"),
        "trusted.overlay.origin",
        b"junk",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    // Fixed mtimes everywhere (children first so dirs keep theirs).
    let mut all = Vec::new();
    collect(dir, &mut all);
    all.reverse();
    for p in all {
        set_mtime(&p, mtime);
    }
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            collect(&p, out);
        }
    }
}

fn tar_names(store: &Store, d: &Digest) -> Vec<(String, tar::EntryType)> {
    let f = fs::File::open(store.blob_path(d)).unwrap();
    let mut a = tar::Archive::new(f);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                e.header().entry_type(),
            )
        })
        .collect()
}

#[test]
fn committed_layer_has_sorted_entries_whiteouts_and_round_trips() {
    if !precondition(is_root(), "needs root (devices, chown, trusted xattrs)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    let upper = store.temp_dir("upper").unwrap().into_path();
    make_upper(&upper, 1_600_000_000);
    let before = describe_tree(&upper, true);
    let layer = store
        .commit_layer(&upper, &CommitOptions::default())
        .unwrap()
        .unwrap();
    assert!(!upper.exists(), "upper dir is moved into snapshots/");
    assert!(store.has_layer(&layer.diff_id));
    assert_eq!(
        describe_tree(&store.snapshot_path(&layer.diff_id), true),
        before
    );

    let names = tar_names(&store, &layer.diff_id);
    let just: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    let long_dir = format!("{}/", "d".repeat(120));
    let long_file = format!("{}/{}", "d".repeat(120), "f".repeat(150));
    assert_eq!(
        just,
        vec![
            "bin/",
            "bin/tool",
            &long_dir,
            &long_file,
            "etc/",
            "etc/abs-link",
            "etc/.wh.deleted",
            "etc/passwd",
            "etc/passwd.hard",
            "etc/ssl/",
            "etc/tool-link",
            "fifo",
            "null",
            "opaque/",
            "opaque/.wh..wh..opq",
            "opaque/sub/",
            "opaque/sub/x",
            "owned",
        ]
    );
    let kind = |n: &str| names.iter().find(|(x, _)| x == n).unwrap().1;
    assert_eq!(kind("etc/passwd.hard"), tar::EntryType::Link);
    assert_eq!(kind("etc/tool-link"), tar::EntryType::Symlink);
    assert_eq!(kind("null"), tar::EntryType::Char);
    assert_eq!(kind("fifo"), tar::EntryType::Fifo);

    // Unpacking the blob in a fresh store gives the same diff_id and the same tree, overlay
    // whiteout and opaque markers included (the overlay-internal origin xattr is dropped).
    let store2 = Store::open(dir.path().join("root2")).unwrap();
    let blob = fs::File::open(store.blob_path(&layer.diff_id)).unwrap();
    let l2 = store2.unpack_layer(blob, Some(&layer.diff_id)).unwrap();
    assert_eq!(l2, layer);
    let mut expected = before.clone();
    let tool = expected.get_mut("bin/tool").unwrap();
    *tool = tool.replace("trusted.overlay.origin=junk,", "");
    assert_eq!(
        describe_tree(&store2.snapshot_path(&l2.diff_id), true),
        expected
    );
    // A second unpack of a known layer reads nothing.
    let l3 = store2
        .unpack_layer(std::io::empty(), Some(&layer.diff_id))
        .unwrap();
    assert_eq!(l3, layer);
    assert_eq!(fs::read_dir(store2.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn empty_upper_makes_no_layer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let upper = store.temp_dir("upper").unwrap();
    assert_eq!(
        store
            .commit_layer(upper.path(), &CommitOptions::default())
            .unwrap(),
        None
    );
    assert!(upper.path().exists());
    assert_eq!(
        fs::read_dir(store.root().join("snapshots"))
            .unwrap()
            .count(),
        0
    );
}

fn simple_tree(dir: &Path, mtime: i64) {
    fs::create_dir_all(dir.join("a/b")).unwrap();
    fs::write(dir.join("a/b/file"), b"content").unwrap();
    fs::write(dir.join("top"), b"top").unwrap();
    symlink("a/b/file", dir.join("link")).unwrap();
    for p in ["a/b/file", "a/b", "a", "top", "link"] {
        set_mtime(&dir.join(p), mtime);
    }
}

#[test]
fn same_tree_gives_same_diff_id_and_clamp_hides_mtimes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let commit = |mtime: i64, clamp: Option<i64>| {
        let upper = store.temp_dir("upper").unwrap().into_path();
        simple_tree(&upper, mtime);
        store
            .commit_layer(&upper, &CommitOptions { clamp_mtime: clamp })
            .unwrap()
            .unwrap()
    };
    let a = commit(1_700_000_000, None);
    let b = commit(1_700_000_000, None);
    assert_eq!(a, b, "same tree, same bytes");
    let c = commit(1_700_000_500, None);
    assert_ne!(
        a.diff_id, c.diff_id,
        "mtime is part of the layer without a clamp"
    );
    let clamped1 = commit(1_700_000_000, Some(1_000_000_000));
    let clamped2 = commit(1_700_009_999, Some(1_000_000_000));
    assert_eq!(clamped1, clamped2);
    // The clamp is applied on disk too, so the snapshot agrees with the tar.
    let snap = store.snapshot_path(&clamped1.diff_id);
    for p in ["a/b/file", "a", "top", "link"] {
        assert_eq!(
            fs::symlink_metadata(snap.join(p)).unwrap().mtime(),
            1_000_000_000,
            "{p}"
        );
    }
    // Older files keep their time under a later clamp.
    let d = commit(1_700_000_000, Some(1_800_000_000));
    assert_eq!(d, a);
}

#[test]
fn image_store_tags_resolves_and_lists() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // A rootfs tarball built with the tar crate, gzip-compressed: import detects it.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(3);
    h.set_mode(0o755);
    h.set_mtime(1_000);
    b.append_data(&mut h, "bin/sh", &b"sh\n"[..]).unwrap();
    let raw = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    let gz = gz.finish().unwrap();
    let mut cfg = ImageConfig::empty(&Platform::host());
    cfg.config.cmd = Some(vec!["sh".into()]);
    let img = store.import_rootfs(&gz[..], cfg.clone()).unwrap();
    let img2 = store.import_rootfs(&raw[..], cfg).unwrap();
    assert_eq!(
        img.manifest_digest, img2.manifest_digest,
        "import is deterministic"
    );
    assert_eq!(img.config.rootfs.diff_ids.len(), 1);
    assert!(store.has_layer(&img.config.rootfs.diff_ids[0]));
    assert_eq!(
        img.manifest.media_type.as_deref(),
        Some(cache::oci::MEDIA_TYPE_MANIFEST)
    );
    assert_eq!(
        img.manifest.config.media_type,
        cache::oci::MEDIA_TYPE_CONFIG
    );
    assert_eq!(
        img.manifest.layers[0].media_type,
        cache::oci::MEDIA_TYPE_LAYER_TAR
    );
    assert_eq!(store.image(&img.manifest_digest).unwrap(), img);

    assert!(store.resolve("busybox").unwrap().is_none());
    store.tag("busybox", &img.manifest_digest).unwrap();
    store
        .tag("localhost:5000/app:v1", &img.manifest_digest)
        .unwrap();
    for name in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox:latest",
        &img.manifest_digest.to_string(),
        &img.manifest_digest.hex()[..8],
        &format!("busybox@{}", img.manifest_digest),
    ] {
        assert_eq!(store.resolve(name).unwrap().as_ref(), Some(&img), "{name}");
    }
    let list = store.list_images().unwrap();
    let names: Vec<String> = list.iter().map(|(r, _)| r.to_string()).collect();
    assert_eq!(
        names,
        vec!["docker.io/library/busybox:latest", "localhost:5000/app:v1"]
    );
    assert!(store.untag("busybox").unwrap());
    assert!(!store.untag("busybox").unwrap());
    assert!(store.resolve("busybox").unwrap().is_none());
    assert!(matches!(
        store.tag("Bad Name", &img.manifest_digest),
        Err(StoreError::Reference { .. })
    ));
    let missing = Digest::of(b"nothing");
    assert!(matches!(
        store.tag("x", &missing),
        Err(StoreError::BlobMissing { .. })
    ));

    // write_image refuses layers that are not in the store.
    let mut bad = img.config.clone();
    bad.rootfs.diff_ids.push(missing);
    assert!(matches!(
        store.write_image(&bad),
        Err(StoreError::LayerMissing { .. })
    ));

    // The stored layer is the re-written, deterministic tar of what was imported.
    let mut layer = Vec::new();
    fs::File::open(store.blob_path(&img.config.rootfs.diff_ids[0]))
        .unwrap()
        .read_to_end(&mut layer)
        .unwrap();
    let mut a = tar::Archive::new(&layer[..]);
    let names: Vec<String> = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, vec!["bin/", "bin/sh"]);
}

#[test]
fn busybox_rootfs_made_by_gnu_tar_imports() {
    let busybox = Path::new("/usr/bin/busybox");
    if !precondition(busybox.is_file(), "busybox-static not installed")
        || !precondition(
            std::process::Command::new("tar")
                .arg("--version")
                .output()
                .is_ok(),
            "GNU tar not installed",
        )
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "ls", "echo", "cat"] {
        symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    // GNU tar writes `./`-prefixed names, a `./` root entry and GNU-format headers.
    let out = std::process::Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(&rootfs)
        .args(["-czf", "-", "."])
        .output()
        .unwrap();
    assert!(out.status.success());
    let store = Store::open(dir.path().join("root")).unwrap();
    let img = store
        .import_rootfs(&out.stdout[..], ImageConfig::empty(&Platform::host()))
        .unwrap();
    let snap = store.snapshot_path(&img.config.rootfs.diff_ids[0]);
    assert_eq!(
        fs::read_link(snap.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let m = fs::metadata(snap.join("bin/busybox")).unwrap();
    assert_eq!(m.len(), fs::metadata(busybox).unwrap().len());
    assert_eq!(m.mode() & 0o111, 0o111);
    let o = std::process::Command::new(snap.join("bin/busybox"))
        .args(["echo", "hello"])
        .output()
        .unwrap();
    assert_eq!(o.stdout, b"hello\n");
}

#[test]
fn user_overlay_opaque_is_accepted_and_pax_nanoseconds_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // An upper dir made with `userxattr` marks opaque dirs with user.overlay.opaque.
    let upper = store.temp_dir("upper").unwrap().into_path();
    fs::create_dir(upper.join("o")).unwrap();
    rustix::fs::lsetxattr(
        upper.join("o"),
        "user.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let layer = store
        .commit_layer(&upper, &CommitOptions::default())
        .unwrap()
        .unwrap();
    let names: Vec<String> = tar_names(&store, &layer.diff_id)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec!["o/", "o/.wh..wh..opq"]);

    // A PAX mtime with a fraction keeps its nanoseconds on disk.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("mtime", &b"1700000000.123456789"[..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(1);
    h.set_mode(0o640);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "f", &b"x"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let l = store.unpack_layer(&tar[..], None).unwrap();
    let m = fs::metadata(store.snapshot_path(&l.diff_id).join("f")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_700_000_000, 123_456_789));
    assert_eq!(m.mode() & 0o7777, 0o640);
}

#[test]
fn remembered_compressed_blob_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let upper = store.temp_dir("upper").unwrap().into_path();
    fs::write(upper.join("f"), b"data").unwrap();
    let layer = store
        .commit_layer(&upper, &CommitOptions::default())
        .unwrap()
        .unwrap();
    // Say a registry served this layer gzip-compressed by someone else's gzip.
    let raw = fs::read(store.blob_path(&layer.diff_id)).unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut enc, &raw).unwrap();
    let theirs = enc.finish().unwrap();
    let digest = store.put_blob(&theirs).unwrap();
    let desc = cache::oci::Descriptor::new(
        cache::oci::MEDIA_TYPE_LAYER_GZIP,
        digest,
        theirs.len() as u64,
    );
    let c = cache::store::Compression::default();
    store.remember_compressed(&layer.diff_id, c, &desc).unwrap();
    assert_eq!(store.compressed_layer(&layer.diff_id, c).unwrap(), desc);
}

#[test]
fn metacopy_upper_is_refused_not_committed_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let upper = store.temp_dir("upper").unwrap().into_path();
    fs::write(upper.join("f"), b"").unwrap();
    rustix::fs::lsetxattr(
        upper.join("f"),
        "user.overlay.metacopy",
        b"",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let err = store
        .commit_layer(&upper, &CommitOptions::default())
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Commit { source: cache::layer::writer::WriteError::OverlayFeature { xattr, .. }, .. } if xattr == "user.overlay.metacopy"),
        "{err:?}"
    );
    assert!(upper.exists());
    assert_eq!(
        fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}

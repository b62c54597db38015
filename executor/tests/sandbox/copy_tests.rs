//! CopySpec execution (COPY, ADD, WORKDIR) through `__init`.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use executor::spec::{CopyFrom, CopySpec, CopyTask, InitSpec};

use super::fixture::{Layer, TestFn, busybox_root, ensure_eq, run, tree};

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "copy_files_and_dirs_keep_modes_mtimes_links",
        copy_files_and_dirs_keep_modes_mtimes_links,
    ),
    (
        "copy_missing_source_is_a_context_error",
        copy_missing_source_is_a_context_error,
    ),
    (
        "copy_wildcard_matching_nothing_copies_nothing",
        copy_wildcard_matching_nothing_copies_nothing,
    ),
    (
        "copy_several_sources_need_a_directory_dest",
        copy_several_sources_need_a_directory_dest,
    ),
    (
        "copy_chown_by_name_applies_to_files_and_new_parents",
        copy_chown_by_name_applies_to_files_and_new_parents,
    ),
    (
        "copy_chown_numeric_and_chmod_with_setuid",
        copy_chown_numeric_and_chmod_with_setuid,
    ),
    (
        "copy_unknown_chown_user_fails",
        copy_unknown_chown_user_fails,
    ),
    (
        "copy_exclude_and_dockerignore_are_never_copied",
        copy_exclude_and_dockerignore_are_never_copied,
    ),
    (
        "copy_dest_symlink_resolves_inside_the_root",
        copy_dest_symlink_resolves_inside_the_root,
    ),
    (
        "copy_context_symlink_cannot_escape",
        copy_context_symlink_cannot_escape,
    ),
    (
        "copy_from_layers_keeps_owners_and_hides_whiteouts",
        copy_from_layers_keeps_owners_and_hides_whiteouts,
    ),
    (
        "copy_from_layers_missing_source",
        copy_from_layers_missing_source,
    ),
    (
        "copy_parents_keeps_source_paths",
        copy_parents_keeps_source_paths,
    ),
    ("copy_into_scratch_root", copy_into_scratch_root),
    (
        "add_extracts_tar_gz_and_zstd_inside_dest",
        add_extracts_tar_gz_and_zstd_inside_dest,
    ),
    (
        "add_copies_non_archives_as_files",
        add_copies_non_archives_as_files,
    ),
    (
        "mkdir_creates_parents_owned_by_owner",
        mkdir_creates_parents_owned_by_owner,
    ),
];

fn copy_task(ctx: &Path, sources: &[&str], dest: &str) -> CopyTask {
    CopyTask::Copy {
        from: CopyFrom::Context {
            dir: ctx.to_path_buf(),
            ignore: vec![],
        },
        sources: sources.iter().map(|s| s.to_string()).collect(),
        dest: dest.into(),
        chown: None,
        chmod: None,
        exclude: vec![],
        parents: false,
        unpack_archives: false,
    }
}

fn run_copy(layer: &Layer, lowers: Vec<PathBuf>, tasks: Vec<CopyTask>) -> Result<(i32, String)> {
    let out = run(InitSpec::Copy(CopySpec {
        rootfs: layer.rootfs(lowers),
        tasks,
    }))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn copy_ok(lowers: Vec<PathBuf>, tasks: Vec<CopyTask>) -> Result<Layer> {
    let layer = Layer::new()?;
    let (code, err) = run_copy(&layer, lowers, tasks)?;
    ensure!(code == 0, "copy exited {code}: {err}");
    Ok(layer)
}

fn busybox() -> Vec<PathBuf> {
    vec![busybox_root().to_path_buf()]
}

fn set_mtime(p: &Path, secs: i64) -> Result<()> {
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
    )?;
    Ok(())
}

/// a.txt (0640, owner 1234), dir/{sub/b (0755), link -> sub/b, hard1 == hard2}.
fn context() -> Result<tempfile::TempDir> {
    let d = tempfile::tempdir()?;
    let p = d.path();
    std::fs::write(p.join("a.txt"), "a\n")?;
    std::fs::set_permissions(p.join("a.txt"), std::fs::Permissions::from_mode(0o640))?;
    std::os::unix::fs::chown(p.join("a.txt"), Some(1234), Some(1234))?;
    std::fs::create_dir_all(p.join("dir/sub"))?;
    std::fs::write(p.join("dir/sub/b"), "#!/bin/sh\n")?;
    std::fs::set_permissions(p.join("dir/sub/b"), std::fs::Permissions::from_mode(0o755))?;
    symlink("sub/b", p.join("dir/link"))?;
    std::fs::write(p.join("dir/hard1"), "h\n")?;
    std::fs::hard_link(p.join("dir/hard1"), p.join("dir/hard2"))?;
    std::fs::write(p.join("b.log"), "log\n")?;
    for f in [
        "a.txt",
        "dir/sub/b",
        "dir/link",
        "dir/hard1",
        "dir/sub",
        "dir",
    ] {
        set_mtime(&p.join(f), 1_600_000_000)?;
    }
    Ok(d)
}

fn copy_files_and_dirs_keep_modes_mtimes_links() -> Result<()> {
    let ctx = context()?;
    let layer = copy_ok(
        busybox(),
        vec![copy_task(ctx.path(), &["a.txt", "dir"], "/app/")],
    )?;
    let up = layer.upper();
    ensure_eq!(
        tree(&up)?,
        vec![
            "app",
            "app/a.txt",
            "app/hard1",
            "app/hard2",
            "app/link",
            "app/sub",
            "app/sub/b"
        ]
    );
    let a = std::fs::metadata(up.join("app/a.txt"))?;
    ensure_eq!(
        (a.mode() & 0o7777, a.uid(), a.gid(), a.mtime()),
        (0o640, 0, 0, 1_600_000_000)
    );
    ensure_eq!(
        std::fs::metadata(up.join("app/sub/b"))?.mode() & 0o7777,
        0o755
    );
    ensure_eq!(
        std::fs::metadata(up.join("app/sub"))?.mtime(),
        1_600_000_000
    );
    ensure_eq!(
        std::fs::read_link(up.join("app/link"))?,
        PathBuf::from("sub/b")
    );
    ensure_eq!(
        std::fs::metadata(up.join("app/hard1"))?.ino(),
        std::fs::metadata(up.join("app/hard2"))?.ino()
    );
    // A directory source to a plain dest copies its contents there.
    let layer = copy_ok(
        busybox(),
        vec![copy_task(ctx.path(), &["dir/sub"], "/bin2")],
    )?;
    ensure_eq!(tree(&layer.upper())?, vec!["bin2", "bin2/b"]);
    // A file to a plain dest is renamed.
    let layer = copy_ok(
        busybox(),
        vec![copy_task(ctx.path(), &["a.txt"], "/etc/renamed")],
    )?;
    ensure_eq!(
        std::fs::read_to_string(layer.upper().join("etc/renamed"))?,
        "a\n"
    );
    Ok(())
}

fn copy_missing_source_is_a_context_error() -> Result<()> {
    let ctx = context()?;
    let layer = Layer::new()?;
    let (code, err) = run_copy(
        &layer,
        busybox(),
        vec![copy_task(ctx.path(), &["nope"], "/x/")],
    )?;
    ensure_eq!(code, 125);
    ensure_eq!(
        err,
        "kiln: COPY failed: file not found in build context: nope\n"
    );
    Ok(())
}

fn copy_wildcard_matching_nothing_copies_nothing() -> Result<()> {
    let ctx = context()?;
    let layer = copy_ok(busybox(), vec![copy_task(ctx.path(), &["*.none"], "/x/")])?;
    ensure!(
        tree(&layer.upper())?.iter().all(|p| !p.contains('/')),
        "files were copied"
    );
    let layer = copy_ok(
        busybox(),
        vec![copy_task(ctx.path(), &["*.txt", "*.log"], "/x/")],
    )?;
    ensure_eq!(tree(&layer.upper())?, vec!["x", "x/a.txt", "x/b.log"]);
    Ok(())
}

fn copy_several_sources_need_a_directory_dest() -> Result<()> {
    let ctx = context()?;
    let layer = Layer::new()?;
    let (code, err) = run_copy(
        &layer,
        busybox(),
        vec![copy_task(ctx.path(), &["a.txt", "b.log"], "/x")],
    )?;
    ensure_eq!(code, 125);
    ensure!(
        err.contains("must be a directory and end with a /: /x"),
        "{err}"
    );
    // An existing directory is fine without the slash.
    copy_ok(
        busybox(),
        vec![copy_task(ctx.path(), &["a.txt", "b.log"], "/etc")],
    )?;
    Ok(())
}

fn copy_chown_by_name_applies_to_files_and_new_parents() -> Result<()> {
    let ctx = context()?;
    let mut t = copy_task(ctx.path(), &["a.txt", "dir"], "/new/app/");
    if let CopyTask::Copy { chown, .. } = &mut t {
        *chown = Some("alice".into());
    }
    let layer = copy_ok(busybox(), vec![t])?;
    for p in [
        "new",
        "new/app",
        "new/app/a.txt",
        "new/app/sub/b",
        "new/app/link",
    ] {
        let m = std::fs::symlink_metadata(layer.upper().join(p))?;
        ensure_eq!((p, m.uid(), m.gid()), (p, 1000, 1000));
    }
    Ok(())
}

fn copy_chown_numeric_and_chmod_with_setuid() -> Result<()> {
    let ctx = context()?;
    let mut t = copy_task(ctx.path(), &["a.txt"], "/x/");
    if let CopyTask::Copy { chown, chmod, .. } = &mut t {
        *chown = Some("55".into());
        *chmod = Some("4755".into());
    }
    let layer = copy_ok(vec![], vec![t])?;
    let m = std::fs::metadata(layer.upper().join("x/a.txt"))?;
    ensure_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (55, 55, 0o4755));
    // Symbolic: applied to each entry's own mode.
    let mut t = copy_task(ctx.path(), &["dir/sub"], "/y");
    if let CopyTask::Copy { chmod, .. } = &mut t {
        *chmod = Some("go-rx,u+s".into());
    }
    let layer = copy_ok(vec![], vec![t])?;
    let m = std::fs::metadata(layer.upper().join("y/b"))?;
    ensure_eq!(m.mode() & 0o7777, 0o4700);
    Ok(())
}

fn copy_unknown_chown_user_fails() -> Result<()> {
    let ctx = context()?;
    let mut t = copy_task(ctx.path(), &["a.txt"], "/x/");
    if let CopyTask::Copy { chown, .. } = &mut t {
        *chown = Some("mallory".into());
    }
    let layer = Layer::new()?;
    let (code, err) = run_copy(&layer, busybox(), vec![t])?;
    ensure_eq!(code, 125);
    ensure!(
        err.contains("--chown=mallory") && err.contains("unable to find user mallory"),
        "{err}"
    );
    Ok(())
}

fn copy_exclude_and_dockerignore_are_never_copied() -> Result<()> {
    let ctx = context()?;
    let t = CopyTask::Copy {
        from: CopyFrom::Context {
            dir: ctx.path().to_path_buf(),
            ignore: vec!["*.log".into(), "dir/hard*".into()],
        },
        sources: vec![".".into()],
        dest: "/app".into(),
        chown: None,
        chmod: None,
        exclude: vec!["a.*".into()],
        parents: false,
        unpack_archives: false,
    };
    let layer = copy_ok(busybox(), vec![t])?;
    ensure_eq!(
        tree(&layer.upper())?,
        vec![
            "app",
            "app/dir",
            "app/dir/link",
            "app/dir/sub",
            "app/dir/sub/b"
        ]
    );
    Ok(())
}

fn copy_dest_symlink_resolves_inside_the_root() -> Result<()> {
    let ctx = context()?;
    let top = tempfile::tempdir()?;
    symlink(
        "/../../../../../tmp/kiln-copy-escape",
        top.path().join("out"),
    )?;
    std::fs::create_dir(top.path().join("realdir"))?;
    symlink("realdir", top.path().join("dirlink"))?;
    let lowers = vec![top.path().to_path_buf(), busybox_root().to_path_buf()];
    let layer = copy_ok(
        lowers,
        vec![
            copy_task(ctx.path(), &["a.txt"], "/out/"),
            copy_task(ctx.path(), &["b.log"], "/dirlink/"),
        ],
    )?;
    ensure!(
        !Path::new("/tmp/kiln-copy-escape").exists(),
        "escaped to the host"
    );
    ensure_eq!(
        tree(&layer.upper())?,
        vec![
            "realdir",
            "realdir/b.log",
            "tmp",
            "tmp/kiln-copy-escape",
            "tmp/kiln-copy-escape/a.txt"
        ]
    );
    Ok(())
}

fn copy_context_symlink_cannot_escape() -> Result<()> {
    let ctx = context()?;
    symlink("/etc/passwd", ctx.path().join("passwd-link"))?;
    let layer = Layer::new()?;
    let (code, err) = run_copy(
        &layer,
        busybox(),
        vec![copy_task(ctx.path(), &["passwd-link"], "/x")],
    )?;
    ensure_eq!(code, 125);
    ensure!(
        err.contains("file not found in build context: passwd-link"),
        "{err}"
    );
    let layer = copy_ok(
        busybox(),
        vec![copy_task(ctx.path(), &["../../a.txt"], "/x")],
    )?;
    ensure_eq!(std::fs::read_to_string(layer.upper().join("x"))?, "a\n");
    Ok(())
}

fn copy_from_layers_keeps_owners_and_hides_whiteouts() -> Result<()> {
    // A stage of two layers: the top one deletes /data/old with a whiteout.
    let top = tempfile::tempdir()?;
    std::fs::create_dir(top.path().join("data"))?;
    rustix::fs::mknodat(
        rustix::fs::CWD,
        top.path().join("data/old"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )?;
    std::fs::write(top.path().join("data/new"), "new\n")?;
    let t = CopyTask::Copy {
        from: CopyFrom::Layers {
            lowers: vec![top.path().to_path_buf(), busybox_root().to_path_buf()],
        },
        sources: vec!["/home/alice".into(), "/data".into()],
        dest: "/copied/".into(),
        chown: None,
        chmod: None,
        exclude: vec![],
        parents: false,
        unpack_archives: false,
    };
    let layer = copy_ok(vec![], vec![t])?;
    ensure_eq!(tree(&layer.upper())?, vec!["copied", "copied/new"]);
    // A directory source's contents go into dest; the dir itself keeps nothing of alice's
    // ownership because dest existed. Check ownership through a single-lower stage instead.
    let t = CopyTask::Copy {
        from: CopyFrom::Layers { lowers: busybox() },
        sources: vec!["/home".into()],
        dest: "/h".into(),
        chown: None,
        chmod: None,
        exclude: vec![],
        parents: false,
        unpack_archives: false,
    };
    let layer = copy_ok(vec![], vec![t])?;
    let m = std::fs::metadata(layer.upper().join("h/alice"))?;
    ensure_eq!((m.uid(), m.gid()), (1000, 1000));
    Ok(())
}

fn copy_from_layers_missing_source() -> Result<()> {
    let t = CopyTask::Copy {
        from: CopyFrom::Layers { lowers: busybox() },
        sources: vec!["/nope".into()],
        dest: "/x".into(),
        chown: None,
        chmod: None,
        exclude: vec![],
        parents: false,
        unpack_archives: false,
    };
    let layer = Layer::new()?;
    let (code, err) = run_copy(&layer, vec![], vec![t])?;
    ensure_eq!(code, 125);
    ensure_eq!(
        err,
        "kiln: COPY failed: file not found in source stage: /nope\n"
    );
    Ok(())
}

fn copy_parents_keeps_source_paths() -> Result<()> {
    let ctx = context()?;
    let mut t = copy_task(ctx.path(), &["dir/sub/b", "a.txt"], "/p/");
    if let CopyTask::Copy { parents, .. } = &mut t {
        *parents = true;
    }
    let layer = copy_ok(vec![], vec![t])?;
    ensure_eq!(
        tree(&layer.upper())?,
        vec!["p", "p/a.txt", "p/dir", "p/dir/sub", "p/dir/sub/b"]
    );
    // A `/./` pivot keeps only what follows it.
    let mut t = copy_task(ctx.path(), &["dir/./sub/b"], "/q/");
    if let CopyTask::Copy { parents, .. } = &mut t {
        *parents = true;
    }
    let layer = copy_ok(vec![], vec![t])?;
    ensure_eq!(tree(&layer.upper())?, vec!["q", "q/sub", "q/sub/b"]);
    Ok(())
}

fn copy_into_scratch_root() -> Result<()> {
    let ctx = context()?;
    let layer = copy_ok(vec![], vec![copy_task(ctx.path(), &["dir/sub/b"], "/")])?;
    ensure_eq!(tree(&layer.upper())?, vec!["b"]);
    Ok(())
}

fn tar_bytes() -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_path("pkg/")?;
    h.set_mode(0o750);
    h.set_uid(7);
    h.set_gid(8);
    h.set_mtime(1_500_000_000);
    h.set_size(0);
    h.set_cksum();
    b.append(&h, &[][..])?;
    let mut h = tar::Header::new_gnu();
    h.set_path("pkg/file")?;
    h.set_mode(0o644);
    h.set_size(5);
    h.set_cksum();
    b.append(&h, &b"file\n"[..])?;
    // A name climbing out: written inside the destination.
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..11].copy_from_slice(b"../../evil\0");
    h.set_mode(0o644);
    h.set_size(5);
    h.set_cksum();
    b.append(&h, &b"evil\n"[..])?;
    // A symlink pointing out, then a file written through it: stays inside.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_path("esc")?;
    h.set_link_name("/../../../../tmp")?;
    h.set_size(0);
    h.set_cksum();
    b.append(&h, &[][..])?;
    let mut h = tar::Header::new_gnu();
    h.set_path("esc/kiln-add-escape")?;
    h.set_mode(0o644);
    h.set_size(2);
    h.set_cksum();
    b.append(&h, &b"x\n"[..])?;
    Ok(b.into_inner()?)
}

fn add_extracts_tar_gz_and_zstd_inside_dest() -> Result<()> {
    let ctx = tempfile::tempdir()?;
    let raw = tar_bytes()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &raw)?;
    std::fs::write(ctx.path().join("a.tar.gz"), gz.finish()?)?;
    std::fs::write(ctx.path().join("b.tzst"), zstd::encode_all(&raw[..], 3)?)?;
    std::fs::write(ctx.path().join("c.tar"), &raw)?;
    for name in ["a.tar.gz", "b.tzst", "c.tar"] {
        let mut t = copy_task(ctx.path(), &[name], "/opt");
        if let CopyTask::Copy {
            unpack_archives, ..
        } = &mut t
        {
            *unpack_archives = true;
        }
        let layer = copy_ok(busybox(), vec![t])?;
        let up = layer.upper();
        ensure_eq!(
            (name, tree(&up)?),
            (
                name,
                vec![
                    "evil",
                    "opt",
                    "opt/esc",
                    "opt/evil",
                    "opt/pkg",
                    "opt/pkg/file",
                    "tmp",
                    "tmp/kiln-add-escape"
                ]
                .into_iter()
                .filter(|p| *p != "evil")
                .map(String::from)
                .collect::<Vec<_>>()
            )
        );
        let m = std::fs::metadata(up.join("opt/pkg"))?;
        ensure_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
            (0o750, 7, 8, 1_500_000_000)
        );
        ensure!(
            !Path::new("/tmp/kiln-add-escape").exists(),
            "escaped to the host"
        );
    }
    Ok(())
}

fn add_copies_non_archives_as_files() -> Result<()> {
    let ctx = tempfile::tempdir()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, b"just text, not a tar")?;
    std::fs::write(ctx.path().join("notes.gz"), gz.finish()?)?;
    let mut t = copy_task(ctx.path(), &["notes.gz"], "/d/");
    if let CopyTask::Copy {
        unpack_archives, ..
    } = &mut t
    {
        *unpack_archives = true;
    }
    let layer = copy_ok(vec![], vec![t])?;
    ensure_eq!(tree(&layer.upper())?, vec!["d", "d/notes.gz"]);
    Ok(())
}

fn mkdir_creates_parents_owned_by_owner() -> Result<()> {
    let layer = copy_ok(
        busybox(),
        vec![CopyTask::Mkdir {
            path: "/srv/app/data".into(),
            owner: "alice".into(),
        }],
    )?;
    ensure_eq!(
        tree(&layer.upper())?,
        vec!["srv", "srv/app", "srv/app/data"]
    );
    for p in ["srv", "srv/app/data"] {
        let m = std::fs::metadata(layer.upper().join(p))?;
        ensure_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o755));
    }
    Ok(())
}

//! `kiln save`: the tar is an OCI layout that skopeo and umoci accept, with kiln's file tree.

use crate::harness::{busybox_dir, text, umoci_unpack};
use anyhow::{Context as _, ensure};
use cache::oci::Digest;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// path -> (kind+mode, size, content digest or link target) of a tree.
fn tree(root: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            let rel = p.strip_prefix(root)?.to_string_lossy().into_owned();
            let md = std::fs::symlink_metadata(&p)?;
            let what = if md.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p)?.display())
            } else if md.is_dir() {
                stack.push(p.clone());
                String::from("dir")
            } else if md.is_file() {
                format!(
                    "file {} {}",
                    md.len(),
                    Digest::of(&std::fs::read(&p)?).short()
                )
            } else {
                String::from("special")
            };
            out.insert(
                rel,
                format!("{:o} {}:{} {what}", md.mode(), md.uid(), md.gid()),
            );
        }
    }
    Ok(out)
}

#[test]
fn saved_tar_is_accepted_by_skopeo_and_umoci_with_the_same_tree() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&["skopeo", "umoci", "mount", "umount"])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox\nRUN mkdir -p /srv/data && echo hello > /srv/data/greeting && ln -s greeting /srv/data/link && rm /bin/vi\nCOPY app/ /app/\nRUN chmod 0750 /app/run.sh\n",
    );
    t.write("app/run.sh", "#!/bin/sh\necho run\n");
    t.write("app/conf/settings.ini", "a=1\n");
    t.build("saved:1", &[])?;
    let tar = t.dir.path().join("saved.tar");
    t.ok(&["save", "saved:1", "-o", tar.to_str().context("utf-8")?])?;

    let out = Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", tar.display()))
        .output()?;
    ensure!(out.status.success(), "skopeo inspect: {}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        v["Layers"].as_array().is_some_and(|l| l.len() == 4),
        "{v:#}"
    );

    // umoci wants a layout directory: unpack the tar, find the ref name in index.json.
    let layout = t.dir.path().join("layout");
    std::fs::create_dir(&layout)?;
    let mut ar = tar::Archive::new(std::fs::File::open(&tar)?);
    ar.unpack(&layout)?;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let refname = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .context("index.json names the image")?
        .to_owned();
    let bundle = t.dir.path().join("bundle");
    umoci_unpack(&layout, &refname, &bundle)?;

    // kiln's own view: its snapshots stacked read-only with overlayfs.
    let inspect: serde_json::Value =
        serde_json::from_slice(&t.ok(&["inspect", "saved:1"])?.stdout)?;
    let lowers: Vec<String> = inspect[0]["RootFS"]["DiffIDs"]
        .as_array()
        .context("diff ids")?
        .iter()
        .rev()
        .map(|d| {
            let hex = d.as_str().unwrap_or("").trim_start_matches("sha256:");
            t.root.join("snapshots").join(hex).display().to_string()
        })
        .collect();
    let merged = t.dir.path().join("merged");
    std::fs::create_dir(&merged)?;
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}", lowers.join(":")))
        .arg(&merged)
        .output()?;
    ensure!(out.status.success(), "mount: {}", text(&out));
    let ours = tree(&merged);
    let _ = Command::new("umount").arg(&merged).status();
    let ours = ours?;
    let theirs = tree(&bundle.join("rootfs"))?;
    ensure!(
        ours.get("srv/data/link")
            .is_some_and(|l| l.ends_with("link greeting")),
        "{:?}",
        ours.get("srv/data/link")
    );
    ensure!(!ours.contains_key("bin/vi"), "the deletion is applied");
    ensure!(
        ours.get("app/run.sh")
            .is_some_and(|l| l.starts_with("100750")),
        "{:?}",
        ours.get("app/run.sh")
    );
    let diff: Vec<_> = ours
        .iter()
        .filter(|(k, v)| theirs.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: kiln {v} umoci {:?}", theirs.get(k)))
        .chain(
            theirs
                .keys()
                .filter(|k| !ours.contains_key(*k))
                .map(|k| format!("{k}: only in umoci")),
        )
        .collect();
    ensure!(diff.is_empty(), "trees differ:\n{}", diff.join("\n"));
    Ok(())
}

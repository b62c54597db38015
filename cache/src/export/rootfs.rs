//! `type=local` and `type=tar`: an image's root filesystem, its layers merged.
//!
//! The layers are read top (last) to bottom into one tar stream: an entry is written when no
//! upper layer wrote the same path, deleted it (`.wh.NAME`), made one of its parents opaque
//! (`.wh..wh..opq`) or put a non-directory over one of its parents; whiteouts themselves are
//! not written. `type=local` unpacks that stream with the safe layer applier
//! ([`crate::layer::apply`]), so nothing in it can write outside the destination.

use super::{ExportError, Result};
use crate::image::Image;
use crate::layer::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::store::Store;
use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::Path;

/// A path inside the image, without `./`, leading or trailing `/`.
fn clean(p: &Path) -> String {
    let s = p.to_string_lossy();
    let s = s.trim_start_matches("./").trim_matches('/');
    s.to_owned()
}

/// `p` and its parents, nearest first (`a/b/c`, `a/b`, `a`).
fn ancestors(p: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(p), |q| q.rsplit_once('/').map(|(a, _)| a))
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(a, _)| a)
}

/// What the upper layers did, which hides entries of the lower ones.
#[derive(Default)]
struct Hidden {
    /// Paths written by an upper layer.
    written: BTreeSet<String>,
    /// Paths deleted by a whiteout, or holding a non-directory (their descendants are gone).
    gone: BTreeSet<String>,
    /// Directories made opaque: their lower contents are gone.
    opaque: BTreeSet<String>,
}

impl Hidden {
    fn hides(&self, p: &str) -> bool {
        self.written.contains(p)
            || ancestors(p).any(|a| self.gone.contains(a))
            || ancestors(p).skip(1).any(|a| self.opaque.contains(a))
    }
}

/// Writes the merged root filesystem of `image` as a tar to `out` (`dest` names it in
/// errors).
///
/// Fails when a layer cannot be read or the destination written.
pub fn write_tar(store: &Store, image: &Image, out: impl Write, dest: &str) -> Result<()> {
    write_tars(store, &[(image, String::new())], out, dest)
}

/// Writes several merged root filesystems into one tar, each under its prefix directory
/// (`linux_amd64/`, as buildx lays out a multi-platform tar; `""` for none).
///
/// Fails when a layer cannot be read or the destination written.
pub fn write_tars(
    store: &Store,
    images: &[(&Image, String)],
    out: impl Write,
    dest: &str,
) -> Result<()> {
    write_tars_with(store, images, &[], 0, out, dest)
}

/// [`write_tars`] with `extra` files (path in the tar, content): mode 0600 and dated `mtime`
/// as BuildKit writes attestation files into a tar output, each after the root filesystem
/// of the image whose directory holds it (at the end without directories).
///
/// Fails when a layer cannot be read or the destination written.
pub fn write_tars_with(
    store: &Store,
    images: &[(&Image, String)],
    extra: &[(String, Vec<u8>)],
    mtime: u64,
    out: impl Write,
    dest: &str,
) -> Result<()> {
    let werr = |source| ExportError::Io {
        op: "write",
        path: dest.to_owned(),
        source,
    };
    let mut b = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, out));
    b.follow_symlinks(false);
    for (image, prefix) in images {
        if !prefix.is_empty() {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, format!("{prefix}/"), io::empty())
                .map_err(werr)?;
        }
        append_rootfs(&mut b, store, image, prefix, dest)?;
        let mine = extra
            .iter()
            .filter(|(p, _)| !prefix.is_empty() && p.starts_with(&format!("{prefix}/")));
        for (path, data) in mine {
            append_extra(&mut b, path, data, mtime).map_err(werr)?;
        }
    }
    for (path, data) in extra.iter().filter(|(p, _)| {
        !images
            .iter()
            .any(|(_, pre)| !pre.is_empty() && p.starts_with(&format!("{pre}/")))
    }) {
        append_extra(&mut b, path, data, mtime).map_err(werr)?;
    }
    let mut inner = b.into_inner().map_err(werr)?;
    inner.flush().map_err(werr)?;
    Ok(())
}

fn append_extra<W: Write>(
    b: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
    mtime: u64,
) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    h.set_mtime(mtime);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, path, data)
}

/// Appends `image`'s merged root filesystem to `b`, every path under `prefix`.
fn append_rootfs<W: Write>(
    b: &mut tar::Builder<W>,
    store: &Store,
    image: &Image,
    prefix: &str,
    dest: &str,
) -> Result<()> {
    let werr = |source| ExportError::Io {
        op: "write",
        path: dest.to_owned(),
        source,
    };
    let under = |p: &str| match prefix {
        "" => p.to_owned(),
        pre => format!("{pre}/{p}"),
    };
    let mut hidden = Hidden::default();
    for diff_id in image.config.rootfs.diff_ids.iter().rev() {
        let lerr = |source| ExportError::Layer {
            diff_id: diff_id.clone(),
            source,
        };
        let mut layer = Hidden::default();
        let mut archive = tar::Archive::new(store.open_layer(diff_id)?);
        for entry in archive.entries().map_err(lerr)? {
            let mut entry = entry.map_err(lerr)?;
            let path = clean(&entry.path().map_err(lerr)?);
            let name = path.rsplit('/').next().unwrap_or_default();
            if name == OPAQUE_MARKER {
                layer.opaque.insert(parent(&path).to_owned());
                continue;
            }
            if let Some(deleted) = name.strip_prefix(WHITEOUT_PREFIX) {
                let dir = parent(&path);
                let p = if dir.is_empty() {
                    deleted.to_owned()
                } else {
                    format!("{dir}/{deleted}")
                };
                layer.gone.insert(p);
                continue;
            }
            if path.is_empty() || hidden.hides(&path) {
                continue;
            }
            let mut h = entry.header().clone();
            let kind = h.entry_type();
            layer.written.insert(path.clone());
            if !kind.is_dir() {
                layer.gone.insert(path.clone());
            }
            let link = entry.link_name().map_err(lerr)?.map(|l| l.into_owned());
            match link {
                Some(target) if kind.is_symlink() || kind.is_hard_link() => {
                    // A hard link names a path in the same tree: under the same prefix.
                    let target = match kind.is_hard_link() {
                        true => std::path::PathBuf::from(under(&clean(&target))),
                        false => target,
                    };
                    b.append_link(&mut h, under(&path), &target).map_err(werr)?
                }
                _ => {
                    let p = if kind.is_dir() {
                        format!("{}/", under(&path))
                    } else {
                        under(&path)
                    };
                    b.append_data(&mut h, &p, &mut entry).map_err(werr)?
                }
            }
        }
        // This layer's changes hide the layers below it, not its own entries.
        hidden.written.extend(layer.written);
        hidden.gone.extend(layer.gone);
        hidden.opaque.extend(layer.opaque);
    }
    Ok(())
}

/// Unpacks the merged root filesystem of `image` into `dir` (created if missing; existing
/// files it names are replaced).
///
/// Fails when a layer cannot be read or the tree written.
pub fn write_dir(store: &Store, image: &Image, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ExportError::Io {
        op: "create",
        path: dir.display().to_string(),
        source,
    })?;
    let (r, w) = rustix::pipe::pipe().map_err(|e| ExportError::Io {
        op: "pipe",
        path: dir.display().to_string(),
        source: e.into(),
    })?;
    let (r, w) = (std::fs::File::from(r), std::fs::File::from(w));
    let dest = dir.display().to_string();
    std::thread::scope(|s| {
        let writer = s.spawn(|| write_tar(store, image, w, &dest));
        let applied = crate::layer::apply::apply_layer(r, dir);
        let written = writer
            .join()
            .expect("the rootfs writer thread does not panic");
        written?;
        applied.map_err(|source| ExportError::Unpack {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(())
    })
}

/// Every regular file of `image`'s merged root filesystem: path (without a leading `/`) and
/// SHA-256 of its content, in the order the merged tar holds them. The subject of a local or
/// tar output's attestations.
///
/// Fails when a layer cannot be read.
pub fn regular_files(store: &Store, image: &Image) -> Result<Vec<(String, crate::oci::Digest)>> {
    let (r, w) = rustix::pipe::pipe().map_err(|e| ExportError::Io {
        op: "pipe",
        path: image.manifest_digest.to_string(),
        source: e.into(),
    })?;
    let (r, w) = (std::fs::File::from(r), std::fs::File::from(w));
    let name = image.manifest_digest.to_string();
    std::thread::scope(|s| {
        let writer = s.spawn(|| write_tar(store, image, w, &name));
        let rerr = |source| ExportError::Io {
            op: "read",
            path: name.clone(),
            source,
        };
        let read = (|| -> Result<Vec<(String, crate::oci::Digest)>> {
            let mut out = Vec::new();
            let mut archive = tar::Archive::new(r);
            for entry in archive.entries().map_err(rerr)? {
                let mut entry = entry.map_err(rerr)?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let path = clean(&entry.path().map_err(rerr)?);
                let mut h = crate::oci::Hasher::new();
                io::copy(&mut entry, &mut h).map_err(rerr)?;
                out.push((path, h.finish()));
            }
            // Drain what the writer may still send (tar's end blocks).
            let mut rest = archive.into_inner();
            io::copy(&mut rest, &mut io::sink()).map_err(rerr)?;
            Ok(out)
        })();
        let written = writer
            .join()
            .expect("the rootfs writer thread does not panic");
        let out = read?;
        written?;
        Ok(out)
    })
}

/// The regular files directly inside `dir` (a path in the image, without a leading `/`) that
/// the layer `diff_id` holds: name and content. For reading what one step wrote.
///
/// Fails when the layer cannot be read.
pub fn files_in(
    store: &Store,
    diff_id: &crate::oci::Digest,
    dir: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    use std::io::Read as _;
    let lerr = |source| ExportError::Layer {
        diff_id: diff_id.clone(),
        source,
    };
    let dir = dir.trim_matches('/');
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(store.open_layer(diff_id)?);
    for entry in archive.entries().map_err(lerr)? {
        let mut entry = entry.map_err(lerr)?;
        let path = clean(&entry.path().map_err(lerr)?);
        let Some(name) = path
            .strip_prefix(dir)
            .and_then(|p| p.strip_prefix('/'))
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .map(str::to_owned)
        else {
            continue;
        };
        if !entry.header().entry_type().is_file() || name.starts_with(WHITEOUT_PREFIX) {
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(lerr)?;
        out.push((name, bytes));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Digest, ImageConfig, Platform};

    /// A layer tar of `(path, is_dir)` entries; files hold their path.
    fn layer(entries: &[(&str, bool)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, dir) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(if *dir {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            h.set_mode(0o755);
            let data: &[u8] = if *dir { b"" } else { p.as_bytes() };
            h.set_size(data.len() as u64);
            b.append_data(&mut h, p, data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    #[test]
    fn whiteouts_opaque_dirs_and_replacements_hide_lower_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let lower = layer(&[
            ("a/", true),
            ("a/x", false),
            ("a/y", false),
            ("b/", true),
            ("b/z", false),
            ("f", false),
            ("d/", true),
            ("d/inner", false),
        ]);
        let upper = layer(&[
            ("a/.wh.x", false),
            ("b/.wh..wh..opq", false),
            ("b/new", false),
            (".wh.f", false),
            ("d", false),
            ("c", false),
        ]);
        let mut config = ImageConfig::empty(&Platform::host());
        config.rootfs.diff_ids = vec![
            store.put_blob(&lower).expect("lower"),
            store.put_blob(&upper).expect("upper"),
        ];
        let image = Image {
            manifest_digest: Digest::of(b"m"),
            manifest: crate::oci::ImageManifest {
                schema_version: 2,
                media_type: None,
                config: crate::oci::Descriptor::new("x", Digest::of(b"c"), 1),
                layers: Vec::new(),
                annotations: Default::default(),
                extra: Default::default(),
            },
            config_digest: Digest::of(b"c"),
            config,
        };
        let mut out = Vec::new();
        write_tar(&store, &image, &mut out, "test").expect("writes");
        let mut names: Vec<String> = tar::Archive::new(&out[..])
            .entries()
            .expect("entries")
            .map(|e| clean(&e.expect("entry").path().expect("path")))
            .collect();
        names.sort();
        assert_eq!(names, ["a", "a/y", "b", "b/new", "c", "d"]);

        // Several platforms: each tree under its own directory.
        let mut out = Vec::new();
        let two = [
            (&image, "linux_amd64".to_owned()),
            (&image, "linux_arm64".to_owned()),
        ];
        write_tars(&store, &two, &mut out, "test").expect("writes");
        let names: Vec<String> = tar::Archive::new(&out[..])
            .entries()
            .expect("entries")
            .map(|e| clean(&e.expect("entry").path().expect("path")))
            .collect();
        assert_eq!(names.len(), 14, "{names:?}");
        assert!(names.contains(&"linux_arm64/b/new".to_owned()), "{names:?}");
        assert!(names.contains(&"linux_amd64".to_owned()), "{names:?}");
    }
}

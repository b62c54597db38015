//! ADD's archive extraction: local tar files, plain or compressed, detected by content (as
//! Docker does: a `.tar.gz` name means nothing, a compressed file that is not a tar is copied
//! as is). Entries are written through [`DestRoot`], so `../` names and symlinks in the
//! archive cannot escape the destination root.

use std::io::{self, Read};
use std::path::Path;

use rustix::fs::FileType;

use super::root::{DestRoot, Meta};
use context::clean;

/// Compression of a detected tar archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Uncompressed tar.
    Tar,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
    /// bzip2 (the `bzip2` crate, pure Rust).
    Bzip2,
    /// xz (the `liblzma` crate, its bundled liblzma).
    Xz,
}

fn compression(magic: &[u8]) -> Format {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Format::Zstd
    } else if magic.starts_with(b"BZh") {
        Format::Bzip2
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Format::Xz
    } else {
        Format::Tar
    }
}

/// Whether a 512-byte block is a tar header (ustar magic, or a valid v7 checksum).
pub fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    if &block[257..262] == b"ustar" {
        return true;
    }
    let field = String::from_utf8_lossy(&block[148..156]);
    let Ok(expected) = u32::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
    else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    sum == expected && block[0] != 0
}

struct Decoded {
    reader: Box<dyn Read>,
}

impl Decoded {
    fn finish(self) -> io::Result<()> {
        drop(self.reader);
        Ok(())
    }
}

/// Opens `path` decompressed. Every codec is in-process (no host `bzip2`/`xz` binaries):
/// concatenated streams are read through, as the command-line tools do.
fn open(path: &Path, format: Format) -> io::Result<Decoded> {
    let file = io::BufReader::with_capacity(1 << 16, std::fs::File::open(path)?);
    let reader: Box<dyn Read> = match format {
        Format::Tar => Box::new(file),
        Format::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(file)),
        Format::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
        Format::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(file)),
        Format::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(file)),
    };
    Ok(Decoded { reader })
}

/// Detects a tar archive (plain or compressed) by content; `None` for any other file.
pub fn detect(path: &Path) -> io::Result<Option<Format>> {
    let mut magic = [0u8; 6];
    let n = std::fs::File::open(path)?.read(&mut magic)?;
    let format = compression(&magic[..n]);
    let Ok(mut d) = open(path, format) else {
        return Ok(None);
    };
    let mut block = vec![0u8; 512];
    let mut got = 0;
    while got < 512 {
        match d.reader.read(&mut block[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let _ = d.finish();
    Ok((got == 512 && is_tar_header(&block)).then_some(format))
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

/// Why an archive could not be extracted; every entry error names the entry.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The archive could not be opened or decompressed.
    #[error("opening the archive")]
    Open(#[source] io::Error),
    /// The tar stream is malformed (a bad header, a truncated archive).
    #[error("reading the archive")]
    Read(#[source] io::Error),
    /// Reading or writing one entry failed.
    #[error("{op} entry `{entry}`")]
    Entry {
        /// What was being done.
        op: &'static str,
        /// The entry's name in the archive.
        entry: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A sparse entry's map is malformed or its data could not be written.
    #[error("sparse entry `{entry}`")]
    Sparse {
        /// The entry's name in the archive.
        entry: String,
        /// The cause.
        #[source]
        source: tarx::sparse::SparseError,
    },
}

fn at(op: &'static str, entry: &str) -> impl FnOnce(io::Error) -> ExtractError + use<> {
    let entry = entry.to_string();
    move |source| ExtractError::Entry { op, entry, source }
}

/// Extracts the archive at `path` into the directory `into` of `dest`. Owners come from the
/// archive unless `owner` is given.
///
/// Docker's rules (moby's pkg/archive, checked against dockerd in tests/it/archives.rs): an
/// entry replaces whatever is at its path (a symlink itself, never its target; a directory
/// with its contents) except that a directory entry merges into a directory; parents are
/// followed inside the root. Sparse files (old GNU and PAX 0.0, 0.1, 1.0) get their real name
/// and size, holes as holes; empty numeric fields (a FIFO's device numbers) read as 0.
pub fn extract(
    dest: &DestRoot,
    path: &Path,
    format: Format,
    into: &str,
    owner: Option<(u32, u32)>,
    parents_owner: (u32, u32),
) -> Result<(), ExtractError> {
    let mut d = open(path, format).map_err(ExtractError::Open)?;
    let mut dir_times = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut d.reader);
        for entry in archive.entries().map_err(ExtractError::Read)? {
            let mut entry = entry.map_err(ExtractError::Read)?;
            let sparse =
                tarx::sparse::detect(&mut entry).map_err(|source| ExtractError::Sparse {
                    entry: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                    source,
                })?;
            // PAX sparse 0.1 and 1.0 name the file `GNUSparseFile.<pid>/<name>` in the header.
            let name = match sparse.as_ref().and_then(|s| s.name.as_deref()) {
                Some(n) => String::from_utf8_lossy(n).into_owned(),
                None => String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
            };
            let rel = clean(&name);
            if rel.is_empty() {
                continue;
            }
            let out = join(into, &rel);
            let h = entry.header();
            let (uid, gid) = match owner {
                Some(o) => o,
                None => (h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32),
            };
            let meta = Meta {
                uid,
                gid,
                mode: tarx::fields::mode(h).map_err(at("reading the mode of", &name))?,
                mtime_ns: i128::from(h.mtime().unwrap_or(0)) * 1_000_000_000,
            };
            let kind = h.entry_type();
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned());
            let replace = |keep_dir| {
                dest.remove_entry(&out, keep_dir)
                    .map_err(at("replacing what is at", &name))
            };
            match kind {
                tar::EntryType::Directory => {
                    replace(true)?;
                    let created = dest
                        .make_dir(&out, meta, parents_owner)
                        .map_err(at("creating directory", &name))?;
                    if !created {
                        dest.set_owner_mode(&out, meta.uid, meta.gid, meta.mode)
                            .map_err(at("setting owner and mode of", &name))?;
                    }
                    dir_times.push((out, meta.mtime_ns));
                }
                tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::GNUSparse => {
                    replace(false)?;
                    let mut file = dest
                        .create_file(&out, parents_owner)
                        .map_err(at("creating file", &name))?;
                    match &sparse {
                        Some(s) => s.write(&mut entry, &mut file).map_err(|source| {
                            ExtractError::Sparse {
                                entry: name.clone(),
                                source,
                            }
                        })?,
                        None => {
                            io::copy(&mut entry, &mut file).map_err(at("writing", &name))?;
                        }
                    }
                    DestRoot::finish_file(file, meta)
                        .map_err(at("setting owner and mode of", &name))?;
                }
                tar::EntryType::Symlink => {
                    replace(false)?;
                    dest.symlink(&out, &link.unwrap_or_default(), meta, parents_owner)
                        .map_err(at("creating symlink", &name))?;
                }
                tar::EntryType::Link => {
                    replace(false)?;
                    let target = join(into, &clean(&link.unwrap_or_default()));
                    dest.hardlink(&target, &out, parents_owner)
                        .map_err(at("creating hard link", &name))?;
                }
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                    replace(false)?;
                    let (ft, (major, minor)) = match kind {
                        tar::EntryType::Char => (
                            FileType::CharacterDevice,
                            tarx::fields::device(h).map_err(at("reading the device of", &name))?,
                        ),
                        tar::EntryType::Block => (
                            FileType::BlockDevice,
                            tarx::fields::device(h).map_err(at("reading the device of", &name))?,
                        ),
                        // A FIFO has no device numbers: its fields are often empty.
                        _ => (FileType::Fifo, (0, 0)),
                    };
                    dest.mknod(
                        &out,
                        ft,
                        rustix::fs::makedev(major, minor),
                        meta,
                        parents_owner,
                    )
                    .map_err(at("creating device", &name))?;
                }
                // pax/GNU metadata entries are consumed by the tar crate; others are skipped.
                _ => {}
            }
        }
    }
    d.finish().map_err(ExtractError::Read)?;
    for (dir, t) in dir_times.iter().rev() {
        match dest.set_mtime(dir, *t) {
            // A later entry replaced the directory: its time went with it.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ENOENT)) => {}
            r => r.map_err(at("setting the time of", dir))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_detected_by_magic() {
        assert_eq!(compression(&[0x1f, 0x8b, 8]), Format::Gzip);
        assert_eq!(compression(&[0x28, 0xb5, 0x2f, 0xfd]), Format::Zstd);
        assert_eq!(compression(b"BZh91AY"), Format::Bzip2);
        assert_eq!(compression(&[0xfd, b'7', b'z', b'X', b'Z', 0]), Format::Xz);
        assert_eq!(compression(b"hello"), Format::Tar);
    }

    #[test]
    fn tar_header_is_recognised_and_text_is_not() {
        let mut h = tar::Header::new_gnu();
        h.set_path("a").expect("path");
        h.set_size(0);
        h.set_cksum();
        assert!(is_tar_header(h.as_bytes()));
        let mut old = tar::Header::new_old();
        old.set_path("a").expect("path");
        old.set_cksum();
        assert!(is_tar_header(old.as_bytes()));
        assert!(!is_tar_header(&[b'x'; 512]));
    }

    fn sample_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "dir/hello.txt", &b"hello"[..])
            .expect("append");
        b.into_inner().expect("tar")
    }

    fn me() -> (u32, u32) {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    }

    fn entry(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: tar::EntryType,
        link: &str,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(if kind.is_dir() { 0o750 } else { 0o644 });
        h.set_uid(me().0.into());
        h.set_gid(me().1.into());
        h.set_size(data.len() as u64);
        h.set_path(name).expect("path");
        if !link.is_empty() {
            h.set_link_name(link).expect("link");
        }
        h.set_cksum();
        b.append(&h, data).expect("append");
    }

    fn extract_into(root: &Path, tar: &[u8]) -> Result<(), ExtractError> {
        let file = tempfile::NamedTempFile::new().expect("tempfile");
        std::fs::write(file.path(), tar).expect("write");
        let dest = DestRoot::open(root).expect("open");
        extract(&dest, file.path(), Format::Tar, "", None, me())
    }

    #[test]
    fn entries_replace_symlinks_instead_of_writing_through_them() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().expect("tempdir");
        let r = d.path();
        std::fs::write(r.join("passwd"), b"root:x:0:0\n").expect("write");
        std::fs::create_dir(r.join("realdir")).expect("mkdir");
        std::fs::write(r.join("realdir/keep"), b"keep").expect("write");
        // Links already in the image, to a file and to a directory of the same root.
        symlink("passwd", r.join("l")).expect("symlink");
        symlink("/realdir", r.join("ld")).expect("symlink");
        let mut b = tar::Builder::new(Vec::new());
        entry(&mut b, "l", tar::EntryType::Regular, "", b"replaced");
        entry(&mut b, "ld", tar::EntryType::Directory, "", b"");
        // A link planted by the archive itself, then a file of the same name.
        entry(&mut b, "in", tar::EntryType::Symlink, "passwd", b"");
        entry(&mut b, "in", tar::EntryType::Regular, "", b"in-archive");
        extract_into(r, &b.into_inner().expect("tar")).expect("extract");
        assert_eq!(
            std::fs::read(r.join("passwd")).expect("passwd"),
            b"root:x:0:0\n"
        );
        for (name, data) in [("l", &b"replaced"[..]), ("in", b"in-archive")] {
            assert!(
                std::fs::symlink_metadata(r.join(name))
                    .expect(name)
                    .is_file(),
                "{name}"
            );
            assert_eq!(std::fs::read(r.join(name)).expect(name), data, "{name}");
        }
        assert!(
            std::fs::symlink_metadata(r.join("ld"))
                .expect("ld")
                .is_dir()
        );
        assert_eq!(
            std::fs::read(r.join("realdir/keep")).expect("keep"),
            b"keep"
        );
    }

    #[test]
    fn non_directories_replace_directories_and_directories_merge() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let d = tempfile::tempdir().expect("tempdir");
        let r = d.path();
        std::fs::create_dir_all(r.join("d/sub")).expect("mkdir");
        std::fs::create_dir_all(r.join("m")).expect("mkdir");
        std::fs::write(r.join("m/old"), b"old").expect("write");
        std::fs::write(r.join("f"), b"f").expect("write");
        let mut b = tar::Builder::new(Vec::new());
        entry(&mut b, "d", tar::EntryType::Regular, "", b"was a dir");
        entry(&mut b, "m/", tar::EntryType::Directory, "", b"");
        entry(&mut b, "m/new", tar::EntryType::Regular, "", b"new");
        entry(&mut b, "f/", tar::EntryType::Directory, "", b"");
        // A FIFO with empty device fields (Python's tarfile writes them so).
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Fifo);
        h.set_mode(0o640);
        h.set_uid(me().0.into());
        h.set_gid(me().1.into());
        h.set_size(0);
        h.set_path("fifo").expect("path");
        h.as_mut_bytes()[329..345].fill(0);
        h.set_cksum();
        b.append(&h, &b""[..]).expect("append");
        extract_into(r, &b.into_inner().expect("tar")).expect("extract");
        assert_eq!(std::fs::read(r.join("d")).expect("d"), b"was a dir");
        assert_eq!(std::fs::read(r.join("m/old")).expect("old"), b"old");
        assert_eq!(std::fs::read(r.join("m/new")).expect("new"), b"new");
        assert_eq!(
            std::fs::metadata(r.join("m")).expect("m").mode() & 0o7777,
            0o750
        );
        assert!(std::fs::symlink_metadata(r.join("f")).expect("f").is_dir());
        let fifo = std::fs::symlink_metadata(r.join("fifo")).expect("fifo");
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.mode() & 0o7777, 0o640);
    }

    #[test]
    fn pax_1_0_sparse_file_gets_its_name_size_and_holes() {
        use std::os::unix::fs::MetadataExt;
        let src = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(src.path().join("sub")).expect("mkdir");
        let f = std::fs::File::create(src.path().join("sub/sp")).expect("create");
        std::os::unix::fs::FileExt::write_all_at(&f, b"data", 2 << 20).expect("write");
        f.set_len(4 << 20).expect("size");
        let out = std::process::Command::new("tar")
            .arg("-C")
            .arg(src.path())
            .args([
                "--format=posix",
                "--sparse-version=1.0",
                "-cf",
                "-",
                "sub/sp",
            ])
            .output()
            .expect("GNU tar must be installed (Debian: tar)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let d = tempfile::tempdir().expect("tempdir");
        extract_into(d.path(), &out.stdout).expect("extract");
        let names: Vec<_> = std::fs::read_dir(d.path().join("sub"))
            .expect("sub")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["sp"]);
        let got = std::fs::read(d.path().join("sub/sp")).expect("read");
        assert_eq!(got.len(), 4 << 20);
        assert_eq!(&got[2 << 20..(2 << 20) + 4], b"data");
        assert_eq!(got.iter().filter(|b| **b != 0).count(), 4);
        let m = std::fs::metadata(d.path().join("sub/sp")).expect("stat");
        assert!(m.blocks() * 512 < 256 << 10, "holes were filled");
    }

    #[test]
    fn extraction_errors_name_the_entry() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("file"), b"x").expect("write");
        let mut b = tar::Builder::new(Vec::new());
        // A parent that is a file: the entry cannot be created (docker fails here too).
        entry(&mut b, "file/below", tar::EntryType::Regular, "", b"y");
        let e = extract_into(d.path(), &b.into_inner().expect("tar")).expect_err("not a dir");
        assert!(
            matches!(&e, ExtractError::Entry { entry, .. } if entry == "file/below"),
            "{e:?}"
        );
        assert!(e.to_string().contains("`file/below`"), "{e}");
    }

    #[test]
    fn bzip2_and_xz_tars_are_detected_and_decoded_in_process() {
        use std::io::Write as _;
        let tar = sample_tar();
        let dir = tempfile::tempdir().expect("tempdir");
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
            e.write_all(&tar).expect("bzip2");
            e.finish().expect("bzip2")
        };
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(&tar).expect("xz");
            e.finish().expect("xz")
        };
        for (name, bytes, format) in [("a.bz", bz, Format::Bzip2), ("a.xz", xz, Format::Xz)] {
            let p = dir.path().join(name);
            std::fs::write(&p, &bytes).expect("write");
            assert_eq!(detect(&p).expect("detect"), Some(format), "{name}");
            let mut d = open(&p, format).expect("open");
            let mut out = Vec::new();
            d.reader.read_to_end(&mut out).expect("decode");
            assert_eq!(out, tar, "{name}");
        }
        // A compressed file that is not a tar is not an archive.
        let p = dir.path().join("text.bz2");
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(b"just text").expect("bzip2");
        std::fs::write(&p, e.finish().expect("bzip2")).expect("write");
        assert_eq!(detect(&p).expect("detect"), None);
    }
}

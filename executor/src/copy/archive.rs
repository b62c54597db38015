//! ADD's archive extraction: local tar files, plain or compressed, detected by content (as
//! Docker does: a `.tar.gz` name means nothing, a compressed file that is not a tar is copied
//! as is). Entries are written through [`DestRoot`], so `../` names and symlinks in the
//! archive cannot escape the destination root.

use std::io::{self, Read};
use std::path::Path;

use rustix::fs::FileType;

use super::root::{DestRoot, Meta};
use crate::context::clean;

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

/// Extracts the archive at `path` into the directory `into` of `dest`. Owners come from the
/// archive unless `owner` is given.
pub fn extract(
    dest: &DestRoot,
    path: &Path,
    format: Format,
    into: &str,
    owner: Option<(u32, u32)>,
    parents_owner: (u32, u32),
) -> io::Result<()> {
    let mut d = open(path, format)?;
    let mut dir_times = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut d.reader);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let rel = clean(&String::from_utf8_lossy(&entry.path_bytes()));
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
                mode: h.mode().unwrap_or(0o644) & 0o7777,
                mtime_ns: i128::from(h.mtime().unwrap_or(0)) * 1_000_000_000,
            };
            let kind = h.entry_type();
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned());
            match kind {
                tar::EntryType::Directory => {
                    if !dest.make_dir(&out, meta, parents_owner)? {
                        dest.set_owner_mode(&out, meta.uid, meta.gid, meta.mode)?;
                    }
                    dir_times.push((out, meta.mtime_ns));
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    dest.write_file(&out, &mut entry, meta, parents_owner)?;
                }
                tar::EntryType::Symlink => {
                    dest.symlink(&out, &link.unwrap_or_default(), meta, parents_owner)?;
                }
                tar::EntryType::Link => {
                    let target = join(into, &clean(&link.unwrap_or_default()));
                    dest.hardlink(&target, &out, parents_owner)?;
                }
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                    let ft = match kind {
                        tar::EntryType::Char => FileType::CharacterDevice,
                        tar::EntryType::Block => FileType::BlockDevice,
                        _ => FileType::Fifo,
                    };
                    let dev = rustix::fs::makedev(
                        h.device_major()?.unwrap_or(0),
                        h.device_minor()?.unwrap_or(0),
                    );
                    dest.mknod(&out, ft, dev, meta, parents_owner)?;
                }
                // pax/GNU metadata entries are consumed by the tar crate; others are skipped.
                _ => {}
            }
        }
    }
    d.finish()?;
    for (dir, t) in dir_times.iter().rev() {
        dest.set_mtime(dir, *t)?;
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

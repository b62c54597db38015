//! Sparse files: old GNU (`S` entries) and the PAX formats 0.0, 0.1 and 1.0.
//!
//! - Old GNU: the `tar` crate reads the sparse map (with its extension blocks) and yields the
//!   file's full contents, holes as zeros; the map itself is not exposed, so holes are found
//!   again by skipping all-zero blocks.
//! - PAX 0.0: `GNU.sparse.size` and repeated `GNU.sparse.offset` / `GNU.sparse.numbytes`.
//! - PAX 0.1: `GNU.sparse.size`, `GNU.sparse.name` and `GNU.sparse.map=off,len,off,len...`.
//! - PAX 1.0: `GNU.sparse.major=1`, `GNU.sparse.minor=0`, `GNU.sparse.name`,
//!   `GNU.sparse.realsize`; the map is at the start of the data, decimal numbers each ending in
//!   `\n` (count, then offset and length pairs), padded to 512 bytes.
//!
//! The PAX chunks follow each other in the data; each is written at its offset, the rest of
//! the file is left as holes, and the file gets its real size. Version detection follows Go's
//! archive/tar (docker's reader): an unknown `GNU.sparse.major/minor` is not a sparse file.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Why a sparse entry could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SparseError {
    /// A `GNU.sparse.*` keyword holds something other than what its format allows.
    #[error("sparse keyword `{key}` has invalid value `{value}`")]
    Keyword {
        /// The keyword.
        key: String,
        /// Its value.
        value: String,
    },
    /// The sparse map is malformed: chunks out of order, overlapping, past the real size, or
    /// more data than the entry holds.
    #[error("invalid sparse map: {reason}")]
    Map {
        /// What is wrong.
        reason: &'static str,
    },
    /// Reading the entry's data failed.
    #[error("reading sparse data")]
    Read(#[source] io::Error),
    /// Writing, seeking or sizing the destination file failed.
    #[error("writing sparse file")]
    Write(#[source] io::Error),
}

type Result<T> = std::result::Result<T, SparseError>;

/// A data chunk: `len` bytes at `offset` in the real file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Offset in the real file.
    pub offset: u64,
    /// Length of the chunk.
    pub len: u64,
}

/// Where the chunk list comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// Old GNU `S`: expanded by the tar crate, holes read as zeros.
    Expanded,
    /// PAX 0.0 and 0.1: from the extended header.
    Map(Vec<Chunk>),
    /// PAX 1.0: at the start of the data.
    InData,
}

/// A sparse entry: its real name (PAX 0.1 and 1.0 hide it in `GNU.sparse.name`), its real
/// size and its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sparse {
    /// The real name, when the header's name is the `GNUSparseFile.<pid>/...` placeholder.
    pub name: Option<Vec<u8>>,
    /// The size of the file once its holes are restored.
    pub real_size: u64,
    layout: Layout,
}

fn number(key: &str, value: &[u8]) -> Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| SparseError::Keyword {
            key: key.to_string(),
            value: String::from_utf8_lossy(value).into_owned(),
        })
}

fn pairs(flat: &[u64]) -> Result<Vec<Chunk>> {
    if !flat.len().is_multiple_of(2) {
        return Err(SparseError::Map {
            reason: "odd number of offset and length values",
        });
    }
    Ok(flat
        .chunks(2)
        .map(|p| Chunk {
            offset: p[0],
            len: p[1],
        })
        .collect())
}

/// Recognises a sparse entry from its type and PAX records; `None` for any other entry.
pub fn detect<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Option<Sparse>> {
    let kind = entry.header().entry_type();
    if kind == tar::EntryType::GNUSparse {
        return Ok(Some(Sparse {
            name: None,
            real_size: entry.size(),
            layout: Layout::Expanded,
        }));
    }
    if !matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous) {
        return Ok(None);
    }
    let Some(exts) = entry.pax_extensions().map_err(SparseError::Read)? else {
        return Ok(None);
    };
    let (mut major, mut minor, mut name, mut size, mut map) = (None, None, None, None, None);
    let mut flat_00 = Vec::new();
    for ext in exts {
        let ext = ext.map_err(SparseError::Read)?;
        let (k, v) = (ext.key_bytes(), ext.value_bytes());
        match k {
            b"GNU.sparse.major" => major = Some(v.to_vec()),
            b"GNU.sparse.minor" => minor = Some(v.to_vec()),
            b"GNU.sparse.name" => name = Some(v.to_vec()),
            b"GNU.sparse.size" | b"GNU.sparse.realsize" => {
                size = Some(number("GNU.sparse.size", v)?);
            }
            b"GNU.sparse.map" => map = Some(v.to_vec()),
            b"GNU.sparse.offset" => flat_00.push(number("GNU.sparse.offset", v)?),
            b"GNU.sparse.numbytes" => flat_00.push(number("GNU.sparse.numbytes", v)?),
            _ => {}
        }
    }
    let layout = match (major.as_deref(), minor.as_deref()) {
        (Some(b"1"), Some(b"0")) => Layout::InData,
        (Some(b"0"), Some(b"0" | b"1")) | (None, None) => {
            if let Some(m) = map {
                let flat = if m.is_empty() {
                    Vec::new()
                } else {
                    m.split(|b| *b == b',')
                        .map(|v| number("GNU.sparse.map", v))
                        .collect::<Result<Vec<_>>>()?
                };
                Layout::Map(pairs(&flat)?)
            } else if !flat_00.is_empty() {
                Layout::Map(pairs(&flat_00)?)
            } else {
                return Ok(None);
            }
        }
        // An unknown version: not a sparse file we know (Go's archive/tar does the same).
        _ => return Ok(None),
    };
    let real_size = size.ok_or(SparseError::Map {
        reason: "no GNU.sparse.size or GNU.sparse.realsize",
    })?;
    Ok(Some(Sparse {
        name,
        real_size,
        layout,
    }))
}

/// Validates a chunk list against the real size: in order, not overlapping, inside the file.
fn check(chunks: &[Chunk], real_size: u64) -> Result<()> {
    let mut end = 0u64;
    for c in chunks {
        if c.offset < end {
            return Err(SparseError::Map {
                reason: "chunks out of order or overlapping",
            });
        }
        end = c.offset.checked_add(c.len).ok_or(SparseError::Map {
            reason: "chunk end overflows",
        })?;
        if end > real_size {
            return Err(SparseError::Map {
                reason: "chunk past the real size",
            });
        }
    }
    Ok(())
}

/// Reads one `\n`-terminated decimal number of the 1.0 map; counts the bytes consumed.
fn map_number(data: &mut dyn Read, consumed: &mut u64) -> Result<u64> {
    let mut digits = Vec::new();
    let mut b = [0u8];
    loop {
        data.read_exact(&mut b).map_err(SparseError::Read)?;
        *consumed += 1;
        match b[0] {
            b'\n' => break,
            d @ b'0'..=b'9' if digits.len() < 20 => digits.push(d),
            _ => {
                return Err(SparseError::Map {
                    reason: "map holds something other than decimal numbers",
                });
            }
        }
    }
    number("GNU.sparse.map", &digits)
}

fn read_map_1_0(data: &mut dyn Read) -> Result<Vec<Chunk>> {
    let mut consumed = 0u64;
    let count = map_number(data, &mut consumed)?;
    let mut chunks = Vec::new();
    for _ in 0..count {
        // Each pair needs at least 4 bytes of data: a hostile count runs out of data here
        // long before it runs out of memory.
        let offset = map_number(data, &mut consumed)?;
        let len = map_number(data, &mut consumed)?;
        chunks.push(Chunk { offset, len });
    }
    let pad = (512 - consumed % 512) % 512;
    io::copy(&mut data.take(pad), &mut io::sink()).map_err(SparseError::Read)?;
    Ok(chunks)
}

impl Sparse {
    /// Writes the entry's `data` into `file` (new and empty): the chunks at their offsets,
    /// holes as holes, then the real size.
    pub fn write(&self, data: &mut dyn Read, file: &mut File) -> Result<()> {
        // The size first: an absurd one fails here (EFBIG) before any data is read.
        file.set_len(self.real_size).map_err(SparseError::Write)?;
        let chunks = match &self.layout {
            Layout::Expanded => return write_skipping_zeros(data, file),
            Layout::Map(c) => c.clone(),
            Layout::InData => read_map_1_0(data)?,
        };
        check(&chunks, self.real_size)?;
        for c in &chunks {
            if c.len == 0 {
                continue;
            }
            file.seek(SeekFrom::Start(c.offset))
                .map_err(SparseError::Write)?;
            let n = io::copy(&mut data.take(c.len), file).map_err(|e| {
                if e.kind() == io::ErrorKind::WriteZero {
                    SparseError::Write(e)
                } else {
                    SparseError::Read(e)
                }
            })?;
            if n != c.len {
                return Err(SparseError::Map {
                    reason: "chunks hold more data than the entry",
                });
            }
        }
        Ok(())
    }
}

/// Filesystem block granularity used to find holes again in expanded data.
const BLOCK: usize = 4096;

/// Writes `data` into `file` (already sized), seeking over all-zero blocks.
fn write_skipping_zeros(data: &mut dyn Read, file: &mut File) -> Result<()> {
    let mut buf = vec![0u8; 64 * BLOCK];
    let mut pending_seek = 0i64;
    loop {
        let n = read_full(data, &mut buf).map_err(SparseError::Read)?;
        if n == 0 {
            break;
        }
        for block in buf[..n].chunks(BLOCK) {
            if block.iter().all(|b| *b == 0) {
                pending_seek += block.len() as i64;
                continue;
            }
            if pending_seek > 0 {
                file.seek(SeekFrom::Current(pending_seek))
                    .map_err(SparseError::Write)?;
                pending_seek = 0;
            }
            file.write_all(block).map_err(SparseError::Write)?;
        }
    }
    Ok(())
}

/// Fills `buf` as far as the reader allows, so that blocks stay aligned to the file.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_1_0_is_read_from_the_data_and_its_padding_skipped() {
        let mut data = b"2\n0\n3\n10\n2\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"abcXY");
        let s = Sparse {
            name: None,
            real_size: 16,
            layout: Layout::InData,
        };
        let mut f = tempfile::tempfile().expect("tempfile");
        s.write(&mut &data[..], &mut f).expect("write");
        let mut out = Vec::new();
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.read_to_end(&mut out).expect("read");
        assert_eq!(out, b"abc\0\0\0\0\0\0\0XY\0\0\0\0");
    }

    #[test]
    fn hostile_maps_are_refused() {
        let overlapping = vec![Chunk { offset: 0, len: 10 }, Chunk { offset: 5, len: 1 }];
        assert!(matches!(
            check(&overlapping, 100),
            Err(SparseError::Map { .. })
        ));
        let past = vec![Chunk {
            offset: 90,
            len: 20,
        }];
        assert!(matches!(check(&past, 100), Err(SparseError::Map { .. })));
        let overflow = vec![Chunk {
            offset: u64::MAX,
            len: 2,
        }];
        assert!(matches!(
            check(&overflow, 100),
            Err(SparseError::Map { .. })
        ));
        // A 1.0 map claiming more chunks than the data holds ends in a read error.
        let s = Sparse {
            name: None,
            real_size: 1 << 40,
            layout: Layout::InData,
        };
        let mut f = tempfile::tempfile().expect("tempfile");
        assert!(matches!(
            s.write(&mut &b"99999999999\n0\n"[..], &mut f),
            Err(SparseError::Read(_))
        ));
        assert!(matches!(
            s.write(&mut &b"1\n0\nx\n"[..], &mut f),
            Err(SparseError::Map { .. })
        ));
    }

    #[test]
    fn expanded_zero_blocks_become_holes() {
        let mut data = vec![0u8; 3 * BLOCK];
        data[BLOCK + 7] = 1;
        let s = Sparse {
            name: None,
            real_size: 10 * BLOCK as u64,
            layout: Layout::Expanded,
        };
        let mut f = tempfile::tempfile().expect("tempfile");
        s.write(&mut &data[..], &mut f).expect("write");
        let m = f.metadata().expect("stat");
        assert_eq!(m.len(), 10 * BLOCK as u64);
        let mut out = Vec::new();
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.read_to_end(&mut out).expect("read");
        assert_eq!(&out[..3 * BLOCK], &data[..]);
        assert!(out[3 * BLOCK..].iter().all(|b| *b == 0));
    }
}

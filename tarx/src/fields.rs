//! Numeric header fields that writers may leave empty.
//!
//! The `tar` crate refuses an empty (all NUL or blank) numeric field; GNU tar and Go's
//! archive/tar, which docker uses, read it as 0. A FIFO written by Python's tarfile, for one,
//! has empty device fields. A field holding anything else is still parsed strictly.

use std::io;

/// Header offsets (ustar and GNU agree on these).
const MODE: std::ops::Range<usize> = 100..108;
const DEV_MAJOR: std::ops::Range<usize> = 329..337;
const DEV_MINOR: std::ops::Range<usize> = 337..345;

fn is_empty(field: &[u8]) -> bool {
    field.iter().all(|b| *b == 0 || *b == b' ')
}

/// The permission bits (with setuid, setgid, sticky); 0 when the field is empty.
pub fn mode(h: &tar::Header) -> io::Result<u32> {
    if is_empty(&h.as_bytes()[MODE]) {
        return Ok(0);
    }
    Ok(h.mode()? & 0o7777)
}

/// The device numbers of a character or block device; 0 for an empty field.
pub fn device(h: &tar::Header) -> io::Result<(u32, u32)> {
    let b = h.as_bytes();
    let major = if is_empty(&b[DEV_MAJOR]) {
        0
    } else {
        h.device_major()?.unwrap_or(0)
    };
    let minor = if is_empty(&b[DEV_MINOR]) {
        0
    } else {
        h.device_minor()?.unwrap_or(0)
    };
    Ok((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_fields_read_as_zero_and_garbage_is_refused() {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Fifo);
        h.as_mut_bytes()[DEV_MAJOR].fill(0);
        h.as_mut_bytes()[DEV_MINOR].fill(b' ');
        h.as_mut_bytes()[MODE].fill(0);
        assert!(
            h.device_major().is_err(),
            "the tar crate refuses empty fields"
        );
        assert_eq!(device(&h).expect("empty"), (0, 0));
        assert_eq!(mode(&h).expect("empty"), 0);
        h.set_device_major(8).expect("major");
        h.set_device_minor(1).expect("minor");
        h.set_mode(0o4755);
        assert_eq!(device(&h).expect("set"), (8, 1));
        assert_eq!(mode(&h).expect("set"), 0o4755);
        h.as_mut_bytes()[DEV_MAJOR].copy_from_slice(b"zz\0\0\0\0\0\0");
        assert!(device(&h).is_err());
    }
}

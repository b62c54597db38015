//! Sizes as docker reads and prints them (its `go-units` package), in one place.
//!
//! - Reading: [`parse`] is docker's `RAMInBytes`, used for every size flag (`--memory 64m`,
//!   `--keep-storage 2GB`, tmpfs `size=`, `KILN_REGISTRY_CHUNK_SIZE`): binary units whatever
//!   the spelling, so `k`, `kb`, `kib` all mean 1024, case-insensitive, a fraction allowed
//!   (`1.5g`), one optional space before the unit.
//! - Printing: [`human`] is docker's `HumanSize` (decimal units, `1.5kB`, 4 significant
//!   digits), [`human_with_precision`] its `HumanSizeWithPrecision` (`docker images` and the
//!   network columns of `docker stats` use 3), and [`binary`] its `BytesSize` (`1.5MiB`, the
//!   memory column of `docker stats`). Numbers follow Go's `%.Ng`: trailing zeros dropped, and
//!   the exponent form where Go uses it (`1e+03kB` for 999,999 bytes at precision 3).

use std::fmt;

const DECIMAL: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
const BINARY: [&str; 9] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];

/// A size that [`parse`] does not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSize {
    /// The text as given.
    pub input: String,
}

impl fmt::Display for InvalidSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid size {:?} (a number of bytes, or with a unit: 512k, 64m, 2GB, 1.5GiB)",
            self.input
        )
    }
}

impl std::error::Error for InvalidSize {}

/// Reads a size in bytes as docker's `RAMInBytes` does: `4096`, `64k`, `64m`, `2GB`, `1.5GiB`,
/// `10 M` (k, m, g, t, p: powers of 1024, with or without `b`/`ib`, any case).
///
/// Fails on anything else, a negative number, or a value past `u64`.
pub fn parse(s: &str) -> Result<u64, InvalidSize> {
    let bad = || InvalidSize {
        input: s.to_owned(),
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    // Go's regexp: digits, then `.digits` groups (`1.5`; no bare `.5` or `5.`).
    if num.is_empty() || num.split('.').any(str::is_empty) {
        return Err(bad());
    }
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let mut rest = unit.as_str();
    let shift = match rest.chars().next() {
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some('t') => 40,
        Some('p') => 50,
        _ => 0,
    };
    if shift > 0 {
        rest = &rest[1..];
    }
    rest = rest.strip_prefix('i').unwrap_or(rest);
    rest = rest.strip_prefix('b').unwrap_or(rest);
    if !rest.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(1u64 << shift).ok_or_else(bad);
    }
    // A fraction; `1.2.3` matches Go's regexp but fails its float parser, as here.
    let v: f64 = num.parse().map_err(|_| bad())?;
    let bytes = v * (1u64 << shift) as f64;
    if bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// `bytes` in decimal units with 4 significant digits, as docker's `HumanSize`: `999B`,
/// `1.5kB`, `20MB`.
pub fn human(bytes: u64) -> String {
    human_with_precision(bytes, 4)
}

/// `bytes` in decimal units with `precision` significant digits, as docker's
/// `HumanSizeWithPrecision`.
pub fn human_with_precision(bytes: u64, precision: usize) -> String {
    scaled(bytes as f64, 1000.0, &DECIMAL, precision)
}

/// `bytes` in binary units with 4 significant digits, as docker's `BytesSize`: `1.5MiB`.
pub fn binary(bytes: u64) -> String {
    scaled(bytes as f64, 1024.0, &BINARY, 4)
}

fn scaled(mut v: f64, base: f64, units: &[&str], precision: usize) -> String {
    let mut i = 0;
    while v >= base && i + 1 < units.len() {
        v /= base;
        i += 1;
    }
    format!("{}{}", go_g(v, precision), units[i])
}

/// Go's `%.<p>g` for a non-negative finite `v`.
fn go_g(v: f64, p: usize) -> String {
    let p = p.max(1);
    if v == 0.0 {
        return "0".into();
    }
    // The exponent after rounding to p significant digits decides the form, as in Go.
    let e = format!("{v:.*e}", p - 1);
    let (mantissa, exp) = e.split_once('e').expect("{:e} output has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    if exp < -4 || exp >= p as i32 {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim_zeros(mantissa), exp.abs())
    } else {
        let decimals = (p as i32 - 1 - exp).max(0) as usize;
        trim_zeros(&format!("{v:.decimals$}")).to_owned()
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_docker_ram_in_bytes() {
        for (s, want) in [
            ("0", 0),
            ("4096", 4096),
            ("32", 32),
            ("32b", 32),
            ("32B", 32),
            ("32k", 32 << 10),
            ("32K", 32 << 10),
            ("32kb", 32 << 10),
            ("32Kb", 32 << 10),
            ("32KiB", 32 << 10),
            ("32Mb", 32 << 20),
            ("64m", 64 << 20),
            ("16M", 16 << 20),
            ("2GB", 2 << 30),
            ("2gib", 2 << 30),
            ("1T", 1 << 40),
            ("1p", 1 << 50),
            ("10 M", 10 << 20),
            ("0.3MB", 314_572),
            ("1.5GiB", 1_610_612_736),
        ] {
            assert_eq!(parse(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn parse_refuses_what_docker_refuses() {
        for s in [
            "",
            "-1",
            "32.",
            "1.2.3",
            ".3mb",
            "1kx",
            "k",
            "32bm",
            "MB",
            " 32",
            "32  M",
            "1e3",
            "18.5EB",
            "99999999999p",
        ] {
            let e = parse(s).expect_err(s);
            assert_eq!(e.input, s);
            assert!(e.to_string().starts_with("invalid size"), "{e}");
        }
    }

    #[test]
    fn human_prints_docker_human_size() {
        for (n, want) in [
            (0, "0B"),
            (999, "999B"),
            (1000, "1kB"),
            (1024, "1.024kB"),
            (1500, "1.5kB"),
            (20_000_000, "20MB"),
            (1_234_567, "1.235MB"),
            (3_420_000_000_000, "3.42TB"),
            (999_999, "1000kB"),
        ] {
            assert_eq!(human(n), want, "{n}");
        }
    }

    #[test]
    fn precision_three_is_docker_images_size() {
        assert_eq!(human_with_precision(7_200_000, 3), "7.2MB");
        assert_eq!(human_with_precision(1_234_567, 3), "1.23MB");
        assert_eq!(human_with_precision(999, 3), "999B");
        // Go's %.3g turns 999.9 into 1e+03; docker prints that, and so do we.
        assert_eq!(human_with_precision(999_900, 3), "1e+03kB");
    }

    #[test]
    fn binary_prints_docker_bytes_size() {
        assert_eq!(binary(0), "0B");
        assert_eq!(binary(1023), "1023B");
        assert_eq!(binary(1536 * 1024), "1.5MiB");
        assert_eq!(binary(64 << 20), "64MiB");
        assert_eq!(binary(3 << 30), "3GiB");
        assert_eq!(binary(25_275_000_000), "23.54GiB");
        assert_eq!(human(180_224), "180.2kB");
    }
}

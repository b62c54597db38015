//! `kiln system df`: what the store holds, by kind.

use std::io::Write as _;

/// `kiln system` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SystemCommand {
    /// Show disk usage: images, blobs, layer snapshots, build cache records, cache mounts.
    Df,
    /// Remove build cache (the same as `kiln prune`).
    Prune(crate::prune::PruneArgs),
}

/// Runs a `kiln system` subcommand.
pub fn system(cmd: SystemCommand) -> anyhow::Result<()> {
    match cmd {
        SystemCommand::Df => df(),
        SystemCommand::Prune(a) => crate::prune::prune(a),
    }
}

fn df() -> anyhow::Result<()> {
    let store = crate::open_store()?;
    let u = store.disk_usage()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<16} {:>8} {:>12}", "TYPE", "COUNT", "SIZE")?;
    for (name, c) in [
        ("Images", u.images),
        ("Blobs", u.blobs),
        ("Snapshots", u.snapshots),
        ("Build cache", u.cache_records),
        ("Cache mounts", u.cache_mounts),
        ("Temp", u.tmp),
    ] {
        writeln!(out, "{name:<16} {:>8} {:>12}", c.count, human(c.bytes))?;
    }
    Ok(())
}

/// `1.5MB` style sizes (powers of 1000, as docker prints them).
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_sizes() {
        assert_eq!(super::human(0), "0B");
        assert_eq!(super::human(999), "999B");
        assert_eq!(super::human(1500), "1.5kB");
        assert_eq!(super::human(20_000_000), "20.0MB");
    }
}

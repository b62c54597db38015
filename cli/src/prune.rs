//! `kiln prune`: remove build cache (records, cache mounts, the layers only they hold), like
//! `docker builder prune`.

use anyhow::{Context as _, bail};
use std::io::{BufRead as _, Write as _};
use std::time::{Duration, SystemTime};

/// `kiln prune` flags.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Also remove images that no name points at (untagged build results) and their layers.
    #[arg(short = 'a', long)]
    all: bool,
    /// Keep the most recently used build cache up to this size (`512MB`, `2GB`, `1.5GiB`).
    #[arg(long, value_name = "SIZE", value_parser = kroot::size::parse)]
    keep_storage: Option<u64>,
    /// `until=DURATION`: only remove cache unused for at least that long (`24h`, `90m`, `1h30m`).
    #[arg(long = "filter", value_name = "until=DURATION")]
    filters: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    force: bool,
    /// Also remove the volumes no container uses (as `docker system prune --volumes`).
    #[arg(long)]
    volumes: bool,
}

/// Runs `kiln prune`.
pub fn prune(a: PruneArgs) -> anyhow::Result<()> {
    let mut until = None;
    for f in &a.filters {
        match f.split_once('=') {
            Some(("until", v)) => until = Some(parse_duration(v)?),
            _ => bail!("unsupported filter {f:?}: only until=DURATION is supported"),
        }
    }
    if !a.force && !confirm(a.all)? {
        return Ok(());
    }
    let store = crate::open_store()?;
    let mut err = std::io::stderr().lock();
    let lock = match store.try_lock_exclusive().context("locking the store")? {
        Some(l) => l,
        None => {
            let _ = writeln!(err, "waiting for running builds to finish...");
            store.lock_exclusive().context("locking the store")?
        }
    };
    let solver = solver::gcroots::SolverRoots::new(store.root());
    let containers = crate::gcroots::ContainerRoots::new(store.root());
    let report = store.prune(
        &cache::gc::PruneOptions {
            all: a.all,
            keep_storage: a.keep_storage,
            until,
            now: SystemTime::now(),
        },
        &[&solver, &containers],
    )?;
    drop(lock);
    drop(err);
    let mut out = std::io::stdout().lock();
    if !report.removed.is_empty() {
        writeln!(out, "Deleted build cache objects:")?;
        for r in &report.removed {
            match r.kind {
                cache::gc::EntryKind::Record => writeln!(out, "{}", &r.id[..r.id.len().min(25)])?,
                cache::gc::EntryKind::CacheMount => writeln!(out, "cache mount {}", r.id)?,
            }
        }
        writeln!(out)?;
    }
    let mut reclaimed = report.reclaimed;
    if a.volumes {
        let (gone, bytes) = executor::volume::Volumes::new(store.dir(kroot::Dir::Volumes))
            .prune(&store.dir(kroot::Dir::Containers), |_| true);
        if !gone.is_empty() {
            writeln!(out, "Deleted Volumes:")?;
            for n in &gone {
                writeln!(out, "{n}")?;
            }
            writeln!(out)?;
        }
        reclaimed += bytes;
    }
    if report.blobs + report.snapshots + report.tmp > 0 {
        writeln!(
            out,
            "Removed {} blobs, {} layer snapshots, {} temp entries",
            report.blobs, report.snapshots, report.tmp
        )?;
    }
    writeln!(
        out,
        "Total reclaimed space: {}",
        kroot::size::human(reclaimed)
    )?;
    Ok(())
}

/// Asks on stderr, reads a line from stdin: only `y`/`yes` goes on (end of input is no).
fn confirm(all: bool) -> anyhow::Result<bool> {
    let what = if all {
        "all build cache and every untagged image"
    } else {
        "all build cache"
    };
    let mut err = std::io::stderr().lock();
    write!(
        err,
        "WARNING! This will remove {what}. Are you sure you want to continue? [y/N] "
    )?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let yes = matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes");
    if !yes {
        writeln!(err, "Nothing removed (use -f to skip this question).")?;
    }
    Ok(yes)
}

/// Go-style durations (`24h`, `1h30m`, `90s`, `500ms`) plus days (`7d`); a bare number is
/// seconds.
pub(crate) fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let bad = || anyhow::anyhow!("invalid duration {s:?} (examples: 24h, 90m, 1h30m, 7d)");
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        total += n * unit;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 years").is_err());
        assert!(parse_duration("h").is_err());
    }
}

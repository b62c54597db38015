//! `kiln volume create|ls|inspect|rm|prune`, as docker's (20.10) with its `local` driver; the
//! store is `executor::volume` under `KILN_ROOT/volumes`.

use anyhow::Context as _;
use executor::volume::{Volume, VolumeError, Volumes};
use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::process::ExitCode;

/// `kiln volume` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Create a volume (a random name when none is given).
    Create {
        /// Volume driver; only `local`.
        #[arg(short, long, default_value = "local")]
        driver: String,
        /// Set metadata (`K=V`).
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// Volume name.
        name: Option<String>,
    },
    /// List volumes.
    #[command(visible_alias = "list")]
    Ls {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
        /// `dangling=true|false`, `name=SUBSTRING`, `driver=local`.
        #[arg(short, long = "filter", value_name = "K=V")]
        filter: Vec<String>,
        /// Go template (`{{.Name}}`, `table {{.Driver}}\t{{.Name}}`).
        #[arg(long)]
        format: Option<String>,
    },
    /// Show volumes as a JSON array.
    Inspect {
        /// Go template (`{{.Mountpoint}}`).
        #[arg(short, long)]
        format: Option<String>,
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes (never one a container uses).
    #[command(visible_alias = "remove")]
    Rm {
        /// A missing volume is not an error.
        #[arg(short, long)]
        force: bool,
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every volume no container uses.
    Prune {
        /// Do not ask.
        #[arg(short, long)]
        force: bool,
        /// Only volumes matching: `label=K[=V]`, `name=SUBSTRING`.
        #[arg(long = "filter", value_name = "K=V")]
        filter: Vec<String>,
    },
}

fn store() -> anyhow::Result<(Volumes, std::path::PathBuf)> {
    let root = crate::kiln_root()?;
    Ok((
        Volumes::new(kroot::Dir::Volumes.path(&root)),
        kroot::Dir::Containers.path(&root),
    ))
}

/// docker's `volume inspect` object.
fn inspect_value(v: &Volume) -> serde_json::Value {
    // docker shows `{}` for a volume `volume create` made and `null` for one `run` made.
    let options = v
        .meta
        .labels
        .as_ref()
        .map(|_| serde_json::json!({}))
        .unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "CreatedAt": v.meta.created_at,
        "Driver": "local",
        "Labels": v.meta.labels,
        "Mountpoint": v.mountpoint,
        "Name": v.name,
        "Options": options,
        "Scope": "local",
    })
}

/// Runs a volume subcommand.
pub fn dispatch(cmd: Cmd) -> anyhow::Result<ExitCode> {
    let (vols, containers) = store()?;
    let mut out = std::io::stdout().lock();
    match cmd {
        Cmd::Create {
            driver,
            labels,
            name,
        } => {
            anyhow::ensure!(
                driver == "local",
                "create {}: error looking up volume plugin {driver}: plugin \"{driver}\" not found",
                name.as_deref().unwrap_or_default()
            );
            let labels: BTreeMap<String, String> = labels
                .iter()
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap_or((l, ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect();
            let name = name.unwrap_or_else(executor::container::state::new_id);
            let (v, _) = vols.create(&name, Some(labels))?;
            writeln!(out, "{}", v.name)?;
        }
        Cmd::Ls {
            quiet,
            filter,
            format,
        } => {
            let used = volumes_in_use(&containers);
            let mut rows = Vec::new();
            for v in vols.list() {
                if !filter
                    .iter()
                    .all(|f| matches(f, &v, used.contains(&v.name)))
                {
                    continue;
                }
                rows.push(serde_json::json!({
                    "Driver": "local",
                    "Name": v.name,
                    "Scope": "local",
                    "Mountpoint": v.mountpoint,
                    "Labels": label_text(&v),
                }));
            }
            for f in &filter {
                check_filter(f)?;
            }
            let src = match (quiet, format) {
                (true, _) => "{{.Name}}".to_owned(),
                (false, Some(f)) => f,
                (false, None) => "table {{.Driver}}\t{{.Name}}".to_owned(),
            };
            crate::containers::print_rows(
                &mut out,
                &src,
                &[
                    ("Driver", "DRIVER"),
                    ("Name", "VOLUME NAME"),
                    ("Scope", "SCOPE"),
                    ("Mountpoint", "MOUNTPOINT"),
                    ("Labels", "LABELS"),
                ],
                &rows,
            )?;
        }
        Cmd::Inspect { format, names } => {
            // As docker: what is found is printed, each missing one is an error (exit 1).
            let mut docs = Vec::new();
            let mut missing = Vec::new();
            for n in &names {
                match vols.get(n) {
                    Ok(v) => docs.push(inspect_value(&v)),
                    Err(e) => missing.push(e),
                }
            }
            match format {
                Some(f) => {
                    let t = crate::gotmpl::Template::parse(&f)?;
                    for d in &docs {
                        writeln!(out, "{}", t.render(d)?)?;
                    }
                }
                None => {
                    serde_json::to_writer_pretty(&mut out, &docs)?;
                    writeln!(out)?;
                }
            }
            if !missing.is_empty() {
                let mut err = std::io::stderr().lock();
                for e in &missing {
                    let _ = writeln!(err, "error: {e}");
                }
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Rm { force, names } => {
            // As docker: every name is tried; the failures are reported and the exit is 1.
            let mut failed = false;
            for n in &names {
                match vols.remove(&containers, n) {
                    Ok(()) => writeln!(out, "{n}")?,
                    Err(VolumeError::NotFound(_)) if force => {}
                    Err(e) => {
                        failed = true;
                        let _ = writeln!(std::io::stderr().lock(), "error: {e}");
                    }
                }
            }
            if failed {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Prune { force, filter } => {
            for f in &filter {
                check_filter(f)?;
            }
            if !force
                && !confirm(
                    "WARNING! This will remove all local volumes not used by at least one container.\nAre you sure you want to continue? [y/N] ",
                )?
            {
                return Ok(ExitCode::SUCCESS);
            }
            let (removed, bytes) =
                vols.prune(&containers, |v| filter.iter().all(|f| matches(f, v, false)));
            if !removed.is_empty() {
                writeln!(out, "Deleted Volumes:")?;
                for n in &removed {
                    writeln!(out, "{n}")?;
                }
                writeln!(out)?;
            }
            writeln!(out, "Total reclaimed space: {}", kroot::size::human(bytes))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn volumes_in_use(containers: &std::path::Path) -> std::collections::BTreeSet<String> {
    let Ok(rd) = std::fs::read_dir(containers) else {
        return Default::default();
    };
    rd.flatten()
        .filter_map(|e| executor::container::supervisor::read_spec(&e.path()).ok())
        .flat_map(|s| executor::volume::named_in(&s.mounts))
        .map(|(n, _)| n)
        .collect()
}

fn label_text(v: &Volume) -> String {
    v.meta
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn check_filter(f: &str) -> anyhow::Result<()> {
    match f.split_once('=') {
        Some(("dangling", "true" | "false" | "1" | "0")) => Ok(()),
        Some(("dangling", v)) => {
            anyhow::bail!("invalid filter 'dangling={v}'")
        }
        Some(("name" | "driver" | "label", _)) => Ok(()),
        _ => anyhow::bail!("invalid filter '{f}'"),
    }
}

fn matches(f: &str, v: &Volume, used: bool) -> bool {
    match f.split_once('=') {
        Some(("dangling", d)) => (d == "true" || d == "1") != used,
        Some(("name", n)) => v.name.contains(n),
        Some(("driver", d)) => d == "local",
        Some(("label", l)) => {
            let (k, val) = match l.split_once('=') {
                Some((k, val)) => (k, Some(val)),
                None => (l, None),
            };
            v.meta
                .labels
                .as_ref()
                .and_then(|m| m.get(k))
                .is_some_and(|x| val.is_none_or(|val| x == val))
        }
        _ => true,
    }
}

/// Asks on stderr, reads a line from stdin: true for `y`/`yes`, as docker's prompt.
fn confirm(question: &str) -> anyhow::Result<bool> {
    let mut err = std::io::stderr().lock();
    write!(err, "{question}")?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the answer")?;
    Ok(matches!(
        line.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

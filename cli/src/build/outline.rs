//! `--call outline`: what the target stage takes, printed as buildx prints BuildKit's outline
//! subrequest: the target and its description, the build args it uses with their values and
//! descriptions, and the secrets and SSH sockets its RUN steps mount.

use frontend::{Command, Dockerfile, Stage};
use std::collections::{BTreeMap, BTreeSet};

/// One build arg of the outline.
#[derive(Debug, PartialEq, Eq)]
struct Arg {
    name: String,
    value: String,
    description: String,
}

/// What the target stage takes.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outline {
    name: String,
    description: String,
    args: Vec<Arg>,
    /// Secret ids, with whether the mount is `required`.
    secrets: Vec<(String, bool)>,
    /// SSH ids, with whether the mount is `required`.
    ssh: Vec<(String, bool)>,
}

/// The stage `name` refers to: by `AS` name (any case) or by index.
fn stage_named<'a>(df: &'a Dockerfile, name: &str) -> Option<&'a Stage> {
    let lower = name.to_ascii_lowercase();
    df.stages
        .iter()
        .find(|s| s.name.as_deref() == Some(lower.as_str()))
        .or_else(|| name.parse::<usize>().ok().and_then(|i| df.stages.get(i)))
}

/// The stages the target needs: itself, its base stage, and the stages its COPY --from and
/// RUN --mount from= name, transitively; in Dockerfile order.
fn needed<'a>(df: &'a Dockerfile, target: &'a Stage) -> Vec<&'a Stage> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(s) = todo.pop() {
        if !seen.insert(s.index) {
            continue;
        }
        let mut refs = vec![s.base.clone()];
        for i in &s.instructions {
            match &i.command {
                Command::Copy(c) => refs.extend(c.from.iter().map(|f| f.value.clone())),
                Command::Run(r) => refs.extend(r.mounts.iter().filter_map(|m| {
                    frontend::mounts::parse_mount(&m.value, "/")
                        .ok()
                        .and_then(|m| m.from)
                })),
                _ => {}
            }
        }
        // Only earlier stages can be named (a later name is an image).
        todo.extend(
            refs.iter()
                .filter_map(|r| stage_named(df, r))
                .filter(|d| d.index < s.index),
        );
    }
    df.stages
        .iter()
        .filter(|s| seen.contains(&s.index))
        .collect()
}

fn arg_names(i: &frontend::Instruction) -> Vec<&frontend::instructions::ArgDef> {
    match &i.command {
        Command::Arg(defs) => defs.iter().collect(),
        _ => Vec::new(),
    }
}

/// The outline of `target` (the last stage when `None`), with `build_args` as given.
fn outline(
    df: &Dockerfile,
    source: &str,
    target: Option<&str>,
    build_args: &BTreeMap<String, String>,
) -> anyhow::Result<Outline> {
    let lines: Vec<&str> = source.lines().collect();
    let stage = match target {
        Some(t) => stage_named(df, t)
            .ok_or_else(|| anyhow::anyhow!("target stage \"{t}\" could not be found"))?,
        None => df
            .stages
            .last()
            .ok_or_else(|| anyhow::anyhow!("the Dockerfile has no stage"))?,
    };
    let name = stage.name_as_written.clone().unwrap_or_default();
    let mut out = Outline {
        description: super::runopts::stage_comment(&lines, stage.span.line as usize, &name),
        name,
        ..Outline::default()
    };
    let stages = needed(df, stage);
    // The global ARGs: their defaults, and the ones a needed FROM line names.
    let mut global = BTreeMap::new();
    let mut used_global = BTreeSet::new();
    for i in &df.meta_args {
        for d in arg_names(i) {
            global.insert(d.name.clone(), (d, i.span.line));
        }
    }
    for s in &stages {
        for n in global.keys() {
            let mention = [format!("${n}"), format!("${{{n}")];
            let from = format!("{} {}", s.base, s.platform.as_deref().unwrap_or(""));
            if mention.iter().any(|m| from.contains(m.as_str())) {
                used_global.insert(n.clone());
            }
        }
    }
    // (line, def, global default) of every arg the needed stages declare or use.
    let mut defs: Vec<(u32, &frontend::instructions::ArgDef, Option<String>)> = Vec::new();
    for n in &used_global {
        let (d, line) = global[n];
        defs.push((line, d, None));
    }
    for s in &stages {
        for i in &s.instructions {
            for d in arg_names(i) {
                let inherited = global.get(&d.name).and_then(|(g, _)| g.default.clone());
                defs.push((i.span.line, d, inherited));
            }
            if let Command::Run(r) = &i.command {
                for m in &r.mounts {
                    let Ok(m) = frontend::mounts::parse_mount(&m.value, "/") else {
                        continue;
                    };
                    let id = || {
                        m.id.clone().unwrap_or_else(|| {
                            m.target.rsplit('/').next().unwrap_or_default().to_owned()
                        })
                    };
                    match m.kind {
                        frontend::mounts::MountType::Secret => out.secrets.push((id(), m.required)),
                        frontend::mounts::MountType::Ssh => out.ssh.push((
                            m.id.clone().unwrap_or_else(|| "default".to_owned()),
                            m.required,
                        )),
                        _ => {}
                    }
                }
            }
        }
    }
    defs.sort_by_key(|(line, _, _)| *line);
    let mut seen = BTreeSet::new();
    for (line, d, inherited) in defs {
        if frontend::PLATFORM_ARGS.contains(&d.name.as_str()) || !seen.insert(d.name.clone()) {
            continue;
        }
        let value = build_args
            .get(&d.name)
            .cloned()
            .or_else(|| d.default.clone())
            .or(inherited)
            .unwrap_or_default();
        out.args.push(Arg {
            description: super::runopts::stage_comment(&lines, line as usize, &d.name),
            name: d.name.clone(),
            value,
        });
    }
    let mut ids = BTreeSet::new();
    out.secrets.retain(|(id, _)| ids.insert(id.clone()));
    let mut ids = BTreeSet::new();
    out.ssh.retain(|(id, _)| ids.insert(id.clone()));
    Ok(out)
}

/// Rows aligned as Go's tabwriter with padding `pad`: every column but the last padded to
/// its widest cell plus `pad`.
fn table(rows: &[Vec<String>], pad: usize) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols.saturating_sub(1))
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
                + pad
        })
        .collect();
    let mut s = String::new();
    for r in rows {
        for (c, cell) in r.iter().enumerate() {
            match widths.get(c) {
                Some(w) if c + 1 < r.len() => {
                    s.push_str(cell);
                    s.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
                }
                _ => s.push_str(cell),
            }
        }
        s.push('\n');
    }
    s
}

fn render(o: &Outline) -> String {
    let mut s = String::new();
    if !o.name.is_empty() || !o.description.is_empty() {
        let name = if o.name.is_empty() {
            "(default)"
        } else {
            &o.name
        };
        let mut rows = vec![vec!["TARGET:".to_owned(), name.to_owned()]];
        if !o.description.is_empty() {
            rows.push(vec!["DESCRIPTION:".to_owned(), o.description.clone()]);
        }
        s.push_str(&table(&rows, 1));
        s.push('\n');
    }
    if !o.args.is_empty() {
        let mut rows = vec![vec![
            "BUILD ARG".to_owned(),
            "VALUE".to_owned(),
            "DESCRIPTION".to_owned(),
        ]];
        rows.extend(
            o.args
                .iter()
                .map(|a| vec![a.name.clone(), a.value.clone(), a.description.clone()]),
        );
        s.push_str(&table(&rows, 3));
        s.push('\n');
    }
    for (title, list) in [("SECRET", &o.secrets), ("SSH", &o.ssh)] {
        if list.is_empty() {
            continue;
        }
        let mut rows = vec![vec![title.to_owned(), "REQUIRED".to_owned()]];
        rows.extend(
            list.iter()
                .map(|(id, req)| vec![id.clone(), if *req { "true" } else { "" }.to_owned()]),
        );
        s.push_str(&table(&rows, 3));
        s.push('\n');
    }
    s
}

/// Prints the outline of the build's target on stdout.
///
/// Fails when the target stage does not exist or stdout is closed.
pub fn print(
    df: &Dockerfile,
    source: &str,
    target: Option<&str>,
    build_args: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let text = render(&outline(df, source, target, build_args)?);
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabwriter_pads_all_but_the_last_column() {
        let rows = vec![
            vec!["BUILD ARG".to_owned(), "VALUE".into(), "DESCRIPTION".into()],
            vec!["A".to_owned(), "".into(), "".into()],
        ];
        assert_eq!(
            table(&rows, 3),
            "BUILD ARG   VALUE   DESCRIPTION\nA                   \n"
        );
    }
}

//! `--call outline`: what the target stage takes, printed as buildx prints BuildKit's outline
//! subrequest: the target and its description, the build args it uses with their values and
//! descriptions, and the secrets and SSH sockets its RUN steps mount.

use super::call::table;
use frontend::{Command, Dockerfile, Stage};
use std::collections::{BTreeMap, BTreeSet};

/// One build arg of the outline.
#[derive(Debug, PartialEq, Eq)]
struct Arg {
    name: String,
    value: String,
    description: String,
    /// The line of the ARG instruction that declares it.
    line: u32,
}

/// A secret or SSH mount of a RUN step.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    id: String,
    required: bool,
    /// The line of the RUN instruction.
    line: u32,
}

/// What the target stage takes.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outline {
    name: String,
    description: String,
    args: Vec<Arg>,
    /// Secret ids, with whether the mount is `required`.
    secrets: Vec<Mount>,
    /// SSH ids, with whether the mount is `required`.
    ssh: Vec<Mount>,
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
    let name = stage.name.clone().unwrap_or_default();
    let mut out = Outline {
        description: super::runopts::stage_comment(&lines, stage.span.line as usize, &name),
        name,
        ..Outline::default()
    };
    let stages = needed(df, stage);
    let comment =
        |line: u32, name: &str| super::runopts::stage_comment(&lines, line as usize, name);
    // Quotes removed and earlier args expanded, as BuildKit evaluates a default.
    let lex = frontend::shell::Lex::new(df.escape);
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let eval = |name: &str, default: &Option<String>, env: &mut BTreeMap<String, String>| {
        let v = match (build_args.get(name), default) {
            (Some(v), _) => Some(v.clone()),
            (None, Some(d)) => Some(
                lex.process_word(d, &|k: &str| env.get(k).cloned())
                    .unwrap_or_else(|_| d.clone()),
            ),
            (None, None) => None,
        };
        if let Some(v) = &v {
            env.insert(name.to_owned(), v.clone());
        }
        v
    };
    // The global ARGs: name -> (line, value); the ones a needed FROM line names are used.
    let mut global: BTreeMap<String, (u32, Option<String>)> = BTreeMap::new();
    for i in &df.meta_args {
        for d in arg_names(i) {
            let v = eval(&d.name, &d.default, &mut env);
            global.insert(d.name.clone(), (i.span.line, v));
        }
    }
    let entry = |name: &str, line: u32, value: Option<String>| Arg {
        description: comment(line, name),
        name: name.to_owned(),
        value: value.unwrap_or_default(),
        line,
    };
    // BuildKit visits the target first, then the stages it builds on, and keeps the first
    // entry of each name; a stage's later ARG of a name replaces its earlier one.
    let mut args: Vec<Arg> = Vec::new();
    let mut secrets: Vec<Mount> = Vec::new();
    let mut ssh: Vec<Mount> = Vec::new();
    for s in stages.iter().rev() {
        // A stage sees only the args it declares (a global one by naming it again).
        let mut env = BTreeMap::new();
        let mut own: Vec<Arg> = Vec::new();
        let from = format!("{} {}", s.base, s.platform.as_deref().unwrap_or(""));
        for (n, (line, v)) in &global {
            if [format!("${n}"), format!("${{{n}")]
                .iter()
                .any(|m| from.contains(m.as_str()))
            {
                own.push(entry(n, *line, v.clone()));
            }
        }
        let (mut stage_secrets, mut stage_ssh) = (Vec::new(), Vec::new());
        for i in &s.instructions {
            for d in arg_names(i) {
                let given = build_args.contains_key(&d.name);
                let a = match global.get(&d.name) {
                    // Inherited from a global ARG with a value: the global's entry.
                    Some((line, v @ Some(value))) if d.default.is_none() && !given => {
                        env.insert(d.name.clone(), value.clone());
                        entry(&d.name, *line, v.clone())
                    }
                    _ => {
                        let v = eval(&d.name, &d.default, &mut env);
                        entry(&d.name, i.span.line, v)
                    }
                };
                own.retain(|o| o.name != a.name);
                own.push(a);
            }
            let Command::Run(r) = &i.command else {
                continue;
            };
            for m in &r.mounts {
                let Ok(m) = frontend::mounts::parse_mount(&m.value, "/") else {
                    continue;
                };
                let line = i.span.line;
                match m.kind {
                    frontend::mounts::MountType::Secret => stage_secrets.push(Mount {
                        id: m.id.clone().unwrap_or_else(|| {
                            m.target.rsplit('/').next().unwrap_or_default().to_owned()
                        }),
                        required: m.required,
                        line,
                    }),
                    frontend::mounts::MountType::Ssh => stage_ssh.push(Mount {
                        id: m.id.clone().unwrap_or_else(|| "default".to_owned()),
                        required: m.required,
                        line,
                    }),
                    _ => {}
                }
            }
        }
        // A stage keeps the first mount of an id.
        for (list, stage_list) in [(&mut secrets, stage_secrets), (&mut ssh, stage_ssh)] {
            for m in stage_list {
                if !list.iter().any(|l| l.id == m.id) {
                    list.push(m);
                }
            }
        }
        for a in own {
            if !frontend::PLATFORM_ARGS.contains(&a.name.as_str())
                && !args.iter().any(|o| o.name == a.name)
            {
                args.push(a);
            }
        }
    }
    // Then in Dockerfile order (BuildKit sorts by line; its order within a line is not
    // fixed).
    args.sort_by_key(|a| a.line);
    secrets.sort_by_key(|m| m.line);
    ssh.sort_by_key(|m| m.line);
    out.args = args;
    out.secrets = secrets;
    out.ssh = ssh;
    Ok(out)
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
        rows.extend(list.iter().map(|m| {
            vec![
                m.id.clone(),
                if m.required { "true" } else { "" }.to_owned(),
            ]
        }));
        s.push_str(&table(&rows, 3));
        s.push('\n');
    }
    s
}

/// BuildKit's `result.json` of `frontend.outline`: Go's `json.MarshalIndent` of its
/// `Outline` (empty fields left out), each entry with the lines of its instruction, and the
/// Dockerfile as the one source.
fn json(o: &Outline, source: &str) -> String {
    use super::call::{GoJson, location};
    let mut v = Vec::new();
    if !o.name.is_empty() {
        v.push(("name", o.name.as_str().into()));
    }
    if !o.description.is_empty() {
        v.push(("description", o.description.as_str().into()));
    }
    let args: Vec<GoJson> = o
        .args
        .iter()
        .map(|a| {
            let mut e = vec![("name", a.name.as_str().into())];
            if !a.description.is_empty() {
                e.push(("description", a.description.as_str().into()));
            }
            if !a.value.is_empty() {
                e.push(("value", a.value.as_str().into()));
            }
            e.push(("location", location(source, a.line as usize)));
            GoJson::Obj(e)
        })
        .collect();
    let mounts = |list: &[Mount]| -> Vec<GoJson> {
        list.iter()
            .map(|m| {
                let mut e = vec![("name", m.id.as_str().into())];
                if m.required {
                    e.push(("required", GoJson::Bool(true)));
                }
                e.push(("location", location(source, m.line as usize)));
                GoJson::Obj(e)
            })
            .collect()
    };
    for (key, list) in [
        ("args", args),
        ("secrets", mounts(&o.secrets)),
        ("ssh", mounts(&o.ssh)),
    ] {
        if !list.is_empty() {
            v.push((key, GoJson::Arr(list)));
        }
    }
    v.push((
        "sources",
        GoJson::Arr(vec![super::call::source_bytes(source)]),
    ));
    GoJson::Obj(v).indent()
}

/// The outline of the build's target: buildx's text, or with `json` BuildKit's JSON.
///
/// Fails when the target stage does not exist.
pub fn text(
    df: &Dockerfile,
    source: &str,
    target: Option<&str>,
    build_args: &BTreeMap<String, String>,
    as_json: bool,
) -> anyhow::Result<String> {
    let o = outline(df, source, target, build_args)?;
    Ok(if as_json {
        json(&o, source)
    } else {
        render(&o)
    })
}

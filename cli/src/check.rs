//! `kiln build --check` (`--call check`): parse and lower the Dockerfile without building
//! (no pulls; base images only read from the store when it holds them, for UndefinedVar)
//! and print the findings as buildx prints BuildKit's lint result. Also the parsing of
//! `kiln build --secret`.

use std::io::Write as _;

/// COPY/ADD sources from the context that are missing or `.dockerignore`d, in every stage the
/// target reaches ([`frontend::check::context_sources`]). Wildcards that match nothing are fine
/// (BuildKit copies nothing).
fn copy_sources(
    df: &frontend::Dockerfile,
    opts: &frontend::BuildOptions,
    context: &std::path::Path,
    dockerignore: &str,
) -> Vec<frontend::Warning> {
    use frontend::check::{SourceState, context_sources, copy_source_warning};
    let ignore = context::Ignore::parse(dockerignore);
    let none = context::Ignore::parse("");
    context_sources(df, opts)
        .iter()
        .filter_map(|src| {
            let one = std::slice::from_ref(&src.source);
            let state =
                if context::walk_sources(&executor::fsroot::InRoot, context, one, &ignore, &[])
                    .is_ok()
                {
                    SourceState::Present
                } else if context::walk_sources(&executor::fsroot::InRoot, context, one, &none, &[])
                    .is_ok()
                {
                    SourceState::Ignored
                } else {
                    SourceState::Missing
                };
            copy_source_warning(src, state)
        })
        .collect()
}

/// The config of the base image `reference` (for `platform`, a `FROM --platform`, else the
/// build's) for UndefinedVar and InvalidBaseImagePlatform: known when the store (if there is
/// one: a check creates none) holds the image, else unknown (a check pulls nothing; BuildKit
/// would resolve the image, and fail when it cannot).
fn base_env(
    store: Option<&cache::store::Store>,
    reference: &str,
    platform: &cache::oci::Platform,
) -> frontend::check::BaseEnv {
    use frontend::check::BaseEnv;
    match store.map(|s| s.resolve_for(reference, platform)) {
        Some(Ok(Some(image))) => BaseEnv::Known {
            env: image.config.config.env.clone(),
            on_build: image.config.config.on_build.clone(),
            platform: cache::oci::Platform {
                architecture: image.config.architecture.clone(),
                os: image.config.os.clone(),
                variant: image.config.variant.clone(),
                os_version: None,
            },
        },
        _ => BaseEnv::Unknown,
    }
}

/// BuildKit's snippet of the Dockerfile around lines `start..=end` (1-based; `lines` split
/// on `\n` as Go splits, so a final newline gives a last empty line): the file name and
/// first line, then up to four lines of context for one line (two for several), the
/// finding's lines marked `>>>`, between dashed rules.
pub fn snippet(file: &str, lines: &[&str], start: usize, end: usize) -> String {
    use std::fmt::Write as _;
    if start < 1 || start > lines.len() {
        return String::new();
    }
    let (mut from, mut to) = (start, end.min(lines.len()));
    let pad = if to == from { 4 } else { 2 };
    let mut p = 0;
    while p < pad {
        if from > 1 {
            from -= 1;
            p += 1;
        }
        if to != lines.len() {
            to += 1;
            p += 1;
        }
        p += 1;
    }
    let mut s = format!("{file}:{start}\n--------------------\n");
    for i in from..=to {
        let mark = if (start..=end).contains(&i) {
            ">>>"
        } else {
            "   "
        };
        let _ = writeln!(s, " {i:3} | {mark} {}", lines[i - 1]);
    }
    s.push_str("--------------------\n");
    s
}

/// When BuildKit's Dockerfile conversion reports `rule`: 0 while parsing lines, 1 while
/// parsing instructions, 2 checking stage names, 3 checking casing, 4 checking the bases'
/// default values, 5 while converting.
fn phase(rule: &str) -> u8 {
    match rule {
        "NoEmptyContinuation" => 0,
        "StageNameCasing" | "FromAsCasing" | "MaintainerDeprecated" => 1,
        "ReservedStageName" | "DuplicateStageName" => 2,
        "ConsistentInstructionCasing" => 3,
        "InvalidDefaultArgInFrom" => 4,
        _ => 5,
    }
}

/// The findings of a check, split as BuildKit's lint result holds them.
struct Report<'a> {
    /// Warnings (and, with `# check=error=true`, the violations that make it fail).
    warnings: Vec<&'a frontend::Warning>,
    /// The build error: the first error that is not a promoted warning, with its lines; or
    /// BuildKit's `lint violation found for rules: ...` without a place.
    error: Option<(String, Option<(usize, usize)>)>,
}

fn report<'a>(findings: &'a [frontend::Warning], text: &str) -> Report<'a> {
    let is_build_error = |w: &frontend::Warning| matches!(w.rule, "BuildError" | "ParseError");
    let warnings: Vec<_> = findings.iter().filter(|w| !is_build_error(w)).collect();
    let error = findings
        .iter()
        .find(|w| is_build_error(w))
        .map(|w| {
            let lines = w.span.map(|s| {
                let l = s.line as usize;
                (l, crate::build::instruction_end(text, l))
            });
            (w.message.clone(), lines)
        })
        .or_else(|| {
            let promoted: std::collections::BTreeSet<&str> = warnings
                .iter()
                .filter(|w| w.level == frontend::Level::Error)
                .map(|w| w.rule)
                .collect();
            (!promoted.is_empty()).then(|| {
                let rules: Vec<&str> = promoted.into_iter().collect();
                (
                    format!("lint violation found for rules: {}", rules.join(", ")),
                    None,
                )
            })
        });
    Report { warnings, error }
}

/// buildx's text of a check: a count line, each warning (`WARNING: Rule - URL`, the
/// message, the snippet), or `Check complete, no warnings found.` Returns the stdout text
/// and, for a build error, the stderr text (its message and snippet).
fn render(file: &str, text: &str, r: &Report<'_>) -> (String, Option<String>) {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = String::new();
    match r.warnings.len() {
        0 => {}
        1 => out.push_str("Check complete, 1 warning has been found!\n"),
        n => out.push_str(&format!("Check complete, {n} warnings have been found!\n")),
    }
    for w in &r.warnings {
        out.push_str(&format!("\nWARNING: {}", w.rule));
        if let Some(url) = frontend::check::rule_url(w.rule) {
            out.push_str(&format!(" - {url}"));
        }
        out.push_str(&format!("\n{}\n", w.message));
        if let Some(s) = w.span {
            let l = s.line as usize;
            out.push_str(&snippet(
                file,
                &lines,
                l,
                crate::build::instruction_end(text, l),
            ));
        }
    }
    let err = match &r.error {
        Some((message, at)) => {
            if !r.warnings.is_empty() {
                out.push('\n');
            }
            let mut e = format!("{message}\n");
            if let Some((start, end)) = at {
                e.push_str(&snippet(file, &lines, *start, *end));
            }
            Some(e)
        }
        None => {
            if r.warnings.is_empty() {
                out.push_str("Check complete, no warnings found.\n");
            }
            None
        }
    };
    (out, err)
}

/// BuildKit's lint `result.json` (what `--call check,format=json` prints): the warnings
/// with rule, description, documentation URL, message and lines, the Dockerfile, and the
/// build error. (BuildKit's source also carries the LLB definition of the Dockerfile's
/// source, which kiln does not have.)
fn json(file: &str, text: &str, r: &Report<'_>) -> String {
    use crate::build::GoJson;
    let location = |line: usize| crate::build::location(text, line);
    let warnings: Vec<GoJson> = r
        .warnings
        .iter()
        .map(|w| {
            let mut o = vec![("ruleName", w.rule.into())];
            if let Some(d) = frontend::check::rule_description(w.rule) {
                o.push(("description", d.into()));
            }
            if let Some(u) = frontend::check::rule_url(w.rule) {
                o.push(("url", u.into()));
            }
            o.push(("detail", w.message.as_str().into()));
            if let Some(s) = w.span {
                o.push(("location", location(s.line as usize)));
            }
            GoJson::Obj(o)
        })
        .collect();
    // Go's nil slice when there is none.
    let warnings = match warnings.is_empty() {
        true => GoJson::Null,
        false => GoJson::Arr(warnings),
    };
    let mut v = vec![
        ("warnings", warnings),
        (
            "sources",
            GoJson::Arr(vec![crate::build::source_info(file, text)]),
        ),
    ];
    if let Some((message, at)) = &r.error {
        v.push((
            "buildError",
            GoJson::Obj(vec![
                ("message", message.as_str().into()),
                (
                    "location",
                    at.map_or(GoJson::Obj(Vec::new()), |(l, _)| location(l)),
                ),
            ]),
        ));
    }
    GoJson::Obj(v).indent()
}

/// Checks `text` under `opts` and prints buildx's `--call check` output: the warnings on
/// stdout, a build error on stderr. The status is 1 when something was found (BuildKit's
/// status code; 0 with `ignorestatus=true`) and 1 on a build error.
pub fn run(
    text: &str,
    opts: &frontend::BuildOptions,
    context: &std::path::Path,
    dockerignore: &str,
    call: crate::build::Call,
) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    let file = &opts.dockerfile_name;
    let findings = match frontend::parse(text) {
        Ok(df) => {
            let store = crate::kiln_root()
                .ok()
                .filter(|r| r.is_dir())
                .and_then(|r| cache::store::Store::open(r).ok());
            let base_env = |reference: &str, p: Option<&cache::oci::Platform>| {
                base_env(store.as_ref(), reference, p.unwrap_or(&opts.platform))
            };
            let mut findings = frontend::check_with_bases(&df, opts, &base_env);
            findings.extend(copy_sources(&df, opts, context, dockerignore));
            // BuildKit's order of finding them (its JSON keeps it), by line within a phase.
            findings.sort_by_key(|w| (phase(w.rule), w.span.map(|s| s.line)));
            findings
        }
        Err(e) => vec![frontend::Warning {
            rule: "ParseError",
            // BuildKit's instruction parser's words.
            message: match e.span() {
                Some(s) => format!("dockerfile parse error on line {}: {}", s.line, e.message()),
                None => e.message(),
            },
            span: e.span(),
            level: frontend::Level::Error,
        }],
    };
    let mut r = report(&findings, text);
    if !call.json {
        // buildx sorts by line to print (stable for the few findings of a Dockerfile).
        r.warnings.sort_by_key(|w| w.span.map(|s| s.line));
    }
    let mut stdout = std::io::stdout().lock();
    let err = if call.json {
        writeln!(stdout, "{}", json(file, text, &r))?;
        r.error.as_ref().map(|(m, _)| format!("{m}\n"))
    } else {
        let (out, err) = render(file, text, &r);
        stdout.write_all(out.as_bytes())?;
        err
    };
    stdout.flush()?;
    if let Some(e) = err {
        let _ = writeln!(std::io::stderr().lock(), "ERROR: {e}");
        return Ok(ExitCode::from(1));
    }
    Ok(if r.warnings.is_empty() || call.ignore_status {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Reads `kiln build --secret` values: `id=x,src=FILE` (or `source=`), `id=x,env=VAR`, or
/// `id=x` alone (the environment variable `x`, as buildx does). `type=file|env` is accepted.
pub fn secrets(args: &[String]) -> anyhow::Result<solver::mounts::Secrets> {
    let mut out = std::collections::BTreeMap::new();
    for a in args {
        let (mut id, mut src, mut env) = (None, None, None);
        for kv in a.split(',') {
            match kv.split_once('=') {
                Some(("id", v)) => id = Some(v.to_owned()),
                Some(("src" | "source", v)) => src = Some(v.to_owned()),
                Some(("env", v)) => env = Some(v.to_owned()),
                Some(("type", "file" | "env")) => {}
                _ => anyhow::bail!("--secret {a:?}: unknown key in {kv:?} (id=, src=, env=)"),
            }
        }
        let id = id
            .or_else(|| src.clone())
            .or_else(|| env.clone())
            .ok_or_else(|| anyhow::anyhow!("--secret {a:?}: id= is missing"))?;
        let content = match (src, env) {
            (Some(f), _) => std::fs::read(&f)
                .map_err(|e| anyhow::anyhow!("--secret id={id}: reading {f}: {e}"))?,
            (None, Some(v)) => std::env::var_os(&v)
                .ok_or_else(|| anyhow::anyhow!("--secret id={id}: ${v} is not set"))?
                .into_encoded_bytes(),
            (None, None) => std::env::var_os(&id)
                .ok_or_else(|| anyhow::anyhow!("--secret id={id}: give src=FILE or env=VAR"))?
                .into_encoded_bytes(),
        };
        out.insert(id, content);
    }
    Ok(solver::mounts::Secrets(out))
}

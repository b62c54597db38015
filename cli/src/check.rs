//! `kiln build --check`: parse and lower the Dockerfile without building (no store, no base
//! images), print every finding as `Dockerfile:LINE:COL: [rule] message`. Also the parsing
//! of `kiln build --secret`.

use std::io::Write as _;

/// One printed line of `--check`.
fn line(file: &str, span: Option<frontend::Span>, rule: &str, message: &str) -> String {
    match span {
        Some(s) => format!("{file}:{}:{}: [{rule}] {message}", s.line, s.column),
        None => format!("{file}: [{rule}] {message}"),
    }
}

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

/// Checks `text` under `opts`; prints the findings on stdout and fails if one is an error.
pub fn run(
    text: &str,
    opts: &frontend::BuildOptions,
    context: &std::path::Path,
    dockerignore: &str,
) -> anyhow::Result<()> {
    let file = &opts.dockerfile_name;
    let mut out = std::io::stdout().lock();
    let df = match frontend::parse(text) {
        Ok(df) => df,
        Err(e) => {
            let _ = writeln!(out, "{}", line(file, e.span(), "ParseError", &e.message()));
            if let Some(h) = e.hint() {
                let _ = writeln!(out, "  hint: {h}");
            }
            anyhow::bail!("{file}: check failed: 1 error");
        }
    };
    let mut findings = frontend::check(&df, opts);
    findings.extend(copy_sources(&df, opts, context, dockerignore));
    findings.sort_by_key(|w| w.span.map(|s| (s.line, s.column)));
    let errors = findings
        .iter()
        .filter(|w| w.level == frontend::Level::Error)
        .count();
    for w in &findings {
        let _ = writeln!(out, "{}", line(file, w.span, w.rule, &w.message));
    }
    if errors > 0 {
        anyhow::bail!(
            "{file}: check failed: {errors} error(s), {} warning(s)",
            findings.len() - errors
        );
    }
    let _ = writeln!(out, "{file}: check complete, {} warning(s)", findings.len());
    Ok(())
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

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

/// Checks `text` under `opts`; prints the findings on stdout and fails if one is an error.
pub fn run(text: &str, opts: &frontend::BuildOptions) -> anyhow::Result<()> {
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
    let findings = frontend::check(&df, opts);
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

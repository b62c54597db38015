//! `kiln build --check`: parse and lower the Dockerfile without building (no store, no base
//! images), print every finding as `Dockerfile:LINE:COL: [rule] message`.

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

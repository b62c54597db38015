//! Golden parse tests for our own tricky cases (`testdata/parse/<case>/Dockerfile` ->
//! `ast.snap`): BuildKit's dump format plus spans and heredocs. The expected trees were
//! cross-checked by hand against BuildKit's parser (the `dockerfile` PyPI package, which
//! wraps it). `UPDATE_GOLDEN=1` rewrites the snapshots.

use std::fmt::Write as _;
use std::path::PathBuf;

fn render(src: &str) -> String {
    match frontend::ast::parse_ast(src) {
        Err(e) => format!("error: {e}\n"),
        Ok(ast) => {
            let mut out = String::new();
            let _ = writeln!(
                out,
                "directives: {:?} escape={:?}",
                ast.directives, ast.escape
            );
            for n in &ast.nodes {
                let _ = writeln!(
                    out,
                    "{}:{}-{} ({})",
                    n.span.line,
                    n.span.column,
                    n.end_line,
                    n.dump()
                );
                for f in &n.flags {
                    let _ = writeln!(
                        out,
                        "  flag {:?} at {}:{}",
                        f.text, f.span.line, f.span.column
                    );
                }
                for w in n.words() {
                    let _ = writeln!(
                        out,
                        "  word {:?} at {}:{}",
                        w.value, w.span.line, w.span.column
                    );
                }
                for h in &n.heredocs {
                    let _ = writeln!(
                        out,
                        "  heredoc {:?} fd={} expand={} chomp={} content={:?}",
                        h.name, h.fd, h.expand, h.chomp, h.content
                    );
                }
            }
            for w in &ast.warnings {
                let _ = writeln!(
                    out,
                    "warning {}:{}: {}",
                    w.span.line, w.span.column, w.message
                );
            }
            out
        }
    }
}

#[test]
fn parse_goldens_match() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/parse");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    // A run that rewrites its goldens proves nothing: under CI it writes them, then fails.
    let ci = std::env::var("CI").as_deref() == Ok("true")
        || std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1");
    let mut rewritten = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("testdata")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 20, "too few golden cases");
    let mut failures = Vec::new();
    for dir in dirs {
        let src = std::fs::read_to_string(dir.join("Dockerfile")).expect("Dockerfile");
        let got = render(&src);
        if update {
            if std::fs::read_to_string(dir.join("ast.snap"))
                .ok()
                .as_deref()
                != Some(got.as_str())
            {
                rewritten.push(format!("{}/ast.snap", dir.display()));
            }
            std::fs::write(dir.join("ast.snap"), &got).expect("write snap");
            continue;
        }
        match std::fs::read_to_string(dir.join("ast.snap")) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{}/ast.snap differs:\n--- want\n{want}--- got\n{got}",
                dir.display()
            )),
            Err(_) => failures.push(format!(
                "{}: no ast.snap; run with UPDATE_GOLDEN=1",
                dir.display()
            )),
        }
    }
    assert!(
        !(update && ci),
        "UPDATE_GOLDEN is set in a CI run (CI=true or REQUIRE_PRIVILEGED_TESTS=1): the goldens \
         were rewritten ({} changed: {rewritten:?}) and this run verifies nothing; unset it",
        rewritten.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

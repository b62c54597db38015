//! Prints the parse tree of a Dockerfile read from stdin as JSON lines (one per
//! instruction): keyword, flags, args, json, lines and heredocs. Handy for comparing with
//! other parsers: `cargo run -p kiln-frontend --example dump_ast < Dockerfile`.

use std::io::Read as _;

fn main() {
    let mut src = String::new();
    if std::io::stdin().read_to_string(&mut src).is_err() {
        std::process::exit(2);
    }
    match frontend::ast::parse_ast(&src) {
        Ok(ast) => {
            // The (key, value, separator) triples of ENV/LABEL are shown as (key, value).
            let pairs = |kw: &str, w: Vec<String>| -> Vec<String> {
                if matches!(kw.to_ascii_lowercase().as_str(), "env" | "label") {
                    w.chunks(3)
                        .flat_map(|c| c.iter().take(2).cloned())
                        .collect()
                } else {
                    w
                }
            };
            for n in &ast.nodes {
                let (keyword, words) = match &n.args {
                    frontend::ast::Args::Sub(c) => (
                        n.keyword.clone(),
                        std::iter::once(c.keyword.to_uppercase())
                            .chain(pairs(
                                &c.keyword,
                                c.words().iter().map(|w| w.value.clone()).collect(),
                            ))
                            .collect::<Vec<_>>(),
                    ),
                    frontend::ast::Args::Words(w) => (
                        n.keyword.clone(),
                        pairs(&n.keyword, w.iter().map(|w| w.value.clone()).collect()),
                    ),
                };
                let v = serde_json::json!({
                    "cmd": keyword.to_uppercase(),
                    "flags": n.flags.iter().map(|f| f.text.clone()).collect::<Vec<_>>(),
                    "value": words,
                    "json": n.json,
                    "start": n.span.line,
                    "end": n.end_line,
                    "heredocs": n.heredocs.iter().map(|h| (h.name.clone(), h.content.clone())).collect::<Vec<_>>(),
                });
                println!("{v}");
            }
        }
        Err(e) => println!("{{\"error\": {:?}}}", e.message()),
    }
}

//! `--call METHOD[,format=json][,ignorestatus=BOOL]`, as buildx parses it, and the
//! `--call targets` listing, printed as buildx prints BuildKit's `frontend.targets` result.
//! (The outline is in `outline.rs`, the check in `crate::check`.)

use anyhow::bail;

/// What `--call` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Build (the default).
    Build,
    /// Lint (`check`, buildx's alias of BuildKit's `lint`).
    Check,
    /// List the stages.
    Targets,
    /// What the target takes.
    Outline,
}

/// A parsed `--call` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// The method.
    pub method: Method,
    /// `format=json`: print BuildKit's `result.json` instead of the text.
    pub json: bool,
    /// `ignorestatus=true`: exit 0 even when the check found something.
    pub ignore_status: bool,
}

/// Parses `--call` as buildx does: comma-separated fields, one bare method name (`check`
/// and `lint` are one), `format=` and `ignorestatus=`.
///
/// Fails in buildx's words on an unknown field, a second name or a bad boolean, and names
/// the methods kiln knows for any other method.
pub fn parse(s: &str) -> anyhow::Result<Call> {
    let mut name: Option<&str> = None;
    let mut call = Call {
        method: Method::Build,
        json: false,
        ignore_status: false,
    };
    for field in s.split(',') {
        match field.split_once('=') {
            Some(("format", v)) => call.json = v == "json",
            Some(("ignorestatus", v)) => {
                // Go's strconv.ParseBool.
                call.ignore_status = match v {
                    "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
                    "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
                    _ => bail!("invalid ignorestatus print value: {v}"),
                }
            }
            Some(_) => bail!("invalid print field: {field}"),
            None if name.is_some() => bail!("invalid print value: {s}"),
            None => name = Some(field),
        }
    }
    call.method = match name.unwrap_or("build") {
        "build" | "" => Method::Build,
        "check" | "lint" => Method::Check,
        "targets" => Method::Targets,
        "outline" => Method::Outline,
        other => {
            bail!("--call {other}: unknown method (kiln knows build, check, targets and outline)")
        }
    };
    Ok(call)
}

/// Rows aligned as Go's `text/tabwriter` (minwidth 0, the given `padding`, padded with
/// spaces) aligns cells ended by a tab: every cell but a row's last is padded to its
/// column's widest cell plus `padding`; the last cell is written as it is.
pub fn table(rows: &[Vec<String>], padding: usize) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols.saturating_sub(1))
        .map(|c| {
            rows.iter()
                .filter(|r| c + 1 < r.len())
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
                + padding
        })
        .collect();
    let mut s = String::new();
    for r in rows {
        for (c, cell) in r.iter().enumerate() {
            s.push_str(cell);
            if c + 1 < r.len() {
                s.extend(std::iter::repeat_n(' ', widths[c] - cell.chars().count()));
            }
        }
        s.push('\n');
    }
    s
}

/// One stage of `--call targets`.
struct Target<'a> {
    stage: &'a frontend::Stage,
    name: String,
    description: String,
    default: bool,
}

fn targets<'a>(df: &'a frontend::Dockerfile, source: &str) -> Vec<Target<'a>> {
    let lines: Vec<&str> = source.lines().collect();
    let last = df.stages.len().saturating_sub(1);
    df.stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = s.name.clone().unwrap_or_default();
            Target {
                description: super::runopts::stage_comment(&lines, s.span.line as usize, &name),
                name,
                stage: s,
                default: i == last,
            }
        })
        .collect()
}

/// The text of `--call targets`: BuildKit's table (tabwriter, padding 1) with its
/// `TARGET` and `DESCRIPTION` headings; the last stage is the default, shown as
/// `NAME (default)` or `(default)`; a description is the comment right above a stage's FROM
/// that starts with the stage's name (`# build compiles the app`).
pub fn targets_text(df: &frontend::Dockerfile, source: &str) -> String {
    let mut rows = vec![vec!["TARGET".to_owned(), "DESCRIPTION".to_owned()]];
    for t in targets(df, source) {
        let shown = match (t.name.is_empty(), t.default) {
            (true, true) => "(default)".to_owned(),
            (false, true) => format!("{} (default)", t.name),
            _ => t.name,
        };
        rows.push(vec![shown, t.description]);
    }
    table(&rows, 1)
}

/// A JSON value with its object keys in the order written, for Go's encoder's order (the
/// struct's field order), which `serde_json`'s sorted maps do not keep.
#[derive(Debug, Clone, PartialEq)]
pub enum GoJson {
    /// `null` (Go's nil slice).
    Null,
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// An array.
    Arr(Vec<GoJson>),
    /// An object, keys in order.
    Obj(Vec<(&'static str, GoJson)>),
}

impl From<&str> for GoJson {
    fn from(s: &str) -> GoJson {
        GoJson::Str(s.to_owned())
    }
}

impl From<String> for GoJson {
    fn from(s: String) -> GoJson {
        GoJson::Str(s)
    }
}

impl GoJson {
    /// As Go's `json.MarshalIndent(v, "", "  ")` writes it: two-space indent, `[]` and `{}`
    /// for empty ones, and Go's string escapes (`<`, `>`, `&`, U+2028 and U+2029 as `\uXXXX`).
    pub fn indent(&self) -> String {
        let mut s = String::new();
        self.write(&mut s, 0);
        s
    }

    fn write(&self, s: &mut String, depth: usize) {
        let pad = |s: &mut String, d: usize| {
            s.push('\n');
            s.extend(std::iter::repeat_n("  ", d));
        };
        match self {
            GoJson::Null => s.push_str("null"),
            GoJson::Str(v) => go_string(s, v),
            GoJson::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
            GoJson::Int(n) => s.push_str(&n.to_string()),
            GoJson::Arr(items) if items.is_empty() => s.push_str("[]"),
            GoJson::Obj(items) if items.is_empty() => s.push_str("{}"),
            GoJson::Arr(items) => {
                s.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    pad(s, depth + 1);
                    v.write(s, depth + 1);
                }
                pad(s, depth);
                s.push(']');
            }
            GoJson::Obj(items) => {
                s.push('{');
                for (i, (k, v)) in items.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    pad(s, depth + 1);
                    go_string(s, k);
                    s.push_str(": ");
                    v.write(s, depth + 1);
                }
                pad(s, depth);
                s.push('}');
            }
        }
    }
}

/// A string as Go's `encoding/json` quotes it.
fn go_string(s: &mut String, v: &str) {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                s.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
}

/// BuildKit's `result.json` of `frontend.targets`: each stage's name, whether it is the
/// default, its description, its base and `--platform` as written and its FROM line; and
/// the Dockerfile as the one source.
pub fn targets_json(df: &frontend::Dockerfile, source: &str) -> String {
    let targets: Vec<GoJson> = targets(df, source)
        .into_iter()
        .map(|t| {
            let mut o = Vec::new();
            if !t.name.is_empty() {
                o.push(("name", t.name.into()));
            }
            if t.default {
                o.push(("default", GoJson::Bool(true)));
            }
            if !t.description.is_empty() {
                o.push(("description", t.description.into()));
            }
            o.push(("base", t.stage.base.as_str().into()));
            if let Some(p) = &t.stage.platform {
                o.push(("platform", p.as_str().into()));
            }
            o.push(("location", location(source, t.stage.span.line as usize)));
            GoJson::Obj(o)
        })
        .collect();
    GoJson::Obj(vec![
        ("targets", GoJson::Arr(targets)),
        ("sources", GoJson::Arr(vec![source_bytes(source)])),
    ])
    .indent()
}

/// A `pb.Location` of source 0 (left out, as Go leaves out a zero) as BuildKit's parser
/// gives an instruction's: one range per line, from `line` (1-based) to the instruction's
/// last line.
pub fn location(source: &str, line: usize) -> GoJson {
    let pos = |l: usize| GoJson::Obj(vec![("line", GoJson::Int(l as i64))]);
    let ranges = (line..=instruction_end(source, line))
        .map(|l| GoJson::Obj(vec![("start", pos(l)), ("end", pos(l))]))
        .collect();
    GoJson::Obj(vec![("ranges", GoJson::Arr(ranges))])
}

/// The last line of the instruction that starts on `line` (1-based): lines ending in the
/// escape character continue it, and comment or blank lines inside it are skipped; a heredoc's
/// body and terminator are part of it.
pub fn instruction_end(source: &str, line: usize) -> usize {
    let escape = if source
        .lines()
        .take_while(|l| l.trim_start().starts_with('#'))
        .any(|l| l.replace(' ', "").eq_ignore_ascii_case("#escape=`"))
    {
        '`'
    } else {
        '\\'
    };
    let lines: Vec<&str> = source.lines().collect();
    let mut end = line;
    while let Some(l) = lines.get(end - 1) {
        if !l.trim_end().ends_with(escape) {
            break;
        }
        // The next line that is not blank or a comment ends or continues it.
        end += 1;
        while lines
            .get(end - 1)
            .is_some_and(|n| n.trim().is_empty() || n.trim_start().starts_with('#'))
        {
            end += 1;
        }
    }
    // A heredoc's body and terminator belong to its instruction (BuildKit's node ends there).
    let heredoc_end = frontend::parse(source).ok().and_then(|df| {
        df.stages
            .iter()
            .flat_map(|s| &s.instructions)
            .find(|i| i.span.line as usize == line)
            .map(|i| i.end_line as usize)
    });
    end.min(lines.len().max(line)).max(heredoc_end.unwrap_or(0))
}

/// The Dockerfile as BuildKit's outline and targets results carry it (Go's `[]byte`:
/// base64).
pub fn source_bytes(source: &str) -> GoJson {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .encode(source)
        .into()
}

/// The Dockerfile as BuildKit's lint result carries it (`pb.SourceInfo`), without the LLB
/// definition of its source that BuildKit adds.
pub fn source_info(file: &str, source: &str) -> GoJson {
    use base64::Engine as _;
    GoJson::Obj(vec![
        ("filename", file.into()),
        (
            "data",
            base64::engine::general_purpose::STANDARD
                .encode(source)
                .into(),
        ),
        ("language", "Dockerfile".into()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_values_parse_as_buildx_reads_them() {
        let c = parse("outline,format=json").expect("valid");
        assert_eq!(
            (c.method, c.json, c.ignore_status),
            (Method::Outline, true, false)
        );
        let c = parse("check,ignorestatus=true").expect("valid");
        assert_eq!((c.method, c.ignore_status), (Method::Check, true));
        assert_eq!(parse("lint").expect("valid").method, Method::Check);
        assert_eq!(parse("build").expect("valid").method, Method::Build);
        assert_eq!(
            parse("outline,targets").expect_err("two names").to_string(),
            "invalid print value: outline,targets"
        );
        assert_eq!(
            parse("outline,x=1").expect_err("field").to_string(),
            "invalid print field: x=1"
        );
    }

    #[test]
    fn tabwriter_pads_all_but_the_last_cell() {
        let rows = vec![
            vec!["BUILD ARG".to_owned(), "VALUE".into(), "DESCRIPTION".into()],
            vec!["A".to_owned(), "".into(), "".into()],
        ];
        assert_eq!(
            table(&rows, 3),
            "BUILD ARG   VALUE   DESCRIPTION\nA                   \n"
        );
    }

    #[test]
    fn json_is_written_as_go_indents_and_escapes_it() {
        let v = GoJson::Obj(vec![
            ("a", "x<y>&\"\\\n\u{1}".into()),
            ("b", GoJson::Arr(vec![])),
            ("c", GoJson::Arr(vec![GoJson::Int(1), GoJson::Bool(true)])),
        ]);
        assert_eq!(
            v.indent(),
            "{\n  \"a\": \"x\\u003cy\\u003e\\u0026\\\"\\\\\\n\\u0001\",\n  \"b\": [],\n  \"c\": [\n    1,\n    true\n  ]\n}"
        );
    }

    #[test]
    fn an_instruction_ends_after_its_continuation_lines() {
        let src = "FROM a\nRUN a \\\n  # c\n\n  b \\\n  c\nCMD x\n";
        assert_eq!(instruction_end(src, 1), 1);
        assert_eq!(instruction_end(src, 2), 6);
        assert_eq!(instruction_end(src, 7), 7);
        let heredoc = "FROM a\nCOPY <<EOT /x\nbody\nEOT\nCMD x\n";
        assert_eq!(instruction_end(heredoc, 2), 4);
    }
}

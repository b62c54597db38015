//! The subset of Go's text/template that `docker inspect -f` and `docker ps --format` users
//! type, evaluated over JSON values: literal text, field paths (`.A.B`, `.`, `$`, `$k`),
//! string literals, the functions `json`, `index`, `join`, `len`, `upper`, `lower`, `println`,
//! `table` (a `ps`/`images` header marker), pipelines (`.A | json`), and
//! `range` (over arrays and maps, optionally `$k, $v :=`), `if`/`else`, closed by `{{end}}`.
//! Values print as Go prints them: strings raw, `map[k:v]` and `[a b]` for containers,
//! `<no value>` for a missing map key.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A template error, naming the action it comes from.
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "template: {}", self.0)
    }
}

impl std::error::Error for Error {}

fn err<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error(msg.into()))
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Vec<Cmd>),
    Range {
        vars: Vec<String>,
        pipe: Vec<Cmd>,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
    If {
        pipe: Vec<Cmd>,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// One command of a pipeline: a function with arguments, or a single operand.
type Cmd = Vec<Arg>;

#[derive(Debug, Clone)]
enum Arg {
    /// `.A.B` (empty path: `.`).
    Field(Vec<String>),
    /// `$name.A.B` (`$` alone: the root).
    Var(String, Vec<String>),
    Str(String),
    Num(serde_json::Number),
    Ident(String),
    /// A parenthesised pipeline, then a field path (`(index .A 0).B`).
    Sub(Vec<Cmd>, Vec<String>),
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
}

impl Template {
    /// Parses `src`.
    pub fn parse(src: &str) -> Result<Template, Error> {
        let mut toks = Vec::new();
        let mut rest = src;
        while let Some(i) = rest.find("{{") {
            let mut text = &rest[..i];
            let after = &rest[i + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| Error(format!("unclosed action in {src:?}")))?;
            let mut inner = &after[..end];
            // `{{- ` and ` -}}` trim the surrounding space, as in Go.
            if let Some(s) = inner.strip_prefix("- ") {
                text = text.trim_end();
                inner = s;
            }
            let mut rest_after = &after[end + 2..];
            if let Some(s) = inner.strip_suffix(" -") {
                inner = s;
                rest_after = rest_after.trim_start();
            }
            if !text.is_empty() {
                toks.push(Tok::Text(text.to_owned()));
            }
            toks.push(Tok::Action(inner.trim().to_owned()));
            rest = rest_after;
        }
        if !rest.is_empty() {
            toks.push(Tok::Text(rest.to_owned()));
        }
        let mut it = toks.into_iter();
        let (nodes, stop) = parse_list(&mut it)?;
        if let Some(s) = stop {
            return err(format!("unexpected {{{{{s}}}}}"));
        }
        Ok(Template { nodes })
    }

    /// Renders the template with `.` = `data`.
    pub fn render(&self, data: &Value) -> Result<String, Error> {
        let mut out = String::new();
        let mut scope = Scope {
            vars: vec![("$".to_owned(), data.clone())],
        };
        exec(&self.nodes, data, &mut scope, &mut out)?;
        Ok(out)
    }
}

enum Tok {
    Text(String),
    Action(String),
}

/// Parses nodes until `{{end}}`/`{{else}}` (returned) or the end of input (None).
fn parse_list(it: &mut impl Iterator<Item = Tok>) -> Result<(Vec<Node>, Option<String>), Error> {
    let mut nodes = Vec::new();
    while let Some(t) = it.next() {
        match t {
            Tok::Text(s) => nodes.push(Node::Text(s)),
            Tok::Action(a) if a.starts_with("/*") => {}
            Tok::Action(a) if a == "end" || a == "else" => return Ok((nodes, Some(a))),
            Tok::Action(a) => {
                let (word, rest) = a.split_once(char::is_whitespace).unwrap_or((&a, ""));
                match word {
                    "range" => {
                        let (vars, expr) = match rest.split_once(":=") {
                            Some((v, e)) => (
                                v.split(',').map(|s| s.trim().to_owned()).collect(),
                                e.trim(),
                            ),
                            None => (Vec::new(), rest.trim()),
                        };
                        let pipe = parse_pipeline(expr)?;
                        let (body, otherwise) = parse_block(it, "range")?;
                        nodes.push(Node::Range {
                            vars,
                            pipe,
                            body,
                            otherwise,
                        });
                    }
                    "if" => {
                        let pipe = parse_pipeline(rest.trim())?;
                        let (body, otherwise) = parse_block(it, "if")?;
                        nodes.push(Node::If {
                            pipe,
                            body,
                            otherwise,
                        });
                    }
                    _ => nodes.push(Node::Action(parse_pipeline(&a)?)),
                }
            }
        }
    }
    Ok((nodes, None))
}

/// The body and optional `else` part of a block, through its `{{end}}`.
fn parse_block(
    it: &mut impl Iterator<Item = Tok>,
    what: &str,
) -> Result<(Vec<Node>, Vec<Node>), Error> {
    let (body, stop) = parse_list(it)?;
    match stop.as_deref() {
        Some("end") => Ok((body, Vec::new())),
        Some("else") => match parse_list(it)? {
            (otherwise, Some(s)) if s == "end" => Ok((body, otherwise)),
            _ => err(format!("{{{{{what}}}}}: missing {{{{end}}}}")),
        },
        _ => err(format!("{{{{{what}}}}}: missing {{{{end}}}}")),
    }
}

fn parse_pipeline(src: &str) -> Result<Vec<Cmd>, Error> {
    let mut chars = src.chars().peekable();
    let pipe = parse_pipe_chars(&mut chars, src)?;
    if chars.next().is_some() {
        return err(format!("unexpected ')' in {src:?}"));
    }
    Ok(pipe)
}

fn parse_pipe_chars(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    src: &str,
) -> Result<Vec<Cmd>, Error> {
    let mut pipe = vec![Vec::new()];
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        let cur = pipe.last_mut().expect("a pipeline always has a command");
        match c {
            ')' => break,
            '|' => {
                chars.next();
                pipe.push(Vec::new());
            }
            '(' => {
                chars.next();
                let sub = parse_pipe_chars(chars, src)?;
                if chars.next() != Some(')') {
                    return err(format!("unclosed '(' in {src:?}"));
                }
                let mut path = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '|' | '(' | ')') {
                        break;
                    }
                    path.push(c);
                    chars.next();
                }
                let fields = match parse_word(&path)? {
                    _ if path.is_empty() => Vec::new(),
                    Arg::Field(f) if !f.is_empty() => f,
                    _ => return err(format!("unexpected {path:?} after ')' in {src:?}")),
                };
                cur.push(Arg::Sub(sub, fields));
            }
            '"' | '`' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return err(format!("unterminated string in {src:?}")),
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(o) => s.push(o),
                            None => return err(format!("unterminated string in {src:?}")),
                        },
                        Some(o) => s.push(o),
                    }
                }
                cur.push(Arg::Str(s));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '|' | '(' | ')') {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                cur.push(parse_word(&word)?);
            }
        }
    }
    if pipe.iter().any(Vec::is_empty) {
        return err(format!("empty command in {src:?}"));
    }
    Ok(pipe)
}

fn parse_word(w: &str) -> Result<Arg, Error> {
    if let Some(path) = w.strip_prefix('.') {
        let fields = if path.is_empty() {
            Vec::new()
        } else {
            path.split('.').map(str::to_owned).collect()
        };
        if fields.iter().any(String::is_empty) {
            return err(format!("bad field path {w:?}"));
        }
        return Ok(Arg::Field(fields));
    }
    if w.starts_with('$') {
        let mut parts = w.split('.');
        let var = parts.next().unwrap_or("$").to_owned();
        return Ok(Arg::Var(var, parts.map(str::to_owned).collect()));
    }
    if let Ok(n) = w.parse::<i64>() {
        return Ok(Arg::Num(n.into()));
    }
    if let Some(n) = w.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
        return Ok(Arg::Num(n));
    }
    if w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Ok(Arg::Ident(w.to_owned()));
    }
    err(format!("unexpected {w:?}"))
}

struct Scope {
    vars: Vec<(String, Value)>,
}

impl Scope {
    fn get(&self, name: &str) -> Result<&Value, Error> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| Error(format!("undefined variable {name:?}")))
    }
}

fn exec(nodes: &[Node], dot: &Value, scope: &mut Scope, out: &mut String) -> Result<(), Error> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Action(p) => {
                let v = eval_pipe(p, dot, scope)?;
                print(&v, out);
            }
            Node::If {
                pipe,
                body,
                otherwise,
            } => {
                let v = eval_pipe(pipe, dot, scope)?;
                exec(if truthy(&v) { body } else { otherwise }, dot, scope, out)?;
            }
            Node::Range {
                vars,
                pipe,
                body,
                otherwise,
            } => {
                let v = eval_pipe(pipe, dot, scope)?;
                let items: Vec<(Value, Value)> = match &v {
                    Value::Array(a) => a
                        .iter()
                        .enumerate()
                        .map(|(i, x)| (Value::from(i), x.clone()))
                        .collect(),
                    // Go ranges over a map in key order.
                    Value::Object(m) => m
                        .iter()
                        .collect::<BTreeMap<_, _>>()
                        .into_iter()
                        .map(|(k, x)| (Value::String(k.clone()), x.clone()))
                        .collect(),
                    Value::Null => Vec::new(),
                    o => return err(format!("range can't iterate over {}", go_string(o))),
                };
                if items.is_empty() {
                    exec(otherwise, dot, scope, out)?;
                }
                for (k, x) in items {
                    let depth = scope.vars.len();
                    match vars.as_slice() {
                        [] => {}
                        [v] => scope.vars.push((v.clone(), x.clone())),
                        [kn, vn] => {
                            scope.vars.push((kn.clone(), k));
                            scope.vars.push((vn.clone(), x.clone()));
                        }
                        _ => return err("range takes at most two variables"),
                    }
                    let r = exec(body, &x, scope, out);
                    scope.vars.truncate(depth);
                    r?;
                }
            }
        }
    }
    Ok(())
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

fn eval_pipe(pipe: &[Cmd], dot: &Value, scope: &Scope) -> Result<Value, Error> {
    let mut prev: Option<Value> = None;
    for cmd in pipe {
        prev = Some(eval_cmd(cmd, dot, scope, prev.take())?);
    }
    Ok(prev.unwrap_or(Value::Null))
}

fn field(mut v: Value, path: &[String]) -> Result<Value, Error> {
    for f in path {
        v = match v {
            Value::Object(mut m) => match m.remove(f) {
                Some(x) => x,
                // docker runs its templates with missingkey=error.
                None => return err(format!("map has no entry for key {f:?}")),
            },
            Value::Null => return Ok(Value::Null),
            o => return err(format!("can't evaluate field {f} in {}", go_string(&o))),
        };
    }
    Ok(v)
}

fn eval_arg(a: &Arg, dot: &Value, scope: &Scope) -> Result<Value, Error> {
    match a {
        Arg::Field(p) => field(dot.clone(), p),
        Arg::Var(n, p) => field(scope.get(n)?.clone(), p),
        Arg::Str(s) => Ok(Value::String(s.clone())),
        Arg::Num(n) => Ok(Value::Number(n.clone())),
        Arg::Sub(p, path) => field(eval_pipe(p, dot, scope)?, path),
        Arg::Ident(i) => eval_func(i, Vec::new()),
    }
}

fn eval_cmd(cmd: &Cmd, dot: &Value, scope: &Scope, piped: Option<Value>) -> Result<Value, Error> {
    let (first, rest) = cmd.split_first().expect("commands are never empty");
    match first {
        Arg::Ident(name) => {
            let mut args = rest
                .iter()
                .map(|a| eval_arg(a, dot, scope))
                .collect::<Result<Vec<_>, _>>()?;
            args.extend(piped);
            eval_func(name, args)
        }
        _ if rest.is_empty() && piped.is_none() => eval_arg(first, dot, scope),
        _ => err("only functions take arguments"),
    }
}

fn eval_func(name: &str, args: Vec<Value>) -> Result<Value, Error> {
    let one = |args: &[Value]| -> Result<Value, Error> {
        match args {
            [v] => Ok(v.clone()),
            _ => err(format!("{name} takes one argument, got {}", args.len())),
        }
    };
    match name {
        "json" => Ok(Value::String(
            serde_json::to_string(&one(&args)?).map_err(|e| Error(e.to_string()))?,
        )),
        "upper" => Ok(Value::String(go_string(&one(&args)?).to_uppercase())),
        "lower" => Ok(Value::String(go_string(&one(&args)?).to_lowercase())),
        "len" => match one(&args)? {
            Value::Array(a) => Ok(Value::from(a.len())),
            Value::Object(m) => Ok(Value::from(m.len())),
            Value::String(s) => Ok(Value::from(s.len())),
            o => err(format!("len of {}", go_string(&o))),
        },
        "println" => {
            let parts: Vec<String> = args.iter().map(go_string).collect();
            Ok(Value::String(parts.join(" ") + "\n"))
        }
        "join" => match args.as_slice() {
            [Value::Array(a), Value::String(sep)] => Ok(Value::String(
                a.iter().map(go_string).collect::<Vec<_>>().join(sep),
            )),
            _ => err("join takes a list and a separator"),
        },
        "index" => {
            let mut it = args.into_iter();
            let mut v = it.next().ok_or_else(|| Error("index of nothing".into()))?;
            for k in it {
                v = match (v, &k) {
                    (Value::Object(mut m), Value::String(s)) => m.remove(s).unwrap_or(Value::Null),
                    (Value::Array(a), Value::Number(n)) => {
                        let i = n.as_u64().and_then(|i| usize::try_from(i).ok());
                        match i.and_then(|i| a.get(i)) {
                            Some(x) => x.clone(),
                            None => return err(format!("index out of range: {n}")),
                        }
                    }
                    (Value::Null, _) => Value::Null,
                    (o, k) => {
                        return err(format!("can't index {} with {}", go_string(&o), k));
                    }
                };
            }
            Ok(v)
        }
        // `table` only marks a header row; the caller strips it.
        "table" => Ok(args.into_iter().next().unwrap_or(Value::Null)),
        _ => err(format!("function {name:?} not defined")),
    }
}

fn print(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("<no value>"),
        o => out.push_str(&go_string(o)),
    }
}

/// A value as Go's fmt prints it with `%v`.
fn go_string(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".to_owned(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
            _ => n.to_string(),
        },
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().map(go_string).collect();
            format!("[{}]", parts.join(" "))
        }
        Value::Object(m) => {
            let mut s = String::from("map[");
            for (i, (k, x)) in m.iter().collect::<BTreeMap<_, _>>().into_iter().enumerate() {
                if i > 0 {
                    s.push(' ');
                }
                let _ = write!(s, "{k}:{}", go_string(x));
            }
            s.push(']');
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(t: &str, v: &Value) -> String {
        Template::parse(t).expect(t).render(v).expect(t)
    }

    #[test]
    fn field_paths_functions_and_ranges_render_as_go_does() {
        let v = json!({
            "Id": "abc",
            "State": { "Running": true, "Pid": 42 },
            "NetworkSettings": {
                "IPAddress": "10.88.0.2",
                "Networks": { "kiln0": { "IPAddress": "10.88.0.2" }, "b": { "IPAddress": "10.89.0.3" } },
                "Ports": { "80/tcp": [{ "HostIp": "0.0.0.0", "HostPort": "8080" }] },
            },
            "Config": { "Env": ["A=1", "B=2"], "Labels": null },
        });
        assert_eq!(r("{{.NetworkSettings.IPAddress}}", &v), "10.88.0.2");
        assert_eq!(r("id={{.Id}} pid={{.State.Pid}}", &v), "id=abc pid=42");
        assert_eq!(r("{{json .Config.Env}}", &v), r#"["A=1","B=2"]"#);
        assert_eq!(r("{{.Config.Env | json}}", &v), r#"["A=1","B=2"]"#);
        assert_eq!(
            r(
                r#"{{(index (index .NetworkSettings.Ports "80/tcp") 0).HostPort}}"#,
                &v
            ),
            "8080"
        );
        assert_eq!(
            r(
                "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                &v
            ),
            // Go ranges over a map in key order: `b` before `kiln0`.
            "10.89.0.3 10.88.0.2 "
        );
        assert_eq!(
            r(
                "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}};{{end}}",
                &v
            ),
            "b=10.89.0.3;kiln0=10.88.0.2;"
        );
        assert_eq!(r("{{range .Config.Env}}[{{.}}]{{end}}", &v), "[A=1][B=2]");
        assert_eq!(r(r#"{{join .Config.Env ","}}"#, &v), "A=1,B=2");
        assert_eq!(r("{{.Config.Env}}", &v), "[A=1 B=2]");
        assert_eq!(r("{{.State}}", &v), "map[Pid:42 Running:true]");
        assert_eq!(r("{{.Config.Labels}}", &v), "<no value>");
        assert_eq!(r("{{if .State.Running}}up{{else}}down{{end}}", &v), "up");
        assert_eq!(r("{{range .Config.Labels}}x{{end}}", &v), "");
        assert_eq!(r("{{len .Config.Env}} {{upper .Id}}", &v), "2 ABC");
        assert_eq!(r("a {{- \" b \" -}} c", &v), "a b c");
    }

    #[test]
    fn malformed_templates_are_errors() {
        for bad in [
            "{{.A",
            "{{range .A}}x",
            "{{end}}",
            "{{nosuch .A}}",
            "{{.A..B}}",
            r#"{{"open}}"#,
        ] {
            let res = Template::parse(bad).and_then(|t| t.render(&json!({"A": [1]})));
            assert!(res.is_err(), "{bad} parsed: {res:?}");
        }
        let t = Template::parse("{{.A.B}}").expect("parses");
        assert!(t.render(&json!({"A": "s"})).is_err());
        let t = Template::parse("{{.Nope}}").expect("parses");
        let e = t.render(&json!({"A": 1})).expect_err("missing key");
        assert!(e.to_string().contains("no entry for key \"Nope\""), "{e}");
    }
}

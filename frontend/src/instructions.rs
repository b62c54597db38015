//! Typed instructions: the parse tree of [`crate::ast`] checked and turned into stages.
//!
//! Arguments stay as written (unexpanded): which words expand, and with which variables,
//! depends on the build (ARG values, the stage's ENV), so [`crate::lower`] does it.

use crate::ast::{self, Args, Directives, Heredoc, Node, ParseWarning, RawFlag};
use crate::error::{Error, ErrorKind, suggest};
use cache::oci::HealthConfig;
use graph::Span;

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq)]
pub struct Dockerfile {
    /// Parser directives.
    pub directives: Directives,
    /// The active escape character.
    pub escape: char,
    /// ARGs before the first FROM.
    pub meta_args: Vec<Instruction>,
    /// Build stages in order.
    pub stages: Vec<Stage>,
    /// Parser warnings (empty continuation lines).
    pub warnings: Vec<ParseWarning>,
    /// The source text, for quoting lines in errors.
    pub source: String,
}

/// One `FROM` and the instructions after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// Position among the stages, from 0.
    pub index: usize,
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    /// `AS name` as written.
    pub name_as_written: Option<String>,
    /// The base (image reference, stage name, or `scratch`), unexpanded.
    pub base: String,
    /// `--platform`, unexpanded.
    pub platform: Option<String>,
    /// Where FROM starts.
    pub span: Span,
    /// Where the base name starts.
    pub base_span: Span,
    /// Where `--platform` starts.
    pub platform_span: Option<Span>,
    /// The FROM line as written.
    pub original: String,
    /// The instructions after FROM.
    pub instructions: Vec<Instruction>,
}

/// One instruction with its location.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    /// What it says.
    pub command: Command,
    /// Where it starts.
    pub span: Span,
    /// Its last line.
    pub end_line: u32,
    /// The logical line as written.
    pub original: String,
}

/// A `key=value` of ENV or LABEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// Key, unexpanded.
    pub key: String,
    /// Value, unexpanded.
    pub value: String,
    /// Written in the legacy `ENV key value` form.
    pub legacy: bool,
    /// Where the key starts.
    pub span: Span,
}

/// One name of an ARG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDef {
    /// Name, unexpanded.
    pub name: String,
    /// Default value, unexpanded.
    pub default: Option<String>,
    /// Where it starts.
    pub span: Span,
}

/// A RUN/CMD/ENTRYPOINT command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdLine {
    /// Exec-form argv, or the one shell-form command string.
    pub args: Vec<String>,
    /// Shell form: run through the stage's SHELL.
    pub shell_form: bool,
    /// Heredocs (RUN only).
    pub heredocs: Vec<Heredoc>,
}

/// A flag value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagValue {
    /// The value, unexpanded.
    pub value: String,
    /// Where the flag starts.
    pub span: Span,
}

/// RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInstr {
    /// The command.
    pub cmd: CmdLine,
    /// `--mount=` specs, unexpanded.
    pub mounts: Vec<FlagValue>,
    /// `--network=`.
    pub network: Option<FlagValue>,
    /// `--security=`.
    pub security: Option<FlagValue>,
}

/// An inline source of COPY/ADD (a heredoc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineSource {
    /// The file name (the heredoc delimiter).
    pub name: String,
    /// The content (already chomped).
    pub data: String,
    /// Expand variables in the content.
    pub expand: bool,
}

/// COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyInstr {
    /// True for ADD.
    pub add: bool,
    /// Source paths, unexpanded.
    pub sources: Vec<ast::Word>,
    /// Heredoc sources.
    pub inline: Vec<InlineSource>,
    /// Destination, unexpanded.
    pub dest: ast::Word,
    /// `--from=` (COPY).
    pub from: Option<FlagValue>,
    /// `--chown=`.
    pub chown: Option<FlagValue>,
    /// `--chmod=`.
    pub chmod: Option<FlagValue>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude=` patterns.
    pub exclude: Vec<FlagValue>,
    /// `--checksum=` (ADD).
    pub checksum: Option<FlagValue>,
    /// `--keep-git-dir` (ADD).
    pub keep_git_dir: bool,
    /// `--unpack=` (ADD).
    pub unpack: Option<bool>,
    /// Written in JSON form.
    pub json: bool,
}

/// HEALTHCHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthcheckInstr {
    /// The resulting config (`Test: ["NONE"]` for NONE).
    pub health: HealthConfig,
}

/// ONBUILD.
#[derive(Debug, Clone, PartialEq)]
pub struct OnbuildInstr {
    /// The trigger as stored in the image config (`RUN make`).
    pub expression: String,
    /// The trigger, parsed.
    pub trigger: Box<Instruction>,
}

/// An instruction's meaning.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Command {
    Run(RunInstr),
    Cmd(CmdLine),
    Entrypoint(CmdLine),
    /// SHELL's argv.
    Shell(Vec<String>),
    Copy(CopyInstr),
    Env(Vec<KeyValue>),
    Label(Vec<KeyValue>),
    Arg(Vec<ArgDef>),
    /// WORKDIR path, unexpanded.
    Workdir(String),
    /// USER, unexpanded.
    User(String),
    /// EXPOSE ports, unexpanded.
    Expose(Vec<String>),
    /// VOLUME paths, unexpanded.
    Volume(Vec<String>),
    /// STOPSIGNAL, unexpanded.
    StopSignal(String),
    Healthcheck(HealthcheckInstr),
    Onbuild(OnbuildInstr),
    /// MAINTAINER.
    Maintainer(String),
}

impl Command {
    /// The instruction keyword in upper case.
    pub fn keyword(&self) -> &'static str {
        match self {
            Command::Run(_) => "RUN",
            Command::Cmd(_) => "CMD",
            Command::Entrypoint(_) => "ENTRYPOINT",
            Command::Shell(_) => "SHELL",
            Command::Copy(c) if c.add => "ADD",
            Command::Copy(_) => "COPY",
            Command::Env(_) => "ENV",
            Command::Label(_) => "LABEL",
            Command::Arg(_) => "ARG",
            Command::Workdir(_) => "WORKDIR",
            Command::User(_) => "USER",
            Command::Expose(_) => "EXPOSE",
            Command::Volume(_) => "VOLUME",
            Command::StopSignal(_) => "STOPSIGNAL",
            Command::Healthcheck(_) => "HEALTHCHECK",
            Command::Onbuild(_) => "ONBUILD",
            Command::Maintainer(_) => "MAINTAINER",
        }
    }
}

/// Every instruction keyword, lower-case.
pub const INSTRUCTIONS: &[&str] = &[
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// Turns the parse tree into stages.
///
/// Fails on unknown instructions or flags, wrong argument counts, bad stage names and
/// instructions other than ARG before the first FROM.
pub fn from_ast(tree: ast::Ast, source: &str) -> Result<Dockerfile, Error> {
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &tree.nodes {
        if node.name() == "from" {
            let index = stages.len();
            stages.push(parse_from(node, index)?);
            continue;
        }
        let instr = parse_instruction(node)?;
        match stages.last_mut() {
            Some(stage) => stage.instructions.push(instr),
            None if matches!(instr.command, Command::Arg(_)) => meta_args.push(instr),
            None => {
                return Err(Error::new(
                    ErrorKind::NoStage {
                        instruction: node.keyword.to_ascii_uppercase(),
                    },
                    Some(node.span),
                )
                .with_hint("start the Dockerfile with FROM (only ARG may come before it)"));
            }
        }
    }
    if stages.is_empty() {
        let span = tree.nodes.first().map(|n| n.span);
        return Err(Error::new(
            ErrorKind::NoStage {
                instruction: "ARG".into(),
            },
            span,
        )
        .with_hint("a Dockerfile needs at least one FROM"));
    }
    Ok(Dockerfile {
        directives: tree.directives,
        escape: tree.escape,
        meta_args,
        stages,
        warnings: tree.warnings,
        source: source.to_owned(),
    })
}

fn parse_from(node: &Node, index: usize) -> Result<Stage, Error> {
    let words = node.words();
    let flags = parse_flags(node, &[("platform", Kind::Str)])?;
    let name_word = match words.len() {
        1 => None,
        3 if words[1].value.eq_ignore_ascii_case("as") => Some(&words[2]),
        _ => {
            return Err(Error::new(ErrorKind::FromArguments, Some(node.span))
                .with_hint("write `FROM image [AS name]`"));
        }
    };
    let name = match name_word {
        Some(w) => {
            let lower = w.value.to_ascii_lowercase();
            let mut chars = lower.chars();
            let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
                && chars.all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
                });
            if !ok {
                return Err(Error::new(
                    ErrorKind::InvalidStageName {
                        name: w.value.clone(),
                    },
                    Some(w.span),
                ));
            }
            Some(lower)
        }
        None => None,
    };
    let platform = flags.string("platform");
    Ok(Stage {
        index,
        name,
        name_as_written: name_word.map(|w| w.value.clone()),
        base: words[0].value.clone(),
        platform: platform.as_ref().map(|p| p.value.clone()),
        span: node.span,
        base_span: words[0].span,
        platform_span: platform.map(|p| p.span),
        original: node.original.clone(),
        instructions: Vec::new(),
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Bool,
    Str,
    Strs,
}

struct Flags {
    values: Vec<(String, FlagValue)>,
}

impl Flags {
    fn string(&self, name: &str) -> Option<FlagValue> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
    fn all(&self, name: &str) -> Vec<FlagValue> {
        self.values
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
    fn bool(&self, name: &str) -> bool {
        self.string(name).is_some_and(|v| v.value == "true")
    }
}

/// BuildKit's BFlags: `--name=value`, booleans default to true, strings need a value,
/// only repeatable flags may repeat.
fn parse_flags(node: &Node, defs: &[(&str, Kind)]) -> Result<Flags, Error> {
    let instr = node.keyword.to_ascii_uppercase();
    let mut values: Vec<(String, FlagValue)> = Vec::new();
    for RawFlag { text, span } in &node.flags {
        let body = text.strip_prefix("--").unwrap_or(text);
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let Some(&(_, kind)) = defs.iter().find(|(n, _)| *n == name) else {
            let mut e = Error::new(
                ErrorKind::UnknownFlag {
                    instruction: instr.clone(),
                    flag: name.to_owned(),
                },
                Some(*span),
            );
            if let Some(s) = suggest(name, defs.iter().map(|(n, _)| *n)) {
                e = e.with_hint(format!("did you mean `--{s}`?"));
            } else if defs.is_empty() {
                e = e.with_hint(format!("{instr} takes no flags"));
            }
            return Err(e);
        };
        if kind != Kind::Strs && values.iter().any(|(n, _)| n == name) {
            return Err(Error::new(
                ErrorKind::DuplicateFlag {
                    flag: name.to_owned(),
                },
                Some(*span),
            ));
        }
        let value = match (kind, value) {
            (Kind::Bool, None) => "true".to_owned(),
            (Kind::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                "true" => "true".to_owned(),
                "false" => "false".to_owned(),
                _ => {
                    return Err(Error::new(
                        ErrorKind::BadBoolFlag {
                            flag: name.to_owned(),
                            value: v.to_owned(),
                        },
                        Some(*span),
                    ));
                }
            },
            (_, None) => {
                return Err(Error::new(
                    ErrorKind::FlagMissingValue {
                        flag: name.to_owned(),
                    },
                    Some(*span),
                )
                .with_hint(format!("write `--{name}=VALUE`")));
            }
            (_, Some(v)) => v.to_owned(),
        };
        values.push((name.to_owned(), FlagValue { value, span: *span }));
    }
    Ok(Flags { values })
}

fn count_error(node: &Node, expected: &'static str) -> Error {
    Error::new(
        ErrorKind::ArgumentCount {
            instruction: node.keyword.to_ascii_uppercase(),
            expected,
        },
        Some(node.span),
    )
}

fn strings(node: &Node) -> Vec<String> {
    node.words().iter().map(|w| w.value.clone()).collect()
}

fn key_values(node: &Node) -> Result<Vec<KeyValue>, Error> {
    let words = node.words();
    if words.is_empty() {
        return Err(count_error(node, "requires at least one argument"));
    }
    let mut out = Vec::new();
    for triple in words.chunks(3) {
        let [k, v, sep] = triple else {
            return Err(count_error(node, "has an unbalanced key=value list"));
        };
        if k.value.is_empty() {
            return Err(Error::new(
                ErrorKind::BlankName {
                    instruction: node.keyword.to_ascii_uppercase(),
                },
                Some(k.span),
            ));
        }
        out.push(KeyValue {
            key: k.value.clone(),
            value: v.value.clone(),
            legacy: sep.value.is_empty(),
            span: k.span,
        });
    }
    Ok(out)
}

fn cmd_line(node: &Node) -> CmdLine {
    CmdLine {
        args: strings(node),
        shell_form: !node.json,
        heredocs: node.heredocs.clone(),
    }
}

/// Parses one non-FROM instruction node.
pub(crate) fn parse_instruction(node: &Node) -> Result<Instruction, Error> {
    let name = node.name();
    let none: &[(&str, Kind)] = &[];
    let command = match name.as_str() {
        "run" => {
            let f = parse_flags(
                node,
                &[
                    ("mount", Kind::Strs),
                    ("network", Kind::Str),
                    ("security", Kind::Str),
                ],
            )?;
            if node.words().is_empty() {
                return Err(count_error(node, "requires at least one argument"));
            }
            Command::Run(RunInstr {
                cmd: cmd_line(node),
                mounts: f.all("mount"),
                network: f.string("network"),
                security: f.string("security"),
            })
        }
        "cmd" => {
            parse_flags(node, none)?;
            Command::Cmd(cmd_line(node))
        }
        "entrypoint" => {
            parse_flags(node, none)?;
            Command::Entrypoint(cmd_line(node))
        }
        "shell" => {
            parse_flags(node, none)?;
            if !node.json {
                return Err(Error::new(ErrorKind::ShellNotJson, Some(node.span))
                    .with_hint("write `SHELL [\"/bin/sh\", \"-c\"]`"));
            }
            if node.words().is_empty() {
                return Err(count_error(node, "requires at least one argument"));
            }
            Command::Shell(strings(node))
        }
        "copy" | "add" => parse_copy(node, name == "add")?,
        "env" => {
            parse_flags(node, none)?;
            Command::Env(key_values(node)?)
        }
        "label" => {
            parse_flags(node, none)?;
            Command::Label(key_values(node)?)
        }
        "arg" => {
            parse_flags(node, none)?;
            if node.words().is_empty() {
                return Err(count_error(node, "requires at least one argument"));
            }
            let defs = node
                .words()
                .iter()
                .map(|w| match w.value.split_once('=') {
                    Some((n, v)) => ArgDef {
                        name: n.to_owned(),
                        default: Some(v.to_owned()),
                        span: w.span,
                    },
                    None => ArgDef {
                        name: w.value.clone(),
                        default: None,
                        span: w.span,
                    },
                })
                .collect::<Vec<_>>();
            if let Some(d) = defs.iter().find(|d| d.name.is_empty()) {
                return Err(Error::new(
                    ErrorKind::BlankName {
                        instruction: "ARG".into(),
                    },
                    Some(d.span),
                ));
            }
            Command::Arg(defs)
        }
        "workdir" | "user" | "stopsignal" | "maintainer" => {
            parse_flags(node, none)?;
            let mut w = strings(node);
            if w.len() != 1 {
                return Err(count_error(node, "requires exactly one argument"));
            }
            let v = w.remove(0);
            match name.as_str() {
                "workdir" => Command::Workdir(v),
                "user" => Command::User(v),
                "stopsignal" => Command::StopSignal(v),
                _ => Command::Maintainer(v),
            }
        }
        "expose" => {
            parse_flags(node, none)?;
            if node.words().is_empty() {
                return Err(count_error(node, "requires at least one argument"));
            }
            Command::Expose(strings(node))
        }
        "volume" => {
            parse_flags(node, none)?;
            let v = strings(node);
            if v.is_empty() {
                return Err(count_error(node, "requires at least one argument"));
            }
            if v.iter().any(|p| p.trim().is_empty()) {
                return Err(Error::new(
                    ErrorKind::BlankName {
                        instruction: "VOLUME".into(),
                    },
                    Some(node.span),
                ));
            }
            Command::Volume(v)
        }
        "healthcheck" => Command::Healthcheck(parse_healthcheck(node)?),
        "onbuild" => {
            parse_flags(node, none)?;
            let Args::Sub(child) = &node.args else {
                return Err(count_error(node, "requires at least one argument"));
            };
            match child.name().as_str() {
                "onbuild" => return Err(Error::new(ErrorKind::OnbuildChain, Some(child.span))),
                "from" | "maintainer" => {
                    return Err(Error::new(
                        ErrorKind::OnbuildNotAllowed {
                            instruction: child.keyword.to_ascii_uppercase(),
                        },
                        Some(child.span),
                    ));
                }
                _ => {}
            }
            // Heredoc bodies are attached to the ONBUILD node; the trigger needs them.
            let mut child = (**child).clone();
            child.heredocs = node.heredocs.clone();
            let mut trigger = parse_instruction(&child)?;
            trigger.end_line = node.end_line;
            // BuildKit stores the trigger text after `ONBUILD`, heredoc bodies appended.
            let mut expression = child.original.clone();
            for h in &node.heredocs {
                expression.push('\n');
                expression.push_str(&h.content);
                expression.push_str(&h.name);
            }
            Command::Onbuild(OnbuildInstr {
                expression,
                trigger: Box::new(trigger),
            })
        }
        _ => {
            let mut e = Error::new(
                ErrorKind::UnknownInstruction {
                    name: node.keyword.clone(),
                },
                Some(node.span),
            );
            if let Some(s) = suggest(&name, INSTRUCTIONS.iter().copied()) {
                e = e.with_hint(format!("did you mean `{}`?", s.to_ascii_uppercase()));
            }
            return Err(e);
        }
    };
    Ok(Instruction {
        command,
        span: node.span,
        end_line: node.end_line,
        original: node.original.clone(),
    })
}

fn parse_copy(node: &Node, add: bool) -> Result<Command, Error> {
    let f = if add {
        parse_flags(
            node,
            &[
                ("chown", Kind::Str),
                ("chmod", Kind::Str),
                ("link", Kind::Bool),
                ("keep-git-dir", Kind::Bool),
                ("checksum", Kind::Str),
                ("exclude", Kind::Strs),
                ("unpack", Kind::Bool),
            ],
        )?
    } else {
        parse_flags(
            node,
            &[
                ("from", Kind::Str),
                ("chown", Kind::Str),
                ("chmod", Kind::Str),
                ("link", Kind::Bool),
                ("parents", Kind::Bool),
                ("exclude", Kind::Strs),
            ],
        )?
    };
    let words = node.words();
    let instr = if add { "ADD" } else { "COPY" };
    if words.len() < 2 {
        return Err(Error::new(
            ErrorKind::ArgumentCount {
                instruction: instr.into(),
                expected: "requires at least two arguments, but only one was provided. Destination could not be determined",
            },
            Some(node.span),
        ));
    }
    let (srcs, dest) = words.split_at(words.len() - 1);
    let dest = dest[0].clone();
    if ast::parse_heredoc(&dest.value).ok().flatten().is_some() {
        return Err(Error::new(
            ErrorKind::HeredocNotAllowed {
                instruction: instr.into(),
                what: "a destination".into(),
            },
            Some(dest.span),
        ));
    }
    let mut sources = Vec::new();
    let mut inline = Vec::new();
    for s in srcs {
        match ast::parse_heredoc(&s.value).ok().flatten() {
            Some(h) if !node.json => {
                let doc = node.heredocs.iter().find(|d| d.name == h.name);
                let data = doc.map(|d| d.content.clone()).unwrap_or_default();
                let data = if h.chomp {
                    ast::chomp_heredoc(&data)
                } else {
                    data
                };
                inline.push(InlineSource {
                    name: h.name,
                    data,
                    expand: h.expand,
                });
            }
            _ => sources.push(s.clone()),
        }
    }
    Ok(Command::Copy(CopyInstr {
        add,
        sources,
        inline,
        dest,
        from: f.string("from"),
        chown: f.string("chown"),
        chmod: f.string("chmod"),
        link: f.bool("link"),
        parents: f.bool("parents"),
        exclude: f.all("exclude"),
        checksum: f.string("checksum"),
        keep_git_dir: f.bool("keep-git-dir"),
        unpack: f.string("unpack").map(|v| v.value == "true"),
        json: node.json,
    }))
}

fn parse_healthcheck(node: &Node) -> Result<HealthcheckInstr, Error> {
    let words = strings(node);
    if words.is_empty() {
        return Err(count_error(node, "requires at least one argument"));
    }
    let typ = words[0].to_ascii_uppercase();
    let args = &words[1..];
    let herr = |m: String| Error::new(ErrorKind::Healthcheck(m), Some(node.span));
    if typ == "NONE" {
        if !args.is_empty() {
            return Err(herr("HEALTHCHECK NONE takes no arguments".into()));
        }
        parse_flags(node, &[])?;
        return Ok(HealthcheckInstr {
            health: HealthConfig {
                test: vec!["NONE".into()],
                ..HealthConfig::default()
            },
        });
    }
    let f = parse_flags(
        node,
        &[
            ("interval", Kind::Str),
            ("timeout", Kind::Str),
            ("start-period", Kind::Str),
            ("start-interval", Kind::Str),
            ("retries", Kind::Str),
        ],
    )?;
    if typ != "CMD" {
        return Err(herr(format!(
            "unknown type {:?} in HEALTHCHECK (try CMD)",
            words[0]
        ))
        .with_hint("write `HEALTHCHECK CMD command` or `HEALTHCHECK NONE`"));
    }
    if args.is_empty() || (args.len() == 1 && args[0].is_empty() && !node.json) {
        return Err(herr("missing command after HEALTHCHECK CMD".into()));
    }
    let mut test = vec![if node.json {
        "CMD".to_owned()
    } else {
        "CMD-SHELL".to_owned()
    }];
    test.extend(args.iter().cloned());
    let dur = |name: &str| -> Result<i64, Error> {
        let Some(v) = f.string(name) else {
            return Ok(0);
        };
        let d = parse_go_duration(&v.value).ok_or_else(|| {
            Error::new(
                ErrorKind::BadFlagValue {
                    flag: name.to_owned(),
                    value: v.value.clone(),
                    reason: "not a duration like 30s or 1m30s".into(),
                },
                Some(v.span),
            )
        })?;
        if d != 0 && d < 1_000_000 {
            return Err(Error::new(
                ErrorKind::BadFlagValue {
                    flag: name.to_owned(),
                    value: v.value.clone(),
                    reason: "cannot be less than 1ms".into(),
                },
                Some(v.span),
            ));
        }
        Ok(d)
    };
    let retries = match f.string("retries") {
        None => 0,
        Some(v) => match v.value.parse::<i32>() {
            Ok(r) if r >= 0 => i64::from(r),
            _ => {
                return Err(Error::new(
                    ErrorKind::BadFlagValue {
                        flag: "retries".into(),
                        value: v.value.clone(),
                        reason: "must be a number >= 0".into(),
                    },
                    Some(v.span),
                ));
            }
        },
    };
    Ok(HealthcheckInstr {
        health: HealthConfig {
            test,
            interval: dur("interval")?,
            timeout: dur("timeout")?,
            start_period: dur("start-period")?,
            start_interval: dur("start-interval")?,
            retries,
        },
    })
}

/// Parses a Go duration (`1h2m3.5s`, `300ms`, `0`) into nanoseconds.
pub fn parse_go_duration(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * mult;
    }
    if total > i64::MAX as f64 {
        return None;
    }
    let v = total.round() as i64;
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Dockerfile, Error> {
        from_ast(ast::parse_ast(src)?, src)
    }

    #[test]
    fn unknown_instruction_suggests_the_closest() {
        let e = parse("FROM a\nRUNN make\n").expect_err("unknown");
        assert_eq!(e.message(), "unknown instruction: RUNN");
        assert_eq!(e.hint(), Some("did you mean `RUN`?"));
        assert_eq!(e.span(), Some(Span { line: 2, column: 1 }));
    }

    #[test]
    fn unknown_flag_is_rejected_with_its_span() {
        let e = parse("FROM a\nCOPY --form=b x y\n").expect_err("bad flag");
        assert_eq!(e.message(), "unknown flag: --form for COPY");
        assert_eq!(e.hint(), Some("did you mean `--from`?"));
        assert_eq!(e.span(), Some(Span { line: 2, column: 6 }));
    }

    #[test]
    fn stages_and_meta_args_are_split() {
        let df = parse("ARG V=1\nFROM a:$V AS Build\nRUN x\nFROM build\n").expect("parses");
        assert_eq!(df.meta_args.len(), 1);
        assert_eq!(df.stages.len(), 2);
        assert_eq!(df.stages[0].name.as_deref(), Some("build"));
        assert_eq!(df.stages[0].instructions.len(), 1);
    }

    #[test]
    fn healthcheck_options_become_a_config() {
        let df = parse("FROM a\nHEALTHCHECK --interval=1m30s --retries=3 CMD curl -f x\n")
            .expect("parses");
        let Command::Healthcheck(h) = &df.stages[0].instructions[0].command else {
            panic!("not a healthcheck")
        };
        assert_eq!(h.health.test, vec!["CMD-SHELL", "curl -f x"]);
        assert_eq!(h.health.interval, 90_000_000_000);
        assert_eq!(h.health.retries, 3);
    }

    #[test]
    fn onbuild_rejects_chaining_and_from() {
        assert!(parse("FROM a\nONBUILD ONBUILD RUN x\n").is_err());
        assert!(parse("FROM a\nONBUILD FROM b\n").is_err());
        let df = parse("FROM a\nONBUILD RUN make\n").expect("parses");
        let Command::Onbuild(o) = &df.stages[0].instructions[0].command else {
            panic!("not onbuild")
        };
        assert_eq!(o.expression, "RUN make");
        let df = parse("FROM a\nONBUILD RUN <<EOF\nhello\nEOF\n").expect("parses");
        let Command::Onbuild(o) = &df.stages[0].instructions[0].command else {
            panic!("not onbuild")
        };
        assert_eq!(o.expression, "RUN <<EOF\nhello\nEOF");
        let Command::Run(r) = &o.trigger.command else {
            panic!("not run")
        };
        assert_eq!(r.cmd.heredocs.len(), 1);
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("300ms"), Some(300_000_000));
        assert_eq!(parse_go_duration("1h2m"), Some(3_720_000_000_000));
        assert_eq!(parse_go_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_go_duration("5"), None);
    }
}

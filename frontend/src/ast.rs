//! The line-level Dockerfile parser: text in, a list of instruction [`Node`]s out.
//!
//! This mirrors BuildKit's `frontend/dockerfile/parser` behaviour (its corpus in
//! `../shared/conformance/buildkit/parser` is our golden data): parser directives, line
//! continuations with the active escape character, comment and blank lines inside
//! continuations, heredocs, `--flag` extraction and the per-instruction argument shapes
//! (JSON or shell form, `key=value` pairs, whitespace-separated lists). Nothing here knows
//! what an instruction means; [`crate::instructions`] does that.

use crate::error::{Error, ErrorKind};
use crate::shell::Lex;
use graph::Span;

/// The default escape character.
pub const DEFAULT_ESCAPE: char = '\\';

/// The parser directives found at the top of the file (`# syntax=`, `# escape=`, `# check=`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// `# syntax=` value, if any (recorded, not acted upon: kiln has one frontend).
    pub syntax: Option<String>,
    /// `# escape=` value, if any.
    pub escape: Option<char>,
    /// `# check=` value, if any (`skip=RuleA,RuleB;error=true`).
    pub check: Option<String>,
}

/// A heredoc attached to a RUN, COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, unquoted (`EOF`); also the file name for COPY/ADD.
    pub name: String,
    /// `2<<EOF` sets 2; 0 when none was given.
    pub fd: u32,
    /// False when the delimiter was quoted (`<<"EOF"`): the content is not expanded.
    pub expand: bool,
    /// `<<-EOF`: leading tabs are stripped from the content.
    pub chomp: bool,
    /// The lines between the instruction and the delimiter, each with its newline.
    pub content: String,
}

impl Heredoc {
    /// The content with leading tabs removed from each line when `chomp` is set.
    pub fn chomped_content(&self) -> String {
        if self.chomp {
            chomp_heredoc(&self.content)
        } else {
            self.content.clone()
        }
    }
}

/// Removes leading tabs from every line (`<<-EOF`).
pub fn chomp_heredoc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for line in s.split_inclusive('\n') {
        out.push_str(line.trim_start_matches('\t'));
    }
    out
}

/// One argument word of an instruction, with where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The text as BuildKit's parser keeps it (quotes still in place for shell-form words).
    pub value: String,
    /// Where it starts.
    pub span: Span,
}

/// A `--name=value` flag as written (quotes removed), with where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFlag {
    /// `--name=value`, `--name`.
    pub text: String,
    /// Where it starts.
    pub span: Span,
}

/// An instruction's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// A list of words (possibly empty).
    Words(Vec<Word>),
    /// ONBUILD's nested instruction.
    Sub(Box<Node>),
}

/// One instruction of the Dockerfile, as parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The instruction keyword as written (`RUN`, `run`).
    pub keyword: String,
    /// Flags before the arguments.
    pub flags: Vec<RawFlag>,
    /// The arguments.
    pub args: Args,
    /// True when the arguments were a JSON array (exec form).
    pub json: bool,
    /// Heredocs, in order of appearance.
    pub heredocs: Vec<Heredoc>,
    /// The logical line (continuations joined, comments removed).
    pub original: String,
    /// Where the keyword starts.
    pub span: Span,
    /// The last physical line of the instruction (heredoc bodies included).
    pub end_line: u32,
}

impl Node {
    /// The keyword, lower-cased.
    pub fn name(&self) -> String {
        self.keyword.to_ascii_lowercase()
    }

    /// The argument words (empty for ONBUILD).
    pub fn words(&self) -> &[Word] {
        match &self.args {
            Args::Words(w) => w,
            Args::Sub(_) => &[],
        }
    }

    /// BuildKit's s-expression dump of this node: `(copy ["--from=a"] "x" "/y")`.
    pub fn dump(&self) -> String {
        let mut s = self.name();
        if !self.flags.is_empty() {
            s.push_str(" [");
            let quoted: Vec<String> = self.flags.iter().map(|f| go_quote(&f.text)).collect();
            s.push_str(&quoted.join(" "));
            s.push(']');
        }
        match &self.args {
            Args::Words(words) => {
                for w in words {
                    s.push(' ');
                    s.push_str(&go_quote(&w.value));
                }
            }
            Args::Sub(child) => {
                s.push_str(" (");
                s.push_str(&child.dump());
                s.push(')');
            }
        }
        s
    }
}

/// A warning found while parsing (empty continuation lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseWarning {
    /// What is wrong.
    pub message: String,
    /// Where.
    pub span: Span,
}

/// The parse result: directives and instruction nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ast {
    /// Parser directives.
    pub directives: Directives,
    /// The active escape character.
    pub escape: char,
    /// Instructions in order.
    pub nodes: Vec<Node>,
    /// Parser warnings.
    pub warnings: Vec<ParseWarning>,
}

impl Ast {
    /// BuildKit's dump format: one `(instr args...)` line per instruction.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push('(');
            out.push_str(&n.dump());
            out.push_str(")\n");
        }
        out
    }
}

/// Quotes like Go's `strconv.Quote` (the format of BuildKit's parse-tree dumps).
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c != ' ' && (c.is_control() || c.is_whitespace() || is_go_unprintable(c)) => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn is_go_unprintable(c: char) -> bool {
    // Format characters and private use / noncharacters that Go's IsPrint rejects; a small
    // approximation of the Unicode categories Go checks.
    matches!(c as u32, 0xad | 0x200b..=0x200f | 0x2028..=0x202e | 0x2060..=0x206f | 0xfeff | 0xfff9..=0xfffb | 0xe000..=0xf8ff)
}

/// Go's `unicode.IsSpace`.
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// `[\t\v\f\r ]`: BuildKit's `reWhitespace` class.
fn is_ws_class(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// A logical line: text plus, for each byte, where it came from.
struct Logical {
    text: String,
    pos: Vec<Span>,
}

impl Logical {
    fn new() -> Logical {
        Logical {
            text: String::new(),
            pos: Vec::new(),
        }
    }
    /// Appends `s`, which starts at `span` on one physical line.
    fn push(&mut self, s: &str, span: Span) {
        for (col, c) in (span.column..).zip(s.chars()) {
            for _ in 0..c.len_utf8() {
                self.pos.push(Span {
                    line: span.line,
                    column: col,
                });
            }
            self.text.push(c);
        }
    }
    fn span_at(&self, byte: usize, fallback: Span) -> Span {
        self.pos
            .get(byte)
            .copied()
            .or_else(|| self.pos.last().copied())
            .unwrap_or(fallback)
    }
}

/// Directive scanner state (BuildKit's `DirectiveParser`).
struct DirectiveState {
    done: bool,
    seen: Vec<String>,
}

impl DirectiveState {
    /// Looks at one (left-trimmed) line while directives are still possible.
    fn check(
        &mut self,
        line: &str,
        lineno: u32,
        d: &mut Directives,
        escape: &mut char,
    ) -> Result<(), Error> {
        if self.done {
            return Ok(());
        }
        let Some(rest) = line.strip_prefix('#') else {
            self.done = true;
            return Ok(());
        };
        let rest = rest.trim_start_matches(is_space);
        // ^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$
        let key_len = rest
            .char_indices()
            .take_while(|&(i, c)| {
                if i == 0 {
                    c.is_ascii_alphabetic()
                } else {
                    c.is_ascii_alphanumeric()
                }
            })
            .count();
        let go_space = |c: char| matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ');
        let after_key = rest[key_len..].trim_start_matches(go_space);
        let value = after_key
            .strip_prefix('=')
            .map(|v| v.trim_matches(go_space));
        let (Some(value), true) = (value, key_len > 0) else {
            self.done = true;
            return Ok(());
        };
        if value.is_empty() {
            self.done = true;
            return Ok(());
        }
        let key = rest[..key_len].to_ascii_lowercase();
        if !matches!(key.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(());
        }
        let span = Span {
            line: lineno,
            column: 1,
        };
        if self.seen.contains(&key) {
            return Err(Error::new(
                ErrorKind::DuplicateDirective { name: key },
                Some(span),
            ));
        }
        self.seen.push(key.clone());
        match key.as_str() {
            "escape" => {
                let c = match value {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(Error::new(
                            ErrorKind::InvalidEscape {
                                token: other.to_owned(),
                            },
                            Some(span),
                        )
                        .with_hint("use `# escape=\\` or `# escape=``"));
                    }
                };
                *escape = c;
                d.escape = Some(c);
            }
            "syntax" => d.syntax = Some(value.to_owned()),
            _ => d.check = Some(value.to_owned()),
        }
        Ok(())
    }
}

fn is_comment(line: &str) -> bool {
    line.trim_start_matches(is_space).starts_with('#')
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

/// BuildKit's continuation regex `([^E])E[ \t]*$|^E[ \t]*$`: returns the line without the
/// continuation and whether the logical line ends here.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    let Some(before) = t.strip_suffix(escape) else {
        return (line, true);
    };
    if before.is_empty() {
        return ("", false);
    }
    if before.ends_with(escape) {
        // An escaped escape character (`foo\\`) is not a continuation.
        return (line, true);
    }
    (before, false)
}

/// The longest physical line BuildKit's parser takes, in bytes without the newline (its
/// `bufio.Scanner` buffer, `bufio.MaxScanTokenSize`, holds the line and its `\n`).
pub const MAX_LINE: usize = 65_535;

/// Parses a Dockerfile into nodes, exactly as BuildKit's parser would.
///
/// Fails on a line over [`MAX_LINE`] bytes, a bad directive, a line-level syntax error (`ENV`
/// without a value, nested JSON), an unterminated heredoc, or a file with no instructions.
pub fn parse_ast(source: &str) -> Result<Ast, Error> {
    parse_ast_checked(source, &[])
}

/// [`parse_ast`] of text decoded from bytes where the lines of `not_utf8` (sorted by line)
/// held bytes that are not UTF-8: those lines may only be comments, which the parser drops
/// unread. Fails with [`ErrorKind::InvalidUtf8`] at the first such line that is an instruction,
/// a continuation or heredoc content.
pub(crate) fn parse_ast_checked(source: &str, not_utf8: &[(Span, u8)]) -> Result<Ast, Error> {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let lines: Vec<&str> = source.split_inclusive('\n').collect();
    if let Some(i) = lines
        .iter()
        .position(|l| l.strip_suffix('\n').unwrap_or(l).len() > MAX_LINE)
    {
        return Err(Error::new(
            ErrorKind::LineTooLong { limit: MAX_LINE },
            Some(Span {
                line: i as u32 + 1,
                column: 1,
            }),
        ));
    }
    // Called for every line the parser reads as content (not for comments).
    let content_line = |line: u32| match not_utf8.binary_search_by_key(&line, |(s, _)| s.line) {
        Ok(at) => {
            let (span, byte) = not_utf8[at];
            Err(
                Error::new(ErrorKind::InvalidUtf8 { byte }, Some(span)).with_hint(
                    "kiln reads a Dockerfile as UTF-8 and allows other bytes only in comments; \
                 convert the file (iconv -f latin1 -t utf-8)",
                ),
            )
        }
        Err(_) => Ok(()),
    };
    let mut directives = Directives::default();
    let mut escape = DEFAULT_ESCAPE;
    let mut dstate = DirectiveState {
        done: false,
        seen: Vec::new(),
    };
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let mut i = 0usize;
    while i < lines.len() {
        let raw = trim_newline(lines[i]);
        let lineno = i as u32 + 1;
        i += 1;
        let trimmed = raw.trim_start_matches(is_space);
        let lead_cols = raw[..raw.len() - trimmed.len()].chars().count() as u32;
        dstate.check(trimmed, lineno, &mut directives, &mut escape)?;
        let content = if is_comment(trimmed) { "" } else { trimmed };
        if !content.is_empty() {
            content_line(lineno)?;
        }
        let start = Span {
            line: lineno,
            column: lead_cols + 1,
        };
        let (first, mut end_of_line) = trim_continuation(content, escape);
        if end_of_line && first.is_empty() {
            continue;
        }
        let mut logical = Logical::new();
        logical.push(first, start);
        let mut empty_continuation = false;
        let mut last_line = lineno;
        while !end_of_line && i < lines.len() {
            let raw = trim_newline(lines[i]);
            let ln = i as u32 + 1;
            i += 1;
            last_line = ln;
            dstate.check(raw, ln, &mut directives, &mut escape)?;
            if is_comment(raw) {
                continue;
            }
            if raw.trim_start_matches(is_space).is_empty() {
                empty_continuation = true;
                continue;
            }
            content_line(ln)?;
            let (part, eol) = trim_continuation(raw, escape);
            end_of_line = eol;
            logical.push(
                part,
                Span {
                    line: ln,
                    column: 1,
                },
            );
        }
        if empty_continuation {
            warnings.push(ParseWarning {
                message: format!("Empty continuation line found in: {}", logical.text),
                span: start,
            });
        }
        let mut node = node_from_line(&logical, 0, escape, start)?;
        node.end_line = last_line;
        if first.is_empty() {
            // A logical line that starts with a lone continuation begins on that line.
            node.span = start;
        }
        if node_can_contain_heredoc(&node) && logical.text.contains("<<") {
            for mut doc in
                heredocs_from_line(&logical.text).map_err(|k| Error::new(k, Some(start)))?
            {
                let mut terminated = false;
                while i < lines.len() {
                    let body = lines[i];
                    i += 1;
                    content_line(i as u32)?;
                    node.end_line = i as u32;
                    let mut candidate = trim_newline(body);
                    if doc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == doc.name {
                        terminated = true;
                        break;
                    }
                    doc.content.push_str(body);
                }
                if !terminated {
                    return Err(Error::new(
                        ErrorKind::UnterminatedHeredoc { name: doc.name },
                        Some(start),
                    )
                    .with_hint("end the heredoc with its delimiter alone on a line"));
                }
                node.heredocs.push(doc);
            }
        }
        nodes.push(node);
    }
    if nodes.is_empty() {
        let line = (lines.len() as u32).max(1);
        return Err(Error::new(
            ErrorKind::NoInstructions,
            Some(Span { line, column: 1 }),
        ));
    }
    Ok(Ast {
        directives,
        escape,
        nodes,
        warnings,
    })
}

fn node_can_contain_heredoc(node: &Node) -> bool {
    let n = match &node.args {
        Args::Sub(child) if node.name() == "onbuild" => child,
        _ => node,
    };
    matches!(n.name().as_str(), "run" | "copy" | "add") && !n.json
}

/// Finds the heredoc words (`<<EOF`, `<<-"EOF"`, `3<<EOF`) of a logical line.
fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, ErrorKind> {
    let lex = Lex {
        escape: '\\',
        raw_quotes: true,
        raw_escapes: true,
        skip_unset_env: true,
        ..Lex::default()
    };
    let words = lex.process_words(line, &|_| None).unwrap_or_default();
    let mut docs = Vec::new();
    for w in words {
        if let Some(doc) = parse_heredoc(&w)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// Parses one word as a heredoc marker (`^(\d*)<<(-?)([^<]*)$`).
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, ErrorKind> {
    let digits = word.chars().take_while(|c| c.is_ascii_digit()).count();
    let Some(rest) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    let fd = if digits == 0 {
        0
    } else {
        word[..digits].parse::<u32>().unwrap_or(0)
    };
    let plain = Lex {
        escape: '\\',
        skip_unset_env: true,
        ..Lex::default()
    };
    let words = plain
        .process_words(rest, &|_| None)
        .map_err(|e| ErrorKind::BadHeredoc {
            word: word.to_owned(),
            reason: e.to_string(),
        })?;
    if words.len() != 1 {
        return Ok(None);
    }
    let raw = Lex {
        raw_quotes: true,
        ..plain
    };
    let raw_words = raw
        .process_words(rest, &|_| None)
        .map_err(|e| ErrorKind::BadHeredoc {
            word: word.to_owned(),
            reason: e.to_string(),
        })?;
    let count = |s: &str| s.chars().filter(|&c| c == '\'' || c == '"').count();
    let expand = raw_words.len() == 1 && count(&words[0]) == count(&raw_words[0]);
    Ok(Some(Heredoc {
        name: words[0].clone(),
        fd,
        expand,
        chomp,
        content: String::new(),
    }))
}

/// Splits a logical line into keyword, flags and arguments and dispatches on the keyword.
/// `offset` is where `text` starts inside `logical`.
fn node_from_line(
    logical: &Logical,
    offset: usize,
    escape: char,
    fallback: Span,
) -> Result<Node, Error> {
    let full = &logical.text[offset..];
    let lead = full.len() - full.trim_start_matches(is_space).len();
    let line = full.trim_matches(is_space);
    let base = offset + lead;
    let span_of = |rel: usize| logical.span_at(base + rel, fallback);
    let kw_end = line.find(is_ws_class).unwrap_or(line.len());
    let keyword = &line[..kw_end];
    let after_kw = line[kw_end..].trim_start_matches(is_ws_class);
    let after_kw_off = line.len() - after_kw.len();
    let (flags, rest_off) = extract_flags(after_kw);
    let flags: Vec<RawFlag> = flags
        .into_iter()
        .map(|(text, at)| RawFlag {
            text,
            span: span_of(after_kw_off + at),
        })
        .collect();
    let rest_raw = &after_kw[rest_off..];
    let rest_lead = rest_raw.len() - rest_raw.trim_start_matches(is_space).len();
    let rest = rest_raw.trim_matches(is_space);
    let rest_off = after_kw_off + rest_off + rest_lead;
    let span = span_of(0);
    let err = |kind: ErrorKind| Error::new(kind, Some(span));
    let wordspan = |words: Vec<(String, usize)>| -> Vec<Word> {
        words
            .into_iter()
            .map(|(value, at)| Word {
                value,
                span: span_of(rest_off + at),
            })
            .collect()
    };
    let name = keyword.to_ascii_lowercase();
    let mut json = false;
    let args = match name.as_str() {
        "add" | "copy" | "volume" => {
            let (w, j) = maybe_json_to_list(rest).map_err(err)?;
            json = j;
            Args::Words(wordspan(w))
        }
        "cmd" | "entrypoint" | "run" | "shell" => {
            let (w, j) = maybe_json(rest).map_err(err)?;
            json = j;
            Args::Words(wordspan(w))
        }
        "arg" => Args::Words(wordspan(parse_words(rest, escape))),
        "env" | "label" => Args::Words(wordspan(
            parse_name_val(rest, &name.to_ascii_uppercase(), escape).map_err(err)?,
        )),
        "expose" | "from" => Args::Words(wordspan(whitespace_delimited(rest))),
        "healthcheck" => {
            let sep = rest.find(is_space).unwrap_or(rest.len());
            if sep == 0 {
                Args::Words(Vec::new())
            } else {
                let after = rest[sep..].trim_start_matches(is_space);
                let at = rest.len() - after.len();
                let (w, j) = maybe_json(after).map_err(err)?;
                json = j;
                let mut words = vec![(rest[..sep].to_owned(), 0)];
                words.extend(w.into_iter().map(|(s, o)| (s, o + at)));
                Args::Words(wordspan(words))
            }
        }
        "maintainer" | "stopsignal" | "user" | "workdir" => {
            if rest.is_empty() {
                Args::Words(Vec::new())
            } else {
                Args::Words(wordspan(vec![(rest.to_owned(), 0)]))
            }
        }
        "onbuild" => {
            if rest.is_empty() {
                Args::Words(Vec::new())
            } else {
                let child = node_from_line(logical, offset + lead + rest_off, escape, fallback)?;
                Args::Sub(Box::new(child))
            }
        }
        // Unknown instructions keep one empty argument, as BuildKit's `parseIgnore` does;
        // `instructions` rejects them with a suggestion.
        _ => Args::Words(vec![Word {
            value: String::new(),
            span: span_of(0),
        }]),
    };
    Ok(Node {
        keyword: keyword.to_owned(),
        flags,
        args,
        json,
        heredocs: Vec::new(),
        original: line.to_owned(),
        span,
        end_line: span.line,
    })
}

/// Extracts leading `--flag` words (quotes removed, `\` escapes, `--` ends the flags).
/// Returns the flags with their offsets and the offset where the arguments start.
fn extract_flags(line: &str) -> (Vec<(String, usize)>, usize) {
    let mut flags = Vec::new();
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut k = 0;
    loop {
        while k < chars.len() && is_space(chars[k].1) {
            k += 1;
        }
        if k >= chars.len() {
            return (flags, line.len());
        }
        let start = chars[k].0;
        if !(chars[k].1 == '-' && k + 1 < chars.len() && chars[k + 1].1 == '-') {
            return (flags, start);
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while k < chars.len() {
            let c = chars[k].1;
            match quote {
                None => {
                    if is_space(c) {
                        break;
                    }
                    if c == '\'' || c == '"' {
                        quote = Some(c);
                    } else if c == '\\' {
                        if k + 1 < chars.len() {
                            k += 1;
                            word.push(chars[k].1);
                        }
                    } else {
                        word.push(c);
                    }
                }
                Some(q) => {
                    if c == q {
                        quote = None;
                    } else if c == '\\' {
                        if k + 1 < chars.len() {
                            k += 1;
                            word.push(chars[k].1);
                        } else {
                            quote = None;
                        }
                    } else {
                        word.push(c);
                    }
                }
            }
            k += 1;
        }
        if word == "--" {
            let end = chars.get(k).map_or(line.len(), |c| c.0);
            return (flags, end);
        }
        flags.push((word, start));
    }
}

/// Splits on `[\t\v\f\r ]+`, with offsets.
fn whitespace_delimited(rest: &str) -> Vec<(String, usize)> {
    if rest.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut start: Option<usize> = Some(0);
    for (i, c) in rest.char_indices() {
        if is_ws_class(c) {
            if let Some(s) = start.take() {
                out.push((rest[s..i].to_owned(), s));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    match start {
        Some(s) => out.push((rest[s..].to_owned(), s)),
        None => out.push((String::new(), rest.len())),
    }
    out
}

enum JsonArgs {
    Ok(Vec<String>),
    NotJson,
}

fn parse_json(rest: &str) -> Result<JsonArgs, ErrorKind> {
    let t = rest.trim_start_matches(is_space);
    if !t.starts_with('[') {
        return Ok(JsonArgs::NotJson);
    }
    // BuildKit decodes with json.Unmarshal: text after the array makes it invalid JSON, so
    // `RUN ["echo", "hi"]junk` is shell form (its testInvalidJSONCommands; BuildKit's parser
    // once used a json.Decoder, which ignored the rest).
    match serde_json::from_str::<serde_json::Value>(t) {
        Ok(serde_json::Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for it in items {
                match it {
                    serde_json::Value::String(s) => out.push(s),
                    _ => return Err(ErrorKind::JsonNotStringArray),
                }
            }
            Ok(JsonArgs::Ok(out))
        }
        _ => Ok(JsonArgs::NotJson),
    }
}

fn json_words(items: Vec<String>) -> Vec<(String, usize)> {
    items.into_iter().map(|s| (s, 0)).collect()
}

/// JSON array, or the whole rest as one word (RUN, CMD, ENTRYPOINT, SHELL).
fn maybe_json(rest: &str) -> Result<(Vec<(String, usize)>, bool), ErrorKind> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    match parse_json(rest)? {
        JsonArgs::Ok(items) => Ok((json_words(items), true)),
        JsonArgs::NotJson => Ok((vec![(rest.to_owned(), 0)], false)),
    }
}

/// JSON array, or whitespace-separated words (ADD, COPY, VOLUME).
fn maybe_json_to_list(rest: &str) -> Result<(Vec<(String, usize)>, bool), ErrorKind> {
    match parse_json(rest)? {
        JsonArgs::Ok(items) => Ok((json_words(items), true)),
        JsonArgs::NotJson => Ok((whitespace_delimited(rest), false)),
    }
}

/// Splits into words on white space, keeping quotes and escapes in the words (BuildKit's
/// `parseWords`).
pub(crate) fn parse_words(rest: &str, escape: char) -> Vec<(String, usize)> {
    let mut words = Vec::new();
    let chars: Vec<(usize, char)> = rest.char_indices().collect();
    let mut k = 0;
    let mut word = String::new();
    let mut word_start = 0;
    let mut blank_ok = false;
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let mut phase = Phase::Spaces;
    loop {
        let at_end = k >= chars.len();
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if is_space(chars[k].1) {
                k += 1;
                continue;
            }
            phase = Phase::Word;
            word_start = chars[k].0;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push((std::mem::take(&mut word), word_start));
            }
            break;
        }
        let c = chars[k].1;
        match phase {
            Phase::Word => {
                if is_space(c) {
                    phase = Phase::Spaces;
                    if blank_ok || !word.is_empty() {
                        words.push((std::mem::take(&mut word), word_start));
                    }
                    word.clear();
                    blank_ok = false;
                    k += 1;
                    continue;
                }
                if c == '\'' || c == '"' {
                    phase = Phase::Quote(c);
                    blank_ok = true;
                    word.push(c);
                } else if c == escape {
                    if k + 1 == chars.len() {
                        k += 1;
                        continue;
                    }
                    word.push(c);
                    k += 1;
                    word.push(chars[k].1);
                } else {
                    word.push(c);
                }
                k += 1;
            }
            Phase::Quote(q) => {
                if c == q {
                    phase = Phase::Word;
                    word.push(c);
                } else if c == escape && q != '\'' {
                    if k + 1 == chars.len() {
                        phase = Phase::Word;
                        k += 1;
                        continue;
                    }
                    word.push(c);
                    k += 1;
                    word.push(chars[k].1);
                } else {
                    word.push(c);
                }
                k += 1;
            }
            Phase::Spaces => unreachable!("handled above"),
        }
    }
    words
}

/// ENV and LABEL: `key value` (legacy) or `k=v k2=v2`, flattened as (key, value, sep) triples.
fn parse_name_val(
    rest: &str,
    instr: &str,
    escape: char,
) -> Result<Vec<(String, usize)>, ErrorKind> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Ok(Vec::new());
    }
    if !words[0].0.contains('=') {
        let key_end = rest.find(is_ws_class);
        let Some(key_end) = key_end else {
            return Err(ErrorKind::MustHaveTwoArguments {
                instruction: instr.to_owned(),
            });
        };
        let value = rest[key_end..].trim_start_matches(is_ws_class);
        let voff = rest.len() - value.len();
        return Ok(vec![
            (rest[..key_end].to_owned(), 0),
            (value.to_owned(), voff),
            (String::new(), rest.len()),
        ]);
    }
    let mut out = Vec::new();
    for (w, at) in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(ErrorKind::MissingEquals { word: w });
        };
        out.push((k.to_owned(), at));
        out.push((v.to_owned(), at + k.len() + 1));
        out.push(("=".to_owned(), at + k.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(src: &str) -> String {
        parse_ast(src).expect("parses").dump()
    }

    #[test]
    fn continuation_with_backtick_escape() {
        assert_eq!(dump("# escape=`\nFROM `\n  image\n"), "(from \"image\")\n");
    }

    #[test]
    fn escaped_escape_at_end_is_not_a_continuation() {
        assert_eq!(
            dump("FROM a\nENV C x\\\\\nENV D y\n"),
            "(from \"a\")\n(env \"C\" \"x\\\\\\\\\" \"\")\n(env \"D\" \"y\" \"\")\n"
        );
    }

    #[test]
    fn flags_are_split_from_args() {
        assert_eq!(
            dump("COPY --from=\"a b\" --link x /y\n"),
            "(copy [\"--from=a b\" \"--link\"] \"x\" \"/y\")\n"
        );
    }

    #[test]
    fn heredocs_collect_their_bodies() {
        let ast =
            parse_ast("FROM a\nRUN <<EOF cat - <<-'END'\necho $x\nEOF\n\tbody\n\tEND\nRUN true\n")
                .expect("parses");
        let run = &ast.nodes[1];
        assert_eq!(run.heredocs.len(), 2);
        assert_eq!(run.heredocs[0].name, "EOF");
        assert!(run.heredocs[0].expand);
        assert_eq!(run.heredocs[0].content, "echo $x\n");
        assert_eq!(run.heredocs[1].name, "END");
        assert!(!run.heredocs[1].expand && run.heredocs[1].chomp);
        assert_eq!(run.heredocs[1].chomped_content(), "body\n");
        assert_eq!(run.end_line, 6);
        assert_eq!(ast.nodes[2].span, Span { line: 7, column: 1 });
    }

    #[test]
    fn unterminated_heredoc_is_an_error() {
        let e = parse_ast("FROM a\nRUN <<EOF\nhello\n").expect_err("unterminated");
        assert!(e.to_string().contains("unterminated heredoc"), "{e}");
        assert_eq!(e.span(), Some(Span { line: 2, column: 1 }));
    }

    #[test]
    fn spans_follow_continuations() {
        let ast = parse_ast("FROM a\n  COPY --chown=1 \\\n   src /dst\n").expect("parses");
        let copy = &ast.nodes[1];
        assert_eq!(copy.span, Span { line: 2, column: 3 });
        assert_eq!(copy.flags[0].span, Span { line: 2, column: 8 });
        assert_eq!(copy.words()[0].span, Span { line: 3, column: 4 });
        assert_eq!(copy.words()[1].span, Span { line: 3, column: 8 });
    }

    #[test]
    fn go_quote_matches_strconv() {
        assert_eq!(go_quote("a\"b\\\u{0}\u{7f}♥"), "\"a\\\"b\\\\\\x00\\x7f♥\"");
    }
}

//! Shell-style word processing: quote removal, escapes, `$VAR` / `${VAR...}` expansion and
//! word splitting, as BuildKit's `frontend/dockerfile/shell` does it (checked against the
//! `envVarTest` and `wordsTest` corpora).
//!
//! Supported forms: `$V`, `${V}`, `${V:-x}`, `${V-x}`, `${V:+x}`, `${V+x}`, `${V:?msg}`,
//! `${V?msg}`, `${V#p}`, `${V##p}`, `${V%p}`, `${V%%p}`, `${V/p/r}`, `${V//p/r}`. Patterns
//! know `*` and `?` (no bracket expressions, like BuildKit).

use std::collections::{BTreeSet, HashMap};

/// Why a word could not be processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// `${` without its `}`.
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    /// `${}`, `${:x}`, `${{x}`.
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    /// `${V/p` without the second `/`.
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    /// `${V:=x}` and other modifiers BuildKit does not support.
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    /// `${V?msg}` / `${V:?msg}` on an unset (or empty) variable.
    #[error("{name}: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The message given, or the default one.
        message: String,
    },
    /// A quote that is never closed.
    #[error("unexpected end of statement while looking for matching {0}")]
    Unterminated(&'static str),
    /// A bad `\` escape inside a `#`, `%` or `/` pattern.
    #[error("invalid pattern ({0}) in substitution")]
    InvalidPattern(String),
    /// `${a:-${a:-${a:-...}}}` nested deeper than [`MAX_NESTING`].
    #[error("substitutions nested more than {MAX_NESTING} deep")]
    TooDeep,
}

/// How deep `${...}` substitutions may nest. Expansion recurses once per level; BuildKit (Go,
/// growable stacks) has no limit, but 20,000 levels overflow a Rust thread's stack. Real
/// Dockerfiles nest a handful of levels; 64 levels take under 256 KB of stack even in a debug
/// build (2-4 KB a level, measured), far below a 2 MB worker thread's.
pub const MAX_NESTING: usize = 64;

/// A word processor. Fields mirror BuildKit's `shell.Lex` switches.
#[derive(Debug, Clone, Copy)]
pub struct Lex {
    /// The escape character (`\` or the `# escape=` one).
    pub escape: char,
    /// Keep quote characters in the result.
    pub raw_quotes: bool,
    /// Keep escape characters in the result.
    pub raw_escapes: bool,
    /// Treat quotes as ordinary characters.
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as written.
    pub skip_unset_env: bool,
}

impl Default for Lex {
    fn default() -> Self {
        Lex {
            escape: '\\',
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }
}

/// The result of processing one word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The word after quote removal and expansion (spaces kept).
    pub result: String,
    /// The same, split into words (expansions split on white space, quoted parts do not).
    pub words: Vec<String>,
    /// Variables that were referenced and set.
    pub matched: BTreeSet<String>,
    /// Variables that were referenced and not set.
    pub unmatched: BTreeSet<String>,
}

/// Variable lookup: `Some(value)` when set (possibly empty).
pub type Env<'a> = dyn Fn(&str) -> Option<String> + 'a;

impl Lex {
    /// A processor with the given escape character and default switches.
    pub fn new(escape: char) -> Lex {
        Lex {
            escape,
            ..Lex::default()
        }
    }

    /// Processes `word`, returning the full [`Expansion`].
    ///
    /// Fails on unterminated quotes, bad `${...}` syntax and `${V?}` on unset variables.
    pub fn process(&self, word: &str, env: &Env<'_>) -> Result<Expansion, ExpandError> {
        let mut sw = ShellWord {
            lex: *self,
            chars: word.chars().collect(),
            pos: 0,
            env,
            raw_escapes: self.raw_escapes,
            depth: 0,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        let (result, words) = sw.process_stop_on(None, self.raw_escapes)?;
        Ok(Expansion {
            result,
            words,
            matched: sw.matched,
            unmatched: sw.unmatched,
        })
    }

    /// Processes `word` into one string.
    ///
    /// Fails as [`Lex::process`] does.
    pub fn process_word(&self, word: &str, env: &Env<'_>) -> Result<String, ExpandError> {
        Ok(self.process(word, env)?.result)
    }

    /// Processes `word` into several words.
    ///
    /// Fails as [`Lex::process`] does.
    pub fn process_words(&self, word: &str, env: &Env<'_>) -> Result<Vec<String>, ExpandError> {
        Ok(self.process(word, env)?.words)
    }
}

struct ShellWord<'a, 'e> {
    lex: Lex,
    chars: Vec<char>,
    pos: usize,
    env: &'a Env<'e>,
    raw_escapes: bool,
    /// How many `process_stop_on` calls are active (nesting of `${...}`).
    depth: usize,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, c: char) {
        if c.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(c);
        }
    }
    fn add_raw_char(&mut self, c: char) {
        self.word.push(c);
        self.in_word = true;
    }
    fn add_string(&mut self, s: &str) {
        for c in s.chars() {
            self.add_char(c);
        }
    }
    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }
    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
        }
        self.words
    }
}

impl ShellWord<'_, '_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        let v = (self.env)(name);
        if v.is_some() {
            self.matched.insert(name.to_owned());
        } else {
            self.unmatched.insert(name.to_owned());
        }
        v
    }

    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ExpandError> {
        // Every level of nesting passes through here (a `${` inside a default, a pattern or a
        // replacement), so this one check bounds the recursion.
        if self.depth > MAX_NESTING {
            return Err(ExpandError::TooDeep);
        }
        self.depth += 1;
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let r = self.process_stop_on_inner(stop);
        self.raw_escapes = saved;
        self.depth -= 1;
        r
    }

    fn process_stop_on_inner(
        &mut self,
        stop: Option<char>,
    ) -> Result<(String, Vec<String>), ExpandError> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(c) = self.peek() {
            if stop == Some(c) {
                self.next();
                return Ok((result, words.finish()));
            }
            let special = c == '$' || (!self.lex.skip_process_quotes && (c == '\'' || c == '"'));
            if special {
                let tmp = match c {
                    '$' => self.process_dollar()?,
                    '\'' => self.process_single_quote()?,
                    _ => self.process_double_quote()?,
                };
                result.push_str(&tmp);
                if c == '$' {
                    words.add_string(&tmp);
                } else {
                    words.add_raw_string(&tmp);
                }
                continue;
            }
            self.next();
            if c == self.lex.escape {
                if self.raw_escapes {
                    words.add_raw_char(c);
                    result.push(c);
                }
                match self.next() {
                    None => break,
                    Some(n) => {
                        words.add_raw_char(n);
                        result.push(n);
                    }
                }
            } else {
                words.add_char(c);
                result.push(c);
            }
        }
        if let Some(s) = stop {
            return Err(if s == '}' {
                ExpandError::MissingBrace
            } else {
                ExpandError::MissingSlash
            });
        }
        Ok((result, words.finish()))
    }

    fn process_single_quote(&mut self) -> Result<String, ExpandError> {
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => return Err(ExpandError::Unterminated("single-quote")),
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, ExpandError> {
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => return Err(ExpandError::Unterminated("double-quote")),
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    result.push_str(&v);
                }
                Some(_) => {
                    let mut c = self.next().expect("peeked a character");
                    if c == self.lex.escape {
                        if self.raw_escapes {
                            result.push(c);
                        }
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.lex.escape => {
                                c = self.next().expect("peeked a character");
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(c);
                }
            }
        }
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && c.is_ascii_digit() {
                while let Some(d) = self.peek().filter(|d| d.is_ascii_digit()) {
                    name.push(d);
                    self.next();
                }
                return name;
            }
            if name.is_empty() && matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return c.to_string();
            }
            if !c.is_alphanumeric() && c != '_' {
                break;
            }
            name.push(c);
            self.next();
        }
        name
    }

    fn process_dollar(&mut self) -> Result<String, ExpandError> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.next();
        match self.peek() {
            None => return Err(ExpandError::MissingBrace),
            Some('{' | '}' | ':') => return Err(ExpandError::BadSubstitution),
            _ => {}
        }
        let name = self.process_name();
        let Some(mut ch) = self.next() else {
            return Err(ExpandError::MissingBrace);
        };
        let mut chs = ch.to_string();
        let mut null_is_unset = false;
        match ch {
            '}' => {
                return Ok(match self.get_env(&name) {
                    Some(v) => v,
                    None if self.lex.skip_unset_env => format!("${{{name}}}"),
                    None => String::new(),
                });
            }
            '/' => return self.process_replace(&name),
            ':' => {
                null_is_unset = true;
                let Some(n) = self.next() else {
                    return Err(ExpandError::MissingBrace);
                };
                ch = n;
                chs.push(n);
            }
            '+' | '-' | '?' | '#' | '%' => {}
            _ => return Err(ExpandError::UnsupportedModifier(chs)),
        }
        let raw = ch == '#' || ch == '%';
        let mut word = match self.process_stop_on(Some('}'), raw) {
            Ok((w, _)) => w,
            Err(e) if self.peek().is_none() => {
                return Err(
                    if matches!(e, ExpandError::MissingBrace | ExpandError::MissingSlash) {
                        ExpandError::MissingBrace
                    } else {
                        e
                    },
                );
            }
            Err(e) => return Err(e),
        };
        let value = self.get_env(&name);
        if self.lex.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}{chs}{word}}}"));
        }
        let empty = value
            .as_deref()
            .is_none_or(|v| null_is_unset && v.is_empty());
        match ch {
            '-' => Ok(if empty {
                word
            } else {
                value.unwrap_or_default()
            }),
            '+' => Ok(if empty { String::new() } else { word }),
            '?' => match value {
                None => Err(ExpandError::Required {
                    name,
                    message: if word.is_empty() {
                        "is not allowed to be unset".to_owned()
                    } else {
                        word
                    },
                }),
                Some(v) if null_is_unset && v.is_empty() => Err(ExpandError::Required {
                    name,
                    message: if word.is_empty() {
                        "is not allowed to be empty".to_owned()
                    } else {
                        word
                    },
                }),
                Some(v) => Ok(v),
            },
            '%' | '#' => {
                let greedy = word.starts_with(ch);
                if greedy {
                    word.remove(0);
                }
                let value = value.unwrap_or_default();
                if ch == '%' {
                    trim_suffix(&word, &value, greedy)
                } else {
                    trim_prefix(&word, &value, greedy)
                }
            }
            _ => Err(ExpandError::UnsupportedModifier(chs)),
        }
    }

    fn process_replace(&mut self, name: &str) -> Result<String, ExpandError> {
        let all = self.peek() == Some('/');
        if all {
            self.next();
        }
        let pattern = match self.process_stop_on(Some('/'), true) {
            Ok((p, _)) => p,
            Err(_) if self.peek().is_none() => return Err(ExpandError::MissingSlash),
            Err(e) => return Err(e),
        };
        let replacement = match self.process_stop_on(Some('}'), true) {
            Ok((r, _)) => r,
            Err(_) if self.peek().is_none() => return Err(ExpandError::MissingBrace),
            Err(e) => return Err(e),
        };
        let Some(value) = self.get_env(name) else {
            if self.lex.skip_unset_env {
                return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
            }
            return Ok(String::new());
        };
        let pat = Pattern::compile(&pattern, true)
            .ok_or_else(|| ExpandError::InvalidPattern(pattern.clone()))?;
        let v: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut pos = 0;
        let mut replaced = false;
        while pos <= v.len() {
            if replaced && !all {
                break;
            }
            match (pos..=v.len()).find_map(|s| pat.match_at(&v, s).map(|e| (s, e))) {
                Some((s, e)) => {
                    out.extend(&v[pos..s]);
                    out.push_str(&replacement);
                    replaced = true;
                    if e == s {
                        if let Some(c) = v.get(s) {
                            out.push(*c);
                        }
                        pos = s + 1;
                    } else {
                        pos = e;
                    }
                }
                None => break,
            }
        }
        if pos < v.len() {
            out.extend(&v[pos..]);
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Star,
    Any,
    Lit(char),
}

/// A `*`/`?` shell pattern, matched with regexp priorities (greedy or lazy stars).
struct Pattern {
    toks: Vec<Tok>,
    greedy: bool,
}

impl Pattern {
    /// `None` for a bad escape.
    fn compile(p: &str, greedy: bool) -> Option<Pattern> {
        let chars: Vec<char> = p.chars().collect();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => toks.push(Tok::Star),
                '?' => toks.push(Tok::Any),
                '\\' => {
                    // `\}` and `\/` inside ${} are escapes of the syntax, not of the pattern.
                    if matches!(chars.get(i + 1), Some('}' | '/')) {
                        i += 1;
                        continue;
                    }
                    match chars.get(i + 1) {
                        Some(&c @ ('*' | '?' | '\\')) => {
                            toks.push(Tok::Lit(c));
                            i += 1;
                        }
                        _ => return None,
                    }
                }
                c => toks.push(Tok::Lit(c)),
            }
            i += 1;
        }
        Some(Pattern { toks, greedy })
    }

    /// The end of the highest-priority match starting at `start`.
    fn match_at(&self, v: &[char], start: usize) -> Option<usize> {
        let mut memo = HashMap::new();
        self.m(0, start, v, &mut memo)
    }

    fn m(
        &self,
        p: usize,
        i: usize,
        v: &[char],
        memo: &mut HashMap<(usize, usize), Option<usize>>,
    ) -> Option<usize> {
        if p == self.toks.len() {
            return Some(i);
        }
        if let Some(r) = memo.get(&(p, i)) {
            return *r;
        }
        let r = match self.toks[p] {
            // Go's `.` does not match a newline.
            Tok::Any => (i < v.len() && v[i] != '\n')
                .then(|| self.m(p + 1, i + 1, v, memo))
                .flatten(),
            Tok::Lit(c) => (i < v.len() && v[i] == c)
                .then(|| self.m(p + 1, i + 1, v, memo))
                .flatten(),
            Tok::Star => {
                let max = v[i..]
                    .iter()
                    .position(|&c| c == '\n')
                    .map_or(v.len(), |n| i + n);
                if self.greedy {
                    (i..=max).rev().find_map(|e| self.m(p + 1, e, v, memo))
                } else {
                    (i..=max).find_map(|e| self.m(p + 1, e, v, memo))
                }
            }
        };
        memo.insert((p, i), r);
        r
    }
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, ExpandError> {
    let pat = Pattern::compile(pattern, greedy)
        .ok_or_else(|| ExpandError::InvalidPattern(pattern.to_owned()))?;
    let v: Vec<char> = value.chars().collect();
    Ok(match pat.match_at(&v, 0) {
        Some(end) => v[end..].iter().collect(),
        None => value.to_owned(),
    })
}

/// Reverses a pattern, keeping `\x` escapes in front of their character.
fn reverse_pattern(p: &str) -> String {
    let chars: Vec<char> = p.chars().collect();
    let mut units: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' && i + 1 < chars.len() {
            units.push(chars[i..i + 2].iter().collect());
            i += 2;
        } else {
            units.push(chars[i].to_string());
            i += 1;
        }
    }
    units.reverse();
    units.concat()
}

fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, ExpandError> {
    let rev: String = value.chars().rev().collect();
    let out = trim_prefix(&reverse_pattern(pattern), &rev, greedy)?;
    Ok(out.chars().rev().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "V" => Some("foo/bar/baz.tar.gz".to_owned()),
            "E" => Some(String::new()),
            _ => None,
        }
    }

    fn w(s: &str) -> Result<String, ExpandError> {
        Lex::new('\\').process_word(s, &env)
    }

    #[test]
    fn pattern_modifiers_trim_and_replace() {
        assert_eq!(w("${V#*/}").unwrap(), "bar/baz.tar.gz");
        assert_eq!(w("${V##*/}").unwrap(), "baz.tar.gz");
        assert_eq!(w("${V%.*}").unwrap(), "foo/bar/baz.tar");
        assert_eq!(w("${V%%.*}").unwrap(), "foo/bar/baz");
        assert_eq!(w("${V/\\//-}").unwrap(), "foo-bar/baz.tar.gz");
        assert_eq!(w("${V//\\//-}").unwrap(), "foo-bar-baz.tar.gz");
        assert_eq!(w("${V/ba?/X}").unwrap(), "foo/X/baz.tar.gz");
        assert_eq!(w("${NOPE#x}").unwrap(), "");
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        assert_eq!(
            w("${NOPE?need it}").unwrap_err().to_string(),
            "NOPE: need it"
        );
        assert_eq!(
            w("${E:?}").unwrap_err().to_string(),
            "E: is not allowed to be empty"
        );
        assert_eq!(w("${E?}").unwrap(), "");
    }

    #[test]
    fn skip_unset_keeps_references() {
        let lex = Lex {
            skip_unset_env: true,
            ..Lex::default()
        };
        assert_eq!(
            lex.process_word("$X ${Y} ${Z:-d} ${V%.gz}", &env).unwrap(),
            "$X ${Y} ${Z:-d} foo/bar/baz.tar"
        );
    }

    fn nested(levels: usize) -> String {
        format!("{}x{}", "${a:-".repeat(levels), "}".repeat(levels))
    }

    /// Issue 10: 20,000 nested `${a:-` overflowed the stack and aborted kiln.
    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        assert_eq!(w(&nested(20_000)), Err(ExpandError::TooDeep));
        assert_eq!(w(&"${a:-".repeat(20_000)), Err(ExpandError::TooDeep));
        assert_eq!(
            w(&format!("\"{}\"", nested(20_000))),
            Err(ExpandError::TooDeep)
        );
        assert_eq!(w(&nested(MAX_NESTING)), Ok("x".to_owned()));
        assert_eq!(w(&nested(MAX_NESTING + 1)), Err(ExpandError::TooDeep));
        // Patterns and replacements nest through the same path.
        let repl = format!("${{V/{}/y}}", nested(MAX_NESTING + 1));
        assert_eq!(w(&repl), Err(ExpandError::TooDeep));
        assert_eq!(
            ExpandError::TooDeep.to_string(),
            "substitutions nested more than 64 deep"
        );
    }

    /// The deepest allowed expansion fits in a small stack, so the limit protects every thread
    /// kiln parses on (tokio's workers have 2 MB).
    #[test]
    fn the_deepest_allowed_nesting_fits_in_256k_of_stack() {
        let word = nested(MAX_NESTING);
        let t = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || w(&word))
            .expect("spawn");
        assert_eq!(t.join().expect("no overflow"), Ok("x".to_owned()));
    }
}

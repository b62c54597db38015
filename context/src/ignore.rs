//! `.dockerignore` (and `--exclude`) patterns with BuildKit's semantics.
//!
//! BuildKit reads the file with `moby/patternmatcher/ignorefile.ReadAll` and matches with
//! `patternmatcher.MatchesOrParentMatches`; this module follows both:
//!
//! - a line starting with `#` (in column 1) is a comment; lines are trimmed, a UTF-8 BOM on the
//!   first line is dropped, `!` negates, the rest is cleaned like Go's `filepath.Clean` (a
//!   leading `..` stays, so it never matches) and loses one leading `/`;
//! - a pattern is matched against the whole `/`-separated path and against each of its parent
//!   directories, and the last matching pattern wins;
//! - a pattern compiles to one of four kinds, as `Pattern.compile` does: exact (no wildcard),
//!   prefix (`dir/**`, `a**`), suffix (a leading `**` with nothing else wild: `**/foo/bar`,
//!   `**file`, which also matches `myfile`) or a wildcard program (`*` and `?` never cross a
//!   `/`; `**/` is any number of directories, a trailing `**` anything; `[...]` a class);
//! - a malformed pattern (Go's `filepath.Match` reports `ErrBadPattern`, or the regexp BuildKit
//!   builds does not compile, as `[z-a]`) fails the build: [`Ignore::validate`] reports it.
//!
//! The BuildKit test tables are in `buildkit_cases.rs`, with the few intentional divergences.
//! `globset` does not fit: it has no suffix kind, treats `**` inside a name as `*`, and knows
//! `[!x]` as negation where Go reads a literal `!`.

use std::path::{Path, PathBuf};

/// A `.dockerignore` line BuildKit refuses.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    /// A line that is only `!` (moby/patternmatcher: `illegal exclusion pattern: "!"`).
    #[error("{}:{line}: illegal exclusion pattern: \"!\"", file.display())]
    BareExclusion {
        /// The `.dockerignore` file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A malformed pattern (Go's `filepath.ErrBadPattern`).
    #[error("{}:{line}: syntax error in pattern: {pattern}", file.display())]
    BadPattern {
        /// The `.dockerignore` file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The pattern as written.
        pattern: String,
    },
}

/// A compiled `.dockerignore` (also used for `--exclude`).
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    negate: bool,
    kind: Kind,
}

/// How a pattern matches (patternmatcher's `matchType`).
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// The path equals the pattern.
    Exact(String),
    /// The path starts with this (the pattern without its trailing `**`).
    Prefix(String),
    /// The path ends with this (the pattern without its leading `**`), or equals it without
    /// its leading `/`.
    Suffix(String),
    /// The whole path matches the program.
    Wild(Vec<Tok>),
    /// Malformed: matches nothing ([`Ignore::validate`] reports it).
    Bad,
}

/// One element of a wildcard program (the regexp patternmatcher builds).
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// This character.
    Lit(char),
    /// `?`: one character but `/` (`[^/]`).
    One,
    /// `*`: a run of characters without `/` (`[^/]*`).
    Star,
    /// `**` followed by more: nothing, or anything ending in `/` (`(.*/)?`).
    Dirs,
    /// `**` at the end after other wildcards: anything (`.*`).
    Rest,
    /// `[...]`, a regexp class: it can match `/`, as BuildKit's regexp does.
    Class {
        negate: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Ignore {
    /// Parses `.dockerignore` text as BuildKit's `ignorefile.ReadAll`. Malformed patterns match
    /// nothing here; call [`Ignore::validate`] where the file is read to report them.
    pub fn parse(dockerignore: &str) -> Ignore {
        let lines = read_lines(dockerignore);
        Ignore::from_lines(lines.iter().map(|(_, l)| l.as_str()))
    }

    /// Checks `.dockerignore` text read from `file` for lines BuildKit rejects: a bare `!`, or
    /// a malformed pattern.
    ///
    /// Fails with the first such line.
    pub fn validate(file: &Path, dockerignore: &str) -> std::result::Result<(), IgnoreError> {
        for (line, pat) in read_lines(dockerignore) {
            let body = pat.strip_prefix('!').unwrap_or(&pat);
            if pat.starts_with('!') && body.is_empty() {
                return Err(IgnoreError::BareExclusion {
                    file: file.to_path_buf(),
                    line,
                });
            }
            if compile(&go_clean(body)) == Kind::Bad {
                return Err(IgnoreError::BadPattern {
                    file: file.to_path_buf(),
                    line,
                    pattern: body.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Compiles patterns as `patternmatcher.New` does (trimmed, `!` negates, cleaned; empty
    /// ones and a bare `!` are skipped).
    pub fn from_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Ignore {
        let mut patterns = Vec::new();
        for line in lines {
            let line = line.trim();
            let (negate, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            if body.is_empty() {
                continue;
            }
            patterns.push(Pattern {
                negate,
                kind: compile(&go_clean(body)),
            });
        }
        Ignore { patterns }
    }

    /// True when nothing is ignored.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether some pattern re-includes (`!`), so that an ignored directory must still be
    /// walked.
    pub(crate) fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.negate)
    }

    /// Whether `rel` (relative to the context root, `/`-separated) is ignored: the last
    /// pattern that matches it or one of its parent directories decides. The root itself is
    /// never ignored.
    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        let _ = is_dir; // Docker cleans the trailing `/` off patterns: files and dirs match alike.
        let rel = crate::clean(rel);
        if rel.is_empty() {
            return false;
        }
        let mut ignored = false;
        for p in &self.patterns {
            // patternmatcher skips what cannot change the outcome; the result is the same as
            // "last match wins".
            if p.negate != ignored {
                continue;
            }
            let parents = rel.match_indices('/').map(|(i, _)| &rel[..i]);
            if p.kind.matches(&rel) || parents.into_iter().any(|d| p.kind.matches(d)) {
                ignored = !p.negate;
            }
        }
        ignored
    }

    /// The compiled kind of each pattern, for the BuildKit compile table.
    #[cfg(test)]
    pub(crate) fn kinds(&self) -> Vec<&'static str> {
        let name = |k: &Kind| match k {
            Kind::Exact(_) => "exact",
            Kind::Prefix(_) => "prefix",
            Kind::Suffix(_) => "suffix",
            Kind::Wild(_) => "regexp",
            Kind::Bad => "bad",
        };
        self.patterns.iter().map(|p| name(&p.kind)).collect()
    }
}

/// `ignorefile.ReadAll`: the patterns of a `.dockerignore` with their 1-based line numbers,
/// `!` kept in front, each cleaned and without one leading `/`.
fn read_lines(text: &str) -> Vec<(usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.starts_with('#') {
            continue;
        }
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let (invert, mut pat) = match line.strip_prefix('!') {
            Some(rest) => (true, rest.trim().to_owned()),
            None => (false, line.to_owned()),
        };
        if !pat.is_empty() {
            pat = go_clean(&pat);
            if pat.len() > 1 && pat.starts_with('/') {
                pat.remove(0);
            }
        }
        out.push((i + 1, if invert { format!("!{pat}") } else { pat }));
    }
    out
}

/// Go's `path.Clean`: `.` and empty elements go, `..` removes the element before it (and stays
/// at the start of a relative path), a trailing `/` goes; `""` becomes `.`.
pub fn go_clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match out.last() {
                Some(&l) if l != ".." => {
                    out.pop();
                }
                _ if rooted => {}
                _ => out.push(".."),
            },
            p => out.push(p),
        }
    }
    let body = out.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_owned(),
        (false, false) => body,
    }
}

/// Compiles a cleaned pattern as `Pattern.compile` does, after `New`'s check with Go's
/// `filepath.Match`.
fn compile(pattern: &str) -> Kind {
    if !crate::pattern_is_valid(pattern) {
        return Kind::Bad;
    }
    #[derive(PartialEq)]
    enum T {
        Exact,
        Prefix,
        Suffix,
        Wild,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::new();
    let mut typ = T::Exact;
    let (mut at, mut step) = (0, 0);
    while at < chars.len() {
        let ch = chars[at];
        at += 1;
        match ch {
            '*' if chars.get(at) == Some(&'*') => {
                at += 1;
                // `**/` is `**`.
                if chars.get(at) == Some(&'/') {
                    at += 1;
                }
                if at == chars.len() {
                    if typ == T::Exact {
                        typ = T::Prefix;
                    } else {
                        toks.push(Tok::Rest);
                        typ = T::Wild;
                    }
                } else {
                    toks.push(Tok::Dirs);
                    typ = T::Wild;
                }
                if step == 0 {
                    typ = T::Suffix;
                }
            }
            '*' => {
                toks.push(Tok::Star);
                typ = T::Wild;
            }
            '?' => {
                toks.push(Tok::One);
                typ = T::Wild;
            }
            '\\' => match chars.get(at) {
                Some(&c) => {
                    at += 1;
                    toks.push(Tok::Lit(c));
                    typ = T::Wild;
                }
                None => toks.push(Tok::Lit('\\')),
            },
            '[' => {
                let Some((class, used)) = class(&chars[at..]) else {
                    return Kind::Bad;
                };
                at += used;
                toks.push(class);
                typ = T::Wild;
            }
            ']' => {
                toks.push(Tok::Lit(']'));
                typ = T::Wild;
            }
            c => toks.push(Tok::Lit(c)),
        }
        step += 1;
    }
    match typ {
        T::Exact => Kind::Exact(pattern.to_owned()),
        T::Prefix => Kind::Prefix(pattern[..pattern.len() - 2].to_owned()),
        T::Suffix => Kind::Suffix(pattern[2..].to_owned()),
        T::Wild => Kind::Wild(toks),
    }
}

/// A class body after `[` as Go's regexp reads it (`\` escapes, `^` negates, `a-z` ranges);
/// the class and the characters used including `]`, or `None` when it does not compile (a
/// range whose end is below its start, no closing `]`).
fn class(p: &[char]) -> Option<(Tok, usize)> {
    let mut i = 0;
    let negate = p.first() == Some(&'^');
    if negate {
        i += 1;
    }
    let one = |i: usize| -> Option<(char, usize)> {
        match p.get(i)? {
            '\\' => Some((*p.get(i + 1)?, i + 2)),
            c => Some((*c, i + 1)),
        }
    };
    let mut ranges = Vec::new();
    loop {
        if p.get(i) == Some(&']') && !ranges.is_empty() {
            return Some((Tok::Class { negate, ranges }, i + 1));
        }
        let (lo, next) = one(i)?;
        i = next;
        let mut hi = lo;
        if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|c| *c != ']') {
            (hi, i) = one(i + 1)?;
        }
        if hi < lo {
            return None;
        }
        ranges.push((lo, hi));
    }
}

impl Kind {
    fn matches(&self, path: &str) -> bool {
        match self {
            Kind::Exact(p) => path == p,
            Kind::Prefix(p) => path.starts_with(p.as_str()),
            Kind::Suffix(s) => {
                path.ends_with(s.as_str()) || s.strip_prefix('/').is_some_and(|s| path == s)
            }
            Kind::Wild(toks) => {
                let name: Vec<char> = path.chars().collect();
                let mut memo = vec![None; (toks.len() + 1) * (name.len() + 1)];
                run(toks, &name, 0, 0, &mut memo)
            }
            Kind::Bad => false,
        }
    }
}

/// Whether `toks[t..]` matches all of `name[n..]`; `memo` keeps each (t, n) answer, so that
/// patterns with many stars stay polynomial.
fn run(toks: &[Tok], name: &[char], t: usize, n: usize, memo: &mut [Option<bool>]) -> bool {
    let slot = t * (name.len() + 1) + n;
    if let Some(hit) = memo[slot] {
        return hit;
    }
    let rest = &name[n..];
    let hit = match toks.get(t) {
        None => rest.is_empty(),
        Some(Tok::Lit(c)) => rest.first() == Some(c) && run(toks, name, t + 1, n + 1, memo),
        Some(Tok::One) => {
            rest.first().is_some_and(|c| *c != '/') && run(toks, name, t + 1, n + 1, memo)
        }
        Some(Tok::Class { negate, ranges }) => {
            rest.first()
                .is_some_and(|c| ranges.iter().any(|(lo, hi)| lo <= c && c <= hi) != *negate)
                && run(toks, name, t + 1, n + 1, memo)
        }
        Some(Tok::Star) => {
            let run_len = rest.iter().take_while(|c| **c != '/').count();
            (0..=run_len).any(|k| run(toks, name, t + 1, n + k, memo))
        }
        Some(Tok::Rest) => (0..=rest.len()).any(|k| run(toks, name, t + 1, n + k, memo)),
        Some(Tok::Dirs) => {
            run(toks, name, t + 1, n, memo)
                || rest
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c == '/')
                    .any(|(k, _)| run(toks, name, t + 1, n + k + 1, memo))
        }
    };
    memo[slot] = Some(hit);
    hit
}

#[cfg(test)]
#[path = "buildkit_cases.rs"]
mod buildkit_cases;

#[cfg(test)]
mod tests {
    use super::go_clean;

    #[test]
    fn paths_are_cleaned_as_go_cleans_them() {
        assert_eq!(go_clean("./Dockerfile"), "Dockerfile");
        assert_eq!(go_clean("ctx//sub/../Dockerfile"), "ctx/Dockerfile");
        assert_eq!(go_clean("/a/./b/"), "/a/b");
        assert_eq!(go_clean("../x"), "../x");
        assert_eq!(go_clean("/../x"), "/x");
        assert_eq!(go_clean(""), ".");
    }
}

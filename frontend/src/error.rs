//! Frontend errors: what went wrong, where (a [`Span`]), the quoted source line and a hint.
//!
//! [`Error`]'s `Display` renders
//!
//! ```text
//! Dockerfile:3:1: unknown instruction: RUNN
//!    3 | RUNN make
//!      | ^
//! hint: did you mean `RUN`?
//! ```

use crate::shell::ExpandError;
use graph::Span;
use std::fmt;

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Nothing but comments and blank lines.
    #[error("file with no instructions")]
    NoInstructions,
    /// A physical line longer than BuildKit's parser takes (BuildKit's message).
    #[error("dockerfile line greater than max allowed size of {limit}")]
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// A byte that is not UTF-8 outside a comment.
    #[error("invalid UTF-8 byte 0x{byte:02x}")]
    InvalidUtf8 {
        /// The first such byte of the line.
        byte: u8,
    },
    /// A parser directive given twice.
    #[error("only one {name} parser directive can be used")]
    DuplicateDirective {
        /// The directive.
        name: String,
    },
    /// `# escape=` with something other than `\` or `` ` ``.
    #[error("invalid escape token '{token}' does not match ` or \\")]
    InvalidEscape {
        /// The value given.
        token: String,
    },
    /// A heredoc whose delimiter never comes.
    #[error("unterminated heredoc `{name}`")]
    UnterminatedHeredoc {
        /// The delimiter.
        name: String,
    },
    /// A heredoc marker that cannot be lexed.
    #[error("bad heredoc `{word}`: {reason}")]
    BadHeredoc {
        /// The marker.
        word: String,
        /// Why.
        reason: String,
    },
    /// A heredoc where a destination is expected.
    #[error("{instruction} cannot use a heredoc as {what}")]
    HeredocNotAllowed {
        /// The instruction.
        instruction: String,
        /// `a destination`.
        what: String,
    },
    /// JSON form with a non-string element.
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    JsonNotStringArray,
    /// `ENV key` without a value.
    #[error("{instruction} must have two arguments")]
    MustHaveTwoArguments {
        /// ENV or LABEL.
        instruction: String,
    },
    /// `ENV a=b c`.
    #[error("syntax error - can't find = in {word:?}, must be of the form: name=value")]
    MissingEquals {
        /// The word without `=`.
        word: String,
    },
    /// An instruction keyword that does not exist.
    #[error("unknown instruction: {name}")]
    UnknownInstruction {
        /// The keyword as written.
        name: String,
    },
    /// A `--flag` the instruction does not take.
    #[error("unknown flag: --{flag} for {instruction}")]
    UnknownFlag {
        /// The instruction.
        instruction: String,
        /// The flag name.
        flag: String,
    },
    /// `--chown` without `=value`.
    #[error("missing a value on flag: --{flag}")]
    FlagMissingValue {
        /// The flag.
        flag: String,
    },
    /// A flag given twice.
    #[error("duplicate flag specified: --{flag}")]
    DuplicateFlag {
        /// The flag.
        flag: String,
    },
    /// A boolean flag with a value other than true/false.
    #[error("expecting boolean value for flag --{flag}, not: {value}")]
    BadBoolFlag {
        /// The flag.
        flag: String,
        /// The value given.
        value: String,
    },
    /// A flag value that makes no sense.
    #[error("invalid value for --{flag}: {value:?}: {reason}")]
    BadFlagValue {
        /// The flag.
        flag: String,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// Too few or too many arguments.
    #[error("{instruction} {expected}")]
    ArgumentCount {
        /// The instruction.
        instruction: String,
        /// `requires at least one argument`, `requires exactly one argument`...
        expected: &'static str,
    },
    /// `ENV =x`.
    #[error("{instruction} names can not be blank")]
    BlankName {
        /// The instruction.
        instruction: String,
    },
    /// `FROM a b`.
    #[error("FROM requires either one or three arguments")]
    FromArguments,
    /// `FROM x AS 1bad`.
    #[error(
        "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
    )]
    InvalidStageName {
        /// The name.
        name: String,
    },
    /// Two stages with one name.
    #[error("duplicate stage name {name:?}")]
    DuplicateStageName {
        /// The name.
        name: String,
    },
    /// An instruction before the first FROM (other than ARG).
    #[error("{instruction} before the first FROM: no build stage in current context")]
    NoStage {
        /// The instruction.
        instruction: String,
    },
    /// `ONBUILD ONBUILD`.
    #[error("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")]
    OnbuildChain,
    /// `ONBUILD FROM`, `ONBUILD MAINTAINER`.
    #[error("{instruction} isn't allowed as an ONBUILD trigger")]
    OnbuildNotAllowed {
        /// The trigger.
        instruction: String,
    },
    /// A bad HEALTHCHECK.
    #[error("{0}")]
    Healthcheck(String),
    /// A word that does not expand.
    #[error("failed to process {:?}: {source}", shorten(word))]
    Expand {
        /// The word as written.
        word: String,
        /// Why.
        #[source]
        source: ExpandError,
    },
    /// `COPY --from=x` / `FROM x` / `--mount from=x` naming a stage index that does not exist.
    #[error("invalid stage index {index} in {instruction}: only {count} stage(s) before it")]
    BadStageIndex {
        /// The instruction.
        instruction: String,
        /// The index.
        index: usize,
        /// How many stages precede it.
        count: usize,
    },
    /// A stage that refers to itself or a later stage by name.
    #[error("stage {name:?} cannot be used here: it is not defined before this instruction")]
    StageNotYetDefined {
        /// The stage.
        name: String,
    },
    /// `--from` naming neither a stage nor an image that exists.
    #[error("{instruction} --from={name}: no stage or image named {name:?}")]
    UnknownStage {
        /// The instruction (`COPY`, `RUN --mount`).
        instruction: String,
        /// The name.
        name: String,
    },
    /// `--target` that is not a stage.
    #[error("target stage {target:?} could not be found")]
    UnknownTarget {
        /// The target.
        target: String,
    },
    /// `lower` was not given the base image the Dockerfile needs.
    #[error("base image {reference:?} was not resolved")]
    MissingBaseImage {
        /// The reference.
        reference: String,
    },
    /// An empty base name after expansion.
    #[error("base name ({name}) should not be blank")]
    BlankBaseName {
        /// The name as written.
        name: String,
    },
    /// A bad `EXPOSE` value.
    #[error("invalid port specification {port:?}: {reason}")]
    BadPort {
        /// The value.
        port: String,
        /// Why.
        reason: String,
    },
    /// A bad `--platform`.
    #[error("invalid platform {value:?}: expected os/arch[/variant]")]
    BadPlatform {
        /// The value.
        value: String,
    },
    /// A `kiln import --change` that is not allowed.
    #[error(
        "{instruction} is not supported by --change (allowed: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, WORKDIR, VOLUME, STOPSIGNAL)"
    )]
    ChangeNotAllowed {
        /// The instruction.
        instruction: String,
    },
    /// A `SHELL` that is not in JSON form.
    #[error("SHELL requires the arguments to be in JSON form")]
    ShellNotJson,
    /// A bad `RUN --mount`.
    #[error("invalid --mount {value:?}: {reason}")]
    BadMount {
        /// The mount spec.
        value: String,
        /// Why.
        reason: String,
    },
}

/// A frontend error with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(Box<Inner>);

/// The fields of an [`Error`] (boxed to keep `Result`s small).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inner {
    kind: ErrorKind,
    span: Option<Span>,
    file: String,
    line_text: Option<String>,
    hint: Option<String>,
}

impl std::ops::Deref for Error {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl std::ops::DerefMut for Error {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.0
    }
}

impl Error {
    /// An error of `kind` at `span`.
    pub fn new(kind: ErrorKind, span: Option<Span>) -> Error {
        Error(Box::new(Inner {
            kind,
            span,
            file: "Dockerfile".to_owned(),
            line_text: None,
            hint: None,
        }))
    }

    /// Adds a `hint:` line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    /// Sets the file name used in the message (`Dockerfile` by default).
    pub fn with_file_name(mut self, name: &str) -> Error {
        self.file = name.to_owned();
        self
    }

    /// Quotes the offending line from `source` (if the error has a span).
    pub fn with_source(mut self, source: &str) -> Error {
        if let Some(span) = self.span {
            let source = source.strip_prefix('\u{feff}').unwrap_or(source);
            self.line_text = source
                .split('\n')
                .nth(span.line.saturating_sub(1) as usize)
                .map(|l| l.trim_end_matches('\r').to_owned());
        }
        self
    }

    /// Moves the error to `span` (an ONBUILD trigger's error belongs to the FROM line that
    /// fired it) and drops the quoted line, which [`Error::with_source`] sets again.
    pub(crate) fn relocated(mut self, span: Span) -> Error {
        self.span = Some(span);
        self.line_text = None;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// Where, if known.
    pub fn span(&self) -> Option<Span> {
        self.span
    }

    /// The hint, if any.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// The message without location, source line or hint.
    pub fn message(&self) -> String {
        self.kind.to_string()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.span {
            Some(s) => write!(f, "{}:{}:{}: {}", self.file, s.line, s.column, self.kind)?,
            None => write!(f, "{}: {}", self.file, self.kind)?,
        }
        if let (Some(s), Some(text)) = (self.span, &self.line_text) {
            let num = s.line.to_string();
            let pad = " ".repeat(num.len());
            let text = shorten(text);
            // Tabs are kept so the caret lines up with the quoted text.
            let lead: String = text
                .chars()
                .take((s.column.saturating_sub(1) as usize).min(QUOTE_MAX))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(f, "\n {num} | {text}\n {pad} | {lead}^")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Expand { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// How much of a word or source line a message quotes: a 1 MB line must not become a 1 MB
/// error message.
const QUOTE_MAX: usize = 160;

/// `s`, or its first [`QUOTE_MAX`] characters and `…`.
fn shorten(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(QUOTE_MAX) {
        Some((at, _)) => format!("{}…", &s[..at]).into(),
        None => s.into(),
    }
}

/// The closest candidate to `word` (case-insensitive edit distance), if it is close enough
/// to be a plausible typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(&w, &c.to_ascii_lowercase());
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    let (d, c) = best?;
    let limit = (w.chars().count() / 3).max(1) + usize::from(w.len() > 5);
    (d <= limit).then_some(c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Optimal string alignment: a swap of two neighbours counts as one edit (`form`/`from`).
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_location_line_caret_and_hint() {
        let e = Error::new(
            ErrorKind::UnknownInstruction {
                name: "RUNN".into(),
            },
            Some(Span { line: 2, column: 3 }),
        )
        .with_source("FROM a\n  RUNN make\n")
        .with_hint("did you mean `RUN`?");
        assert_eq!(
            e.to_string(),
            "Dockerfile:2:3: unknown instruction: RUNN\n 2 |   RUNN make\n   |   ^\nhint: did you mean `RUN`?"
        );
    }

    #[test]
    fn suggests_close_names_only() {
        let names = ["from", "run", "copy", "workdir"];
        assert_eq!(suggest("RUNN", names), Some("run"));
        assert_eq!(suggest("wrokdir", names), Some("workdir"));
        assert_eq!(suggest("banana", names), None);
    }
}

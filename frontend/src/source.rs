//! A Dockerfile's bytes as text.
//!
//! BuildKit reads a Dockerfile as bytes and passes them through: a Latin-1 `é` in a comment is
//! dropped with the comment, and one in a `RUN` line reaches the shell unchanged. kiln's parser
//! works on UTF-8 text, so [`decode`] accepts bytes that are not UTF-8 where BuildKit never
//! looks at them (comment lines, including comments inside a continuation) and refuses them
//! everywhere else with the line and column, rather than changing what a command would run.

use crate::ast;
use crate::error::Error;
use graph::Span;

/// Decodes a Dockerfile. Lines that are not UTF-8 are decoded lossily (`U+FFFD` for each bad
/// sequence) when they are comments, which the parser ignores.
///
/// Fails with [`crate::ErrorKind::InvalidUtf8`] at the line and column of the first byte that
/// is not UTF-8 on a line the parser reads (an instruction, a continuation, heredoc content).
pub fn decode(bytes: &[u8]) -> Result<String, Error> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok(text.to_owned());
    }
    let mut text = String::with_capacity(bytes.len());
    let mut bad = Vec::new();
    for (i, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
        match std::str::from_utf8(line) {
            Ok(l) => text.push_str(l),
            Err(e) => {
                let valid = &line[..e.valid_up_to()];
                let column = String::from_utf8_lossy(valid).chars().count() as u32 + 1;
                let span = Span {
                    line: i as u32 + 1,
                    column,
                };
                bad.push((span, line[e.valid_up_to()]));
                text.push_str(&String::from_utf8_lossy(line));
            }
        }
    }
    match ast::parse_ast_checked(&text, &bad) {
        Err(e) if matches!(e.kind(), crate::ErrorKind::InvalidUtf8 { .. }) => {
            Err(e.with_source(&text))
        }
        // Any other error is the parser's to report when the text is parsed.
        _ => Ok(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(bytes: &[u8]) -> Error {
        decode(bytes).expect_err("not UTF-8 outside a comment")
    }

    /// Issue 10: docker builds a Dockerfile with a Latin-1 byte in a comment.
    #[test]
    fn latin1_in_comments_is_accepted() {
        let text = decode(b"# caf\xe9\nFROM a\n  # \xff\xfe\nRUN true \\\n # caf\xe9\n  && echo\n")
            .expect("comments only");
        let df = crate::parse(&text).expect("parses");
        assert_eq!(df.stages.len(), 1);
        assert!(text.starts_with("# caf\u{fffd}\n"));
    }

    #[test]
    fn latin1_in_an_instruction_names_line_and_column() {
        let e = err(b"FROM a\nRUN echo caf\xe9\n");
        assert_eq!(
            e.span(),
            Some(Span {
                line: 2,
                column: 13
            })
        );
        assert_eq!(e.message(), "invalid UTF-8 byte 0xe9");
        let shown = e.to_string();
        assert!(
            shown.starts_with("Dockerfile:2:13: invalid UTF-8 byte 0xe9"),
            "{shown}"
        );
        assert!(shown.contains("RUN echo caf\u{fffd}"), "{shown}");
    }

    #[test]
    fn latin1_in_a_continuation_or_heredoc_is_refused() {
        let e = err(b"FROM a\nRUN echo \\\n  \xe9\n");
        assert_eq!(e.span(), Some(Span { line: 3, column: 3 }));
        let e = err(b"FROM a\nRUN <<EOF\n# \xe9 is content here\nEOF\n");
        assert_eq!(e.span(), Some(Span { line: 3, column: 3 }));
    }

    #[test]
    fn multibyte_text_before_the_bad_byte_counts_as_one_column_each() {
        let e = err("FROM a\nLABEL k=\"é"
            .as_bytes()
            .iter()
            .chain(b"\xff\"\n")
            .copied()
            .collect::<Vec<u8>>()
            .as_slice());
        assert_eq!(
            e.span(),
            Some(Span {
                line: 2,
                column: 11
            })
        );
    }

    #[test]
    fn other_errors_are_left_to_the_parser() {
        // An unknown instruction after a Latin-1 comment: decode succeeds, parse reports it.
        let text = decode(b"# \xe9\nFROM a\nRUNN x\n").expect("decodes");
        let e = crate::parse(&text).expect_err("unknown instruction");
        assert_eq!(e.span(), Some(Span { line: 3, column: 1 }));
    }
}

//! Parser limits on hostile Dockerfiles (issue 10): very long lines, deep nesting, bytes that
//! are not UTF-8. Each case asserts the message and the span.

use frontend::{ErrorKind, Span};

fn at(line: u32, column: u32) -> Option<Span> {
    Some(Span { line, column })
}

/// BuildKit's scanner takes a line of 65,535 bytes and its newline, and refuses one byte more
/// with "dockerfile line greater than max allowed size of 65535".
#[test]
fn a_line_over_65535_bytes_is_refused_with_buildkits_message() {
    let label = |n: usize| format!("LABEL k={}", "v".repeat(n - "LABEL k=".len()));
    let ok = format!("FROM a\n{}\n", label(65_535));
    assert!(frontend::parse(&ok).is_ok());
    let long = format!("FROM a\n{}\nRUN true\n", label(65_536));
    let e = frontend::parse(&long).expect_err("65,536 bytes");
    assert_eq!(e.kind(), &ErrorKind::LineTooLong { limit: 65_535 });
    assert_eq!(e.span(), at(2, 1));
    assert!(
        e.to_string()
            .starts_with("Dockerfile:2:1: dockerfile line greater than max allowed size of 65535"),
        "{e}"
    );
}

#[test]
fn a_1mb_line_gives_a_short_error_naming_its_line() {
    let src = format!("FROM a\n# fine\nRUN echo {}\n", "x".repeat(1 << 20));
    let e = frontend::parse(&src).expect_err("1 MB line");
    assert_eq!(e.span(), at(3, 1));
    let shown = e.to_string();
    assert!(shown.len() < 1000, "the message quotes the whole line");
    assert!(shown.contains(" 3 | RUN echo xxx"), "{shown}");
    // Comments and heredoc bodies are lines too, as in BuildKit's scanner.
    let e = frontend::parse(&format!("FROM a\n#{}\n", "c".repeat(70_000))).expect_err("comment");
    assert_eq!(e.span(), at(2, 1));
}

#[test]
fn twenty_thousand_nested_expansions_are_an_error_with_the_span() {
    // On one line the line limit refuses it first; split over continuation lines it reaches
    // the expander, which stops at shell::MAX_NESTING.
    let levels = 20_000;
    let one_line = format!(
        "FROM a\nENV X={}x{}\n",
        "${a:-".repeat(levels),
        "}".repeat(levels)
    );
    let e = frontend::parse(&one_line).expect_err("100 kB line");
    assert_eq!(e.span(), at(2, 1));
    let split = format!(
        "FROM a\nENV X={}x{}\n",
        "${a:-\\\n".repeat(levels),
        "}".repeat(levels)
    );
    let df = frontend::parse(&split).expect("parses: expansion happens when lowering");
    let opts = frontend::BuildOptions::new(cache::oci::Platform::host());
    let bases = [(
        "a".to_owned(),
        frontend::BaseImage {
            manifest: cache::oci::Digest::of(b"a"),
            config: cache::oci::ImageConfig::empty(&cache::oci::Platform::host()),
        },
    )]
    .into();
    let e = frontend::lower(&df, &opts, &bases).expect_err("too deep");
    assert_eq!(e.span(), at(2, 5));
    assert!(
        e.to_string()
            .contains("substitutions nested more than 64 deep"),
        "{e}"
    );
}

#[test]
fn a_latin1_comment_parses_and_a_latin1_instruction_names_line_and_column() {
    let text = frontend::decode(b"FROM a\n# na\xefve caf\xe9\nRUN echo ok\n").expect("comment");
    let df = frontend::parse(&text).expect("parses");
    assert_eq!(df.stages[0].instructions.len(), 1);
    let e = frontend::decode(b"FROM a\nRUN echo caf\xe9\n").expect_err("RUN line");
    assert_eq!(e.kind(), &ErrorKind::InvalidUtf8 { byte: 0xe9 });
    assert_eq!(e.span(), at(2, 13));
}

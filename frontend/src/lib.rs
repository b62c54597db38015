//! kiln's Dockerfile frontend: text in, build graph out.
//!
//! Pure: no filesystem, no network, no clock. Base image configs and build args come in as data.
#![deny(missing_docs)]

pub mod ast;
pub mod error;
pub mod instructions;
pub mod shell;

pub use error::{Error, ErrorKind};
pub use instructions::{Command, Dockerfile, Instruction, Stage};
pub use solver::graph::Span;

/// Parses a Dockerfile into stages of typed instructions.
///
/// Fails with the line and column of the first syntax error (unknown instruction or flag,
/// bad arguments, unterminated heredoc, no FROM...).
pub fn parse(source: &str) -> Result<Dockerfile, Error> {
    let tree = ast::parse_ast(source).map_err(|e| e.with_source(source))?;
    instructions::from_ast(tree, source).map_err(|e| e.with_source(source))
}

//! kiln's Dockerfile frontend: text in, build graph out.
//!
//! Pure: no filesystem, no network, no clock. Base image configs and build args come in as data.
#![deny(missing_docs)]

pub mod ast;
pub mod error;
pub mod shell;

pub use error::{Error, ErrorKind};

/// Parses a Dockerfile (temporary: AST only).
pub fn parse(source: &str) -> Result<ast::Ast, Error> {
    ast::parse_ast(source).map_err(|e| e.with_source(source))
}

//! kiln's Dockerfile frontend: text in, build graph out.
//!
//! Pure: no filesystem, no network, no clock. Base image configs and build args come in as data.
#![deny(missing_docs)]

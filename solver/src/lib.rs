//! kiln's solver: runs a build graph.
//!
//! - [`graph`]: the build graph IR that the frontend produces (source, exec and file ops, each
//!   with its Dockerfile span and progress name) and the template of the final image.
//!
//! The solver depends on `cache` (store, layers, images) and `executor` (sandboxes). It never
//! parses Dockerfiles and never prints: progress leaves as events.
#![deny(missing_docs)]

pub mod graph;

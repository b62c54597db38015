//! The leaf every crate that touches `KILN_ROOT` shares: where things live ([`Dir`]), how a
//! file is replaced ([`write_atomic`]) and how sizes are read and printed ([`size`]).
//!
//! It depends on nothing in the workspace, so `cache`, `executor`, `solver` and `cli` can all
//! use it without a new edge between them.

mod atomic;
mod layout;
pub mod size;

pub use atomic::{commit, sync_dir, write_atomic, write_atomic_with};
pub use layout::{Dir, LOCK_FILE};

//! kiln's executor: runs processes in Linux namespace sandboxes.
//!
//! This crate is a leaf: it knows nothing of images or Dockerfiles. Callers hand it explicit
//! specs (lower directories, upper directory, argv, env, user) and get processes back.
//! Every `unsafe` block lives in `sys`.
#![deny(missing_docs)]

pub mod net;

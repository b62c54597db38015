//! kiln's storage layer: everything that is kept on disk under `KILN_ROOT` or sent over the wire.
//!
//! - [`oci`]: the OCI types (digests, descriptors, manifests, indexes, image configs) every other
//!   crate uses. Nothing else in the workspace redefines them.
//! - [`reference`]: image references with docker's normalisation.
//! - [`store`]: the content-addressed blob store (`blobs/sha256/<hex>`), atomic and verified.
//!
//! This crate is a leaf: it depends on no other workspace crate. It never prints and never reads
//! environment variables; the caller passes every path in.
#![deny(missing_docs)]

pub mod oci;
pub mod reference;

//! kiln's storage layer: everything that is kept on disk under `KILN_ROOT` or sent over the wire.
//!
//! - [`oci`]: the OCI types (digests, descriptors, manifests, indexes, image configs) every other
//!   crate uses. Nothing else in the workspace redefines them.
//! - [`reference`]: image references with docker's normalisation.
//! - [`store`]: the content-addressed store (`blobs/sha256/<hex>`, atomic and verified), locks
//!   and temp space; the entry point to everything below, which adds `impl Store` blocks.
//! - [`layer`]: directory -> deterministic layer tar ([`layer::writer`]) and safe
//!   tar -> directory ([`layer::apply`]).
//! - [`snapshot`]: layers in the store (tar blob + extracted snapshot dir): commit and unpack.
//! - [`image`]: image configs, manifests and name refs.
//! - [`records`]: build cache records.
//! - [`compress`]: memoized, multi-core gzip/zstd copies of layers.
//! - [`archive`]: `save` to an OCI layout + docker-archive tar.
//! - [`usage`]: disk usage of the store by kind (`kiln system df`).
//! - [`gc`]: `kiln prune` and garbage collection of unreferenced blobs and snapshots.
//! - [`remote`]: remote build cache (`--cache-to`/`--cache-from`): export to and lazy import
//!   from registries and OCI layout directories, inline caches, cache mount contents.
//!
//! In: directories (overlay upper dirs), tar streams, configs. Out: digests, snapshot paths,
//! images, archives. This crate is a leaf: it depends on no other workspace crate. It never
//! prints and never reads environment variables; the caller passes every path in.
#![deny(missing_docs)]

pub mod archive;
pub mod blocking;
pub mod compress;
pub mod export;
pub mod gc;
pub mod image;
pub mod layer;
pub mod oci;
pub mod records;
pub mod reference;
pub mod registry;
pub mod remote;
pub mod snapshot;
pub mod store;
pub mod usage;

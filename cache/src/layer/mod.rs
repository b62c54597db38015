//! Layer tars: [`writer`] turns a directory in overlayfs format into a deterministic tar;
//! [`apply`] safely turns a tar back into such a directory.
//!
//! The `tar` crate is only the codec (headers, PAX records, the stream reader). The directory
//! walk and the extraction are ours: `append_dir_all` follows symlinks and duplicates
//! hardlinks, and `unpack` loses devices, FIFOs and sub-second times.

pub mod apply;
pub mod writer;

/// Prefix of a whiteout entry in a layer tar (`dir/.wh.name` deletes `dir/name`).
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker in a layer tar (`dir/.wh..wh..opq`).
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Overlay xattr prefixes: overlay-internal state (the kernel's, and fuse-overlayfs's
/// `user.fuseoverlayfs.*`), never carried in a tar.
pub(crate) fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name.starts_with(b"user.fuseoverlayfs.")
}

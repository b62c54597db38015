//! COPY/ADD/WORKDIR inside the `__init` process's private mount namespace.

use crate::spec::CopySpec;

/// Why a COPY/ADD/WORKDIR task failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Placeholder until the copy engine lands.
    #[error("COPY is not implemented yet")]
    Unimplemented,
}

/// Runs the tasks of `spec` on its root.
pub(crate) fn run(_spec: &CopySpec) -> Result<(), crate::init::InitError> {
    Err(CopyError::Unimplemented.into())
}

//! Building the command that starts a sandbox: `kiln_exe __init <spec-json>`.

use std::path::Path;
use std::process::Command;

use crate::spec::InitSpec;

/// `kiln_exe __init <spec-json>`; the caller sets stdio and spawns it (std or tokio).
///
/// Fails only if the spec cannot be serialised (a path that is not UTF-8).
pub fn command(kiln_exe: &Path, spec: &InitSpec) -> std::io::Result<Command> {
    let json = serde_json::to_string(spec).map_err(std::io::Error::other)?;
    let mut cmd = Command::new(kiln_exe);
    cmd.arg("__init").arg(json);
    Ok(cmd)
}

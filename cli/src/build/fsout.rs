//! `-o type=local` and `-o type=tar`: the result's root filesystem, with its attestations as
//! files beside it, laid out and named as BuildKit v0.24's local and tar exporters do
//! (checked against it, see `tests/it/attest_files.rs`):
//!
//! - one platform: the files at the top, `provenance.json` and each SBOM under its scanner's
//!   file name next to them;
//! - several platforms: a directory per platform (`linux_amd64/`, `linux_arm64_v8/`), each
//!   with its files and its own attestations;
//! - `platform-split=false`: a local output puts every platform's files at the top (a path
//!   two platforms both hold is an error) and names each attestation after its platform,
//!   `provenance.linux_amd64.json`; a tar output keeps the directories and renames alike;
//!   `platform-split=true` gives a local output of one platform its directory too;
//! - `attestation-prefix=P` puts `P` before every attestation file's name;
//! - attestation files have mode 0600, dated SOURCE_DATE_EPOCH when set, else the build's
//!   time.

use super::output::{Context, Dest, platform_dir};
use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};

/// The local and tar exporters' options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsOpts {
    /// `platform-split`: unset means split when there are several platforms.
    pub split: Option<bool>,
    /// `attestation-prefix`.
    pub prefix: String,
}

/// An attestation's file name: `prefix` before the name its statement has, and with
/// `platform` (several platforms, not split) the platform directory's name before the
/// extension (`sbom.spdx.json` becomes `sbom.spdx.linux_amd64.json`).
pub fn attestation_name(name: &str, prefix: &str, platform: Option<&str>) -> String {
    let name = format!("{prefix}{name}");
    match platform {
        None => name,
        Some(p) => match name.rfind('.').filter(|&i| !name[i..].contains('/')) {
            Some(i) => format!("{}.{p}{}", &name[..i], &name[i..]),
            None => format!("{name}.{p}"),
        },
    }
}

/// The attestation files of image `n` (none without attestations), named as in the output.
fn statement_files(
    cx: &Context<'_>,
    n: usize,
    img: &cache::image::Image,
    opts: &FsOpts,
    suffix: bool,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let Some(attest) = cx.attest else {
        return Ok(Vec::new());
    };
    let platform = platform(cx, n, img);
    let files = cache::export::rootfs::regular_files(cx.store, img).with_context(|| {
        format!(
            "reading the files of {} for attestations",
            img.manifest_digest
        )
    })?;
    let dir = platform_dir(&platform);
    let mut out = Vec::new();
    for (name, bytes) in attest.files(&platform, &files)? {
        let name = attestation_name(&name, &opts.prefix, suffix.then_some(dir.as_str()));
        if out.iter().any(|(n, _)| n == &name) {
            bail!("duplicate attestation path name {name}");
        }
        out.push((name, bytes));
    }
    Ok(out)
}

fn platform(cx: &Context<'_>, n: usize, img: &cache::image::Image) -> cache::oci::Platform {
    cx.platforms
        .get(n)
        .cloned()
        .unwrap_or_else(|| cache::export::platform_of(img))
}

/// When attestation files are dated: SOURCE_DATE_EPOCH, else now (whole seconds).
fn stamp(cx: &Context<'_>) -> u64 {
    match cx.epoch {
        Some(e) => e.max(0) as u64,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

/// Writes one attestation file: mode 0600, dated `mtime`.
fn write_statement(path: &Path, bytes: &[u8], mtime: u64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
    kroot::write_atomic_with(path, 0o600, |f| {
        f.write_all(bytes)?;
        f.set_modified(when)
    })
    .with_context(|| format!("writing {}", path.display()))
}

/// `-o type=local,dest=DIR`.
///
/// Fails when a file cannot be written, or, not split, when two platforms hold one path.
pub fn write_local(cx: &Context<'_>, dir: &Path, opts: &FsOpts) -> anyhow::Result<()> {
    let multi = cx.images.len() > 1;
    let split = opts.split.unwrap_or(multi);
    let mtime = stamp(cx);
    if multi && !split {
        // BuildKit refuses to let one platform's file replace another's.
        let mut seen: std::collections::BTreeMap<String, String> = Default::default();
        for (n, img) in cx.images.iter().enumerate() {
            let p = platform(cx, n, img).to_string();
            for (path, _) in cache::export::rootfs::regular_files(cx.store, img)? {
                if let Some(first) = seen.insert(path.clone(), p.clone()) {
                    bail!(
                        "cannot overwrite {path} from {first} with {p} when split option is disabled"
                    );
                }
            }
        }
    }
    for (n, img) in cx.images.iter().enumerate() {
        let d: PathBuf = if split {
            dir.join(platform_dir(&platform(cx, n, img)))
        } else {
            dir.to_owned()
        };
        cache::export::rootfs::write_dir(cx.store, img, &d)?;
        for (name, bytes) in statement_files(cx, n, img, opts, multi && !split)? {
            write_statement(&d.join(name), &bytes, mtime)?;
        }
    }
    Ok(())
}

/// `-o type=tar,dest=FILE|-`: several platforms always get their directories (as BuildKit's
/// tar exporter), `platform-split=false` only renames the attestations.
///
/// Fails when a layer cannot be read or the destination written.
pub fn write_tar(cx: &Context<'_>, dest: &Dest, opts: &FsOpts) -> anyhow::Result<()> {
    let multi = cx.images.len() > 1;
    let suffix = multi && !opts.split.unwrap_or(true);
    let images: Vec<(&cache::image::Image, String)> = cx
        .images
        .iter()
        .enumerate()
        .map(|(n, img)| {
            let sub = if multi {
                platform_dir(&platform(cx, n, img))
            } else {
                String::new()
            };
            (img, sub)
        })
        .collect();
    let mut extra = Vec::new();
    for (n, (img, sub)) in images.iter().enumerate() {
        for (name, bytes) in statement_files(cx, n, img, opts, suffix)? {
            let path = match sub.as_str() {
                "" => name,
                sub => format!("{sub}/{name}"),
            };
            extra.push((path, bytes));
        }
    }
    let mtime = stamp(cx);
    super::output::write_to(dest, |w| {
        cache::export::rootfs::write_tars_with(
            cx.store,
            &images,
            &extra,
            mtime,
            w,
            &dest.to_string(),
        )
        .map_err(Into::into)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attestation_names_take_the_prefix_and_the_platform_before_the_extension() {
        assert_eq!(
            attestation_name("provenance.json", "", None),
            "provenance.json"
        );
        assert_eq!(
            attestation_name("provenance.json", "att-", None),
            "att-provenance.json"
        );
        assert_eq!(
            attestation_name("provenance.json", "", Some("linux_amd64")),
            "provenance.linux_amd64.json"
        );
        assert_eq!(
            attestation_name("sbom.spdx.json", "p.", Some("linux_arm64_v8")),
            "p.sbom.spdx.linux_arm64_v8.json"
        );
    }
}

//! `kiln build --cache-to` / `--cache-from` values (BuildKit's CSV syntax):
//!
//! - `type=registry,ref=REF[,mode=min|max][,mounts=true][,compression=gzip|zstd]
//!   [,compression-level=N]` (`--cache-from` also takes a bare `REF`);
//! - `type=local,dest=DIR[,mode=..][,mounts=..]` / `type=local,src=DIR`: an OCI layout;
//! - `type=inline` (`--cache-to` only): the records in the pushed image's config; import it
//!   with `--cache-from type=registry,ref=IMAGE`.

use anyhow::{Context as _, bail};
use cache::compress::{Codec, Compression};
use cache::reference::Reference;
use cache::remote::import::Imported;
use cache::remote::{CacheLocation, Mode};
use cache::store::Store;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// A `--cache-to` destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheTo {
    /// A registry or layout export.
    Export {
        /// Where.
        location: CacheLocation,
        /// min or max.
        mode: Mode,
        /// Export cache mount contents too.
        mounts: bool,
        /// Layer compression (`compression=gzip|zstd`, `compression-level=N`); None: the
        /// registry default (gzip 6).
        compression: Option<Compression>,
    },
    /// `type=inline`.
    Inline,
}

fn fields(spec: &str) -> anyhow::Result<(String, BTreeMap<String, String>)> {
    let mut kv = BTreeMap::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            bail!("invalid cache option `{part}` in `{spec}`: expected KEY=VALUE");
        };
        if kv
            .insert(k.trim().to_owned(), v.trim().to_owned())
            .is_some()
        {
            bail!("cache option `{k}` given twice in `{spec}`");
        }
    }
    let ty = kv
        .remove("type")
        .with_context(|| format!("`{spec}`: missing type= (registry, local or inline)"))?;
    Ok((ty, kv))
}

fn take(kv: &mut BTreeMap<String, String>, key: &str, spec: &str) -> anyhow::Result<String> {
    kv.remove(key)
        .filter(|v| !v.is_empty())
        .with_context(|| format!("`{spec}`: missing {key}="))
}

fn reference(s: &str) -> anyhow::Result<CacheLocation> {
    let r = Reference::parse(s).with_context(|| format!("invalid cache reference {s:?}"))?;
    Ok(CacheLocation::Registry(r))
}

fn no_more(kv: &BTreeMap<String, String>, spec: &str) -> anyhow::Result<()> {
    if let Some(k) = kv.keys().next() {
        bail!("`{spec}`: unknown cache option `{k}`");
    }
    Ok(())
}

fn flag(v: Option<String>, key: &str, spec: &str) -> anyhow::Result<bool> {
    match v.as_deref() {
        None | Some("false") => Ok(false),
        Some("true") | Some("") => Ok(true),
        Some(o) => bail!("`{spec}`: {key}={o}: expected true or false"),
    }
}

/// Parses one `--cache-to` value.
///
/// Fails on an unknown type or option, or a missing ref/dest.
pub fn parse_cache_to(spec: &str) -> anyhow::Result<CacheTo> {
    let (ty, mut kv) = fields(spec)?;
    let location = match ty.as_str() {
        "inline" => {
            no_more(&kv, spec)?;
            return Ok(CacheTo::Inline);
        }
        "registry" => reference(&take(&mut kv, "ref", spec)?)?,
        "local" => CacheLocation::Layout(PathBuf::from(take(&mut kv, "dest", spec)?)),
        other => bail!("`{spec}`: unknown cache type `{other}` (registry, local or inline)"),
    };
    let mode = match kv.remove("mode").as_deref() {
        None | Some("min") => Mode::Min,
        Some("max") => Mode::Max,
        Some(o) => bail!("`{spec}`: mode={o}: expected min or max"),
    };
    let mounts = flag(kv.remove("mounts"), "mounts", spec)?;
    let codec = match kv.remove("compression").as_deref() {
        None => None,
        Some("gzip") => Some(Codec::Gzip),
        Some("zstd") => Some(Codec::Zstd),
        Some(o) => bail!("`{spec}`: compression={o}: expected gzip or zstd"),
    };
    let level = match kv.remove("compression-level") {
        None => None,
        Some(l) => Some(
            l.parse::<i32>()
                .ok()
                .filter(|l| (0..=22).contains(l))
                .with_context(|| format!("`{spec}`: compression-level={l}: expected 0-22"))?,
        ),
    };
    let compression = match (codec, level) {
        (None, None) => None,
        (c, l) => {
            let codec = c.unwrap_or(Codec::Gzip);
            let default = match codec {
                Codec::Gzip => 6,
                Codec::Zstd => 3,
            };
            Some(Compression {
                codec,
                level: l.unwrap_or(default),
            })
        }
    };
    // BuildKit options kiln accepts and has no use for (layers are always OCI media types
    // and never recompressed once made).
    for k in ["force-compression", "oci-mediatypes"] {
        kv.remove(k);
    }
    no_more(&kv, spec)?;
    Ok(CacheTo::Export {
        location,
        mode,
        mounts,
        compression,
    })
}

/// Parses one `--cache-from` value.
///
/// Fails on an unknown type or option, or a missing ref/src.
pub fn parse_cache_from(spec: &str) -> anyhow::Result<CacheLocation> {
    if !spec.contains('=') {
        return reference(spec);
    }
    let (ty, mut kv) = fields(spec)?;
    let loc = match ty.as_str() {
        "registry" => reference(&take(&mut kv, "ref", spec)?)?,
        "local" => CacheLocation::Layout(PathBuf::from(take(&mut kv, "src", spec)?)),
        other => {
            bail!("`{spec}`: unknown cache type `{other}` for --cache-from (registry or local)")
        }
    };
    no_more(&kv, spec)?;
    Ok(loc)
}

/// Reads the `--cache-from` caches (manifest and config only); a cache that cannot be read
/// is a warning on stderr, not an error (the first CI run has no cache yet).
///
/// Fails only when the registry configuration cannot be loaded.
pub async fn import(
    from: &[CacheLocation],
    cfg: &crate::registry::RegistryConfig,
) -> anyhow::Result<Arc<Imported>> {
    let opts = cfg.options()?;
    let (imported, errors) = Imported::load(from, &opts).await;
    let mut err = std::io::stderr().lock();
    for e in &errors {
        let _ = writeln!(err, "warning: cache not imported: {e:#}", e = Chain(e));
    }
    if !from.is_empty() {
        let _ = writeln!(
            err,
            "importing cache manifest from {}: {} records",
            from.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            imported.len()
        );
    }
    Ok(Arc::new(imported))
}

/// Exports `solved` to every `--cache-to` registry or layout destination and prints one line
/// per destination: records, blobs, what was uploaded, mounted or already there.
///
/// Fails when an export fails.
pub async fn export(
    store: &Store,
    to: &[CacheTo],
    solved: &solver::remote::Solved,
    imported: Option<&Imported>,
    cfg: &crate::registry::RegistryConfig,
) -> anyhow::Result<()> {
    for t in to {
        let CacheTo::Export {
            location,
            mode,
            mounts,
            compression,
        } = t
        else {
            continue;
        };
        let start = Instant::now();
        let plan = solved.export_plan(*mode, *mounts, store);
        let mut opts = cfg.options()?;
        if let Some(c) = compression {
            opts.compression = *c;
        }
        let r = cache::remote::export::export(store, &plan, location, imported, &opts)
            .await
            .with_context(|| format!("exporting cache to {location}"))?;
        let _ = writeln!(
            std::io::stderr().lock(),
            "exporting cache to {location} done: {} records{}, {} blobs ({} uploaded, {} mounted, \
             {} present), {} mounts, manifest {} in {:.3}s",
            r.records,
            match r.skipped {
                0 => String::new(),
                n => format!(" ({n} left out: layers unavailable)"),
            },
            r.blobs,
            r.uploaded,
            r.mounted,
            r.present,
            plan.mounts.len(),
            r.manifest,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The records of the final image for `type=inline`, written into a copy of the image.
///
/// Fails on store errors.
pub fn attach_inline(
    store: &Store,
    solved: &solver::remote::Solved,
) -> anyhow::Result<cache::image::Image> {
    let plan = solved.export_plan(Mode::Min, false, store);
    cache::remote::inline::attach(store, &solved.image, &plan.records)
        .context("writing the inline cache into the image config")
}

/// `e` and its sources joined with `: `.
struct Chain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(s) = cur {
            write!(f, ": {s}")?;
            cur = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_export_with_mode_and_mounts() {
        let c = parse_cache_to("type=registry,ref=127.0.0.1:5000/app:cache,mode=max,mounts=true")
            .unwrap();
        let CacheTo::Export {
            location: CacheLocation::Registry(r),
            mode,
            mounts,
            compression: None,
        } = c
        else {
            panic!("{c:?}")
        };
        assert_eq!(r.to_string(), "127.0.0.1:5000/app:cache");
        assert_eq!((mode, mounts), (Mode::Max, true));
    }

    #[test]
    fn local_inline_and_defaults() {
        assert_eq!(
            parse_cache_to("type=local,dest=/tmp/c").unwrap(),
            CacheTo::Export {
                location: CacheLocation::Layout("/tmp/c".into()),
                mode: Mode::Min,
                mounts: false,
                compression: None,
            }
        );
        assert_eq!(parse_cache_to("type=inline").unwrap(), CacheTo::Inline);
        assert_eq!(
            parse_cache_from("type=local,src=/tmp/c").unwrap(),
            CacheLocation::Layout("/tmp/c".into())
        );
        assert!(matches!(
            parse_cache_from("127.0.0.1:5000/app:cache").unwrap(),
            CacheLocation::Registry(_)
        ));
    }

    #[test]
    fn compression_and_level() {
        let c = |s: &str| match parse_cache_to(s).unwrap() {
            CacheTo::Export { compression, .. } => compression,
            CacheTo::Inline => panic!("{s}"),
        };
        let zstd = Some(Compression {
            codec: Codec::Zstd,
            level: 3,
        });
        assert_eq!(c("type=local,dest=d,compression=zstd"), zstd);
        assert_eq!(
            c("type=local,dest=d,compression-level=1"),
            Some(Compression {
                codec: Codec::Gzip,
                level: 1
            })
        );
        let e = parse_cache_to("type=local,dest=d,compression=lz4").unwrap_err();
        assert!(e.to_string().contains("compression=lz4"), "{e}");
        let e = parse_cache_to("type=local,dest=d,compression-level=x").unwrap_err();
        assert!(e.to_string().contains("expected 0-22"), "{e}");
    }

    #[test]
    fn bad_values_name_the_option() {
        let e = parse_cache_to("type=registry,ref=a/b,mode=all").unwrap_err();
        assert!(e.to_string().contains("mode=all"), "{e}");
        let e = parse_cache_to("type=s3,ref=x").unwrap_err();
        assert!(e.to_string().contains("unknown cache type `s3`"), "{e}");
        let e = parse_cache_to("type=registry").unwrap_err();
        assert!(e.to_string().contains("missing ref="), "{e}");
        let e = parse_cache_from("type=local,dest=/x").unwrap_err();
        assert!(e.to_string().contains("missing src="), "{e}");
        let e = parse_cache_to("type=inline,mode=max").unwrap_err();
        assert!(e.to_string().contains("unknown cache option `mode`"), "{e}");
    }
}

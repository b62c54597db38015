//! `kiln build --cache-to` / `--cache-from` values (BuildKit's CSV syntax):
//!
//! - `type=registry,ref=REF[,mode=min|max][,mounts=true][,compression=gzip|zstd]
//!   [,compression-level=N]` (`--cache-from` also takes a bare `REF`);
//! - `type=local,dest=DIR[,mode=..][,mounts=..]` / `type=local,src=DIR`: an OCI layout;
//! - `type=inline` (`--cache-to` only): the records in the pushed image's config; import it
//!   with `--cache-from type=registry,ref=IMAGE`;
//! - `type=s3,bucket=B,region=R[,name=N;N2][,prefix=..][,blobs_prefix=..]
//!   [,manifests_prefix=..][,endpoint_url=URL][,use_path_style=true][,access_key_id=..]
//!   [,secret_access_key=..][,session_token=..][,upload_parallelism=N][,touch_refresh=24h]`
//!   (BuildKit's attributes; credentials also from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
//!   `AWS_SESSION_TOKEN` or the shared credentials file, `AWS_PROFILE`);
//! - `type=azblob,account_url=URL[,account_name=A][,container=C][,name=..][,prefix=..]
//!   [,blobs_prefix=..][,manifests_prefix=..][,secret_access_key=KEY][,upload_parallelism=N]`
//!   (SharedKey with the account key, or a SAS token in the URL's query string).
//!
//! Every `--cache-to` also takes `ignore-error=true`: a failed export is a warning. Registry
//! and local exports take `image-manifest=true|false` (kiln always writes an OCI image
//! manifest, which is what `true` asks BuildKit for).

use anyhow::{Context as _, bail};
use cache::compress::{Codec, Compression};
use cache::reference::Reference;
use cache::remote::azblob::{AzAuth, AzConfig};
use cache::remote::import::Imported;
use cache::remote::object::{Backend, DEFAULT_PART_SIZE, ObjectLocation, Secret};
use cache::remote::s3::{S3Config, S3Credentials};
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
        /// `ignore-error=true`: a failed export is a warning.
        ignore_error: bool,
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
    parse_cache_to_with(spec, &ProcessEnv)
}

/// Where object store settings not given as options come from (the process environment,
/// or a fixed map in tests).
pub trait Env {
    /// The variable's value, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// [`Env`] of the running process.
#[derive(Debug)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

fn parse_cache_to_with(spec: &str, env: &dyn Env) -> anyhow::Result<CacheTo> {
    let (ty, mut kv) = fields(spec)?;
    let location = match ty.as_str() {
        "inline" => {
            no_more(&kv, spec)?;
            return Ok(CacheTo::Inline);
        }
        "registry" => reference(&take(&mut kv, "ref", spec)?)?,
        "local" => CacheLocation::Layout(PathBuf::from(take(&mut kv, "dest", spec)?)),
        "s3" => s3_location(&mut kv, spec, env)?,
        "azblob" => azblob_location(&mut kv, spec, env)?,
        other => {
            bail!("`{spec}`: unknown cache type `{other}` (registry, local, s3, azblob or inline)")
        }
    };
    let ignore_error = flag(kv.remove("ignore-error"), "ignore-error", spec)?;
    // BuildKit's `image-manifest=true` asks registry and local exports for an OCI image
    // manifest instead of an index: kiln's export is that manifest either way.
    if matches!(ty.as_str(), "registry" | "local") {
        flag(kv.remove("image-manifest"), "image-manifest", spec)?;
    }
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
        ignore_error,
    })
}

/// Parses one `--cache-from` value.
///
/// Fails on an unknown type or option, or a missing ref/src.
pub fn parse_cache_from(spec: &str) -> anyhow::Result<CacheLocation> {
    parse_cache_from_with(spec, &ProcessEnv)
}

fn parse_cache_from_with(spec: &str, env: &dyn Env) -> anyhow::Result<CacheLocation> {
    if !spec.contains('=') {
        return reference(spec);
    }
    let (ty, mut kv) = fields(spec)?;
    let loc = match ty.as_str() {
        "registry" => reference(&take(&mut kv, "ref", spec)?)?,
        "local" => CacheLocation::Layout(PathBuf::from(take(&mut kv, "src", spec)?)),
        "s3" => s3_location(&mut kv, spec, env)?,
        "azblob" => azblob_location(&mut kv, spec, env)?,
        other => {
            bail!(
                "`{spec}`: unknown cache type `{other}` for --cache-from (registry, local, s3 or azblob)"
            )
        }
    };
    // Export-only options BuildKit users pass to both flags.
    for k in [
        "mode",
        "ignore-error",
        "touch_refresh",
        "upload_parallelism",
    ] {
        kv.remove(k);
    }
    no_more(&kv, spec)?;
    Ok(loc)
}

/// The options every object store shares (BuildKit's names and defaults per backend).
fn object_location(
    kv: &mut BTreeMap<String, String>,
    spec: &str,
    env: &dyn Env,
    backend: Backend,
    default_blobs: &str,
    default_manifests: &str,
) -> anyhow::Result<CacheLocation> {
    let names: Vec<String> = kv
        .remove("name")
        .map(|n| {
            n.split(';')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .filter(|v: &Vec<String>| !v.is_empty())
        .unwrap_or_else(|| vec!["buildkit".to_owned()]);
    let upload_parallelism = match kv.remove("upload_parallelism") {
        None => 4,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| {
                format!("`{spec}`: upload_parallelism={v}: expected a positive integer")
            })?,
    };
    let part_size = env
        .var("KILN_OBJECT_PART_SIZE")
        .and_then(|v| kroot::size::parse(&v).ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_PART_SIZE);
    let touch_refresh = match (&backend, kv.remove("touch_refresh")) {
        (Backend::S3(_), None) => Some(std::time::Duration::from_secs(24 * 3600)),
        (Backend::S3(_), Some(v)) => {
            Some(cache::remote::s3::parse_duration(&v).with_context(|| {
                format!("`{spec}`: touch_refresh={v}: expected a duration such as 24h or 30m")
            })?)
        }
        (Backend::Azblob(_), Some(_)) => {
            bail!("`{spec}`: touch_refresh is an s3 option")
        }
        (Backend::Azblob(_), None) => None,
    };
    Ok(CacheLocation::Object(Box::new(ObjectLocation {
        backend,
        prefix: kv.remove("prefix").unwrap_or_default(),
        blobs_prefix: kv
            .remove("blobs_prefix")
            .unwrap_or_else(|| default_blobs.to_owned()),
        manifests_prefix: kv
            .remove("manifests_prefix")
            .unwrap_or_else(|| default_manifests.to_owned()),
        names,
        upload_parallelism,
        touch_refresh,
        part_size,
    })))
}

/// `type=s3`: bucket and region from the options or `AWS_BUCKET` / `AWS_REGION`
/// (`AWS_DEFAULT_REGION`), credentials from the options, the environment, or the shared
/// credentials file (as the AWS CLI and SDKs find them).
fn s3_location(
    kv: &mut BTreeMap<String, String>,
    spec: &str,
    env: &dyn Env,
) -> anyhow::Result<CacheLocation> {
    let bucket = kv
        .remove("bucket")
        .or_else(|| env.var("AWS_BUCKET"))
        .with_context(|| format!("`{spec}`: missing bucket= (or $AWS_BUCKET)"))?;
    let region = kv
        .remove("region")
        .or_else(|| env.var("AWS_REGION"))
        .or_else(|| env.var("AWS_DEFAULT_REGION"))
        .with_context(|| format!("`{spec}`: missing region= (or $AWS_REGION)"))?;
    let endpoint_url = kv
        .remove("endpoint_url")
        .or_else(|| env.var("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env.var("AWS_ENDPOINT_URL"));
    let use_path_style = flag(kv.remove("use_path_style"), "use_path_style", spec)?;
    let key = kv.remove("access_key_id");
    let secret = kv.remove("secret_access_key");
    let token = kv.remove("session_token");
    let credentials = match (key, secret) {
        (Some(k), Some(s)) => Some(S3Credentials {
            access_key_id: k,
            secret_access_key: Secret(s),
            session_token: token.map(Secret),
        }),
        (Some(_), None) | (None, Some(_)) => {
            bail!("`{spec}`: access_key_id and secret_access_key go together")
        }
        (None, None) => aws_credentials(env)?,
    };
    object_location(
        kv,
        spec,
        env,
        Backend::S3(S3Config {
            bucket,
            region,
            endpoint_url,
            use_path_style,
            credentials,
        }),
        "blobs/",
        "manifests/",
    )
}

/// Credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, else the
/// profile `AWS_PROFILE` (default `default`) of `AWS_SHARED_CREDENTIALS_FILE` (default
/// `~/.aws/credentials`). None: anonymous requests.
fn aws_credentials(env: &dyn Env) -> anyhow::Result<Option<S3Credentials>> {
    if let (Some(k), Some(s)) = (
        env.var("AWS_ACCESS_KEY_ID"),
        env.var("AWS_SECRET_ACCESS_KEY"),
    ) {
        return Ok(Some(S3Credentials {
            access_key_id: k,
            secret_access_key: Secret(s),
            session_token: env.var("AWS_SESSION_TOKEN").map(Secret),
        }));
    }
    let Some(path) = env
        .var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| {
            env.var("HOME")
                .map(|h| PathBuf::from(h).join(".aws/credentials"))
        })
    else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let profile = env
        .var("AWS_PROFILE")
        .unwrap_or_else(|| "default".to_owned());
    let section = ini_section(&text, &profile);
    match (
        section.get("aws_access_key_id"),
        section.get("aws_secret_access_key"),
    ) {
        (Some(k), Some(s)) => Ok(Some(S3Credentials {
            access_key_id: k.clone(),
            secret_access_key: Secret(s.clone()),
            session_token: section.get("aws_session_token").cloned().map(Secret),
        })),
        _ if env.var("AWS_PROFILE").is_some() => bail!(
            "{}: profile [{profile}] has no aws_access_key_id and aws_secret_access_key",
            path.display()
        ),
        _ => Ok(None),
    }
}

/// The `key = value` lines of `[name]` in an INI file (`#` and `;` comments).
fn ini_section(text: &str, name: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = h.trim() == name;
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    out
}

/// `type=azblob`: the account URL (a SAS token may be its query string), the account name
/// (from the host `ACCOUNT.blob.core.windows.net`, or the path of an emulator URL such as
/// `http://127.0.0.1:10000/devstoreaccount1`), the container (`buildkit-cache` by default).
fn azblob_location(
    kv: &mut BTreeMap<String, String>,
    spec: &str,
    env: &dyn Env,
) -> anyhow::Result<CacheLocation> {
    let raw = kv
        .remove("account_url")
        .or_else(|| env.var("BUILDKIT_AZURE_STORAGE_ACCOUNT_URL"))
        .with_context(|| format!("`{spec}`: missing account_url="))?;
    let url =
        url::Url::parse(&raw).with_context(|| format!("`{spec}`: account_url={raw}: not a URL"))?;
    let host = url.host_str().unwrap_or_default();
    let from_url = match url.host() {
        Some(url::Host::Domain(_)) => host.split('.').next().map(str::to_owned),
        _ => url
            .path_segments()
            .and_then(|mut s| s.next())
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    };
    let account_name = kv
        .remove("account_name")
        .or_else(|| env.var("BUILDKIT_AZURE_STORAGE_ACCOUNT_NAME"))
        .or(from_url)
        .with_context(|| format!("`{spec}`: missing account_name= ({host} does not name it)"))?;
    let container = kv
        .remove("container")
        .or_else(|| env.var("BUILDKIT_AZURE_STORAGE_CONTAINER"))
        .unwrap_or_else(|| "buildkit-cache".to_owned());
    let auth = match (
        kv.remove("secret_access_key")
            .or_else(|| env.var("AZURE_STORAGE_KEY")),
        url.query().filter(|q| !q.is_empty()),
    ) {
        (Some(k), _) => AzAuth::SharedKey(Secret(k)),
        (None, Some(q)) => AzAuth::Sas(Secret(q.to_owned())),
        (None, None) => match env.var("AZURE_STORAGE_SAS_TOKEN") {
            Some(t) => AzAuth::Sas(Secret(t)),
            None => AzAuth::Anonymous,
        },
    };
    let mut account_url = url.clone();
    account_url.set_query(None);
    object_location(
        kv,
        spec,
        env,
        Backend::Azblob(AzConfig {
            account_url: account_url.to_string(),
            account_name,
            container,
            auth,
        }),
        "blobs",
        "manifests",
    )
}

/// Reads the `--cache-from` caches (manifest and config only); a cache that cannot be read
/// is a warning on stderr, not an error (the first CI run has no cache yet). `quiet` (`-q`)
/// leaves out the summary line, not the warnings.
///
/// Fails only when the registry configuration cannot be loaded.
pub async fn import(
    from: &[CacheLocation],
    cfg: &crate::registry::RegistryConfig,
    quiet: bool,
) -> anyhow::Result<Arc<Imported>> {
    let opts = cfg.options()?;
    let (imported, errors) = Imported::load(from, &opts).await;
    let mut err = std::io::stderr().lock();
    for e in &errors {
        let _ = writeln!(err, "warning: cache not imported: {e:#}", e = Chain(e));
    }
    if !from.is_empty() && !quiet {
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

/// `remote cache: N layers downloaded` on stderr when an imported cache had records (not
/// with `quiet`).
pub fn report_fetched(imported: Option<&Imported>, quiet: bool) {
    if let Some(i) = imported.filter(|i| !i.is_empty() && !quiet) {
        let _ = writeln!(
            std::io::stderr().lock(),
            "remote cache: {} layers downloaded",
            i.fetched()
        );
    }
}

/// Exports `solved` (one solve per platform: one cache holding every platform's records, as
/// BuildKit exports a multi-platform build) to every `--cache-to` registry, layout or object
/// store destination and prints one line per destination: records, blobs, what was
/// uploaded, mounted or already there (unless `quiet`; warnings are printed either way).
///
/// Fails when an export fails.
pub async fn export(
    store: &Store,
    to: &[CacheTo],
    solved: &[solver::remote::Solved],
    imported: Option<&Imported>,
    cfg: &crate::registry::RegistryConfig,
    quiet: bool,
) -> anyhow::Result<()> {
    for t in to {
        let CacheTo::Export {
            location,
            mode,
            mounts,
            compression,
            ignore_error,
        } = t
        else {
            continue;
        };
        let start = Instant::now();
        let plan = solver::remote::export_plan(solved, *mode, *mounts, store);
        let mut opts = cfg.options()?;
        if let Some(c) = compression {
            opts.compression = *c;
        }
        let r = match cache::remote::export::export(store, &plan, location, imported, &opts).await {
            Ok(r) => r,
            Err(e) if *ignore_error => {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "warning: exporting cache to {location} failed (ignore-error=true): {}",
                    Chain(&e)
                );
                continue;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("exporting cache to {location}"));
            }
        };
        if quiet {
            continue;
        }
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
            ignore_error: false,
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
                ignore_error: false,
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
        let e = parse_cache_to("type=gha,ref=x").unwrap_err();
        assert!(e.to_string().contains("unknown cache type `gha`"), "{e}");
        let e = parse_cache_to("type=registry").unwrap_err();
        assert!(e.to_string().contains("missing ref="), "{e}");
        let e = parse_cache_from("type=local,dest=/x").unwrap_err();
        assert!(e.to_string().contains("missing src="), "{e}");
        let e = parse_cache_to("type=inline,mode=max").unwrap_err();
        assert!(e.to_string().contains("unknown cache option `mode`"), "{e}");
    }
}

#[cfg(test)]
mod object_tests {
    use super::*;

    struct MapEnv(BTreeMap<&'static str, String>);

    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn env(pairs: &[(&'static str, &str)]) -> MapEnv {
        MapEnv(pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect())
    }

    fn object(c: CacheTo) -> (ObjectLocation, Mode, bool) {
        match c {
            CacheTo::Export {
                location: CacheLocation::Object(o),
                mode,
                ignore_error,
                ..
            } => (*o, mode, ignore_error),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn s3_takes_buildkits_attributes() {
        let spec = "type=s3,region=eu-west-1,bucket=b,name=main;pr-1,prefix=ci/,\
                    blobs_prefix=bl/,manifests_prefix=mf/,endpoint_url=http://127.0.0.1:9000,\
                    use_path_style=true,access_key_id=AK,secret_access_key=SK,session_token=T,\
                    upload_parallelism=8,touch_refresh=1h,mode=max,ignore-error=true";
        let (o, mode, ignore) = object(parse_cache_to_with(spec, &env(&[])).unwrap());
        assert_eq!((mode, ignore), (Mode::Max, true));
        assert_eq!(o.names, ["main", "pr-1"]);
        assert_eq!(o.manifest_key("main"), "ci/mf/main");
        assert_eq!(o.upload_parallelism, 8);
        assert_eq!(o.touch_refresh, Some(std::time::Duration::from_secs(3600)));
        let Backend::S3(c) = &o.backend else { panic!() };
        assert_eq!(c.endpoint_url.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(c.use_path_style);
        let cr = c.credentials.as_ref().unwrap();
        assert_eq!(
            (cr.access_key_id.as_str(), cr.secret_access_key.0.as_str()),
            ("AK", "SK")
        );
        assert_eq!(cr.session_token, Some(Secret("T".into())));
    }

    #[test]
    fn s3_credentials_from_env_then_shared_file_profile() {
        let spec = "type=s3,bucket=b";
        let e = parse_cache_to_with(spec, &env(&[])).unwrap_err();
        assert!(e.to_string().contains("missing region="), "{e}");
        let from_env = env(&[
            ("AWS_REGION", "us-east-2"),
            ("AWS_ACCESS_KEY_ID", "ENVKEY"),
            ("AWS_SECRET_ACCESS_KEY", "ENVSECRET"),
        ]);
        let (o, _, _) = object(parse_cache_to_with(spec, &from_env).unwrap());
        let Backend::S3(c) = &o.backend else { panic!() };
        assert_eq!(c.region, "us-east-2");
        assert_eq!(c.credentials.as_ref().unwrap().access_key_id, "ENVKEY");
        assert_eq!(o.names, ["buildkit"]);
        assert_eq!(o.manifest_key("buildkit"), "manifests/buildkit");

        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = DEF\naws_secret_access_key = DEFS\n\n\
             # team profile\n[ci]\naws_access_key_id=CIKEY\naws_secret_access_key=CIS\n\
             aws_session_token=CIT\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        for (profile, want) in [(None, "DEF"), (Some("ci"), "CIKEY")] {
            let mut vars = vec![("AWS_REGION", "r"), ("AWS_SHARED_CREDENTIALS_FILE", f)];
            vars.extend(profile.map(|p| ("AWS_PROFILE", p)));
            let (o, _, _) = object(parse_cache_to_with(spec, &env(&vars)).unwrap());
            let Backend::S3(c) = &o.backend else { panic!() };
            assert_eq!(c.credentials.as_ref().unwrap().access_key_id, want);
        }
        let vars = [
            ("AWS_REGION", "r"),
            ("AWS_SHARED_CREDENTIALS_FILE", f),
            ("AWS_PROFILE", "nope"),
        ];
        let e = parse_cache_to_with(spec, &env(&vars)).unwrap_err();
        assert!(e.to_string().contains("profile [nope]"), "{e}");
    }

    #[test]
    fn azblob_account_from_host_path_or_option_and_sas_from_query() {
        let (o, _, _) = object(
            parse_cache_to_with(
                "type=azblob,account_url=https://acct.blob.core.windows.net,secret_access_key=a2V5",
                &env(&[]),
            )
            .unwrap(),
        );
        let Backend::Azblob(c) = &o.backend else {
            panic!()
        };
        assert_eq!(
            (c.account_name.as_str(), c.container.as_str()),
            ("acct", "buildkit-cache")
        );
        assert_eq!(c.auth, AzAuth::SharedKey(Secret("a2V5".into())));
        assert_eq!(o.manifest_key("buildkit"), "manifests/buildkit");

        let from = parse_cache_from_with(
            "type=azblob,account_url=http://127.0.0.1:10000/devstoreaccount1?sv=1&sig=x,container=c,name=n,mode=max",
            &env(&[]),
        )
        .unwrap();
        let CacheLocation::Object(o) = from else {
            panic!()
        };
        let Backend::Azblob(c) = &o.backend else {
            panic!()
        };
        assert_eq!(c.account_name, "devstoreaccount1");
        assert_eq!(c.account_url, "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(c.auth, AzAuth::Sas(Secret("sv=1&sig=x".into())));
        let e = parse_cache_to_with(
            "type=azblob,account_url=http://h/a,touch_refresh=1h",
            &env(&[]),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("touch_refresh is an s3 option"),
            "{e}"
        );
    }
}

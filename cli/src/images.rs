//! Image commands: import, images, inspect, tag, rmi, save.

use anyhow::{Context as _, bail};
use cache::oci::ImageConfig;
use cache::store::{Image, Store};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// `kiln import` flags.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Apply a Dockerfile instruction to the config (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER,
    /// WORKDIR, VOLUME, STOPSIGNAL).
    #[arg(short = 'c', long = "change", value_name = "INSTR")]
    changes: Vec<String>,
    /// Root filesystem tarball (plain, gzip or zstd), or `-` for stdin.
    source: PathBuf,
    /// Name of the image.
    name: String,
}

fn resolve(store: &Store, name: &str) -> anyhow::Result<Image> {
    store
        .resolve(name)
        .with_context(|| format!("looking up image {name}"))?
        .with_context(|| format!("no such image: {name}"))
}

/// `kiln import`.
pub fn import(a: ImportArgs) -> anyhow::Result<()> {
    cache::reference::Reference::parse(&a.name)
        .with_context(|| format!("invalid image name {:?}", a.name))?;
    let mut config = ImageConfig::empty(&cache::oci::Platform::host());
    // One history entry for the one layer, so tools that pair history with layers line up.
    config.created = Some(solver::ops::CREATED.to_owned());
    config.history.push(cache::oci::History {
        created: Some(solver::ops::CREATED.to_owned()),
        created_by: Some("kiln import".to_owned()),
        comment: Some("imported from a root filesystem tarball".to_owned()),
        ..Default::default()
    });
    frontend::apply_changes(&mut config.config, &a.changes)
        .map_err(|e| anyhow::anyhow!("--change: {e}"))?;
    let store = crate::open_store()?;
    let _lock = store.lock_shared().context("locking the store")?;
    let image = if a.source == Path::new("-") {
        store.import_rootfs(io::stdin().lock(), config)
    } else {
        let f = std::fs::File::open(&a.source)
            .with_context(|| format!("opening {}", a.source.display()))?;
        store.import_rootfs(io::BufReader::new(f), config)
    }
    .with_context(|| format!("importing {}", a.source.display()))?;
    store
        .tag(&a.name, &image.manifest_digest)
        .with_context(|| format!("tagging {}", a.name))?;
    writeln!(io::stdout().lock(), "{}", image.manifest_digest)?;
    Ok(())
}

fn human(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.3}{}", units[u]).replace(".000", "")
    }
}

/// `kiln images [--digests]`.
pub fn list(digests: bool) -> anyhow::Result<()> {
    let store = crate::open_store()?;
    let mut out = io::stdout().lock();
    let digest_col = |v: &str| {
        if digests {
            format!(" {v:<71}")
        } else {
            String::new()
        }
    };
    writeln!(
        out,
        "{:<40} {:<16}{} {:<14} {:>10}",
        "REPOSITORY",
        "TAG",
        digest_col("DIGEST"),
        "IMAGE ID",
        "SIZE"
    )?;
    for (r, d) in store.list_images().context("listing images")? {
        let image = store
            .image(&d)
            .with_context(|| format!("reading image {d}"))?;
        let size: u64 = image.manifest.layers.iter().map(|l| l.size).sum();
        let name = r.familiar();
        let (repo, tag) = match name.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo.to_owned(), tag.to_owned()),
            _ => (name.clone(), "<none>".to_owned()),
        };
        // The registry digest recorded for this repository (see `kiln pull`).
        let repo_digest = cache::registry::repo_digests(&store, &d)
            .into_iter()
            .find_map(|rd| {
                let (name, digest) = rd.rsplit_once('@')?;
                (name == r.name()).then(|| digest.to_owned())
            })
            .unwrap_or_else(|| "<none>".to_owned());
        writeln!(
            out,
            "{repo:<40} {tag:<16}{} {:<14} {:>10}",
            digest_col(&repo_digest),
            d.short(),
            human(size)
        )?;
    }
    Ok(())
}

/// `kiln inspect` of an image: docker's shape (the caller prints an array).
pub fn inspect_value(name: &str) -> anyhow::Result<serde_json::Value> {
    let store = crate::open_store()?;
    let image = resolve(&store, name)?;
    let tags: Vec<String> = store
        .list_images()
        .context("listing images")?
        .into_iter()
        .filter(|(_, d)| *d == image.manifest_digest)
        .map(|(r, _)| r.familiar())
        .collect();
    let layers: Vec<serde_json::Value> = image
        .config
        .rootfs
        .diff_ids
        .iter()
        .zip(&image.manifest.layers)
        .map(|(diff, l)| serde_json::json!({ "DiffID": diff, "Digest": l.digest, "Size": l.size, "MediaType": l.media_type }))
        .collect();
    let doc = serde_json::json!({
        "Id": image.manifest_digest,
        "Digest": image.manifest_digest,
        "RepoTags": tags,
        "RepoDigests": cache::registry::repo_digests(&store, &image.manifest_digest),
        "ConfigDigest": image.config_digest,
        "Created": image.config.created,
        "Architecture": image.config.architecture,
        "Os": image.config.os,
        "Config": image.config.config,
        "RootFS": { "Type": image.config.rootfs.kind, "DiffIDs": image.config.rootfs.diff_ids },
        "Layers": layers,
        "Size": image.manifest.layers.iter().map(|l| l.size).sum::<u64>(),
        "History": image.config.history,
    });
    Ok(doc)
}

/// `kiln tag`.
pub fn tag(source: &str, target: &str) -> anyhow::Result<()> {
    let store = crate::open_store()?;
    let image = resolve(&store, source)?;
    store
        .tag(target, &image.manifest_digest)
        .with_context(|| format!("tagging {target}"))
}

/// `kiln rmi`: removes names (blobs stay until garbage collection).
pub fn rmi(names: &[String]) -> anyhow::Result<()> {
    let store = crate::open_store()?;
    let mut out = io::stdout().lock();
    for n in names {
        if !store.untag(n).with_context(|| format!("removing {n}"))? {
            bail!("no such image: {n}");
        }
        writeln!(out, "Untagged: {n}")?;
    }
    Ok(())
}

/// `kiln save`: written to a temp file beside the output, renamed when complete.
pub fn save(names: &[String], output: &Path) -> anyhow::Result<()> {
    let store = crate::open_store()?;
    // Save reads layers and writes compressed copies: prune must not run meanwhile.
    let _lock = store.lock_shared().context("locking the store")?;
    let mut images = Vec::new();
    for n in names {
        images.push((n.clone(), resolve(&store, n)?.manifest_digest));
    }
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir, output)?;
    let res = store
        .save(&images, io::BufWriter::new(&mut tmp.1))
        .with_context(|| format!("writing {}", output.display()));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp.0);
        return Err(e);
    }
    tmp.1
        .sync_all()
        .with_context(|| format!("writing {}", tmp.0.display()))?;
    std::fs::rename(&tmp.0, output).with_context(|| format!("renaming to {}", output.display()))?;
    Ok(())
}

fn tempfile_in(dir: &Path, output: &Path) -> anyhow::Result<(PathBuf, std::fs::File)> {
    let name = output
        .file_name()
        .map_or_else(|| "save".into(), |n| n.to_string_lossy().into_owned());
    let p = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let f = std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?;
    Ok((p, f))
}

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
    /// The platform the root filesystem is for (`linux/arm64`; default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
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
    let platform = match &a.platform {
        Some(p) => crate::registry::parse_platform(p)?,
        None => cache::oci::Platform::host(),
    };
    let mut config = ImageConfig::empty(&platform);
    // Dated as `docker import` dates its images: the time of the import (not 1970, which
    // `docker images` shows as decades old and `prune --filter until=` removes at once).
    // SOURCE_DATE_EPOCH from the environment wins, as in `kiln build`, so that an import
    // can be reproduced (dockerd cannot see its client's environment; README "Image dates").
    let created = executor::container::time::rfc3339(match crate::build::dates::env_epoch()? {
        Some(secs) => secs,
        None => i64::try_from(executor::container::time::now_secs()).unwrap_or(i64::MAX),
    });
    config.created = Some(created.clone());
    // One history entry for the one layer, so tools that pair history with layers line up.
    config.history.push(cache::oci::History {
        created: Some(created),
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

/// `kiln images` flags.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Show the registry digest of each image (from its last pull or push).
    #[arg(long)]
    digests: bool,
    /// Only show image ids.
    #[arg(short, long)]
    quiet: bool,
    /// Show full ids.
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Print each image through a Go template (`{{.Repository}}:{{.Tag}} {{.ID}}`; a leading
    /// `table` adds a header row).
    #[arg(long)]
    format: Option<String>,
    /// Only images of this repository (`busybox`, `busybox:1.36`).
    repository: Option<String>,
}

/// One `kiln images` row, with docker's `--format` field names.
fn image_row(
    store: &Store,
    r: &cache::reference::Reference,
    d: &cache::oci::Digest,
    full: bool,
) -> anyhow::Result<serde_json::Value> {
    let image = store
        .image(d)
        .with_context(|| format!("reading image {d}"))?;
    let size: u64 = image.manifest.layers.iter().map(|l| l.size).sum();
    let name = r.familiar();
    let (repo, tag) = match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_owned(), tag.to_owned()),
        _ => (name.clone(), "<none>".to_owned()),
    };
    // The registry digest recorded for this repository (see `kiln pull`).
    let repo_digest = cache::registry::repo_digests(store, d)
        .into_iter()
        .find_map(|rd| {
            let (name, digest) = rd.rsplit_once('@')?;
            (name == r.name()).then(|| digest.to_owned())
        })
        .unwrap_or_else(|| "<none>".to_owned());
    Ok(serde_json::json!({
        "Repository": repo,
        "Tag": tag,
        "Digest": repo_digest,
        "ID": if full { d.to_string() } else { d.short().to_owned() },
        "CreatedAt": image.config.created.clone().unwrap_or_default(),
        "Size": kroot::size::human_with_precision(size, 3),
    }))
}

/// The repository of a familiar name (`busybox:1` -> `busybox`, `host:5000/a` stays).
fn repo_of(familiar: &str) -> &str {
    familiar
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map_or(familiar, |(r, _)| r)
}

/// True when the image named `familiar` is selected by `kiln images WANTED`: every tag of a
/// repository, or exactly `repo:tag` when a tag is given (as docker).
fn selects(familiar: &str, wanted: &str) -> bool {
    let norm = cache::reference::Reference::parse(wanted)
        .map_or_else(|_| wanted.to_owned(), |r| r.familiar());
    if repo_of(wanted) != wanted {
        familiar == norm
    } else {
        repo_of(familiar) == repo_of(&norm)
    }
}

/// Docker's column titles for `images --format 'table ...'`.
const IMAGE_HEADERS: &[(&str, &str)] = &[
    ("Repository", "REPOSITORY"),
    ("Tag", "TAG"),
    ("Digest", "DIGEST"),
    ("ID", "IMAGE ID"),
    ("CreatedAt", "CREATED AT"),
    ("Size", "SIZE"),
];

/// `kiln images`.
pub fn list(a: &ListArgs) -> anyhow::Result<()> {
    let store = crate::open_store()?;
    let mut out = io::stdout().lock();
    let mut rows = Vec::new();
    for (r, d) in store.list_images().context("listing images")? {
        if a.repository
            .as_deref()
            .is_some_and(|w| !selects(&r.familiar(), w))
        {
            continue;
        }
        rows.push(image_row(&store, &r, &d, a.no_trunc)?);
    }
    if a.quiet {
        // One id per image, as docker prints them (an image with two names is listed once).
        let mut seen = std::collections::BTreeSet::new();
        for r in &rows {
            let id = r["ID"].as_str().unwrap_or_default();
            if seen.insert(id.to_owned()) {
                writeln!(out, "{id}")?;
            }
        }
        return Ok(());
    }
    if let Some(f) = &a.format {
        return crate::containers::print_rows(&mut out, f, IMAGE_HEADERS, &rows);
    }
    let digest_col = |v: &str| {
        if a.digests {
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
    for r in &rows {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
        writeln!(
            out,
            "{:<40} {:<16}{} {:<14} {:>10}",
            s("Repository"),
            s("Tag"),
            digest_col(&s("Digest")),
            s("ID"),
            s("Size")
        )?;
    }
    Ok(())
}

/// `kiln history` flags.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Only show image ids.
    #[arg(short, long)]
    quiet: bool,
    /// Don't truncate the CREATED BY column.
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Image.
    image: String,
}

/// `kiln history`: newest step first, as docker prints it; steps that made a layer show its
/// size, the newest one the image id (the others are `<missing>`, as for a pulled image).
pub fn history(a: &HistoryArgs) -> anyhow::Result<()> {
    let store = crate::open_store()?;
    let image = resolve(&store, &a.image)?;
    let mut layers = image.manifest.layers.iter();
    let mut rows = Vec::new();
    for h in &image.config.history {
        let size = if h.empty_layer {
            0
        } else {
            layers.next().map_or(0, |l| l.size)
        };
        rows.push((h, size));
    }
    let mut out = io::stdout().lock();
    if !a.quiet {
        writeln!(
            out,
            "{:<14} {:<22} {:<46} {:>10}   COMMENT",
            "IMAGE", "CREATED", "CREATED BY", "SIZE"
        )?;
    }
    for (i, (h, size)) in rows.iter().rev().enumerate() {
        let id = if i == 0 {
            image.manifest_digest.short().to_owned()
        } else {
            "<missing>".to_owned()
        };
        if a.quiet {
            writeln!(out, "{id}")?;
            continue;
        }
        let mut by = h.created_by.clone().unwrap_or_default();
        if !a.no_trunc && by.chars().count() > 45 {
            by = by.chars().take(44).collect::<String>() + "…";
        }
        writeln!(
            out,
            "{id:<14} {:<22} {by:<46} {:>10}   {}",
            h.created.as_deref().unwrap_or(""),
            kroot::size::human_with_precision(*size, 3),
            h.comment.as_deref().unwrap_or("")
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
        // kiln's own: where `Created` came from (README "Image dates"), from the note the
        // build kept beside the image; null for images kiln did not build here.
        "CreatedFrom": created_from(&store, &image),
    });
    Ok(doc)
}

/// Where a built image's `created` came from: the note its build kept in the build cache.
fn created_from(store: &cache::store::Store, image: &cache::image::Image) -> Option<String> {
    let created = image.config.created.as_deref()?;
    let key = cache::records::created_note_key(created, &image.config.rootfs.diff_ids);
    store.date_get(&key).ok().flatten()?.from
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

/// `kiln save`: streamed into a temp file beside the output, which replaces it when complete
/// ([`kroot::write_atomic_with`]).
pub fn save(names: &[String], output: &Path) -> anyhow::Result<()> {
    let store = crate::open_store()?;
    // Save reads layers and writes compressed copies: prune must not run meanwhile.
    let _lock = store.lock_shared().context("locking the store")?;
    let mut images = Vec::new();
    for n in names {
        // The name's index when it has one (a multi-platform image keeps it).
        let top = store
            .resolve_top(n)
            .with_context(|| format!("looking up image {n}"))?
            .with_context(|| format!("no such image: {n}"))?;
        images.push((n.clone(), top));
    }
    // The store's error travels through io::Error and comes back out whole for the chain.
    let mut failed = None;
    let res = kroot::write_atomic_with(output, 0o644, |f| {
        store.save(&images, io::BufWriter::new(f)).map_err(|e| {
            failed = Some(e);
            io::Error::other("saving the images failed")
        })
    });
    match (res, failed) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(e)) => Err(e).with_context(|| format!("writing {}", output.display())),
        (Err(e), None) => Err(e).with_context(|| format!("writing {}", output.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_argument_selects_a_repository_or_one_tag() {
        assert!(selects("busybox:latest", "busybox"));
        assert!(selects("busybox:1.36", "busybox"));
        assert!(selects("busybox:1.36", "busybox:1.36"));
        assert!(!selects("busybox:latest", "busybox:1.36"));
        assert!(!selects("busybox2:latest", "busybox"));
        assert!(selects("localhost:5000/app:1", "localhost:5000/app"));
        assert!(!selects("localhost:5000/app:1", "localhost:5000/app:2"));
        assert!(selects("user/app:1", "docker.io/user/app:1"));
    }
}

//! Where `kiln build` finds its Dockerfile and context: a directory, `-f -`, `-` (a
//! Dockerfile or a tar archive on stdin), a git URL (checked out with the solver's ADD git
//! code), or an http(s) URL (a tar archive, plain or compressed, or a Dockerfile alone).

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};

/// A directory kiln made for a stdin or remote context; removed when dropped.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    /// A new private directory under the system temp dir.
    fn new(what: &str) -> anyhow::Result<TempDir> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kiln-{what}-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The Dockerfile and context of a build.
pub(super) struct Input {
    pub(super) context: PathBuf,
    /// The name errors give (`Dockerfile`, or the `-f` path as given).
    pub(super) dockerfile_name: String,
    /// Where `<Dockerfile>.dockerignore` is looked for.
    pub(super) dockerfile_path: PathBuf,
    pub(super) dockerfile: Vec<u8>,
    /// Holds a stdin context's files until the build ends.
    _temp: Option<TempDir>,
}

/// Whether stdin holds an archive (docker's rule: compressed, or a tar header) rather than a
/// Dockerfile.
fn is_archive(b: &[u8]) -> bool {
    const MAGICS: [&[u8]; 4] = [
        &[0x1f, 0x8b],
        &[0x28, 0xb5, 0x2f, 0xfd],
        b"BZh",
        &[0xfd, b'7', b'z', b'X', b'Z', 0],
    ];
    MAGICS.iter().any(|m| b.starts_with(m)) || b.get(257..262) == Some(b"ustar")
}

/// Reads the Dockerfile and finds the context: `CONTEXT` a directory or `-` (stdin: a tar
/// archive, plain or compressed, extracted as ADD extracts one; or a Dockerfile alone, with an
/// empty context); `-f FILE`, `-f -` (stdin), or `Dockerfile` then `dockerfile` in the context
/// (BuildKit's lookup). With a stdin archive, `-f` names a file inside it.
pub(super) fn read_input(context_arg: &Path, file: Option<&Path>) -> anyhow::Result<Input> {
    use std::io::Read as _;
    let stdin_file = file == Some(Path::new("-"));
    let read_stdin = |what: &str| -> anyhow::Result<Vec<u8>> {
        let mut b = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut b)
            .with_context(|| format!("reading {what} from stdin"))?;
        Ok(b)
    };
    let remote = match context_arg.to_str() {
        Some(spec) => fetch_remote(spec)?,
        None => None,
    };
    let (context, temp, mut stdin_dockerfile) = if let Some(r) = remote {
        (r.dir, Some(r.temp), r.dockerfile)
    } else if context_arg == Path::new("-") {
        anyhow::ensure!(
            !stdin_file,
            "-f - and the context - both read stdin: give the context as a directory"
        );
        let temp = TempDir::new("context")?;
        let dir = temp.0.clone();
        let ctx = dir.join("context");
        std::fs::create_dir(&ctx).with_context(|| format!("creating {}", ctx.display()))?;
        // Streamed to a file: a context archive can be larger than memory.
        let staged = dir.join("stdin.tar");
        let mut f = std::fs::File::create(&staged)
            .with_context(|| format!("creating {}", staged.display()))?;
        std::io::copy(&mut std::io::stdin().lock(), &mut f)
            .context("reading the build context from stdin")?;
        drop(f);
        let mut head = Vec::with_capacity(512);
        std::fs::File::open(&staged)
            .and_then(|f| f.take(512).read_to_end(&mut head))
            .with_context(|| format!("reading {}", staged.display()))?;
        if is_archive(&head) {
            extract(&dir, "stdin.tar", &ctx)
                .context("build context -: extracting the archive read from stdin")?;
            (ctx, Some(temp), None)
        } else {
            let data =
                std::fs::read(&staged).with_context(|| format!("reading {}", staged.display()))?;
            (ctx, Some(temp), Some(data))
        }
    } else {
        let ctx = std::fs::canonicalize(context_arg)
            .with_context(|| format!("build context {}", context_arg.display()))?;
        if !ctx.is_dir() {
            bail!("build context {} is not a directory", context_arg.display());
        }
        (ctx, None, None)
    };
    if stdin_file {
        stdin_dockerfile = Some(read_stdin("the Dockerfile (-f -)")?);
    }
    if let Some(dockerfile) = stdin_dockerfile {
        anyhow::ensure!(
            stdin_file || file.is_none(),
            "-f {}: the context {} is a Dockerfile, not an archive or repository holding one",
            file.map(Path::display)
                .map(|d| d.to_string())
                .unwrap_or_default(),
            context_arg.display()
        );
        return Ok(Input {
            dockerfile_path: context.join("Dockerfile"),
            context,
            dockerfile_name: "Dockerfile".to_owned(),
            dockerfile,
            _temp: temp,
        });
    }
    let (path, name) = match file {
        // Inside a stdin archive or a remote context, -f names a path in the context.
        Some(f) if temp.is_some() => (context.join(f), f.display().to_string()),
        Some(f) => (f.to_path_buf(), f.display().to_string()),
        None => {
            let upper = context.join("Dockerfile");
            let lower = context.join("dockerfile");
            match (upper.exists(), lower.exists()) {
                (false, true) => (lower, "dockerfile".to_owned()),
                _ => (upper, "Dockerfile".to_owned()),
            }
        }
    };
    // A stdin archive's or remote context's Dockerfile is read inside it: a symlink out of it
    // is refused.
    if temp.is_some() {
        let real = std::fs::canonicalize(&path)
            .with_context(|| format!("{name}: cannot read Dockerfile {}", path.display()))?;
        anyhow::ensure!(
            real.starts_with(&context),
            "{name}: the Dockerfile leads out of the build context (to {})",
            real.display()
        );
    }
    let dockerfile = std::fs::read(&path)
        .with_context(|| format!("{name}: cannot read Dockerfile {}", path.display()))?;
    Ok(Input {
        context,
        dockerfile_name: name,
        dockerfile_path: path,
        dockerfile,
        _temp: temp,
    })
}

/// Extracts the archive `dir/name` into `ctx` as ADD extracts one (plain, gzip, zstd, bzip2,
/// xz), every path resolved inside `ctx`.
fn extract(dir: &Path, name: &str, ctx: &Path) -> anyhow::Result<()> {
    let dest = executor::copy::root::DestRoot::open(ctx)
        .with_context(|| format!("opening {}", ctx.display()))?;
    let opts = executor::copy::CopyOptions {
        chown: None,
        chmod: None,
        exclude: &[],
        parents: false,
        unpack_archives: true,
        from_context: true,
    };
    executor::copy::copy(
        &dest,
        dir,
        &[name.to_owned()],
        "/",
        &context::Ignore::parse(""),
        &opts,
    )?;
    Ok(())
}

/// A context fetched from a git or http(s) URL.
pub(super) struct Remote {
    /// The context directory (a checkout's subdirectory, an extracted archive, or empty).
    pub(super) dir: PathBuf,
    /// The Dockerfile, when the URL served a plain file.
    pub(super) dockerfile: Option<Vec<u8>>,
    /// That plain file as downloaded (mode 0600, dated by `Last-Modified`), in `temp`.
    pub(super) file: Option<PathBuf>,
    /// Holds the files until the build ends.
    pub(super) temp: TempDir,
}

/// Fetches `spec` when it is a git URL (`https://host/repo.git#ref:subdir`, `git@host:repo`,
/// `git://`, `ssh://`, as buildx tells them) or an http(s) URL; `None` for anything else (a
/// directory or `-`).
///
/// Fails when the URL is malformed, git or the download fails, or an archive does not extract.
pub(super) fn fetch_remote(spec: &str) -> anyhow::Result<Option<Remote>> {
    let lower = spec.to_ascii_lowercase();
    if graph::git::is_git_url(spec) {
        let mut src = graph::git::parse_url(spec, false)?;
        // The `--ssh default` agent is the caller's, as for buildx's git contexts.
        let sock = std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from);
        let commit = solver::git::resolve(&src, sock.as_deref())
            .with_context(|| format!("build context {spec}"))?;
        src.commit = Some(commit);
        let temp = TempDir::new("git-context")?;
        let (dir, _time) = solver::git::checkout(&src, &temp.0, sock.as_deref())
            .with_context(|| format!("build context {spec}"))?;
        return Ok(Some(Remote {
            dir,
            dockerfile: None,
            file: None,
            temp,
        }));
    }
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Ok(None);
    }
    let temp = TempDir::new("url-context")?;
    let download = temp.0.join("download");
    let ctx = temp.0.join("context");
    for d in [&download, &ctx] {
        std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (name, _, _) = rt
        .block_on(solver::fetch::fetch(spec, None, &download))
        .with_context(|| format!("build context {spec}"))?;
    let file = download.join(&name);
    let mut head = Vec::with_capacity(512);
    {
        use std::io::Read as _;
        std::fs::File::open(&file)
            .and_then(|f| f.take(512).read_to_end(&mut head))
            .with_context(|| format!("reading {}", file.display()))?;
    }
    // docker's rule: an archive is the context; anything else is a Dockerfile alone.
    let (dockerfile, file) = if is_archive(&head) {
        extract(&download, &name, &ctx)
            .with_context(|| format!("build context {spec}: extracting the archive"))?;
        (None, None)
    } else {
        let text = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        (Some(text), Some(file))
    };
    Ok(Some(Remote {
        dir: ctx,
        dockerfile,
        file,
        temp,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn stdin_is_an_archive_by_content_not_by_name() {
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert!(super::is_archive(&tar));
        assert!(super::is_archive(&[0x1f, 0x8b, 8, 0]));
        assert!(super::is_archive(&[0x28, 0xb5, 0x2f, 0xfd, 0]));
        assert!(!super::is_archive(b"FROM busybox\nRUN echo ustar\n"));
        assert!(!super::is_archive(b""));
    }
}

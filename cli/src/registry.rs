//! `kiln pull`, `kiln push`, `kiln login`, `kiln logout`: the CLI side of `cache::registry`.
//!
//! This module reads the environment (`DOCKER_CONFIG`, `HOME`, `KILN_INSECURE_REGISTRIES`,
//! `KILN_REGISTRY_TIMEOUT`) and
//! prints progress on stderr; the library does neither. It holds no clap types: main.rs maps
//! its arguments onto these functions.

use anyhow::{Context as _, bail};
use cache::oci::{Digest, Platform};
use cache::reference::Reference;
use cache::registry::auth::{Credentials, DockerConfig, is_docker_hub};
use cache::registry::client::Timeouts;
use cache::registry::{self, Progress, RegistryOptions};
use cache::store::Store;
use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Where credentials live and which registries may use plain HTTP.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// docker's `config.json`.
    pub docker_config: PathBuf,
    /// Registries (`host[:port]`) allowed over plain HTTP besides loopback.
    pub insecure: Vec<String>,
    /// Show progress on stderr.
    pub progress: bool,
    /// Upload blobs larger than this in chunks of this size (`KILN_REGISTRY_CHUNK_SIZE`).
    pub chunk_size: Option<u64>,
}

impl RegistryConfig {
    /// From the environment: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, and
    /// `KILN_INSECURE_REGISTRIES` (comma or space separated) plus the `--insecure-registry`
    /// values in `insecure_flags`.
    pub fn from_env(insecure_flags: &[String]) -> RegistryConfig {
        let docker_config = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("config.json"),
            _ => {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/root"));
                home.join(".docker").join("config.json")
            }
        };
        let mut insecure: Vec<String> = insecure_flags.to_vec();
        if let Ok(list) = std::env::var("KILN_INSECURE_REGISTRIES") {
            insecure.extend(
                list.split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
        let chunk_size = std::env::var("KILN_REGISTRY_CHUNK_SIZE")
            .ok()
            .and_then(|v| {
                let size = kroot::size::parse(&v).ok().filter(|&n| n > 0);
                if size.is_none() {
                    tracing::warn!(value = %v, "ignoring KILN_REGISTRY_CHUNK_SIZE: expected bytes with an optional K, M, G or T suffix (binary units)");
                }
                size
            });
        RegistryConfig {
            docker_config,
            insecure,
            progress: true,
            chunk_size,
        }
    }

    pub(crate) fn options(&self) -> anyhow::Result<RegistryOptions> {
        let docker_config = DockerConfig::load(&self.docker_config)?;
        let mut opts = RegistryOptions::new(docker_config);
        opts.timeouts = timeouts_from_env()?;
        opts.insecure = self.insecure.clone();
        opts.chunk_size = self.chunk_size;
        if self.progress {
            opts.progress = Some(progress_printer());
        }
        Ok(opts)
    }
}

/// The variable that sets the registry timeouts.
const TIMEOUT_ENV: &str = "KILN_REGISTRY_TIMEOUT";

/// [`TIMEOUT_ENV`]: one duration for all three timeouts (`90s`), or some of
/// `connect=D,response=D,idle=D` (the others keep their defaults). Unset or empty: defaults.
///
/// Fails on anything else, naming the variable.
fn timeouts_from_env() -> anyhow::Result<Timeouts> {
    match std::env::var(TIMEOUT_ENV) {
        Ok(v) if !v.trim().is_empty() => parse_timeouts(&v).with_context(|| {
            format!("{TIMEOUT_ENV}={v:?}: expected a duration (90s) or connect=D,response=D,idle=D")
        }),
        _ => Ok(Timeouts::default()),
    }
}

fn parse_timeouts(s: &str) -> anyhow::Result<Timeouts> {
    let positive = |d: &str| {
        let d = crate::prune::parse_duration(d.trim())?;
        anyhow::ensure!(!d.is_zero(), "a timeout of 0 would fail every request");
        Ok(d)
    };
    if !s.contains('=') {
        let d = positive(s)?;
        return Ok(Timeouts {
            connect: d,
            response: d,
            idle: d,
        });
    }
    let mut t = Timeouts::default();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part.split_once('=').context("expected key=duration")?;
        let d = positive(v)?;
        match k.trim() {
            "connect" => t.connect = d,
            "response" => t.response = d,
            "idle" => t.idle = d,
            other => bail!("unknown timeout {other:?} (connect, response, idle)"),
        }
    }
    Ok(t)
}

/// Parses `os/arch[/variant]` (`linux/amd64`, `linux/arm/v7`).
///
/// Fails on anything else.
pub fn parse_platform(s: &str) -> anyhow::Result<Platform> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
            os: (*os).to_owned(),
            architecture: (*arch).to_owned(),
            variant: parts
                .get(2)
                .map(|v| (*v).to_owned())
                .filter(|v| !v.is_empty()),
            os_version: None,
        }),
        _ => bail!("invalid platform `{s}`: expected os/arch[/variant], e.g. linux/amd64"),
    }
}

/// `kiln pull REF [--platform P]`: pulls and tags the image. The caller prints
/// [`registry::Pulled::digest`], the registry's digest (what docker prints as `Digest:`).
///
/// Fails when the reference or platform is invalid, or the pull fails.
pub async fn pull(
    store: &Store,
    reference: &str,
    platform: Option<&str>,
    cfg: &RegistryConfig,
) -> anyhow::Result<registry::Pulled> {
    let r = Reference::parse(reference)?;
    let platform = platform
        .map(parse_platform)
        .transpose()?
        .unwrap_or_else(Platform::host);
    let opts = cfg.options()?;
    let pulled = registry::pull_image(store, &r, &platform, &opts).await?;
    finish_progress(cfg);
    Ok(pulled)
}

/// `kiln push NAME [DEST]`: pushes the local image NAME to DEST (default: NAME) and returns the
/// pushed manifest digest (the caller prints it).
///
/// Fails when NAME is not in the store, DEST is invalid, or the push fails.
pub async fn push(
    store: &Store,
    name: &str,
    dest: Option<&str>,
    cfg: &RegistryConfig,
) -> anyhow::Result<Digest> {
    let dest = dest.unwrap_or(name);
    // A multi-platform image kiln built: every platform's manifest, then the index.
    if let Some(images) = store
        .resolve_top(name)?
        .and_then(|top| crate::build::platforms::stored_index(store, &top))
    {
        let index = crate::build::platforms::push(store, &images, dest, cfg).await?;
        finish_progress(cfg);
        return Ok(index.digest);
    }
    let image = store
        .resolve(name)?
        .with_context(|| format!("no such image: {name}"))?;
    let r = Reference::parse(dest)?;
    let opts = cfg.options()?;
    let digest = registry::push(store, &image, &r, &opts).await?;
    finish_progress(cfg);
    Ok(digest)
}

/// The registry host a `kiln login`/`logout` argument names (`https://host/v2/` -> `host`;
/// none -> `docker.io`).
pub fn registry_host(arg: Option<&str>) -> String {
    let Some(arg) = arg.filter(|a| !a.is_empty()) else {
        return "docker.io".to_owned();
    };
    let s = arg
        .strip_prefix("https://")
        .or_else(|| arg.strip_prefix("http://"))
        .unwrap_or(arg);
    let host = s.split('/').next().unwrap_or(s);
    if is_docker_hub(host) {
        "docker.io".to_owned()
    } else {
        host.to_owned()
    }
}

/// Reads a password from stdin (`--password-stdin`), without the trailing newline.
///
/// Fails when stdin cannot be read or is empty.
pub fn read_password_stdin() -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
        .context("reading the password from stdin")?;
    let p = s.trim_end_matches(['\n', '\r']).to_owned();
    if p.is_empty() {
        bail!("the password on stdin is empty");
    }
    Ok(p)
}

/// `kiln login [-u USER] [--password-stdin] [REGISTRY]`: checks the credentials against the
/// registry and saves them in the docker config (or its credential helper).
///
/// Fails when the registry rejects them (the error names the registry) or the file cannot be
/// written.
pub async fn login(
    cfg: &RegistryConfig,
    registry: Option<&str>,
    username: &str,
    password: &str,
) -> anyhow::Result<()> {
    let host = registry_host(registry);
    let mut config = DockerConfig::load(&cfg.docker_config)?;
    let creds = Credentials::Basic {
        username: username.to_owned(),
        password: password.to_owned(),
    };
    let mut opts = RegistryOptions::new(config.clone());
    opts.timeouts = timeouts_from_env()?;
    opts.insecure = cfg.insecure.clone();
    registry::login(&host, &creds, &mut config, &opts).await?;
    Ok(())
}

/// `kiln logout [REGISTRY]`: removes the saved credentials. Returns whether any were saved.
///
/// Fails when a credential helper fails or the file cannot be written.
pub fn logout(cfg: &RegistryConfig, registry: Option<&str>) -> anyhow::Result<bool> {
    let host = registry_host(registry);
    let mut config = DockerConfig::load(&cfg.docker_config)?;
    Ok(registry::logout(&host, &mut config)?)
}

/// Per-blob progress on stderr. On a terminal, one bar per blob in flight
/// (`abc123def456 [=======>      ]  12.0/40.0 MiB`), redrawn in place at most every 100 ms,
/// with finished blobs scrolling above the bars; otherwise plain lines: one when a transfer
/// starts and one when a blob is done.
fn progress_printer() -> registry::ProgressFn {
    let tty = std::io::stderr().is_terminal();
    let board = Mutex::new(Board::default());
    Arc::new(move |p: &Progress| {
        let mut b = board.lock().expect("progress mutex is never poisoned");
        let (short, line) = match p {
            Progress::Local { digest } => (digest.short(), Some("already present".to_owned())),
            Progress::Unpacked { digest } => (digest.short(), Some("pulled".to_owned())),
            Progress::Compress { diff_id } => (diff_id.short(), None),
            Progress::Exists { digest } => (digest.short(), Some("already exists".to_owned())),
            Progress::Mounted { digest, from } => {
                (digest.short(), Some(format!("mounted from {from}")))
            }
            Progress::Uploaded { digest } => (digest.short(), Some("pushed".to_owned())),
            Progress::Download {
                digest,
                done,
                total,
            }
            | Progress::Upload {
                digest,
                done,
                total,
            } => {
                let verb = if matches!(p, Progress::Download { .. }) {
                    "downloading"
                } else {
                    "uploading"
                };
                let new = b
                    .active
                    .insert(digest.short().to_owned(), (*done, *total))
                    .is_none();
                if new && !tty {
                    let _ = writeln!(
                        std::io::stderr(),
                        "{}: {verb} {} MiB",
                        digest.short(),
                        mib(*total)
                    );
                }
                (digest.short(), None)
            }
        };
        let finished = line.map(|l| {
            b.active.remove(short);
            format!("{short}: {l}")
        });
        if tty {
            b.draw(finished.as_deref());
        } else if let Some(l) = finished {
            let _ = writeln!(std::io::stderr(), "{l}");
        }
    })
}

/// The live bars of [`progress_printer`] on a terminal.
#[derive(Default)]
struct Board {
    /// short digest -> (done, total), for the blobs in flight.
    active: BTreeMap<String, (u64, u64)>,
    /// Bar lines currently on the screen below the cursor's line start.
    drawn: usize,
    last: Option<std::time::Instant>,
}

impl Board {
    /// Moves up over the old bars, prints `finished` (which then stays), and redraws the bars.
    /// Byte updates redraw at most every 100 ms; a finished blob always does.
    fn draw(&mut self, finished: Option<&str>) {
        let now = std::time::Instant::now();
        if finished.is_none()
            && self
                .last
                .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(now);
        let mut out = String::new();
        if self.drawn > 0 {
            out.push_str(&format!("\x1b[{}A", self.drawn));
        }
        out.push_str("\r\x1b[J");
        if let Some(l) = finished {
            out.push_str(l);
            out.push('\n');
        }
        for (short, (done, total)) in &self.active {
            out.push_str(&bar_line(short, *done, *total, 30));
            out.push('\n');
        }
        self.drawn = self.active.len();
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(out.as_bytes());
        let _ = err.flush();
    }
}

/// `abc123def456 [=========>          ]  12.0/40.0 MiB` with a bar `width` cells wide.
fn bar_line(short: &str, done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        ((done.min(total) as u128 * width as u128) / total as u128) as usize
    };
    let mut bar = "=".repeat(filled);
    if filled < width {
        bar.push('>');
        bar.push_str(&" ".repeat(width - filled - 1));
    }
    format!("{short} [{bar}] {:>6}/{} MiB", mib(done), mib(total))
}

/// Clears what may be left of a bar line (finished blobs erase their bars themselves).
pub(crate) fn finish_progress(cfg: &RegistryConfig) {
    if cfg.progress && std::io::stderr().is_terminal() {
        let _ = write!(std::io::stderr(), "\r\x1b[J");
    }
}

fn mib(n: u64) -> String {
    format!("{:.1}", n as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn progress_bars_fill_with_the_bytes_done() {
        assert_eq!(
            bar_line("abc", 0, 100 << 20, 10),
            "abc [>         ]    0.0/100.0 MiB"
        );
        assert_eq!(
            bar_line("abc", 50 << 20, 100 << 20, 10),
            "abc [=====>    ]   50.0/100.0 MiB"
        );
        assert_eq!(
            bar_line("abc", 100 << 20, 100 << 20, 10),
            "abc [==========]  100.0/100.0 MiB"
        );
        assert_eq!(bar_line("e", 0, 0, 4), "e [====]    0.0/0.0 MiB");
    }

    #[test]
    fn registry_timeouts_take_one_duration_or_named_parts() {
        let d = Timeouts::default();
        let all = parse_timeouts("90s").expect("one duration");
        assert_eq!(
            (all.connect, all.response, all.idle),
            (
                Duration::from_secs(90),
                Duration::from_secs(90),
                Duration::from_secs(90)
            )
        );
        let some = parse_timeouts("connect=5s, idle=2m").expect("parts");
        assert_eq!(
            (some.connect, some.response, some.idle),
            (Duration::from_secs(5), d.response, Duration::from_secs(120))
        );
        for bad in ["0", "x", "connect=0s", "read=5s", "connect"] {
            assert!(parse_timeouts(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn platforms_and_registry_arguments_normalise() {
        let p = parse_platform("linux/arm/v7").unwrap();
        assert_eq!(
            (p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()),
            ("linux", "arm", Some("v7"))
        );
        assert!(parse_platform("amd64").is_err());
        assert_eq!(registry_host(None), "docker.io");
        assert_eq!(
            registry_host(Some("https://index.docker.io/v1/")),
            "docker.io"
        );
        assert_eq!(registry_host(Some("localhost:5000")), "localhost:5000");
        assert_eq!(
            registry_host(Some("http://127.0.0.1:5000/v2/")),
            "127.0.0.1:5000"
        );
    }
}

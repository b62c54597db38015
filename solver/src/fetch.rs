//! ADD of an http(s) URL: download into a temp dir, verify `--checksum`, keep the mtime
//! from `Last-Modified`; the executor then copies the file as it copies context files.

use cache::oci::{Digest, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request failed or the body could not be read.
    #[error("ADD {url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// The client error.
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("ADD {url}: the server answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// The content does not match `--checksum`.
    #[error("ADD {url}: checksum mismatch: expected {expected}, got {actual}")]
    Checksum {
        /// The URL.
        url: String,
        /// `--checksum`.
        expected: Digest,
        /// What was downloaded.
        actual: Digest,
    },
    /// Writing the downloaded file failed.
    #[error("ADD {url}: writing {}: {source}", path.display())]
    Io {
        /// The URL.
        url: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The file name a download gets: the URL path's last segment (`index.html` when empty).
pub fn file_name(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    let path = no_query.split_once("://").map_or(no_query, |(_, rest)| {
        rest.split_once('/').map_or("", |(_, p)| p)
    });
    match path.rsplit('/').next() {
        Some(n) if !n.is_empty() && n != "." && n != ".." => n.to_owned(),
        _ => "index.html".to_owned(),
    }
}

/// Parses an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110's preferred form).
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, mon, year, hms, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: i64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == mon)? as i64
        + 1;
    let year: i64 = year.parse().ok()?;
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 || year < 1970 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm, public domain description).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + mi * 60 + sec).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Downloads `url` into `dir` (mode 0600, as BuildKit), checks `checksum`, sets the mtime
/// from `Last-Modified` (the epoch without one, so that the layer stays reproducible).
/// Returns the file's name inside `dir`, the `Last-Modified` time in seconds and the digest.
pub async fn fetch(
    url: &str,
    checksum: Option<&Digest>,
    dir: &Path,
) -> Result<(String, Option<i64>, Digest), FetchError> {
    let http = |source| FetchError::Http {
        url: url.to_owned(),
        source,
    };
    let client = reqwest::Client::builder()
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(300))
        .build()
        .map_err(http)?;
    let mut resp = client.get(url).send().await.map_err(http)?;
    if !resp.status().is_success() {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: resp.status(),
        });
    }
    let mtime = resp
        .headers()
        .get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date);
    let name = file_name(url);
    let path = dir.join(&name);
    let io = |source| FetchError::Io {
        url: url.to_owned(),
        path: path.clone(),
        source,
    };
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?
    };
    let mut hasher = Hasher::new();
    while let Some(chunk) = resp.chunk().await.map_err(http)? {
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(io)?;
    }
    let actual = hasher.finish();
    if let Some(expected) = checksum
        && *expected != actual
    {
        return Err(FetchError::Checksum {
            url: url.to_owned(),
            expected: expected.clone(),
            actual,
        });
    }
    file.set_modified(mtime.unwrap_or(SystemTime::UNIX_EPOCH))
        .map_err(io)?;
    let secs = mtime
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok());
    Ok((name, secs, actual))
}

/// The downloads of one file op. The temp dirs are removed when this is dropped.
#[derive(Debug, Default)]
pub struct Fetched {
    /// URL to (dir, file name).
    pub files: std::collections::BTreeMap<String, (PathBuf, String)>,
    /// The newest `Last-Modified` (seconds since the epoch): the layer's mtime clamp must
    /// not be older.
    pub newest: Option<i64>,
    dirs: Vec<cache::store::TempDir>,
}

/// Downloads every URL source of `op`, each into its own temp dir of `store`.
pub async fn fetch_all(
    store: &cache::store::Store,
    op: &crate::graph::FileOp,
) -> Result<Fetched, FetchError> {
    let mut out = Fetched::default();
    for a in &op.actions {
        let crate::graph::FileAction::Copy(c) = a else {
            continue;
        };
        let crate::graph::CopySource::Url { url, checksum } = &c.from else {
            continue;
        };
        if out.files.contains_key(url) {
            continue;
        }
        let dir = store.temp_dir("fetch-").map_err(|e| FetchError::Io {
            url: url.clone(),
            path: store.dir(kroot::Dir::Tmp),
            source: std::io::Error::other(e.to_string()),
        })?;
        let (name, mtime, _) = fetch(url, checksum.as_ref(), dir.path()).await?;
        if let Some(t) = mtime {
            out.newest = Some(out.newest.map_or(t, |n| n.max(t)));
        }
        out.files.insert(url.clone(), (dir.path().to_owned(), name));
        out.dirs.push(dir);
    }
    Ok(out)
}

/// Gives every checksum-less URL source of the reachable nodes the checksum of what the URL
/// serves now, so that the cache key follows the content (as BuildKit keys remote files by
/// content) and the later download is verified against it. Downloads each URL once here.
pub async fn pin_checksums(
    store: &cache::store::Store,
    graph: &mut crate::graph::BuildGraph,
) -> Result<(), (crate::graph::NodeId, FetchError)> {
    use crate::graph::{CopySource, FileAction, Op};
    let mut pinned: std::collections::BTreeMap<String, Digest> = Default::default();
    for n in graph.reachable() {
        let Op::File(f) = &mut graph.nodes[n].op else {
            continue;
        };
        for a in &mut f.actions {
            let FileAction::Copy(c) = a else { continue };
            let CopySource::Url { url, checksum } = &mut c.from else {
                continue;
            };
            if checksum.is_some() {
                continue;
            }
            if let Some(d) = pinned.get(url.as_str()) {
                *checksum = Some(d.clone());
                continue;
            }
            let dir = store.temp_dir("fetch-").map_err(|e| {
                let e = FetchError::Io {
                    url: url.clone(),
                    path: store.dir(kroot::Dir::Tmp),
                    source: std::io::Error::other(e.to_string()),
                };
                (n, e)
            })?;
            let (_, _, d) = fetch(url, None, dir.path()).await.map_err(|e| (n, e))?;
            pinned.insert(url.clone(), d.clone());
            *checksum = Some(d);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_come_from_the_url_path() {
        assert_eq!(file_name("http://h:1/a/b.tar.gz?x=1"), "b.tar.gz");
        assert_eq!(file_name("https://h/"), "index.html");
        assert_eq!(file_name("https://h"), "index.html");
    }

    #[test]
    fn http_dates_parse() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("parses");
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs(),
            784_111_777
        );
        assert!(parse_http_date("yesterday").is_none());
    }
}

//! `--load` (`type=docker` without `dest`): the docker archive posted to the local docker
//! daemon's `POST /images/load`, over its unix socket (`DOCKER_HOST=unix://...`, else
//! `/var/run/docker.sock`), as buildx's docker driver does.

use anyhow::{Context as _, bail};
use cache::export::Export;
use cache::reference::Reference;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::PathBuf;

/// The daemon's socket.
fn socket() -> anyhow::Result<PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if !h.is_empty() => match h.strip_prefix("unix://") {
            Some(p) => Ok(PathBuf::from(p)),
            None => bail!("DOCKER_HOST={h}: only unix:// sockets are supported"),
        },
        _ => Ok(PathBuf::from("/var/run/docker.sock")),
    }
}

/// Loads `export` into the docker daemon, named `names`.
///
/// Fails when no daemon answers, or the daemon refuses the archive (its message is kept).
pub fn load(
    store: &cache::store::Store,
    export: &Export,
    names: &[Reference],
) -> anyhow::Result<()> {
    let sock = socket()?;
    let mut conn = std::os::unix::net::UnixStream::connect(&sock)
        .with_context(|| format!("no docker daemon answers at {}", sock.display()))?;
    let tmp = store.temp_dir("load")?;
    let path = tmp.path().join("image.tar");
    {
        let f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        cache::export::layout::write_tar(
            store,
            export,
            names,
            true,
            f,
            &path.display().to_string(),
        )?;
    }
    let mut f =
        std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    let what = format!("POST /images/load on {}", sock.display());
    write!(
        conn,
        "POST /images/load?quiet=1 HTTP/1.1\r\nHost: docker\r\nUser-Agent: kiln\r\n\
         Content-Type: application/x-tar\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| what.clone())?;
    std::io::copy(&mut f, &mut conn).with_context(|| what.clone())?;
    let mut r = BufReader::new(conn);
    let mut status = String::new();
    r.read_line(&mut status).with_context(|| what.clone())?;
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{what}: bad status line {status:?}"))?;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).with_context(|| what.clone())?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("transfer-encoding")
            && v.trim().eq_ignore_ascii_case("chunked")
        {
            chunked = true;
        }
    }
    let body = match chunked {
        true => dechunk(&mut r).with_context(|| what.clone())?,
        false => {
            let mut b = Vec::new();
            r.read_to_end(&mut b).with_context(|| what.clone())?;
            b
        }
    };
    let text = String::from_utf8_lossy(&body);
    if code != 200 {
        bail!("{what}: {code}: {}", text.trim());
    }
    // The body is a stream of JSON messages; a failed load says so in one of them.
    for line in text.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && let Some(e) = v.get("error").and_then(|e| e.as_str())
        {
            bail!("{what}: {e}");
        }
    }
    Ok(())
}

/// Reads an HTTP/1.1 chunked body to its end.
fn dechunk(r: &mut impl std::io::BufRead) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            return Ok(out);
        }
        let start = out.len();
        out.resize(start + size, 0);
        r.read_exact(&mut out[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunked_bodies_are_joined() {
        let mut r = std::io::Cursor::new(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n".to_vec());
        assert_eq!(super::dechunk(&mut r).expect("decodes"), b"hello world");
    }
}

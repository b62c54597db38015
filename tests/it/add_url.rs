//! `ADD <url>`: `--checksum`, Last-Modified, the content-keyed cache and download errors.

use crate::harness::{TestDir, privileged, stdout, text};
use anyhow::ensure;

/// A one-file HTTP/1.1 server on 127.0.0.1 (a thread; serves until the process ends).
/// Returns the base URL.
fn serve(
    body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    last_modified: &'static str,
) -> anyhow::Result<String> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(match conn.try_clone() {
                Ok(c) => c,
                Err(_) => continue,
            });
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            let found = first.starts_with("GET /files/hello.txt ");
            let body = body.lock().map(|b| b.clone()).unwrap_or_default();
            let head = if found {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: {last_modified}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = conn.write_all(head.as_bytes());
            if found {
                let _ = conn.write_all(&body);
            }
        }
    });
    Ok(format!("http://{addr}"))
}

#[test]
fn add_url_checksum_last_modified_content_keyed_cache_and_errors() -> anyhow::Result<()> {
    if !privileged(&[]) {
        return Ok(());
    }
    const BODY: &[u8] = b"hello from the web\n";
    let body = std::sync::Arc::new(std::sync::Mutex::new(BODY.to_vec()));
    let base = serve(body.clone(), "Sun, 06 Nov 1994 08:49:37 GMT")?;
    let sum = cache::oci::Digest::of(BODY);
    let t = TestDir::new();
    t.import_busybox()?;
    t.write(
        "Dockerfile",
        &format!(
            "FROM busybox\nADD --checksum=sha256:{} {base}/files/hello.txt /dl/\n\
             ADD {base}/files/hello.txt /named.txt\n",
            sum.hex()
        ),
    );
    t.build("url:1", &[])?;
    let out = t.ok(&[
        "run",
        "--rm",
        "url:1",
        "sh",
        "-c",
        "cat /dl/hello.txt && stat -c '%Y %a' /dl/hello.txt /named.txt",
    ])?;
    ensure!(
        stdout(&out) == "hello from the web\n784111777 600\n784111777 600\n",
        "{}",
        text(&out)
    );

    // Unchanged content: cached. Changed content: the checksum-less ADD runs again (the key
    // follows the content), the pinned one fails its checksum.
    let ev = t.build("url:1b", &[])?;
    ensure!(crate::harness::cached(&ev).len() >= 2, "{ev:?}");
    t.write(
        "Dockerfile",
        &format!("FROM busybox\nADD {base}/files/hello.txt /named.txt\n"),
    );
    t.build("url:4", &[])?;
    let ev = t.build("url:4", &[])?;
    ensure!(crate::harness::cached(&ev).len() == 1, "not cached: {ev:?}");
    *body.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = b"new content\n".to_vec();
    let ev = t.build("url:5", &[])?;
    ensure!(
        crate::harness::cached(&ev).is_empty(),
        "stale cache: {ev:?}"
    );
    let out = t.ok(&["run", "--rm", "url:5", "cat", "/named.txt"])?;
    ensure!(stdout(&out) == "new content\n", "{}", text(&out));

    let wrong = cache::oci::Digest::of(b"something else");
    t.write(
        "Dockerfile",
        &format!(
            "FROM busybox\nADD --checksum=sha256:{} {base}/files/hello.txt /x\n",
            wrong.hex()
        ),
    );
    let out = t.kiln(&["build", "-t", "url:2", t.ctx.to_str().expect("utf-8")]);
    ensure!(
        !out.status.success() && text(&out).contains("checksum mismatch"),
        "{}",
        text(&out)
    );
    t.write(
        "Dockerfile",
        &format!("FROM busybox\nADD {base}/files/missing /x\n"),
    );
    let out = t.kiln(&["build", "-t", "url:3", t.ctx.to_str().expect("utf-8")]);
    ensure!(
        !out.status.success() && text(&out).contains("404"),
        "{}",
        text(&out)
    );
    Ok(())
}

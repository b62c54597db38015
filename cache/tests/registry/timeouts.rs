//! Registries that stop answering (issue 10): a pull must fail after the configured timeout,
//! naming the registry, the request and the timeout, instead of hanging. The servers are real
//! TCP listeners on 127.0.0.1 that accept and then say nothing, or send headers and stall.

use crate::harness::*;
use cache::oci::Platform;
use cache::reference::Reference;
use cache::registry::client::{Client, ClientError, TimeoutPhase, Timeouts};
use cache::registry::{self, PullError};
use cache::store::Store;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// A listener whose connections are handled by `serve` on their own threads; the connections
/// stay open until `serve` returns and the test's `done` channel is dropped.
struct Stalling {
    port: u16,
    _done: mpsc::Sender<()>,
}

impl Stalling {
    fn start(serve: fn(&mut TcpStream)) -> Stalling {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // A small receive buffer (inherited by accepted sockets), so a server that reads
        // slowly or not at all holds the client back after a few hundred KiB, not megabytes.
        rustix::net::sockopt::set_socket_recv_buffer_size(&listener, 64 << 10).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (done, wait) = mpsc::channel::<()>();
        let wait = std::sync::Arc::new(std::sync::Mutex::new(wait));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let wait = wait.clone();
                std::thread::spawn(move || {
                    serve(&mut conn);
                    // Hold the connection open, silent, until the test ends.
                    let _ = wait.lock().unwrap().recv();
                });
            }
        });
        Stalling { port, _done: done }
    }
}

/// Reads one request head; None for a TLS ClientHello (kiln tries https first on loopback).
fn request_head(conn: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 {
            return None;
        }
        if head.is_empty() && byte[0] == 0x16 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

fn short() -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(300),
        response: Duration::from_millis(300),
        idle: Duration::from_millis(300),
    }
}

fn pull_from(port: u16, timeouts: Timeouts) -> (PullError, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    let mut opts = options();
    opts.timeouts = timeouts;
    let r = Reference::parse(&format!("127.0.0.1:{port}/stall/app:1")).unwrap();
    let start = Instant::now();
    // Bounded here too, so a client without timeouts fails the test instead of hanging it.
    let err = rt()
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(20),
                registry::pull(&store, &r, &Platform::host(), &opts),
            )
            .await
        })
        .expect("the pull hung: no timeout fired")
        .expect_err("the registry never answers");
    (err, start.elapsed())
}

#[test]
fn a_registry_that_accepts_and_never_answers_times_out_naming_request_and_timeout() {
    // Reads the request (or the TLS hello) and says nothing.
    let server = Stalling::start(|c| {
        let _ = request_head(c);
    });
    let (err, took) = pull_from(server.port, short());
    let PullError::Client(ClientError::Timeout {
        registry,
        what,
        phase,
        after,
    }) = &err
    else {
        panic!("expected a timeout, got {err:?}");
    };
    assert_eq!(registry, &format!("127.0.0.1:{}", server.port));
    assert_eq!(what, "GET manifest stall/app:1");
    assert_eq!(
        (*phase, *after),
        (TimeoutPhase::Response, Duration::from_millis(300))
    );
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!(
            "127.0.0.1:{}: GET manifest stall/app:1: no answer (waiting for the response headers) within 0.3s",
            server.port
        )),
        "{shown}"
    );
    assert!(shown.contains("KILN_REGISTRY_TIMEOUT"), "{shown}");
    // The https probe (bounded by the connect timeout) plus one manifest request: a timeout
    // is not retried.
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn a_registry_that_sends_headers_then_stalls_the_body_times_out_as_idle() {
    let server = Stalling::start(|c| {
        if request_head(c).is_some() {
            let _ = c.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\
                  Content-Length: 1000\r\n\r\n{\"schemaVersion\":",
            );
        }
    });
    let (err, took) = pull_from(server.port, short());
    let PullError::Client(ClientError::Timeout { what, phase, .. }) = &err else {
        panic!("expected a timeout, got {err:?}");
    };
    assert_eq!(what, "GET manifest stall/app:1");
    assert_eq!(*phase, TimeoutPhase::Idle);
    assert!(
        err.to_string().contains("(the body stalled) within 0.3s"),
        "{err}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn timeouts_default_to_30s_connect_and_60s_response_and_idle() {
    let t = Timeouts::default();
    assert_eq!(
        (t.connect, t.response, t.idle),
        (
            Duration::from_secs(30),
            Duration::from_secs(60),
            Duration::from_secs(60)
        )
    );
    assert_eq!(
        registry::RegistryOptions::new(cache::registry::auth::DockerConfig::anonymous()).timeouts,
        t
    );
}

/// Pushes a `size`-byte blob with [`Client::put_blob`] to the session URL of a server on
/// `port`.
fn upload_to(port: u16, size: usize, timeouts: Timeouts) -> (Result<(), ClientError>, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blob");
    std::fs::write(&blob, vec![7u8; size]).unwrap();
    let digest = cache::oci::Digest::of(&std::fs::read(&blob).unwrap());
    let mut opts = options();
    opts.timeouts = timeouts;
    let registry = format!("127.0.0.1:{port}");
    let client = Client::new(&registry, Vec::new(), &client_config(&opts)).unwrap();
    let session = format!("http://{registry}/v2/stall/app/blobs/uploads/s1");
    let start = Instant::now();
    let r = rt()
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(30),
                client.put_blob(&session, &digest, &blob, size as u64, Arc::new(|_| {})),
            )
            .await
        })
        .expect("the upload hung: no timeout fired");
    (r, start.elapsed())
}

#[test]
fn an_upload_the_registry_stops_reading_times_out_as_idle() {
    // Takes the request head and never reads the body.
    let server = Stalling::start(|c| {
        let _ = request_head(c);
    });
    let (r, took) = upload_to(server.port, 16 << 20, short());
    let err = r.expect_err("the registry never reads");
    let ClientError::Timeout { what, phase, .. } = &err else {
        panic!("expected a timeout, got {err:?}");
    };
    assert!(what.starts_with("upload blob sha256:"), "{what}");
    assert_eq!(*phase, TimeoutPhase::Idle);
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// An upload that takes longer than the idle timeout but keeps moving must not be cut: the
/// idle timeout bounds silence, not the whole transfer (reqwest's read timeout, which runs
/// from the start of a request to its headers, would cut it).
#[test]
fn a_slow_but_steady_upload_is_not_cut_by_the_idle_timeout() {
    let server = Stalling::start(|c| {
        let Some(head) = request_head(c) else { return };
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("a Content-Length");
        let mut buf = vec![0u8; 32 << 10];
        let mut got = 0;
        while got < len {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
            // A slow link: 32 KiB per 10 ms, about 3 MiB/s.
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    });
    let timeouts = Timeouts {
        idle: Duration::from_millis(300),
        response: Duration::from_secs(10),
        connect: Duration::from_millis(300),
    };
    let (r, took) = upload_to(server.port, 4 << 20, timeouts);
    r.expect("a steady upload succeeds");
    assert!(
        took > timeouts.idle * 2,
        "the upload was not slow enough to prove anything: {took:?}"
    );
}

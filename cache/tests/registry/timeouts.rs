//! Registries that stop answering (issue 10): a pull must fail after the configured timeout,
//! naming the registry, the request and the timeout, instead of hanging. The servers are real
//! TCP listeners on 127.0.0.1 that accept and then say nothing, or send headers and stall.

use crate::harness::*;
use cache::oci::Platform;
use cache::reference::Reference;
use cache::registry::client::{ClientError, TimeoutPhase, Timeouts};
use cache::registry::{self, PullError};
use cache::store::Store;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
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

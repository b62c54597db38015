//! Registry client tests against the real CNCF distribution registry (Debian's
//! `docker-registry`), started per test on a free 127.0.0.1 port with its own storage, and
//! checked with skopeo and umoci. A tiny hostile HTTP server (std, loopback only, bounded)
//! serves what no honest registry would.
//!
//! Without `docker-registry`, skopeo or umoci these tests skip with a message, unless
//! REQUIRE_PRIVILEGED_TESTS=1, where they fail.

mod auth;
mod harness;
mod hostile;
mod push_pull;
mod timeouts;

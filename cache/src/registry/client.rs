//! The HTTP side of the distribution API: one [`Client`] per (registry, operation), holding the
//! resolved scheme, the credentials and the auth state (basic, or a bearer token for the
//! operation's scopes).
//!
//! Built on reqwest directly rather than oci-client: kiln needs a mount that falls back to an
//! upload on 202, a wrong password reported as such, manifests with `mediaType`, uploads
//! streamed from files, and no aws-lc; see the module docs of [`super`].

use super::auth::{Challenge, Credentials, DockerConfig, is_docker_hub, parse_challenge};
use crate::oci::Digest;
use futures_util::StreamExt as _;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The smallest chunk [`Client::put_blob_chunked`] halves a refused chunk down to.
const MIN_CHUNK: u64 = 64 << 10;

/// Manifests and indexes larger than this are refused (docker's limit is 4 MiB too).
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

/// The media types kiln accepts for a manifest GET, in the `Accept` header.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Errors talking to a registry. Each names the registry (and the request) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The HTTP client could not be built (TLS roots).
    #[error("cannot set up the HTTP client")]
    Setup(#[source] reqwest::Error),
    /// Connection, TLS, timeout or body errors.
    #[error("{registry}: {what}: network error")]
    Network {
        /// Registry host.
        registry: String,
        /// The request, e.g. `GET manifest app:1`.
        what: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an unexpected status.
    #[error("{registry}: {what}: {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status {
        /// Registry host.
        registry: String,
        /// The request.
        what: String,
        /// The HTTP status.
        status: StatusCode,
        /// The registry's error message, if it sent one.
        message: String,
    },
    /// 404.
    #[error("{registry}: {what}: not found")]
    NotFound {
        /// Registry host.
        registry: String,
        /// The request.
        what: String,
    },
    /// 401 and no credentials are known.
    #[error(
        "{registry}: authentication required (401 Unauthorized)\nhint: run `kiln login {registry}`"
    )]
    Unauthorized {
        /// Registry host.
        registry: String,
    },
    /// 401/403 although credentials were sent: a wrong password, or no access to the repository.
    #[error("{registry}: the registry rejected the credentials of user `{username}` ({status})")]
    Denied {
        /// Registry host.
        registry: String,
        /// The user name that was sent.
        username: String,
        /// 401 or 403.
        status: StatusCode,
    },
    /// The token endpoint misbehaved.
    #[error("{registry}: token request to {realm} failed: {message}")]
    Token {
        /// Registry host.
        registry: String,
        /// The token realm URL.
        realm: String,
        /// What went wrong.
        message: String,
    },
    /// A manifest (or error body) beyond [`MAX_MANIFEST_SIZE`].
    #[error("{registry}: {what}: larger than the {limit} byte limit")]
    TooLarge {
        /// Registry host.
        registry: String,
        /// The request.
        what: String,
        /// The limit.
        limit: usize,
    },
    /// The registry sent a manifest whose bytes do not match the digest asked for.
    #[error("{registry}: {what}: content has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// Registry host.
        registry: String,
        /// The request.
        what: String,
        /// The digest in the reference.
        expected: Digest,
        /// The digest of what was received.
        actual: Digest,
    },
    /// The upload did not give a usable `Location`.
    #[error("{registry}: {what}: missing or invalid Location header")]
    BadLocation {
        /// Registry host.
        registry: String,
        /// The request.
        what: String,
    },
    /// A local file to upload could not be opened.
    #[error("cannot open {path}")]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading credentials failed.
    #[error(transparent)]
    Credentials(#[from] super::auth::AuthError),
    /// The registry accepted the connection but stopped answering: no connection, no
    /// response headers, or no body data within the configured [`Timeouts`].
    #[error(
        "{registry}: {what}: no answer {phase} within {}\nhint: a slow registry may need a longer timeout: KILN_REGISTRY_TIMEOUT (e.g. `120s`, or `connect=30s,response=120s,idle=60s`)",
        seconds(*after)
    )]
    Timeout {
        /// Registry host.
        registry: String,
        /// The request.
        what: String,
        /// Which wait ran out.
        phase: TimeoutPhase,
        /// The timeout that ran out.
        after: Duration,
    },
}

/// `2s`, `0.5s`: how a timeout is shown.
fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Which of the [`Timeouts`] ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// The TCP connection and TLS handshake.
    Connect,
    /// From sending the request to the response headers.
    Response,
    /// Between two reads of the response body.
    Idle,
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Connect => "(connecting)",
            TimeoutPhase::Response => "(waiting for the response headers)",
            TimeoutPhase::Idle => "(the body stalled)",
        })
    }
}

/// How long kiln waits on a registry. A registry that accepts a connection and then says
/// nothing would otherwise hold `kiln pull` forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// From the request to the response headers (token requests included).
    pub response: Duration,
    /// Longest silence while reading a body; resets on every read, so big layers on a slow
    /// link are fine as long as bytes keep coming.
    pub idle: Duration,
}

impl Default for Timeouts {
    /// 30 s to connect (docker's dial timeout), 60 s for the headers and between body reads.
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(30),
            response: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

impl ClientError {
    /// True for errors worth retrying: network errors, 5xx and 429.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Network { .. } => true,
            ClientError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// How to talk to registries: the pieces of [`super::RegistryOptions`] the client needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Where credentials come from.
    pub docker_config: DockerConfig,
    /// Registries (`host[:port]`) that may be reached over plain HTTP, besides loopback.
    pub insecure: Vec<String>,
    /// Retries after the first attempt for transient errors.
    pub retries: u32,
    /// The first backoff; doubled after each retry, capped at 10 s.
    pub retry_base: Duration,
    /// Connect, response and idle-read timeouts.
    pub timeouts: Timeouts,
}

/// True when `registry` (`host[:port]`) may be reached over plain HTTP.
pub fn allows_plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                registry
            }
        })
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
        || insecure.iter().any(|i| i == registry || i == host)
}

#[derive(Debug, Clone)]
enum AuthState {
    None,
    Basic,
    Bearer(String),
}

/// A connection to one registry for one operation (its scopes decide the bearer token).
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    registry: String,
    api_host: String,
    plain_allowed: bool,
    base: tokio::sync::OnceCell<String>,
    creds: Option<Credentials>,
    scopes: Vec<String>,
    auth: std::sync::Mutex<AuthState>,
    retries: u32,
    retry_base: Duration,
    timeouts: Timeouts,
    /// The client for blob uploads, made on first use: reqwest's read timeout runs from the
    /// start of a request to its response headers, so on this client, whose requests stream
    /// whole blobs, it would cut every upload longer than the idle timeout. Uploads are
    /// bounded by their progress instead (see [`Client::wait_upload`]).
    upload_http: tokio::sync::OnceCell<reqwest::Client>,
}

/// A request body's progress: bytes sent so far, and the size when all is sent.
type Sent<'a> = (&'a AtomicU64, u64);

/// What [`Client::start_upload`] got.
#[derive(Debug)]
pub enum UploadStart {
    /// The mount succeeded (201): nothing to upload.
    Mounted,
    /// An upload session: PUT the blob here.
    Session(String),
}

/// The HTTP client. For insecure registries (loopback or listed), TLS certificates are not
/// verified either, as docker does: such a registry may serve https with a self-signed
/// certificate, or plain http. Such a client needs no root certificates, so it skips loading
/// the system's (about 150 files: 50-100 ms of every pull or push).
///
/// reqwest's `read_timeout` is the idle timeout (`None` for the upload client): it bounds every
/// read, of the headers too, so the wait for headers is the smaller of `response` and `idle`.
fn http_client(
    insecure: bool,
    connect: Duration,
    idle: Option<Duration>,
) -> Result<reqwest::Client> {
    let b = reqwest::Client::builder()
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect);
    let b = match idle {
        Some(d) => b.read_timeout(d),
        None => b,
    };
    b.danger_accept_invalid_certs(insecure)
        .tls_built_in_root_certs(!insecure)
        .build()
        .map_err(ClientError::Setup)
}

impl Client {
    /// A client for `registry` whose bearer tokens cover `scopes`
    /// (`repository:NAME:pull[,push]`).
    ///
    /// Fails when the credentials cannot be read or the HTTP client cannot be built.
    pub fn new(registry: &str, scopes: Vec<String>, cfg: &ClientConfig) -> Result<Client> {
        let creds = cfg.docker_config.credentials(registry)?;
        Client::with_given_credentials(registry, scopes, creds, cfg)
    }

    /// Like [`Client::new`] with `creds` instead of the stored credentials (for login).
    ///
    /// Fails when the HTTP client cannot be built.
    pub fn with_given_credentials(
        registry: &str,
        scopes: Vec<String>,
        creds: Option<Credentials>,
        cfg: &ClientConfig,
    ) -> Result<Client> {
        let plain_allowed = allows_plain_http(registry, &cfg.insecure);
        let http = http_client(plain_allowed, cfg.timeouts.connect, Some(cfg.timeouts.idle))?;
        let api_host = if is_docker_hub(registry) {
            "registry-1.docker.io".to_owned()
        } else {
            registry.to_owned()
        };
        Ok(Client {
            http,
            registry: registry.to_owned(),
            api_host,
            plain_allowed,
            base: tokio::sync::OnceCell::new(),
            creds,
            scopes,
            auth: std::sync::Mutex::new(AuthState::None),
            retries: cfg.retries,
            retry_base: cfg.retry_base,
            timeouts: cfg.timeouts,
            upload_http: tokio::sync::OnceCell::new(),
        })
    }

    /// The registry host this client talks to.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Runs `op` again after transient errors, with exponential backoff.
    pub async fn retry<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Err(e) if e.is_transient() && attempt < self.retries => {
                    let delay = self
                        .retry_base
                        .saturating_mul(1 << attempt.min(16))
                        .min(Duration::from_secs(10));
                    tracing::debug!(registry = %self.registry, error = %e, attempt, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// `https://host` or, when allowed and https fails to connect, `http://host`.
    async fn base(&self) -> Result<&str> {
        self.base
            .get_or_try_init(|| async {
                let https = format!("https://{}", self.api_host);
                if !self.plain_allowed {
                    return Ok(https);
                }
                let probe = self.http.get(format!("{https}/v2/")).send();
                match tokio::time::timeout(self.timeouts.response, probe).await {
                    Ok(Ok(_)) => Ok(https),
                    Ok(Err(e)) => {
                        tracing::debug!(registry = %self.registry, error = %e, "https failed; using plain http");
                        Ok(format!("http://{}", self.api_host))
                    }
                    // A TLS handshake is bounded by the connect timeout; an https server that
                    // never answers is no better than one that is not there.
                    Err(_) => {
                        tracing::debug!(registry = %self.registry, "https timed out; using plain http");
                        Ok(format!("http://{}", self.api_host))
                    }
                }
            })
            .await
            .map(String::as_str)
    }

    /// A network error of request `what`; a reqwest timeout becomes [`ClientError::Timeout`]
    /// naming the timeout that ran out.
    pub(crate) fn network(&self, what: &str, source: reqwest::Error) -> ClientError {
        if source.is_timeout() {
            let (phase, after) = if source.is_connect() {
                (TimeoutPhase::Connect, self.timeouts.connect)
            } else {
                (TimeoutPhase::Idle, self.timeouts.idle)
            };
            return self.timeout(what, phase, after);
        }
        ClientError::Network {
            registry: self.registry.clone(),
            what: what.to_owned(),
            source,
        }
    }

    fn timeout(&self, what: &str, phase: TimeoutPhase, after: Duration) -> ClientError {
        ClientError::Timeout {
            registry: self.registry.clone(),
            what: what.to_owned(),
            phase,
            after,
        }
    }

    /// Sends `rb`, a blob upload, failing when its body makes no progress for the idle timeout,
    /// or when, all sent, no response headers come within the response timeout (the registry
    /// verifies the digest first). Progress is checked once per timeout, so a stall is noticed
    /// after one to two timeouts.
    async fn wait_upload(
        &self,
        what: &str,
        rb: reqwest::RequestBuilder,
        (sent, size): Sent<'_>,
    ) -> Result<Response> {
        let fut = rb.send();
        tokio::pin!(fut);
        let mut last = sent.load(Ordering::Relaxed);
        loop {
            let done = last >= size;
            let (phase, wait) = if done {
                (TimeoutPhase::Response, self.timeouts.response)
            } else {
                (TimeoutPhase::Idle, self.timeouts.idle)
            };
            match tokio::time::timeout(wait, &mut fut).await {
                Ok(r) => return r.map_err(|e| self.network(what, e)),
                Err(_) => {
                    let now = sent.load(Ordering::Relaxed);
                    if now == last && done == (now >= size) {
                        return Err(self.timeout(what, phase, wait));
                    }
                    last = now;
                }
            }
        }
    }

    /// Sends `rb`, waiting at most the response timeout for the headers. reqwest's idle
    /// timeout also runs while it waits for them, so whichever is shorter ends the wait.
    async fn send_timed(&self, what: &str, rb: reqwest::RequestBuilder) -> Result<Response> {
        let waited = self.timeouts.response.min(self.timeouts.idle);
        match tokio::time::timeout(self.timeouts.response, rb.send()).await {
            Ok(Err(e)) if e.is_timeout() && !e.is_connect() => {
                Err(self.timeout(what, TimeoutPhase::Response, waited))
            }
            Ok(r) => r.map_err(|e| self.network(what, e)),
            Err(_) => Err(self.timeout(what, TimeoutPhase::Response, waited)),
        }
    }

    fn auth_header(&self) -> Option<HeaderValue> {
        let state = self
            .auth
            .lock()
            .expect("auth mutex is never poisoned: no panics while held")
            .clone();
        let value = match (state, &self.creds) {
            (AuthState::Bearer(t), _) => format!("Bearer {t}"),
            (AuthState::Basic, Some(Credentials::Basic { username, password })) => {
                use base64::Engine as _;
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"))
                )
            }
            _ => return None,
        };
        let mut v = HeaderValue::from_str(&value).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// Sends the request `build` makes (called again after an auth challenge), answering
    /// 401 challenges once. Returns the response whatever its status, except 401/403 after
    /// credentials were sent.
    async fn send<B>(&self, what: &str, build: B) -> Result<Response>
    where
        B: Fn(&reqwest::Client, &str) -> Result<reqwest::RequestBuilder>,
    {
        self.send_with(what, build, None).await
    }

    /// Like [`Client::send`] for a request that streams a blob whose progress `sent` reports:
    /// on the upload client, bounded by progress rather than by one timeout.
    async fn send_upload<B>(&self, what: &str, sent: Sent<'_>, build: B) -> Result<Response>
    where
        B: Fn(&reqwest::Client, &str) -> Result<reqwest::RequestBuilder>,
    {
        self.send_with(what, build, Some(sent)).await
    }

    async fn send_with<B>(&self, what: &str, build: B, upload: Option<Sent<'_>>) -> Result<Response>
    where
        B: Fn(&reqwest::Client, &str) -> Result<reqwest::RequestBuilder>,
    {
        let base = self.base().await?;
        let http = match upload {
            Some(_) => {
                self.upload_http
                    .get_or_try_init(|| async {
                        http_client(self.plain_allowed, self.timeouts.connect, None)
                    })
                    .await?
            }
            None => &self.http,
        };
        let mut answered = false;
        loop {
            let mut rb = build(http, base)?;
            if let Some(h) = self.auth_header() {
                rb = rb.header(header::AUTHORIZATION, h);
            }
            let resp = match upload {
                Some(sent) => self.wait_upload(what, rb, sent).await?,
                None => self.send_timed(what, rb).await?,
            };
            if resp.status() != StatusCode::UNAUTHORIZED && resp.status() != StatusCode::FORBIDDEN {
                return Ok(resp);
            }
            let sent_creds = !matches!(
                *self
                    .auth
                    .lock()
                    .expect("auth mutex is never poisoned: no panics while held"),
                AuthState::None
            ) && self.creds.is_some();
            let status = resp.status();
            if answered || status == StatusCode::FORBIDDEN {
                return Err(self.rejected(status, sent_creds));
            }
            let challenge = resp
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(parse_challenge)
                .min_by_key(|c| matches!(c, Challenge::Basic));
            let new_state = match challenge {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope,
                }) => AuthState::Bearer(
                    self.fetch_token(&realm, service.as_deref(), scope.as_deref())
                        .await?,
                ),
                Some(Challenge::Basic) if matches!(self.creds, Some(Credentials::Basic { .. })) => {
                    AuthState::Basic
                }
                _ => return Err(self.rejected(status, false)),
            };
            *self
                .auth
                .lock()
                .expect("auth mutex is never poisoned: no panics while held") = new_state;
            answered = true;
        }
    }

    fn rejected(&self, status: StatusCode, sent_creds: bool) -> ClientError {
        match (&self.creds, sent_creds || status == StatusCode::FORBIDDEN) {
            (Some(c), true) => ClientError::Denied {
                registry: self.registry.clone(),
                username: c.username().to_owned(),
                status,
            },
            _ => ClientError::Unauthorized {
                registry: self.registry.clone(),
            },
        }
    }

    /// The bearer token flow (<https://distribution.github.io/distribution/spec/auth/token/>):
    /// GET the realm with basic credentials when known, or POST the OAuth2 refresh-token grant
    /// for identity tokens.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        challenge_scope: Option<&str>,
    ) -> Result<String> {
        let token_err = |message: String| ClientError::Token {
            registry: self.registry.clone(),
            realm: realm.to_owned(),
            message,
        };
        let mut scopes = self.scopes.clone();
        if let Some(s) = challenge_scope {
            for s in s.split(' ') {
                if !s.is_empty() && !scopes.iter().any(|x| x == s) {
                    scopes.push(s.to_owned());
                }
            }
        }
        let url =
            reqwest::Url::parse(realm).map_err(|e| token_err(format!("invalid realm: {e}")))?;
        if url.scheme() != "https" && !(url.scheme() == "http" && self.plain_allowed) {
            return Err(token_err("the realm is not https".to_owned()));
        }
        let rb = match &self.creds {
            Some(Credentials::IdentityToken(tok)) => {
                let mut form = vec![
                    ("grant_type", "refresh_token".to_owned()),
                    ("refresh_token", tok.clone()),
                    ("client_id", "kiln".to_owned()),
                    ("scope", scopes.join(" ")),
                ];
                if let Some(s) = service {
                    form.push(("service", s.to_owned()));
                }
                self.http.post(url).form(&form)
            }
            creds => {
                let mut q: Vec<(&str, &str)> =
                    scopes.iter().map(|s| ("scope", s.as_str())).collect();
                if let Some(s) = service {
                    q.push(("service", s));
                }
                let rb = self.http.get(url).query(&q);
                match creds {
                    Some(Credentials::Basic { username, password }) => {
                        rb.basic_auth(username, Some(password))
                    }
                    _ => rb,
                }
            }
        };
        let resp = self.send_timed("token request", rb).await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.rejected(status, self.creds.is_some()));
        }
        if !status.is_success() {
            return Err(token_err(status.to_string()));
        }
        let body = self
            .read_limited("token request", resp, MAX_MANIFEST_SIZE)
            .await
            .map_err(|e| e.unwrap_or_else(|| token_err("answer too large".to_owned())))?;
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
        }
        let a: TokenAnswer =
            serde_json::from_slice(&body).map_err(|e| token_err(format!("invalid JSON: {e}")))?;
        let t = if a.token.is_empty() {
            a.access_token
        } else {
            a.token
        };
        if t.is_empty() {
            return Err(token_err("the answer holds no token".to_owned()));
        }
        Ok(t)
    }

    /// Turns a non-success response into an error naming the request.
    async fn check(&self, what: &str, resp: Response) -> Result<Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == StatusCode::NOT_FOUND {
            return Err(ClientError::NotFound {
                registry: self.registry.clone(),
                what: what.to_owned(),
            });
        }
        let body = self
            .read_limited(what, resp, 64 << 10)
            .await
            .unwrap_or_default();
        Err(ClientError::Status {
            registry: self.registry.clone(),
            what: what.to_owned(),
            status,
            message: error_message(&body),
        })
    }

    /// `GET /v2/`: checks that the registry answers and accepts the credentials.
    ///
    /// Fails when it does not answer, or rejects the credentials.
    pub async fn ping(&self) -> Result<()> {
        let what = "GET /v2/";
        let resp = self
            .send(what, |http, base| Ok(http.get(format!("{base}/v2/"))))
            .await?;
        self.check(what, resp).await.map(drop)
    }

    /// Fetches a manifest or index by tag or digest. Returns its bytes and media type; when
    /// `reference` is a digest, the bytes are verified against it.
    ///
    /// Fails on HTTP errors, a body over [`MAX_MANIFEST_SIZE`], or a digest mismatch.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<(Vec<u8>, String)> {
        let what = format!("GET manifest {repo}:{reference}");
        let (body, media_type) = self
            .retry(|| async {
                let resp = self
                    .send(&what, |http, base| {
                        Ok(http
                            .get(format!("{base}/v2/{repo}/manifests/{reference}"))
                            .header(header::ACCEPT, MANIFEST_ACCEPT))
                    })
                    .await?;
                let resp = self.check(&what, resp).await?;
                let media_type = resp
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.split(';').next().unwrap_or(s).trim().to_owned())
                    .unwrap_or_default();
                let body = self
                    .read_limited(&what, resp, MAX_MANIFEST_SIZE)
                    .await
                    .map_err(|e| {
                        e.unwrap_or_else(|| ClientError::TooLarge {
                            registry: self.registry.clone(),
                            what: what.clone(),
                            limit: MAX_MANIFEST_SIZE,
                        })
                    })?;
                Ok((body, media_type))
            })
            .await?;
        if let Ok(expected) = reference.parse::<Digest>() {
            let actual = Digest::of(&body);
            if actual != expected {
                return Err(ClientError::DigestMismatch {
                    registry: self.registry.clone(),
                    what,
                    expected,
                    actual,
                });
            }
        }
        Ok((body, media_type))
    }

    /// Starts a blob download; the caller streams and verifies the body. Not retried here:
    /// the caller retries the whole download.
    ///
    /// Fails on network errors and non-2xx answers (404 as [`ClientError::NotFound`]).
    pub async fn get_blob(&self, repo: &str, digest: &Digest) -> Result<Response> {
        let what = format!("GET blob {digest} in {repo}");
        let resp = self
            .send(&what, |http, base| {
                Ok(http.get(format!("{base}/v2/{repo}/blobs/{digest}")))
            })
            .await?;
        self.check(&what, resp).await
    }

    /// True when the registry has `digest` in `repo`.
    ///
    /// Fails on network errors and answers other than 200/404.
    pub async fn has_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let what = format!("HEAD blob {digest} in {repo}");
        self.retry(|| async {
            let resp = self
                .send(&what, |http, base| {
                    Ok(http.head(format!("{base}/v2/{repo}/blobs/{digest}")))
                })
                .await?;
            match self.check(&what, resp).await {
                Ok(_) => Ok(true),
                Err(ClientError::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// `POST /v2/<repo>/blobs/uploads/`, with `?mount=&from=` when `mount_from` is given.
    /// A mount the registry cannot do answers 202 with an upload session, which is returned.
    ///
    /// Fails on HTTP errors or a missing `Location`.
    pub async fn start_upload(
        &self,
        repo: &str,
        digest: &Digest,
        mount_from: Option<&str>,
    ) -> Result<UploadStart> {
        let what = match mount_from {
            Some(from) => format!("mount blob {digest} from {from} into {repo}"),
            None => format!("start upload of {digest} to {repo}"),
        };
        let resp = self
            .send(&what, |http, base| {
                let mut rb = http
                    .post(format!("{base}/v2/{repo}/blobs/uploads/"))
                    .header(header::CONTENT_LENGTH, 0);
                if let Some(from) = mount_from {
                    rb = rb.query(&[("mount", digest.to_string().as_str()), ("from", from)]);
                }
                Ok(rb)
            })
            .await?;
        let resp = self.check(&what, resp).await?;
        if resp.status() == StatusCode::CREATED && mount_from.is_some() {
            return Ok(UploadStart::Mounted);
        }
        let location = self.location(&what, resp.headers()).await?;
        Ok(UploadStart::Session(location))
    }

    async fn location(&self, what: &str, headers: &HeaderMap) -> Result<String> {
        let bad = || ClientError::BadLocation {
            registry: self.registry.clone(),
            what: what.to_owned(),
        };
        let loc = headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(bad)?;
        let base = reqwest::Url::parse(self.base().await?).map_err(|_| bad())?;
        let url = base.join(loc).map_err(|_| bad())?;
        // Only follow the session to the registry itself (a hostile Location must not make us
        // send credentials elsewhere).
        if url.host_str() != base.host_str()
            || url.port_or_known_default() != base.port_or_known_default()
        {
            return Err(bad());
        }
        Ok(url.to_string())
    }

    /// Finishes an upload session with one streamed PUT of the file at `path` (`size` bytes).
    /// `progress` gets the bytes sent so far, about every MiB and at the end.
    ///
    /// Fails on I/O, network or HTTP errors.
    pub async fn put_blob(
        &self,
        session: &str,
        digest: &Digest,
        path: &Path,
        size: u64,
        progress: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Result<()> {
        let what = format!("upload blob {digest}");
        let mut url = reqwest::Url::parse(session).map_err(|_| ClientError::BadLocation {
            registry: self.registry.clone(),
            what: what.clone(),
        })?;
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let sent = Arc::new(AtomicU64::new(0));
        let resp = self
            .send_upload(&what, (&sent, size), |http, _| {
                let file = std::fs::File::open(path).map_err(|source| ClientError::Open {
                    path: path.to_owned(),
                    source,
                })?;
                let file = tokio::fs::File::from_std(file);
                sent.store(0, Ordering::Relaxed);
                let counter = sent.clone();
                let progress = progress.clone();
                let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10).inspect(
                    move |chunk| {
                        if let Ok(c) = chunk {
                            let before = counter.fetch_add(c.len() as u64, Ordering::Relaxed);
                            // Report about every MiB, not every chunk.
                            if (before + c.len() as u64) >> 20 != before >> 20 {
                                progress(before + c.len() as u64);
                            }
                        }
                    },
                );
                Ok(http
                    .put(url.clone())
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, size)
                    .body(reqwest::Body::wrap_stream(stream)))
            })
            .await;
        progress(sent.load(Ordering::Relaxed));
        self.check(&what, resp?).await.map(drop)
    }

    /// Uploads the file at `path` (`size` bytes) into an upload session in PATCH requests of
    /// at most `chunk` bytes each (`Content-Range: start-end`), each streamed from the file,
    /// then closes the session with an empty PUT carrying the digest. For registries or
    /// proxies that limit request bodies: a chunk refused with 413 is sent again in halves
    /// (down to 64 KiB). `progress` gets the bytes sent so far.
    ///
    /// Fails on I/O, network or HTTP errors, or a missing `Location` between chunks.
    pub async fn put_blob_chunked(
        &self,
        session: &str,
        digest: &Digest,
        path: &Path,
        size: u64,
        chunk: u64,
        progress: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Result<()> {
        use tokio::io::AsyncReadExt as _;
        let what = format!("chunked upload of blob {digest}");
        let bad = || ClientError::BadLocation {
            registry: self.registry.clone(),
            what: what.clone(),
        };
        let mut chunk = chunk.max(1);
        let mut url = reqwest::Url::parse(session).map_err(|_| bad())?;
        let mut offset = 0u64;
        while offset < size {
            let len = chunk.min(size - offset);
            let sent = Arc::new(AtomicU64::new(offset));
            let resp = self
                .send_upload(&what, (&sent, offset + len), |http, _| {
                    let open = |source| ClientError::Open {
                        path: path.to_owned(),
                        source,
                    };
                    let mut file = std::fs::File::open(path).map_err(open)?;
                    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))
                        .map_err(open)?;
                    let body = tokio::fs::File::from_std(file).take(len);
                    let progress = progress.clone();
                    sent.store(offset, Ordering::Relaxed);
                    let sent = sent.clone();
                    let stream = tokio_util::io::ReaderStream::with_capacity(body, 256 << 10)
                        .inspect(move |c| {
                            if let Ok(c) = c {
                                let before = sent.fetch_add(c.len() as u64, Ordering::Relaxed);
                                if (before + c.len() as u64) >> 20 != before >> 20 {
                                    progress(before + c.len() as u64);
                                }
                            }
                        });
                    Ok(http
                        .patch(url.clone())
                        .header(header::CONTENT_TYPE, "application/octet-stream")
                        .header(
                            header::CONTENT_RANGE,
                            format!("{offset}-{}", offset + len - 1),
                        )
                        .header(header::CONTENT_LENGTH, len)
                        .body(reqwest::Body::wrap_stream(stream)))
                })
                .await?;
            let resp = match self.check(&what, resp).await {
                // Refused before the registry saw it (a body limit on the way): the session
                // is unchanged, so the same range goes again in smaller pieces.
                Err(ClientError::Status { status, .. })
                    if status == StatusCode::PAYLOAD_TOO_LARGE && len > MIN_CHUNK =>
                {
                    chunk = (len / 2).max(MIN_CHUNK);
                    continue;
                }
                r => r?,
            };
            url = reqwest::Url::parse(&self.location(&what, resp.headers()).await?)
                .map_err(|_| bad())?;
            offset += len;
            progress(offset);
        }
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let resp = self
            .send(&what, |http, _| {
                Ok(http.put(url.clone()).header(header::CONTENT_LENGTH, 0))
            })
            .await?;
        self.check(&what, resp).await.map(drop)
    }

    /// PUTs a manifest (or index) with its media type under a tag or digest.
    ///
    /// Fails on network or HTTP errors.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<()> {
        let what = format!("PUT manifest {repo}:{reference}");
        self.retry(|| async {
            let resp = self
                .send(&what, |http, base| {
                    Ok(http
                        .request(
                            Method::PUT,
                            format!("{base}/v2/{repo}/manifests/{reference}"),
                        )
                        .header(header::CONTENT_TYPE, media_type)
                        .body(body.to_vec()))
                })
                .await?;
            self.check(&what, resp).await.map(drop)
        })
        .await
    }
}

impl Client {
    /// Reads the body of request `what` up to `limit` bytes. `Err(None)` when it is larger.
    async fn read_limited(
        &self,
        what: &str,
        resp: Response,
        limit: usize,
    ) -> std::result::Result<Vec<u8>, Option<ClientError>> {
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(None);
        }
        let mut out = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| Some(self.network(what, source)))?;
            if out.len() + chunk.len() > limit {
                return Err(None);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

/// The first message of a distribution error body (`{"errors":[{"code","message"}]}`), or
/// the start of the text.
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body)
        && let Some(first) = e.errors.first()
    {
        return format!("{} {}", first.code, first.message)
            .trim()
            .to_owned();
    }
    let text = String::from_utf8_lossy(body);
    text.trim().chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_registries() {
        assert!(allows_plain_http("localhost:5000", &[]));
        assert!(allows_plain_http("127.0.0.1:41234", &[]));
        assert!(allows_plain_http("[::1]:5000", &[]));
        assert!(allows_plain_http("localhost", &[]));
        assert!(!allows_plain_http("registry.example:5000", &[]));
        assert!(!allows_plain_http("127.0.0.1.example", &[]));
        assert!(allows_plain_http(
            "registry.example:5000",
            &["registry.example:5000".into()]
        ));
        assert!(allows_plain_http(
            "registry.example:5000",
            &["registry.example".into()]
        ));
    }

    #[test]
    fn distribution_error_bodies_are_summarised() {
        assert_eq!(
            error_message(br#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":{}}]}"#),
            "MANIFEST_INVALID manifest invalid"
        );
        assert_eq!(error_message(b"  oops \n"), "oops");
    }

    #[test]
    fn transient_errors_are_5xx_429_and_network() {
        let status = |s: u16| ClientError::Status {
            registry: "r".into(),
            what: "w".into(),
            status: StatusCode::from_u16(s).unwrap(),
            message: String::new(),
        };
        assert!(status(503).is_transient());
        assert!(status(429).is_transient());
        assert!(!status(400).is_transient());
        assert!(
            !ClientError::Unauthorized {
                registry: "r".into()
            }
            .is_transient()
        );
    }
}

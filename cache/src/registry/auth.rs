//! Credentials: docker's `config.json` (`auths`, `credsStore`, `credHelpers`), credential
//! helpers, `WWW-Authenticate` challenges, and the login/logout file writes.
//!
//! The file format is docker's (<https://docs.docker.com/reference/cli/docker/login/>): `auths`
//! maps a registry key (`host[:port]`, or `https://index.docker.io/v1/` for Docker Hub) to
//! `{"auth": base64("user:password")}` or `{"identitytoken": ...}`; `credHelpers` maps a host to
//! a helper name and `credsStore` names the default helper. A helper is the program
//! `docker-credential-<name>` speaking the credential-helper protocol on stdin/stdout. Fields
//! kiln does not know are kept when the file is rewritten.

use base64::Engine as _;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `auths` key docker uses for Docker Hub.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Errors reading or writing credentials.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The config file exists but cannot be read.
    #[error("cannot read docker config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid JSON of the expected shape.
    #[error("invalid docker config {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The config file's top level is not a JSON object.
    #[error("invalid docker config {path}: the top level is not a JSON object")]
    NotAnObject {
        /// The file.
        path: PathBuf,
    },
    /// An `auth` entry is not base64 of `user:password`.
    #[error(
        "invalid docker config {path}: the `auth` entry for {registry} is not base64 of user:password"
    )]
    BadAuthEntry {
        /// The file.
        path: PathBuf,
        /// The registry key.
        registry: String,
    },
    /// The config file cannot be written.
    #[error("cannot write docker config {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A credential helper could not be started.
    #[error("cannot run credential helper {program}")]
    HelperSpawn {
        /// The program (`docker-credential-<name>`).
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A credential helper failed.
    #[error("credential helper {program} {action} failed for {registry}: {message}")]
    HelperFailed {
        /// The program.
        program: String,
        /// `get`, `store` or `erase`.
        action: &'static str,
        /// The registry key.
        registry: String,
        /// What the helper printed.
        message: String,
    },
    /// A credential helper printed something that is not its JSON answer.
    #[error("credential helper {program} printed invalid JSON for {registry}")]
    HelperOutput {
        /// The program.
        program: String,
        /// The registry key.
        registry: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

type Result<T> = std::result::Result<T, AuthError>;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password (sent with basic auth, or to the token realm).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token realm.
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    /// Never prints secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

impl Credentials {
    /// The user name, for messages (`<token>` for identity tokens).
    pub fn username(&self) -> &str {
        match self {
            Credentials::Basic { username, .. } => username,
            Credentials::IdentityToken(_) => "<token>",
        }
    }
}

/// The key a registry host is stored under in `auths` and passed to helpers.
pub fn config_key(registry: &str) -> String {
    if is_docker_hub(registry) {
        DOCKER_HUB_KEY.to_owned()
    } else {
        registry.to_owned()
    }
}

/// True for the names docker treats as Docker Hub.
pub fn is_docker_hub(registry: &str) -> bool {
    matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

/// Reduces an `auths` key (`https://host:port/v1/`, `host`) to `host[:port]`.
fn normalise_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k);
    if is_docker_hub(host) {
        "docker.io".to_owned()
    } else {
        host.to_owned()
    }
}

/// docker's `config.json`, read once; the path is given by the caller (who handles
/// `DOCKER_CONFIG` and `~/.docker`).
#[derive(Debug, Clone)]
pub struct DockerConfig {
    path: PathBuf,
    /// Directory holding `docker-credential-*` helpers; `None` searches `PATH`.
    helper_dir: Option<PathBuf>,
    json: Map<String, Value>,
}

impl DockerConfig {
    /// Reads `path`; a missing file is an empty config.
    ///
    /// Fails when the file exists but cannot be read or is not a JSON object.
    pub fn load(path: impl Into<PathBuf>) -> Result<DockerConfig> {
        let path = path.into();
        let json = match std::fs::read(&path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Map::new(),
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err(AuthError::NotAnObject { path }),
                Err(source) => return Err(AuthError::Parse { path, source }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(source) => return Err(AuthError::Read { path, source }),
        };
        Ok(DockerConfig {
            path,
            helper_dir: None,
            json,
        })
    }

    /// An empty config that is never written (anonymous access only).
    pub fn anonymous() -> DockerConfig {
        DockerConfig {
            path: PathBuf::new(),
            helper_dir: None,
            json: Map::new(),
        }
    }

    /// Looks for credential helpers in `dir` instead of `PATH`.
    pub fn with_helper_dir(mut self, dir: impl Into<PathBuf>) -> DockerConfig {
        self.helper_dir = Some(dir.into());
        self
    }

    /// The file this config was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn helper_for(&self, registry: &str) -> Option<String> {
        let host = normalise_key(registry);
        if let Some(Value::Object(helpers)) = self.json.get("credHelpers") {
            for (k, v) in helpers {
                if normalise_key(k) == host
                    && let Some(name) = v.as_str().filter(|s| !s.is_empty())
                {
                    return Some(name.to_owned());
                }
            }
        }
        self.json
            .get("credsStore")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }

    fn helper_program(&self, name: &str) -> (String, PathBuf) {
        let program = format!("docker-credential-{name}");
        let path = match &self.helper_dir {
            Some(dir) => dir.join(&program),
            None => PathBuf::from(&program),
        };
        (program, path)
    }

    /// The credentials stored for `registry` (`host[:port]`), if any: a `credHelpers` entry,
    /// then `credsStore`, then `auths`.
    ///
    /// Fails when a helper cannot run or fails other than "not found", or an entry is malformed.
    pub fn credentials(&self, registry: &str) -> Result<Option<Credentials>> {
        if let Some(name) = self.helper_for(registry)
            && let Some(c) = self.helper_get(&name, registry)?
        {
            return Ok(Some(c));
        }
        let host = normalise_key(registry);
        let Some(Value::Object(auths)) = self.json.get("auths") else {
            return Ok(None);
        };
        // Prefer the exact key, then any key that normalises to the same host.
        let entry = auths.get(&config_key(registry)).or_else(|| {
            auths
                .iter()
                .find(|(k, _)| normalise_key(k) == host)
                .map(|(_, v)| v)
        });
        let Some(Value::Object(entry)) = entry else {
            return Ok(None);
        };
        if let Some(tok) = entry
            .get("identitytoken")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            return Ok(Some(Credentials::IdentityToken(tok.to_owned())));
        }
        if let Some(auth) = entry
            .get("auth")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            let bad = || AuthError::BadAuthEntry {
                path: self.path.clone(),
                registry: registry.to_owned(),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad())?;
            let text = String::from_utf8(decoded).map_err(|_| bad())?;
            let (u, p) = text.split_once(':').ok_or_else(bad)?;
            return Ok(Some(Credentials::Basic {
                username: u.to_owned(),
                password: p.to_owned(),
            }));
        }
        match (
            entry.get("username").and_then(Value::as_str),
            entry.get("password").and_then(Value::as_str),
        ) {
            (Some(u), Some(p)) => Ok(Some(Credentials::Basic {
                username: u.to_owned(),
                password: p.to_owned(),
            })),
            _ => Ok(None),
        }
    }

    fn run_helper(
        &self,
        name: &str,
        action: &'static str,
        input: &[u8],
    ) -> Result<(bool, Vec<u8>, String)> {
        let (program, path) = self.helper_program(name);
        let mut child = Command::new(&path)
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| AuthError::HelperSpawn {
                program: program.clone(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading gives EPIPE; its exit status tells the story.
            let _ = stdin.write_all(input);
        }
        let out = child
            .wait_with_output()
            .map_err(|source| AuthError::HelperSpawn { program, source })?;
        let mut message = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if message.is_empty() {
            message = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        }
        Ok((out.status.success(), out.stdout, message))
    }

    fn helper_get(&self, name: &str, registry: &str) -> Result<Option<Credentials>> {
        let key = config_key(registry);
        let (ok, stdout, message) = self.run_helper(name, "get", key.as_bytes())?;
        let program = self.helper_program(name).0;
        if !ok {
            // The protocol's "not found" answer (docker-credential-helpers' ErrCredentialsNotFound).
            if message.contains("credentials not found") {
                return Ok(None);
            }
            return Err(AuthError::HelperFailed {
                program,
                action: "get",
                registry: key,
                message,
            });
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Answer {
            #[serde(default)]
            username: String,
            #[serde(default)]
            secret: String,
        }
        let a: Answer =
            serde_json::from_slice(&stdout).map_err(|source| AuthError::HelperOutput {
                program,
                registry: key,
                source,
            })?;
        if a.secret.is_empty() {
            return Ok(None);
        }
        if a.username == "<token>" {
            return Ok(Some(Credentials::IdentityToken(a.secret)));
        }
        Ok(Some(Credentials::Basic {
            username: a.username,
            password: a.secret,
        }))
    }

    /// Saves `creds` for `registry`: through its credential helper when one is configured,
    /// otherwise as base64 in `auths`. The file is rewritten atomically, mode 0600.
    ///
    /// Fails when the helper fails or the file cannot be written.
    pub fn store(&mut self, registry: &str, creds: &Credentials) -> Result<()> {
        let key = config_key(registry);
        let (username, secret) = match creds {
            Credentials::Basic { username, password } => (username.clone(), password.clone()),
            Credentials::IdentityToken(t) => ("<token>".to_owned(), t.clone()),
        };
        let helper = self.helper_for(registry);
        if let Some(name) = &helper {
            let input =
                serde_json::json!({"ServerURL": key, "Username": username, "Secret": secret});
            let (ok, _, message) = self.run_helper(name, "store", input.to_string().as_bytes())?;
            if !ok {
                let program = self.helper_program(name).0;
                return Err(AuthError::HelperFailed {
                    program,
                    action: "store",
                    registry: key,
                    message,
                });
            }
        }
        let auths = self
            .json
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        let Value::Object(auths) = auths else {
            unreachable!("auths was just made an object")
        };
        if helper.is_some() {
            // docker leaves an empty entry so `auths` still lists the registry.
            auths.insert(key, Value::Object(Map::new()));
        } else {
            let mut entry = Map::new();
            match creds {
                Credentials::Basic { username, password } => {
                    let b = base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"));
                    entry.insert("auth".into(), Value::String(b));
                }
                Credentials::IdentityToken(t) => {
                    entry.insert("identitytoken".into(), Value::String(t.clone()));
                }
            }
            auths.insert(key, Value::Object(entry));
        }
        self.write()
    }

    /// Removes the credentials for `registry` (from its helper and from `auths`). Returns
    /// whether anything was stored.
    ///
    /// Fails when the helper fails or the file cannot be written.
    pub fn erase(&mut self, registry: &str) -> Result<bool> {
        let key = config_key(registry);
        let host = normalise_key(registry);
        let mut found = false;
        if let Some(name) = self.helper_for(registry) {
            let (ok, _, message) = self.run_helper(&name, "erase", key.as_bytes())?;
            if ok {
                found = true;
            } else if !message.contains("credentials not found") {
                let program = self.helper_program(&name).0;
                return Err(AuthError::HelperFailed {
                    program,
                    action: "erase",
                    registry: key,
                    message,
                });
            }
        }
        if let Some(Value::Object(auths)) = self.json.get_mut("auths") {
            let keys: Vec<String> = auths
                .keys()
                .filter(|k| normalise_key(k) == host)
                .cloned()
                .collect();
            for k in keys {
                auths.remove(&k);
                found = true;
            }
        }
        if found {
            self.write()?;
        }
        Ok(found)
    }

    /// Writes the file (mode 0600) with [`kroot::write_atomic_with`].
    fn write(&self) -> Result<()> {
        let err = |source| AuthError::Write {
            path: self.path.clone(),
            source,
        };
        let mut bytes = serde_json::to_vec_pretty(&self.json).map_err(|e| err(e.into()))?;
        bytes.push(b'\n');
        kroot::write_atomic_with(&self.path, 0o600, |f| f.write_all(&bytes)).map_err(err)
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="..."`.
    Basic,
    /// `Bearer realm="...",service="...",scope="..."`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` parameter to send back, if given.
        service: Option<String>,
        /// The `scope` the registry asked for, if given.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value (RFC 7235 auth-params, quoted or not). Returns
/// `None` for schemes kiln does not speak.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next_if_eq(&'=').is_none() {
            continue;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                .collect::<String>()
                .trim()
                .to_owned();
        }
        out.insert(key.trim().to_ascii_lowercase(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_commas_parses() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn auths_entries_decode_and_match_any_key_form() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"https://reg.example:5000/v1/":{"auth":"dTpwOnc="},"https://index.docker.io/v1/":{"identitytoken":"tok"}},"other":1}"#,
        )
        .unwrap();
        let cfg = DockerConfig::load(&path).unwrap();
        assert_eq!(
            cfg.credentials("reg.example:5000").unwrap(),
            Some(Credentials::Basic {
                username: "u".into(),
                password: "p:w".into()
            })
        );
        assert_eq!(
            cfg.credentials("docker.io").unwrap(),
            Some(Credentials::IdentityToken("tok".into()))
        );
        assert_eq!(cfg.credentials("elsewhere").unwrap(), None);
    }

    #[test]
    fn store_and_erase_rewrite_the_file_keeping_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, r#"{"psFormat":"table"}"#).unwrap();
        let mut cfg = DockerConfig::load(&path).unwrap();
        cfg.store(
            "127.0.0.1:5000",
            &Credentials::Basic {
                username: "a".into(),
                password: "b".into(),
            },
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["psFormat"], "table");
        assert_eq!(v["auths"]["127.0.0.1:5000"]["auth"], "YTpi");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut again = DockerConfig::load(&path).unwrap();
        assert!(again.erase("127.0.0.1:5000").unwrap());
        assert!(!again.erase("127.0.0.1:5000").unwrap());
        assert_eq!(
            DockerConfig::load(&path)
                .unwrap()
                .credentials("127.0.0.1:5000")
                .unwrap(),
            None
        );
    }

    #[test]
    fn cred_helpers_are_run_with_the_server_url() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-fake");
        // Answers for one registry only, as the helper protocol describes.
        std::fs::write(
            &helper,
            "#!/bin/sh\nread url\nif [ \"$1\" = get ] && [ \"$url\" = reg.example ]; then\n  echo '{\"ServerURL\":\"reg.example\",\"Username\":\"hu\",\"Secret\":\"hs\"}'\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"credHelpers":{"reg.example":"fake"},"auths":{"other.example":{"auth":"eDp5"}}}"#,
        )
        .unwrap();
        let cfg = DockerConfig::load(&path)
            .unwrap()
            .with_helper_dir(dir.path());
        assert_eq!(
            cfg.credentials("reg.example").unwrap(),
            Some(Credentials::Basic {
                username: "hu".into(),
                password: "hs".into()
            })
        );
        assert_eq!(
            cfg.credentials("other.example").unwrap(),
            Some(Credentials::Basic {
                username: "x".into(),
                password: "y".into()
            })
        );
        std::fs::write(&path, r#"{"credsStore":"fake"}"#).unwrap();
        let cfg = DockerConfig::load(&path)
            .unwrap()
            .with_helper_dir(dir.path());
        assert_eq!(cfg.credentials("nothere.example").unwrap(), None);
        assert_eq!(
            cfg.credentials("reg.example").unwrap().unwrap().username(),
            "hu"
        );
    }
}

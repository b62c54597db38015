//! OCI image-spec types: digests, descriptors, manifests, indexes and image configs.
//!
//! Field names follow the OCI image spec (and docker's extensions that the spec tolerates:
//! `Healthcheck`, `OnBuild`, `Shell`), so these serialise to JSON that docker, skopeo and
//! umoci read. Maps are `BTreeMap` so serialisation is deterministic.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Media type of an OCI image manifest.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an OCI image config.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed OCI layer.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of a gzip-compressed OCI layer.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of a zstd-compressed OCI layer.
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Media type of a Docker schema2 manifest.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of a Docker manifest list.
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Media type of a Docker image config.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Media type of a gzip-compressed Docker layer.
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Media type of an uncompressed Docker layer (`docker save` style, some `docker push`es).
pub const MEDIA_TYPE_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Media type of a Docker foreign layer (Windows base layers), fetched from its `urls`.
pub const MEDIA_TYPE_DOCKER_LAYER_FOREIGN: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Media type of an uncompressed OCI non-distributable layer.
pub const MEDIA_TYPE_LAYER_NONDIST_TAR: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar";
/// Media type of a gzip-compressed OCI non-distributable layer.
pub const MEDIA_TYPE_LAYER_NONDIST_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// Media type of a zstd-compressed OCI non-distributable layer.
pub const MEDIA_TYPE_LAYER_NONDIST_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
/// Media type of a Docker schema1 manifest (unsigned); kiln refuses these, as docker 20.10+
/// does by default.
pub const MEDIA_TYPE_DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Media type of a signed Docker schema1 manifest.
pub const MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// The index annotation BuildKit puts on attestation (SBOM, provenance) manifests; those are
/// not images and are skipped when choosing a platform.
pub const ANNOTATION_REFERENCE_TYPE: &str = "vnd.docker.reference.type";

/// How a layer media type is stored and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// A layer the registry serves (tar, gzip or zstd; decompression is chosen by magic bytes,
    /// so eStargz, which is gzip, reads as gzip).
    Distributable,
    /// A foreign (docker) or non-distributable (OCI) layer: pulled like the others when the
    /// registry has it, never uploaded by push (docker does the same).
    NonDistributable,
}

/// The kind of the layer media type `media_type`, or None when it is not a layer type of the
/// OCI or Docker image specs.
pub fn layer_kind(media_type: &str) -> Option<LayerKind> {
    match media_type {
        MEDIA_TYPE_LAYER_TAR
        | MEDIA_TYPE_LAYER_GZIP
        | MEDIA_TYPE_LAYER_ZSTD
        | MEDIA_TYPE_DOCKER_LAYER_GZIP
        | MEDIA_TYPE_DOCKER_LAYER_TAR => Some(LayerKind::Distributable),
        MEDIA_TYPE_DOCKER_LAYER_FOREIGN
        | MEDIA_TYPE_LAYER_NONDIST_TAR
        | MEDIA_TYPE_LAYER_NONDIST_GZIP
        | MEDIA_TYPE_LAYER_NONDIST_ZSTD => Some(LayerKind::NonDistributable),
        _ => None,
    }
}

/// Fields kiln does not model, kept as they were (docker's `container_config`,
/// `docker_version`, OCI `os.features`, future fields) so that decoding loses nothing.
pub type Extra = BTreeMap<String, serde_json::Value>;

/// Reads `null` as the type's default: Go tools (docker, BuildKit, containerd) write `null`
/// for empty slices and maps (`"Env":null`, `"layers":null`), and docker reads them as empty.
fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A content digest. kiln only produces `sha256`, and only accepts `sha256` on ingest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

/// A string that is not a valid `sha256:<64 lowercase hex>` digest.
#[derive(Debug, thiserror::Error)]
#[error("invalid digest `{0}`: expected sha256:<64 lowercase hex digits>")]
pub struct InvalidDigest(pub String);

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest::from_sha256(Sha256::digest(data).into())
    }

    /// Wraps a finished SHA-256 hash.
    pub fn from_sha256(hash: [u8; 32]) -> Digest {
        // By table, not `hex::encode` (a char iterator): warm builds make one per context file.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(64);
        for b in hash {
            hex.push(char::from(HEX[usize::from(b >> 4)]));
            hex.push(char::from(HEX[usize::from(b & 15)]));
        }
        Digest { hex }
    }

    /// The raw 32-byte SHA-256 hash (as `context::statcache` stores it).
    pub fn to_sha256(&self) -> [u8; 32] {
        let mut raw = [0u8; 32];
        hex::decode_to_slice(&self.hex, &mut raw)
            .expect("a Digest holds 64 lowercase hex digits (checked when it is made)");
        raw
    }

    /// The 64 hex digits, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as docker shows image IDs.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }

    /// The algorithm name; always `sha256`.
    pub fn algorithm(&self) -> &str {
        "sha256"
    }
}

impl FromStr for Digest {
    type Err = InvalidDigest;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| InvalidDigest(s.to_owned()))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(InvalidDigest(s.to_owned()));
        }
        Ok(Digest {
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental SHA-256 hasher producing a [`Digest`].
#[derive(Default)]
pub struct Hasher(Sha256);

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher")
    }
}

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Hasher {
        Hasher(Sha256::new())
    }
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        Digest::from_sha256(self.0.finalize().into())
    }
}

impl std::io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An OS/architecture pair, as in an index entry or image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture, GOARCH style (`amd64`, `arm64`).
    #[serde(default, deserialize_with = "null_default")]
    pub architecture: String,
    /// Operating system, GOOS style (`linux`).
    #[serde(default, deserialize_with = "null_default")]
    pub os: String,
    /// CPU variant (`v8`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// OS version (Windows), if any.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

impl Platform {
    /// The platform kiln builds for: this machine's (`linux/amd64` here).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Platform {
            architecture: architecture.to_owned(),
            os: "linux".to_owned(),
            variant: None,
            os_version: None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A content descriptor: what a manifest or index points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(default, deserialize_with = "null_default")]
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    #[serde(default, deserialize_with = "null_default")]
    pub size: u64,
    /// Optional annotations (`org.opencontainers.image.ref.name` in index.json).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// Platform of a manifest inside an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Other fields (`urls` of foreign layers, `artifactType`, `data`), kept as read.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Descriptor {
    /// A descriptor without annotations or platform.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
            annotations: BTreeMap::new(),
            platform: None,
            extra: Extra::new(),
        }
    }

    /// True for a BuildKit attestation manifest in an index (not an image).
    pub fn is_attestation(&self) -> bool {
        self.annotations
            .get(ANNOTATION_REFERENCE_TYPE)
            .is_some_and(|t| t == "attestation-manifest")
    }
}

/// An OCI image manifest (also reads Docker schema2 manifests, which have the same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    #[serde(default, deserialize_with = "null_default")]
    pub schema_version: u32,
    /// The manifest's own media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// Layer blobs, base first.
    #[serde(default, deserialize_with = "null_default")]
    pub layers: Vec<Descriptor>,
    /// Optional annotations.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// Other fields (`artifactType`, `subject`), kept as read.
    #[serde(flatten)]
    pub extra: Extra,
}

/// An OCI image index (also reads Docker manifest lists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    #[serde(default, deserialize_with = "null_default")]
    pub schema_version: u32,
    /// The index's own media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests it lists.
    #[serde(default, deserialize_with = "null_default")]
    pub manifests: Vec<Descriptor>,
    /// Optional annotations.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// Other fields, kept as read.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ImageIndex {
    /// An OCI image index (schema 2, [`MEDIA_TYPE_INDEX`]) listing `manifests`, without
    /// annotations.
    pub fn oci(manifests: Vec<Descriptor>) -> ImageIndex {
        ImageIndex {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_INDEX.to_owned()),
            manifests,
            annotations: BTreeMap::new(),
            extra: Extra::default(),
        }
    }
}

/// An empty JSON object, as used for `ExposedPorts` and `Volumes` set members. Anything else
/// there (docker writes `{}`; some tools write `null`) is accepted and ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Empty {}

impl<'de> Deserialize<'de> for Empty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(Empty {})
    }
}

/// Docker's HEALTHCHECK configuration (an extension the OCI spec tolerates).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub test: Vec<String>,
    /// Nanoseconds between checks.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero"
    )]
    pub interval: i64,
    /// Nanoseconds before a check is considered hung.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero"
    )]
    pub timeout: i64,
    /// Nanoseconds of start-up grace.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero"
    )]
    pub start_period: i64,
    /// Nanoseconds between checks during the start period.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero"
    )]
    pub start_interval: i64,
    /// Consecutive failures before unhealthy.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero"
    )]
    pub retries: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// The runtime part of an image config (`config` in the JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub user: String,
    /// Ports as `80/tcp`.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, Empty>,
    /// `KEY=value` entries, in order.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    /// Entrypoint argv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Volume mount points.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub volumes: BTreeMap<String, Empty>,
    /// Working directory.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub working_dir: String,
    /// Labels.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// Stop signal (`SIGTERM`).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub stop_signal: String,
    /// Docker extension: health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    /// Docker extension: ONBUILD triggers, as source lines.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub on_build: Vec<String>,
    /// Docker extension: SHELL.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub shell: Vec<String>,
    /// Fields kiln does not model (docker's `Hostname`, `AttachStdin`, `ArgsEscaped`, ...),
    /// kept as read. Images kiln builds drop them, as BuildKit does.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(
        rename = "type",
        default = "layers_kind",
        deserialize_with = "null_layers"
    )]
    pub kind: String,
    /// Digests of the uncompressed layer tars, base first.
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<Digest>,
}

fn layers_kind() -> String {
    "layers".to_owned()
}

fn null_layers<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_else(layers_kind))
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: layers_kind(),
            diff_ids: Vec::new(),
        }
    }
}

/// One `history` entry of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Free text (`buildkit.dockerfile.v0` style).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when this step made no layer.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub empty_layer: bool,
}

/// An OCI image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// RFC 3339 creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author (MAINTAINER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// GOARCH.
    #[serde(default, deserialize_with = "null_default")]
    pub architecture: String,
    /// GOOS.
    #[serde(default, deserialize_with = "null_default")]
    pub os: String,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Runtime configuration.
    #[serde(default, deserialize_with = "null_default")]
    pub config: ContainerConfig,
    /// Layer diff IDs.
    #[serde(default, deserialize_with = "null_default")]
    pub rootfs: RootFs,
    /// Build history.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub history: Vec<History>,
    /// Fields kiln does not model (docker's `container`, `container_config`,
    /// `docker_version`; OCI `os.version`, `os.features`), kept as read. Images kiln builds
    /// drop them, as BuildKit does.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ImageConfig {
    /// An empty config for `platform` (what `FROM scratch` starts from).
    pub fn empty(platform: &Platform) -> ImageConfig {
        ImageConfig {
            created: None,
            author: None,
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            config: ContainerConfig::default(),
            rootfs: RootFs::default(),
            history: Vec::new(),
            extra: Extra::new(),
        }
    }

    /// The config's platform.
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
            os_version: self
                .extra
                .get("os.version")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
        }
    }

    /// This config without the fields kiln does not model: the start of a config kiln writes
    /// for an image built on this one (BuildKit decodes the base config into its own types
    /// too, so docker's `container_config` and the like do not carry over).
    pub fn without_extra(mut self) -> ImageConfig {
        self.extra.clear();
        self.config.extra.clear();
        self
    }
}

/// Serialises `value` as compact JSON: the canonical bytes kiln hashes and stores.
///
/// Fails only if `value` cannot be represented as JSON (never for the types in this module).
pub fn to_canonical_json<T: Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parses_and_prints_round_trip() {
        let d = Digest::of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn digest_rejects_other_algorithms_and_bad_hex() {
        assert!("md5:abc".parse::<Digest>().is_err());
        assert!("sha256:ABC".parse::<Digest>().is_err());
        assert!(
            format!("sha256:{}", "g".repeat(64))
                .parse::<Digest>()
                .is_err()
        );
    }

    #[test]
    fn config_uses_oci_field_names() {
        let mut c = ImageConfig::empty(&Platform::host());
        c.config.env.push("PATH=/bin".into());
        c.config.exposed_ports.insert("80/tcp".into(), Empty {});
        let json = String::from_utf8(to_canonical_json(&c).unwrap()).unwrap();
        assert!(json.contains("\"Env\":[\"PATH=/bin\"]"), "{json}");
        assert!(json.contains("\"ExposedPorts\":{\"80/tcp\":{}}"), "{json}");
        assert!(
            json.contains("\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}"),
            "{json}"
        );
    }

    /// What docker 20.10 writes for `docker import` and BuildKit for `FROM scratch`: Go's nil
    /// slices and maps are `null`. Every optional field is `null` here.
    const NULL_CONFIG: &str = r#"{"architecture":"amd64","os":"linux","created":null,"author":null,"variant":null,
        "config":{"Hostname":"","User":null,"ExposedPorts":null,"Env":null,"Entrypoint":null,"Cmd":null,
        "Volumes":null,"WorkingDir":null,"Labels":null,"StopSignal":null,"OnBuild":null,"Shell":null,
        "Healthcheck":{"Test":null,"Interval":null,"Timeout":null,"StartPeriod":null,"StartInterval":null,"Retries":null}},
        "container_config":{"Cmd":null},"docker_version":"20.10.24",
        "rootfs":{"type":"layers","diff_ids":null},
        "history":[{"created":null,"created_by":null,"author":null,"comment":null,"empty_layer":null}]}"#;

    #[test]
    fn null_reads_as_absent_in_configs_and_unknown_fields_are_kept() {
        let c: ImageConfig = serde_json::from_str(NULL_CONFIG).unwrap();
        assert_eq!(c.config.env, Vec::<String>::new());
        assert_eq!(c.config.entrypoint, None);
        assert_eq!(c.config.healthcheck, Some(HealthConfig::default()));
        assert!(c.rootfs.diff_ids.is_empty());
        assert_eq!(c.history, vec![History::default()]);
        assert_eq!(c.extra["docker_version"], "20.10.24");
        assert_eq!(c.config.extra["Hostname"], "");
        assert!(c.extra.contains_key("container_config"));
        // Kept through a round trip; dropped for a config kiln writes.
        let again: ImageConfig = serde_json::from_slice(&to_canonical_json(&c).unwrap()).unwrap();
        assert_eq!(again, c);
        let own = c.without_extra();
        assert!(own.extra.is_empty() && own.config.extra.is_empty());
        for top in [
            r#"{"architecture":"amd64","os":"linux","config":null,"rootfs":null,"history":null}"#,
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":null,"diff_ids":null}}"#,
        ] {
            let c: ImageConfig = serde_json::from_str(top).unwrap();
            assert_eq!(
                c,
                ImageConfig::empty(&Platform {
                    architecture: "amd64".into(),
                    os: "linux".into(),
                    variant: None,
                    os_version: None
                }),
                "{top}"
            );
        }
    }

    #[test]
    fn null_reads_as_absent_in_manifests_indexes_and_descriptors() {
        let d = Digest::of(b"x");
        let m: ImageManifest = serde_json::from_str(&format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_DOCKER_MANIFEST}","config":{{"mediaType":"{MEDIA_TYPE_DOCKER_CONFIG}","digest":"{d}","size":1,"annotations":null,"platform":null,"urls":null}},"layers":null,"annotations":null}}"#
        ))
        .unwrap();
        assert!(m.layers.is_empty() && m.annotations.is_empty());
        assert!(m.config.annotations.is_empty());
        assert_eq!(m.config.extra["urls"], serde_json::Value::Null);
        let i: ImageIndex =
            serde_json::from_str(r#"{"schemaVersion":2,"manifests":null,"annotations":null}"#)
                .unwrap();
        assert!(i.manifests.is_empty() && i.annotations.is_empty());
    }

    #[test]
    fn every_layer_type_of_both_specs_is_known() {
        for t in [
            MEDIA_TYPE_LAYER_TAR,
            MEDIA_TYPE_LAYER_GZIP,
            MEDIA_TYPE_LAYER_ZSTD,
            MEDIA_TYPE_DOCKER_LAYER_GZIP,
            MEDIA_TYPE_DOCKER_LAYER_TAR,
        ] {
            assert_eq!(layer_kind(t), Some(LayerKind::Distributable), "{t}");
        }
        for t in [
            MEDIA_TYPE_DOCKER_LAYER_FOREIGN,
            MEDIA_TYPE_LAYER_NONDIST_TAR,
            MEDIA_TYPE_LAYER_NONDIST_GZIP,
            MEDIA_TYPE_LAYER_NONDIST_ZSTD,
        ] {
            assert_eq!(layer_kind(t), Some(LayerKind::NonDistributable), "{t}");
        }
        assert_eq!(layer_kind("application/vnd.in-toto+json"), None);
    }
}

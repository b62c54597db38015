//! `--provenance`, `--sbom`, `--attest`: in-toto statements attached to image outputs as
//! BuildKit attaches them (an attestation manifest per image in the index, see
//! `cache::export::Export::attach`).
//!
//! Provenance is SLSA v1 (`https://slsa.dev/provenance/v1`) in BuildKit's shape: the build
//! type, `externalParameters` (config source: the Dockerfile; request: the frontend, the
//! build args, target and labels; never `--secret` values, which are not build args),
//! `resolvedDependencies` (each base image as `pkg:docker/NAME?platform=...` with its
//! manifest digest, and each ADD git source with its commit), and `runDetails` (builder,
//! invocation id, start and finish times). `mode=max` adds the Dockerfile itself
//! (`buildkit_metadata.source`) and each image's layer list.

use anyhow::{Context as _, bail};
use base64::Engine as _;
use cache::export::Prepared;
use cache::reference::Reference;
use serde_json::json;
use std::collections::BTreeMap;

/// SLSA provenance v1's predicate type.
pub const PREDICATE_SLSA_V1: &str = "https://slsa.dev/provenance/v1";

/// `mode=min` or `mode=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The default.
    Min,
    /// Adds the Dockerfile and layers.
    Max,
}

/// What was asked of attestations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested {
    /// Provenance, with its mode.
    pub provenance: Option<Mode>,
    /// SBOM generator image.
    pub sbom: Option<String>,
}

fn csv_map(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    s.split(',')
        .filter(|f| !f.is_empty())
        .map(|f| match f.split_once('=') {
            Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
            None => bail!("{f:?}: expected KEY=VALUE"),
        })
        .collect()
}

fn provenance_of(attrs: &BTreeMap<String, String>, what: &str) -> anyhow::Result<Option<Mode>> {
    if attrs.get("disabled").is_some_and(|v| v == "true") {
        return Ok(None);
    }
    for k in attrs.keys() {
        if !matches!(
            k.as_str(),
            "type" | "mode" | "version" | "builder-id" | "disabled"
        ) {
            bail!("{what}: unknown attribute {k:?}");
        }
    }
    if let Some(v) = attrs.get("version")
        && v != "v1"
    {
        bail!("{what}: version={v}: kiln writes SLSA provenance v1 only (version=v1)");
    }
    match attrs.get("mode").map(String::as_str) {
        None | Some("min") => Ok(Some(Mode::Min)),
        Some("max") => Ok(Some(Mode::Max)),
        Some(m) => bail!("{what}: mode={m}: expected min or max"),
    }
}

/// Parses `--provenance`, `--sbom` and `--attest` values as buildx does (`true`/`false`
/// shorthands; `--attest type=...,...`).
///
/// Fails on unknown types, attributes or modes.
pub fn parse(
    provenance: Option<&str>,
    sbom: Option<&str>,
    attest: &[String],
) -> anyhow::Result<Requested> {
    let mut out = Requested::default();
    let shorthand = |v: &str| -> anyhow::Result<Option<BTreeMap<String, String>>> {
        match v {
            "true" | "1" => Ok(Some(BTreeMap::new())),
            "false" | "0" => Ok(None),
            v => csv_map(v).map(Some),
        }
    };
    if let Some(v) = provenance
        && let Some(attrs) = shorthand(v)?
    {
        out.provenance = provenance_of(&attrs, &format!("--provenance {v}"))?;
    }
    let mut sbom_attrs = None;
    if let Some(v) = sbom {
        sbom_attrs = shorthand(v)?.map(|a| (a, format!("--sbom {v}")));
    }
    for a in attest {
        let attrs = csv_map(a)?;
        match attrs.get("type").map(String::as_str) {
            Some("provenance") => out.provenance = provenance_of(&attrs, &format!("--attest {a}"))?,
            Some("sbom") => sbom_attrs = Some((attrs, format!("--attest {a}"))),
            Some(t) => bail!("--attest {a}: unknown type {t:?} (provenance or sbom)"),
            None => bail!("--attest {a}: type=provenance or type=sbom is required"),
        }
    }
    if let Some((attrs, what)) = sbom_attrs
        && attrs.get("disabled").is_none_or(|v| v != "true")
    {
        let generator = attrs
            .get("generator")
            .cloned()
            .unwrap_or_else(|| "docker/buildkit-syft-scanner:stable-1".to_owned());
        for k in attrs.keys() {
            if !matches!(k.as_str(), "type" | "generator" | "disabled") {
                bail!("{what}: unknown attribute {k:?}");
            }
        }
        out.sbom = Some(generator);
    }
    Ok(out)
}

/// What a provenance statement records about the build.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The Dockerfile's name in the context.
    pub dockerfile_name: String,
    /// The Dockerfile's bytes (`mode=max`).
    pub dockerfile: Vec<u8>,
    /// Build args.
    pub build_args: BTreeMap<String, String>,
    /// `--label` values.
    pub labels: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// Base images: reference as written -> manifest digest.
    pub bases: BTreeMap<String, cache::oci::Digest>,
    /// ADD git sources: remote URL, ref, and the commit when known.
    pub git: Vec<(String, Option<String>, Option<String>)>,
    /// The invocation id (buildx's build ref).
    pub invocation: String,
    /// When the build started and finished (RFC 3339).
    pub started: String,
    /// When it finished.
    pub finished: String,
}

impl Facts {
    /// The facts of a build: its options, Dockerfile, `--label`s, resolved bases and graph.
    pub fn of_build(
        opts: &frontend::BuildOptions,
        dockerfile: &[u8],
        labels: BTreeMap<String, String>,
        bases: &BTreeMap<String, frontend::BaseImage>,
        graph: &graph::BuildGraph,
        build_ref: &str,
        started: String,
    ) -> Facts {
        Facts {
            dockerfile_name: opts.dockerfile_name.clone(),
            dockerfile: dockerfile.to_vec(),
            build_args: opts.build_args.clone(),
            labels,
            target: opts.target.clone(),
            bases: bases
                .iter()
                .map(|(k, b)| (k.clone(), b.manifest.clone()))
                .collect(),
            git: resolved_git_sources(graph),
            invocation: build_ref.rsplit('/').next().unwrap_or_default().to_owned(),
            started,
            finished: executor::container::time::now_rfc3339(),
        }
    }
}

/// [`git_sources`] with their commits: the solver resolves refs in its own copy of the
/// graph, so they are resolved again here (`git ls-remote`, as the build did); a source that
/// cannot be resolved now is listed without a digest.
fn resolved_git_sources(
    graph: &graph::BuildGraph,
) -> Vec<(String, Option<String>, Option<String>)> {
    let sources = git_sources(graph);
    if sources.iter().all(|(_, _, c)| c.is_some()) {
        return sources;
    }
    let mut g = graph.clone();
    match solver::git::resolve_all(&mut g, None) {
        Ok(()) => git_sources(&g),
        Err(_) => sources,
    }
}

/// The ADD git sources the target reaches: remote, ref, commit (when the graph has it).
fn git_sources(graph: &graph::BuildGraph) -> Vec<(String, Option<String>, Option<String>)> {
    use graph::{CopySource, FileAction, Op};
    let mut out = Vec::new();
    for n in graph.reachable() {
        if let Op::File(f) = &graph.nodes[n].op {
            for act in &f.actions {
                if let FileAction::Copy(c) = act
                    && let CopySource::Git(g) = &c.from
                {
                    out.push((g.remote.clone(), g.reference.clone(), g.commit.clone()));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Attestations to attach to every image output.
#[derive(Debug, Clone)]
pub struct Attest {
    /// What was asked.
    pub requested: Requested,
    /// The build's facts.
    pub facts: Facts,
    /// SBOMs from the `--sbom` generator, per platform (`linux/amd64`): file name, SPDX
    /// document.
    pub sboms: BTreeMap<String, Vec<(String, serde_json::Value)>>,
}

/// `pkg:docker/NAME?platform=OS%2FARCH`: BuildKit's purl of an image.
fn purl(name: &str, platform: &cache::oci::Platform) -> String {
    let p = platform.to_string().replace('/', "%2F");
    match Reference::parse(name) {
        Ok(r) => {
            let mut s = format!("pkg:docker/{}", r.name());
            if let Some(t) = &r.tag {
                s.push('@');
                s.push_str(t);
            }
            format!("{s}?platform={p}")
        }
        Err(_) => format!("pkg:docker/{name}?platform={p}"),
    }
}

impl Attest {
    /// The statements to attach to `image`, named by `names` in the subject.
    ///
    /// Fails when a statement cannot be serialised.
    pub fn statements(
        &self,
        image: &Prepared,
        names: &[Reference],
    ) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        if let Some(mode) = self.requested.provenance {
            let bytes = serde_json::to_vec(&self.provenance(image, names, mode))
                .context("serialising the provenance statement")?;
            out.push((PREDICATE_SLSA_V1.to_owned(), bytes));
        }
        let platform = cache::export::platform_of(&image.image).to_string();
        for (_, doc) in self.sboms.get(&platform).into_iter().flatten() {
            let stmt = json!({
                "_type": "https://in-toto.io/Statement/v0.1",
                "predicateType": super::sbom::PREDICATE_SPDX,
                "subject": self.subject(image, names),
                "predicate": doc,
            });
            let bytes = serde_json::to_vec(&stmt).context("serialising an SBOM statement")?;
            out.push((super::sbom::PREDICATE_SPDX.to_owned(), bytes));
        }
        Ok(out)
    }

    /// The statement's subject: the image manifest, under each name (`_` without one).
    fn subject(&self, image: &Prepared, names: &[Reference]) -> Vec<serde_json::Value> {
        let platform = image
            .descriptor
            .platform
            .clone()
            .unwrap_or_else(cache::oci::Platform::host);
        let digest = json!({ "sha256": image.descriptor.digest.hex() });
        match names {
            [] => vec![json!({ "name": "_", "digest": digest })],
            names => names
                .iter()
                .map(|n| json!({ "name": purl(&n.to_string(), &platform), "digest": digest }))
                .collect(),
        }
    }

    /// The statement files of a local or tar output holding one `platform`'s result, as
    /// BuildKit writes them beside the files: `provenance.json`, and each SBOM under the file
    /// name its scanner gave it; in-toto statements (indented JSON) whose subject is every
    /// regular file of the output (`files`: path inside the output, SHA-256).
    ///
    /// Fails when a statement cannot be serialised.
    pub fn files(
        &self,
        platform: &cache::oci::Platform,
        files: &[(String, cache::oci::Digest)],
    ) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let subject: Vec<_> = files
            .iter()
            .map(|(name, d)| json!({ "name": name, "digest": { "sha256": d.hex() } }))
            .collect();
        let mut out = Vec::new();
        if let Some(mode) = self.requested.provenance {
            let stmt = self.provenance_of(platform, subject.clone(), &[], mode);
            let bytes =
                serde_json::to_vec_pretty(&stmt).context("serialising the provenance statement")?;
            out.push(("provenance.json".to_owned(), bytes));
        }
        for (name, doc) in self.sboms.get(&platform.to_string()).into_iter().flatten() {
            let stmt = json!({
                "_type": "https://in-toto.io/Statement/v0.1",
                "predicateType": super::sbom::PREDICATE_SPDX,
                "subject": subject,
                "predicate": doc,
            });
            let bytes =
                serde_json::to_vec_pretty(&stmt).context("serialising an SBOM statement")?;
            let base = name.rsplit('/').next().unwrap_or(name).to_owned();
            out.push((base, bytes));
        }
        Ok(out)
    }

    fn provenance(&self, image: &Prepared, names: &[Reference], mode: Mode) -> serde_json::Value {
        let platform = image
            .descriptor
            .platform
            .clone()
            .unwrap_or_else(cache::oci::Platform::host);
        let subject = self.subject(image, names);
        self.provenance_of(&platform, subject, &image.layers, mode)
    }

    /// The SLSA v1 provenance statement of `platform`'s result about `subject`; `layers`:
    /// the image's layers (none for a local or tar output).
    fn provenance_of(
        &self,
        platform: &cache::oci::Platform,
        subject: Vec<serde_json::Value>,
        layers: &[cache::oci::Descriptor],
        mode: Mode,
    ) -> serde_json::Value {
        let f = &self.facts;
        let mut args = serde_json::Map::new();
        for (k, v) in &f.build_args {
            args.insert(format!("build-arg:{k}"), json!(v));
        }
        for (k, v) in &f.labels {
            args.insert(format!("label:{k}"), json!(v));
        }
        if let Some(t) = &f.target {
            args.insert("target".into(), json!(t));
        }
        let mut deps: Vec<serde_json::Value> = f
            .bases
            .iter()
            .map(
                |(name, d)| json!({ "uri": purl(name, platform), "digest": { "sha256": d.hex() } }),
            )
            .collect();
        for (remote, reference, commit) in &f.git {
            let uri = match reference {
                Some(r) => format!("{remote}#{r}"),
                None => remote.clone(),
            };
            deps.push(match commit {
                Some(c) => json!({ "uri": uri, "digest": { "sha1": c } }),
                None => json!({ "uri": uri }),
            });
        }
        let mut metadata = json!({
            "invocationID": f.invocation,
            "startedOn": f.started,
            "finishedOn": f.finished,
            "buildkit_completeness": { "request": true, "resolvedDependencies": true },
            "buildkit_hermetic": false,
            "buildkit_reproducible": false,
        });
        if mode == Mode::Max {
            metadata["buildkit_metadata"] = json!({
                "source": {
                    "infos": [{
                        "filename": f.dockerfile_name,
                        "language": "Dockerfile",
                        "data": base64::engine::general_purpose::STANDARD.encode(&f.dockerfile),
                    }],
                },
            });
            if !layers.is_empty() {
                metadata["buildkit_metadata"]["layers"] = layers
                    .iter()
                    .map(|l| {
                        json!({
                            "mediaType": l.media_type,
                            "digest": l.digest.to_string(),
                            "size": l.size,
                        })
                    })
                    .collect();
            }
        }
        json!({
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": PREDICATE_SLSA_V1,
            "subject": subject,
            "predicate": {
                "buildDefinition": {
                    "buildType": "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md",
                    "externalParameters": {
                        "configSource": { "path": f.dockerfile_name },
                        "request": {
                            "frontend": "dockerfile.v0",
                            "args": args,
                            "locals": [{ "name": "context" }, { "name": "dockerfile" }],
                        },
                    },
                    "internalParameters": {
                        "builderPlatform": cache::oci::Platform::host().to_string(),
                    },
                    "resolvedDependencies": deps,
                },
                "runDetails": {
                    "builder": { "id": "" },
                    "metadata": metadata,
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorthands_and_attest_values_parse() {
        assert_eq!(
            parse(Some("true"), None, &[]).expect("ok").provenance,
            Some(Mode::Min)
        );
        assert_eq!(
            parse(Some("mode=max"), None, &[]).expect("ok").provenance,
            Some(Mode::Max)
        );
        assert_eq!(
            parse(Some("false"), None, &[]).expect("ok").provenance,
            None
        );
        let r = parse(None, None, &["type=provenance,mode=max".into()]).expect("ok");
        assert_eq!(r.provenance, Some(Mode::Max));
        assert!(parse(Some("mode=huge"), None, &[]).is_err());
        assert!(parse(None, None, &["type=vex".into()]).is_err());
    }

    #[test]
    fn purls_are_buildkit_s() {
        let p = cache::oci::Platform::host();
        assert_eq!(
            purl("busybox:1.36", &p),
            format!(
                "pkg:docker/docker.io/library/busybox@1.36?platform=linux%2F{}",
                p.architecture
            )
        );
    }
}

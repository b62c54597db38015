//! kiln's Dockerfile frontend: text in, build graph out.
//!
//! Pure: no filesystem, no network, no clock, no environment. Base image configs and build
//! args come in as data.
//!
//! The flow, as the cli drives it:
//!
//! 0. [`decode`] turns the file's bytes into text (bytes that are not UTF-8 only in comments,
//!    as docker ignores them there; elsewhere an error with line and column).
//! 1. [`parse`] turns the text into a [`Dockerfile`]: [`ast`] does the line-level work exactly
//!    as BuildKit's parser (directives, continuations, heredocs, JSON vs shell form, flags,
//!    spans), [`instructions`] checks each instruction and groups them into stages.
//! 2. [`base_images`] lists the image references the target stage needs (after ARG
//!    expansion); the caller resolves them in its store.
//! 3. [`lower`] turns the stages the target needs into a [`graph::BuildGraph`]:
//!    source, exec and file nodes with BuildKit-style names and spans, plus the target's
//!    image config and history ([`graph::ImageTemplate`]).
//!
//! [`shell`] is the word expander (`$V`, `${V:-x}`, `${V#p}`...). [`check`] lints without
//! building. [`apply_changes`] serves `kiln import --change`. Errors ([`Error`]) render as
//! `Dockerfile:LINE:COL: message`, the quoted line with a caret, and a `hint:`.
#![deny(missing_docs)]

pub mod ast;
mod changes;
pub mod check;
pub mod error;
pub mod instructions;
mod lower;
pub mod mounts;
pub mod shell;
mod source;

pub use changes::apply_changes;
pub use check::{Level, Warning, check, check_with_bases};
pub use lower::{DEFAULT_PATH, PLATFORM_ARGS, PROXY_ARGS};

pub use error::{Error, ErrorKind};
pub use graph::Span;
pub use instructions::{Command, Dockerfile, Instruction, Stage};
pub use source::decode;

/// Parses a Dockerfile into stages of typed instructions.
///
/// Fails with the line and column of the first syntax error (unknown instruction or flag,
/// bad arguments, unterminated heredoc, no FROM...).
pub fn parse(source: &str) -> Result<Dockerfile, Error> {
    let tree = ast::parse_ast(source).map_err(|e| e.with_source(source))?;
    instructions::from_ast(tree, source).map_err(|e| e.with_source(source))
}

use cache::oci::{Digest, ImageConfig, Platform};
use std::collections::BTreeMap;

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// The Dockerfile's name, for messages (`Dockerfile`, `build/Dockerfile.prod`).
    pub dockerfile_name: String,
    /// `--target`: the stage to build (default: the last one).
    pub target: Option<String>,
    /// `--build-arg K=V`.
    pub build_args: BTreeMap<String, String>,
    /// The target platform (`TARGETPLATFORM`): what stages without `FROM --platform` build for.
    pub platform: Platform,
    /// The build platform (`BUILDPLATFORM`): the machine kiln runs on.
    pub build_platform: Platform,
    /// `--build-context NAME=...`: NAME (a stage name, or an image name as a FROM, `--from`
    /// or `from=` writes it) to the image reference that replaces it, which the caller
    /// resolves like any base image. A stage of that name is replaced, as BuildKit does.
    pub named_contexts: BTreeMap<String, String>,
}

impl BuildOptions {
    /// Options for building the last stage of `Dockerfile` for `platform`.
    pub fn new(platform: Platform) -> BuildOptions {
        BuildOptions {
            dockerfile_name: "Dockerfile".to_owned(),
            target: None,
            build_args: BTreeMap::new(),
            build_platform: platform.clone(),
            platform,
            named_contexts: BTreeMap::new(),
        }
    }
}

impl BuildOptions {
    /// The reference a `--build-context` gives for `name`: the name as written, or its
    /// familiar form (`docker.io/library/alpine:latest` is `alpine`), as BuildKit looks named
    /// contexts up.
    pub fn named_context(&self, name: &str) -> Option<&str> {
        if self.named_contexts.is_empty() {
            return None;
        }
        let lower = name.to_ascii_lowercase();
        let familiar = lower
            .strip_prefix("docker.io/")
            .map(|n| n.strip_prefix("library/").unwrap_or(n))
            .unwrap_or(&lower);
        let familiar = familiar.strip_suffix(":latest").unwrap_or(familiar);
        [name, lower.as_str(), familiar]
            .iter()
            .find_map(|n| self.named_contexts.get(*n))
            .map(String::as_str)
    }
}

/// A base image the build needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImageRef {
    /// The reference after ARG expansion, as written (`busybox`, `alpine:3.20`).
    pub reference: String,
    /// Where it is first used (FROM line, `--from`, `from=`).
    pub span: Span,
    /// The platform to resolve it for when it is not the target platform (a stage with
    /// `FROM --platform=$BUILDPLATFORM`); `None`: the target platform.
    pub platform: Option<Platform>,
}

impl BaseImageRef {
    /// The key of this image in the `bases` map [`lower`] takes: the reference, followed by
    /// ` --platform=OS/ARCH` when [`BaseImageRef::platform`] is set.
    pub fn key(&self) -> String {
        lower::base_key(&self.reference, self.platform.as_ref())
    }
}

/// A resolved base image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    /// Its manifest digest.
    pub manifest: Digest,
    /// Its config.
    pub config: ImageConfig,
}

/// The base images (not stages, not `scratch`) the target needs, in the order lowering
/// meets them: FROM lines, `COPY --from=<image>` and `RUN --mount from=<image>`.
///
/// Fails on an unknown `--target`, a bad expansion in a FROM line, a stage cycle or any
/// lowering error that does not depend on base image configs.
pub fn base_images(df: &Dockerfile, opts: &BuildOptions) -> Result<Vec<BaseImageRef>, Error> {
    Ok(lower::collect_bases(df, opts)?.0)
}

/// The base images the target needs once the ONBUILD triggers of the `known` ones run: what
/// [`base_images`] returns plus the images those triggers name (`ONBUILD COPY --from=alpine`,
/// as BuildKit resolves them). Call it again after resolving new ones, until it adds nothing.
///
/// Fails as [`base_images`] does, and on a trigger that does not parse.
pub fn base_images_with(
    df: &Dockerfile,
    opts: &BuildOptions,
    known: &BTreeMap<String, BaseImage>,
) -> Result<Vec<BaseImageRef>, Error> {
    Ok(lower::collect_bases_with(df, opts, Some(known))?.0)
}

/// Lowers the stages the target needs into a build graph. `bases` is keyed by
/// [`BaseImageRef::reference`].
///
/// The template's `config.rootfs` and `config.history` are the target's base image's (empty
/// for `scratch`); the solver appends the layers and [`graph::ImageTemplate::history`].
///
/// Fails with a located error on anything the build cannot do: unknown stage or target,
/// bad flag values, expansion errors, a base image missing from `bases`.
pub fn lower(
    df: &Dockerfile,
    opts: &BuildOptions,
    bases: &BTreeMap<String, BaseImage>,
) -> Result<graph::BuildGraph, Error> {
    Ok(lower::Lowerer::new(df, opts, Some(bases))?.finish()?.0)
}

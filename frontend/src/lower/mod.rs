//! Lowering: stages of instructions -> a [`BuildGraph`] plus the target's image config.
//!
//! The walk starts at the target stage and lowers a stage only when something needs it
//! (`FROM stage`, `COPY --from`, `RUN --mount from=`), so nodes come out in topological
//! order and unused stages never appear. Per stage it tracks what BuildKit's
//! `dispatchState` does: the image config, the ARGs in scope, the shell, the history.
//!
//! Where BuildKit and the Docker docs disagree we follow BuildKit; such places say so.

use crate::error::{Error, ErrorKind};
use crate::instructions::{Command, Dockerfile, Instruction, Stage};
use crate::shell::{ExpandError, Lex};
use crate::{BaseImage, BaseImageRef, BuildOptions};
use cache::oci::{Digest, ImageConfig, Platform};
use graph::{BuildGraph, HistoryStep, ImageTemplate, Node, NodeId, Op, SourceOp, Span};
use std::collections::BTreeMap;

mod copy;
mod dispatch;
mod values;

pub(crate) use values::{clean_path, parse_port_spec};

/// The default PATH of `FROM scratch` and of RUN steps whose image sets none (BuildKit's
/// `system.DefaultPathEnv` for Linux).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Appends `PATH=`[`DEFAULT_PATH`] to a base image's environment when it sets no PATH (images
/// made by `docker import`, many minimal images), so that the built image and every RUN see
/// it. This is BuildKit's rule (dockerfile2llb: "make sure that PATH is always set",
/// appended last, `system.DefaultPathEnv`), which since v0.13 leaves Windows images alone
/// (moby/buildkit#5445: Windows sets its own path).
pub(crate) fn default_path(config: &mut ImageConfig) {
    let has_path = config
        .config
        .env
        .iter()
        .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == "PATH");
    if !has_path && config.os != "windows" {
        config.config.env.push(format!("PATH={DEFAULT_PATH}"));
    }
}

/// The ARGs every build predefines for proxies: usable without an ARG line, kept out of the
/// cache key and the history.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The automatic platform ARGs.
pub const PLATFORM_ARGS: &[&str] = &[
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
];

fn platform_string(p: &Platform) -> String {
    p.to_string()
}

/// Values of the automatic platform ARGs: `TARGET*` from the target platform, `BUILD*` from
/// the build platform.
pub fn platform_arg(name: &str, target: &Platform, build: &Platform) -> Option<String> {
    let (p, rest) = match name.strip_prefix("TARGET") {
        Some(rest) => (target, rest),
        None => (build, name.strip_prefix("BUILD")?),
    };
    Some(match rest {
        "PLATFORM" => platform_string(p),
        "OS" => p.os.clone(),
        "ARCH" => p.architecture.clone(),
        "VARIANT" => p.variant.clone().unwrap_or_default(),
        _ => return None,
    })
}

/// The `bases` map key of `reference` resolved for `platform` (`None`: the target's).
pub(crate) fn base_key(reference: &str, platform: Option<&Platform>) -> String {
    match platform {
        Some(p) => format!("{reference} --platform={p}"),
        None => reference.to_owned(),
    }
}

/// Parses an expanded `FROM --platform` value (`linux/arm64`, `linux/arm/v7`); `None` when it
/// is not `os/arch[/variant]`.
pub(crate) fn parse_platform(v: &str) -> Option<Platform> {
    let parts: Vec<&str> = v.split('/').collect();
    match parts.as_slice() {
        [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Some(Platform {
            os: os.to_ascii_lowercase(),
            architecture: arch.to_ascii_lowercase(),
            variant: parts
                .get(2)
                .map(|v| v.to_ascii_lowercase())
                .filter(|v| !v.is_empty()),
            os_version: None,
        }),
        _ => None,
    }
}

/// An ARG in scope: name and value (`None` when declared without a value).
#[derive(Debug, Clone)]
struct ArgValue {
    name: String,
    value: Option<String>,
}

/// The lowered result of one stage.
#[derive(Debug, Clone)]
struct StageState {
    node: NodeId,
    /// The platform its steps run for.
    platform: Platform,
    config: ImageConfig,
    history: Vec<HistoryStep>,
}

/// Where a `--from` points.
enum FromRef {
    Stage(usize),
    Image(String),
}

pub(crate) struct Lowerer<'a> {
    df: &'a Dockerfile,
    opts: &'a BuildOptions,
    /// `None`: collecting base images only (`base_images`).
    bases: Option<&'a BTreeMap<String, BaseImage>>,
    lex: Lex,
    meta: Vec<ArgValue>,
    nodes: Vec<Node>,
    done: Vec<Option<StageState>>,
    in_progress: Vec<bool>,
    images: BTreeMap<String, NodeId>,
    /// The scratch node of each platform.
    scratch: Vec<(Platform, NodeId)>,
    /// The platform of the stage being lowered (its `FROM --platform`, else its parent
    /// stage's, else the target's): set on every node it makes.
    cur_platform: Platform,
    pub(crate) collected: Vec<BaseImageRef>,
    /// Names referenced in FROM lines that no ARG defines (for `check`).
    pub(crate) unmatched_from_args: Vec<(String, Span)>,
    /// `check` mode: tolerate what only matters for a real build (blank bases from unset
    /// ARGs, foreign platforms) and record it instead.
    pub(crate) lenient: bool,
    /// Base names that expanded to nothing in lenient mode.
    pub(crate) blank_bases: Vec<(String, Span)>,
    /// With `bases`: an image missing from them gets a placeholder instead of an error (to
    /// find the images that the known ones' ONBUILD triggers add).
    pub(crate) placeholders: bool,
}

impl<'a> Lowerer<'a> {
    pub(crate) fn new(
        df: &'a Dockerfile,
        opts: &'a BuildOptions,
        bases: Option<&'a BTreeMap<String, BaseImage>>,
    ) -> Result<Lowerer<'a>, Error> {
        let mut l = Lowerer {
            df,
            opts,
            bases,
            lex: Lex::new(df.escape),
            meta: Vec::new(),
            nodes: Vec::new(),
            done: vec![None; df.stages.len()],
            in_progress: vec![false; df.stages.len()],
            images: BTreeMap::new(),
            scratch: Vec::new(),
            cur_platform: opts.platform.clone(),
            collected: Vec::new(),
            unmatched_from_args: Vec::new(),
            lenient: false,
            blank_bases: Vec::new(),
            placeholders: false,
        };
        l.eval_meta_args()?;
        Ok(l)
    }

    fn err(&self, e: Error) -> Error {
        e.with_source(&self.df.source)
            .with_file_name(&self.opts.dockerfile_name)
    }

    /// Global ARGs: visible to FROM lines (with the platform ARGs), and as defaults when a
    /// stage re-declares them.
    fn eval_meta_args(&mut self) -> Result<(), Error> {
        for instr in &self.df.meta_args {
            let Command::Arg(defs) = &instr.command else {
                continue;
            };
            for d in defs {
                let (name, value) = {
                    let env = |k: &str| self.meta_lookup(k);
                    let name = expand(&self.lex, &d.name, &env, d.span).map_err(|e| self.err(e))?;
                    let value = match self.opts.build_args.get(&name) {
                        Some(v) => Some(v.clone()),
                        None => match &d.default {
                            Some(def) => Some(
                                expand(&self.lex, def, &env, d.span).map_err(|e| self.err(e))?,
                            ),
                            // `ARG TARGETARCH` without a value takes the automatic one.
                            None => self.platform_arg(&name),
                        },
                    };
                    (name, value)
                };
                self.meta.retain(|a| a.name != name);
                self.meta.push(ArgValue { name, value });
            }
        }
        Ok(())
    }

    fn meta_lookup(&self, k: &str) -> Option<String> {
        if let Some(a) = self.meta.iter().rev().find(|a| a.name == k) {
            return a.value.clone();
        }
        self.platform_arg(k)
    }

    /// The value of an automatic platform ARG.
    pub(super) fn platform_arg(&self, k: &str) -> Option<String> {
        platform_arg(k, &self.opts.platform, &self.opts.build_platform)
    }

    /// `ARG TARGETSTAGE`: the target stage's name, or `default` when it has none (BuildKit's
    /// testTargetStageNameArg).
    pub(super) fn target_stage_arg(&self, name: &str) -> Option<String> {
        if name != "TARGETSTAGE" {
            return None;
        }
        let i = self.target_index().ok()?;
        Some(
            self.df.stages[i]
                .name
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
        )
    }

    /// The index of the target stage.
    pub(crate) fn target_index(&self) -> Result<usize, Error> {
        match &self.opts.target {
            None => Ok(self.df.stages.len() - 1),
            Some(t) => {
                let lower = t.to_ascii_lowercase();
                self.df
                    .stages
                    .iter()
                    .position(|s| s.name.as_deref() == Some(lower.as_str()))
                    .ok_or_else(|| {
                        let names = self.stage_names();
                        let mut e =
                            Error::new(ErrorKind::UnknownTarget { target: t.clone() }, None);
                        e = e.with_hint(if names.is_empty() {
                            "no stage has a name; add `AS name` to a FROM line".to_owned()
                        } else {
                            format!("the named stages are: {}", names.join(", "))
                        });
                        self.err(e)
                    })
            }
        }
    }

    fn stage_names(&self) -> Vec<String> {
        self.df
            .stages
            .iter()
            .filter_map(|s| s.name.clone())
            .collect()
    }

    fn find_stage(&self, name: &str) -> Option<usize> {
        // A `--build-context` of the stage's name replaces the stage.
        if self.opts.named_context(name).is_some() {
            return None;
        }
        let lower = name.to_ascii_lowercase();
        self.df
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
    }

    /// Lowers stage `t` and what it needs (for `check`).
    /// Which stages lowering has reached (a failed one included).
    pub(crate) fn lowered(&self) -> Vec<bool> {
        self.done
            .iter()
            .zip(&self.in_progress)
            .map(|(d, p)| d.is_some() || *p)
            .collect()
    }

    pub(crate) fn lower_target(&mut self, t: usize) -> Result<(), Error> {
        self.stage(t).map(|_| ())
    }

    /// Lowers the target and everything it needs; returns the graph.
    pub(crate) fn finish(mut self) -> Result<(BuildGraph, Vec<BaseImageRef>), Error> {
        let target = self.target_index()?;
        let st = self.stage(target)?;
        let graph = BuildGraph {
            nodes: self.nodes,
            target: st.node,
            image: ImageTemplate {
                config: st.config,
                history: st.history,
            },
        };
        Ok((graph, self.collected))
    }

    fn push(
        &mut self,
        op: Op,
        (name, stage): (String, Option<String>),
        span: Option<Span>,
        instruction: String,
    ) -> NodeId {
        self.nodes.push(Node {
            op,
            name,
            stage,
            span,
            instruction,
            platform: Some(self.cur_platform.clone()),
        });
        self.nodes.len() - 1
    }

    fn scratch_node(&mut self) -> NodeId {
        if let Some((_, n)) = self.scratch.iter().find(|(p, _)| *p == self.cur_platform) {
            return *n;
        }
        let n = self.push(
            Op::Source(SourceOp::Scratch),
            ("scratch".to_owned(), None),
            None,
            "FROM scratch".to_owned(),
        );
        self.scratch.push((self.cur_platform.clone(), n));
        n
    }

    /// A Source node for an image reference (shared between uses).
    fn image_node(
        &mut self,
        reference: &str,
        span: Span,
        name: (String, Option<String>),
        flag: Option<&str>,
    ) -> Result<(NodeId, ImageConfig), Error> {
        let opts = self.opts;
        let reference = opts.named_context(reference).unwrap_or(reference);
        let platform = Some(self.cur_platform.clone()).filter(|p| *p != self.opts.platform);
        let key = base_key(reference, platform.as_ref());
        if !self.collected.iter().any(|b| b.key() == key) {
            self.collected.push(BaseImageRef {
                reference: reference.to_owned(),
                span,
                platform,
            });
        }
        let (manifest, config) = match self.bases {
            Some(bases) => {
                match bases.get(&key) {
                    // Only what kiln models carries over into the image it writes (BuildKit
                    // decodes the base config into its own types too).
                    Some(b) => (b.manifest.clone(), b.config.clone().without_extra()),
                    None if self.placeholders => (
                        Digest::of(reference.as_bytes()),
                        ImageConfig::empty(&self.cur_platform),
                    ),
                    None => {
                        let e = match flag {
                        // A `--from` that is neither a stage nor an image the store has.
                        Some(instr) => Error::new(
                            ErrorKind::UnknownStage { instruction: instr.to_owned(), name: reference.to_owned() },
                            Some(span),
                        )
                        .with_hint(self.stages_hint()),
                        None => Error::new(ErrorKind::MissingBaseImage { reference: reference.to_owned() }, Some(span))
                            .with_hint("the caller must resolve every reference that `base_images` returns"),
                    };
                        return Err(self.err(e));
                    }
                }
            }
            // Collecting only: the config is unknown, an empty one stands in.
            None => (
                Digest::of(key.as_bytes()),
                ImageConfig::empty(&self.cur_platform),
            ),
        };
        if let Some(&n) = self.images.get(&key) {
            return Ok((n, config));
        }
        let n = self.push(
            Op::Source(SourceOp::Image {
                reference: reference.to_owned(),
                manifest,
            }),
            name,
            Some(span),
            format!("FROM {reference}"),
        );
        self.images.insert(key, n);
        Ok((n, config))
    }

    /// Lowers stage `idx` (once) and returns its final state.
    fn stage(&mut self, idx: usize) -> Result<StageState, Error> {
        if let Some(s) = &self.done[idx] {
            return Ok(s.clone());
        }
        let stage = &self.df.stages[idx];
        if self.in_progress[idx] {
            return Err(self.err(
                Error::new(
                    ErrorKind::StageNotYetDefined {
                        name: stage.name.clone().unwrap_or_else(|| idx.to_string()),
                    },
                    Some(stage.span),
                )
                .with_hint("stages form a cycle"),
            ));
        }
        self.in_progress[idx] = true;
        let saved = self.cur_platform.clone();
        let st = self.lower_stage(stage);
        self.cur_platform = saved;
        self.in_progress[idx] = false;
        let st = st?;
        self.done[idx] = Some(st.clone());
        Ok(st)
    }

    fn stage_label(&self, stage: &Stage) -> Option<String> {
        if self.df.stages.len() == 1 {
            // BuildKit omits the stage name in single-stage builds: `[2/3] RUN ...`.
            return None;
        }
        Some(
            stage
                .name
                .clone()
                .unwrap_or_else(|| format!("stage-{}", stage.index)),
        )
    }

    fn lower_stage(&mut self, stage: &Stage) -> Result<StageState, Error> {
        // A `--build-context` of the stage's name is the stage (reached only as the target:
        // other stages see the name as an image).
        if let Some(r) = stage
            .name
            .as_deref()
            .and_then(|n| self.opts.named_context(n))
        {
            let r = r.to_owned();
            let label = self.stage_label(stage);
            let name = (
                format!("{} FROM {r}", step_prefix(&label, 1, 1)),
                Some(label.unwrap_or_default()),
            );
            let (node, mut config) = self.image_node(&r, stage.base_span, name, None)?;
            default_path(&mut config);
            return Ok(StageState {
                node,
                platform: self.cur_platform.clone(),
                config,
                history: Vec::new(),
            });
        }
        let platform = match &stage.platform {
            Some(p) => {
                let span = stage.platform_span.unwrap_or(stage.span);
                let env = |k: &str| self.meta_lookup(k);
                let v = expand(&self.lex, p, &env, span)?;
                match parse_platform(&v) {
                    Some(p) => Some(p),
                    None if self.lenient => None,
                    None => {
                        return Err(self.err(Error::new(
                            ErrorKind::BadPlatform { value: v.clone() },
                            Some(span),
                        )));
                    }
                }
            }
            None => None,
        };
        self.cur_platform = platform
            .clone()
            .unwrap_or_else(|| self.opts.platform.clone());
        let base = {
            let env = |k: &str| self.meta_lookup(k);
            let exp = self.lex.process(&stage.base, &env).map_err(|e| {
                self.err(Error::new(
                    ErrorKind::Expand {
                        word: stage.base.clone(),
                        source: e,
                    },
                    Some(stage.base_span),
                ))
            })?;
            for u in &exp.unmatched {
                self.unmatched_from_args.push((u.clone(), stage.base_span));
            }
            exp.result
        };
        // BuildKit's lint also flags a base that expands to an invalid reference.
        let invalid = |b: &str| {
            b != "scratch"
                && self.find_stage(b).is_none()
                && cache::reference::Reference::parse(b).is_err()
        };
        let base = if self.lenient && (base.is_empty() || invalid(&base)) {
            // BuildKit names the base as written.
            self.blank_bases.push((stage.base.clone(), stage.base_span));
            "scratch".to_owned()
        } else {
            base
        };
        if base.is_empty() {
            return Err(self.err(Error::new(
                ErrorKind::BlankBaseName {
                    name: stage.base.clone(),
                },
                Some(stage.base_span),
            )));
        }
        let label = self.stage_label(stage);
        let mut total = 1 + stage
            .instructions
            .iter()
            .filter(|i| makes_vertex(&i.command))
            .count();
        let (node, config, history) =
            if let Some(parent) = self.find_stage(&base).filter(|&p| p != stage.index) {
                let st = self.stage(parent)?;
                // A stage on another stage builds for that stage's platform unless its own
                // `--platform` says otherwise.
                self.cur_platform = platform.clone().unwrap_or(st.platform);
                (st.node, st.config, st.history)
            } else if base == "scratch" {
                let mut config = ImageConfig::empty(&self.cur_platform);
                // BuildKit's emptyImage: WorkingDir "/" and the default PATH.
                config.config.working_dir = "/".to_owned();
                config.config.env = vec![format!("PATH={DEFAULT_PATH}")];
                (self.scratch_node(), config, Vec::new())
            } else {
                let name = (
                    format!("{} FROM {base}", step_prefix(&label, 1, total)),
                    Some(label.clone().unwrap_or_default()),
                );
                let (n, mut c) = self.image_node(&base, stage.base_span, name, None)?;
                default_path(&mut c);
                (n, c, Vec::new())
            };
        // ONBUILD triggers of the base run first, and are consumed.
        let triggers = std::mem::take(&mut config.config.on_build.clone());
        let mut parsed_triggers = Vec::new();
        for t in &triggers {
            let instr = parse_trigger(t, stage.span, self.df.escape).map_err(|e| self.err(e))?;
            if makes_vertex(&instr.command) {
                total += 1;
            }
            parsed_triggers.push(instr);
        }
        let mut config = config;
        config.config.on_build.clear();
        if !triggers.is_empty()
            && matches!(self.nodes[node].op, Op::Source(SourceOp::Image { .. }))
            && self.nodes[node].span == Some(stage.base_span)
        {
            self.nodes[node].name = format!("{} FROM {base}", step_prefix(&label, 1, total));
        }
        let mut st = StageCtx {
            index: stage.index,
            label,
            step: 1,
            total,
            node,
            config,
            history,
            args: Vec::new(),
            cmd_set: false,
        };
        for instr in &parsed_triggers {
            // Spans inside a trigger are positions in its text: report the FROM line.
            self.dispatch(stage, &mut st, instr)
                .map_err(|e| self.err(e.relocated(stage.span)))?;
        }
        for instr in &stage.instructions {
            self.dispatch(stage, &mut st, instr)?;
        }
        Ok(StageState {
            node: st.node,
            platform: self.cur_platform.clone(),
            config: st.config,
            history: st.history,
        })
    }

    fn stage_env<'s>(&self, st: &'s StageCtx) -> impl Fn(&str) -> Option<String> + 's {
        move |k: &str| st.lookup(k)
    }

    fn x(&self, st: &StageCtx, word: &str, span: Span) -> Result<String, Error> {
        let env = self.stage_env(st);
        expand(&self.lex, word, &env, span).map_err(|e| self.err(e))
    }

    fn xs(&self, st: &StageCtx, word: &str, span: Span) -> Result<Vec<String>, Error> {
        let env = self.stage_env(st);
        self.lex.process_words(word, &env).map_err(|e| {
            self.err(Error::new(
                ErrorKind::Expand {
                    word: word.to_owned(),
                    source: e,
                },
                Some(span),
            ))
        })
    }
}

/// Per-stage dispatch state.
struct StageCtx {
    index: usize,
    label: Option<String>,
    step: usize,
    total: usize,
    node: NodeId,
    config: ImageConfig,
    history: Vec<HistoryStep>,
    args: Vec<ArgValue>,
    cmd_set: bool,
}

impl StageCtx {
    /// Word-expansion lookup: ENV first (it wins over ARG), then ARGs in scope.
    fn lookup(&self, k: &str) -> Option<String> {
        for e in self.config.config.env.iter().rev() {
            match e.split_once('=') {
                Some((key, v)) if key == k => return Some(v.to_owned()),
                None if e == k => return Some(String::new()),
                _ => {}
            }
        }
        self.args
            .iter()
            .rev()
            .find(|a| a.name == k)
            .and_then(|a| a.value.clone())
    }
    fn cwd(&self) -> String {
        if self.config.config.working_dir.is_empty() {
            "/".to_owned()
        } else {
            self.config.config.working_dir.clone()
        }
    }
    fn shell(&self) -> Vec<String> {
        if self.config.config.shell.is_empty() {
            vec!["/bin/sh".to_owned(), "-c".to_owned()]
        } else {
            self.config.config.shell.clone()
        }
    }
    fn meta(&mut self, created_by: String) {
        self.history.push(HistoryStep {
            created_by,
            layer: None,
        });
    }
}

fn makes_vertex(c: &Command) -> bool {
    matches!(c, Command::Run(_) | Command::Copy(_) | Command::Workdir(_))
}

/// The progress name of step `i` of `n` of a stage and that stage's label (`""` when the
/// name carries none).
fn step_name(label: &Option<String>, i: usize, n: usize, text: &str) -> (String, Option<String>) {
    (
        format!("{} {text}", step_prefix(label, i, n)),
        Some(label.clone().unwrap_or_default()),
    )
}

fn step_prefix(label: &Option<String>, i: usize, n: usize) -> String {
    match label {
        Some(l) => format!("[{l} {i}/{n}]"),
        None => format!("[{i}/{n}]"),
    }
}

fn expand(
    lex: &Lex,
    word: &str,
    env: &dyn Fn(&str) -> Option<String>,
    span: Span,
) -> Result<String, Error> {
    lex.process_word(word, env).map_err(|e: ExpandError| {
        Error::new(
            ErrorKind::Expand {
                word: word.to_owned(),
                source: e,
            },
            Some(span),
        )
    })
}

/// Parses an ONBUILD trigger expression as an instruction at the child's FROM line.
pub(crate) fn parse_trigger(expr: &str, at: Span, escape: char) -> Result<Instruction, Error> {
    let directive = if escape == '\\' {
        String::new()
    } else {
        format!("# escape={escape}\n")
    };
    let src = format!("{directive}{expr}\n");
    let tree = crate::ast::parse_ast(&src).map_err(|e| Error::new(e.kind().clone(), Some(at)))?;
    if tree.nodes.is_empty() {
        return Err(Error::new(ErrorKind::NoInstructions, Some(at)));
    }
    // The whole expression, heredoc bodies included (`ONBUILD RUN <<EOF` stores them), parsed
    // as the one instruction of a stage.
    let fake = format!("{directive}FROM scratch\n{expr}\n");
    let df = crate::instructions::from_ast(crate::ast::parse_ast(&fake)?, &fake)
        .map_err(|e| Error::new(e.kind().clone(), Some(at)))?;
    let mut instr = df.stages[0]
        .instructions
        .first()
        .cloned()
        .ok_or_else(|| Error::new(ErrorKind::NoInstructions, Some(at)))?;
    instr.span = at;
    instr.end_line = at.line;
    Ok(instr)
}

/// Which image references the target needs, without lowering for real.
/// Base images, and the names FROM lines referenced that no ARG defines.
pub(crate) type Collected = (Vec<BaseImageRef>, Vec<(String, Span)>);

pub(crate) fn collect_bases(df: &Dockerfile, opts: &BuildOptions) -> Result<Collected, Error> {
    collect_bases_with(df, opts, None)
}

/// [`collect_bases`] with the configs of the images known so far, so that their ONBUILD
/// triggers (`ONBUILD COPY --from=<image>`) are followed too.
pub(crate) fn collect_bases_with(
    df: &Dockerfile,
    opts: &BuildOptions,
    known: Option<&BTreeMap<String, BaseImage>>,
) -> Result<Collected, Error> {
    let mut l = Lowerer::new(df, opts, known)?;
    l.placeholders = true;
    let target = l.target_index()?;
    l.stage(target)?;
    let mut refs = l.collected;
    refs.sort_by_key(|r| (r.span.line, r.span.column));
    Ok((refs, l.unmatched_from_args))
}

#[cfg(test)]
mod tests {
    use crate::{BaseImage, BuildOptions};
    use cache::oci::{Digest, ImageConfig, Platform};
    use std::collections::BTreeMap;

    fn opts() -> BuildOptions {
        BuildOptions::new(Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
            os_version: None,
        })
    }

    fn with_triggers(triggers: &[&str]) -> BTreeMap<String, BaseImage> {
        let mut config = ImageConfig::empty(&opts().platform);
        config.config.on_build = triggers.iter().map(|t| (*t).to_owned()).collect();
        BTreeMap::from([(
            "parent:1".to_owned(),
            BaseImage {
                manifest: Digest::of(b"parent"),
                config,
            },
        )])
    }

    #[test]
    fn build_platform_stages_resolve_and_run_for_the_build_platform() {
        let arm = Platform {
            architecture: "arm64".into(),
            ..opts().platform
        };
        let o = BuildOptions {
            platform: arm.clone(),
            ..opts()
        };
        let df = crate::parse(
            "FROM --platform=$BUILDPLATFORM tool AS t
ARG TARGETARCH
RUN echo $TARGETARCH
             FROM tool
COPY --from=t / /
",
        )
        .expect("parses");
        let refs = crate::base_images(&df, &o).expect("bases");
        let keys: Vec<String> = refs.iter().map(|r| r.key()).collect();
        assert_eq!(keys, ["tool --platform=linux/amd64", "tool"]);
        let bases = refs
            .iter()
            .map(|r| {
                let p = r.platform.clone().unwrap_or_else(|| arm.clone());
                let base = BaseImage {
                    manifest: Digest::of(r.key().as_bytes()),
                    config: ImageConfig::empty(&p),
                };
                (r.key(), base)
            })
            .collect();
        let g = crate::lower(&df, &o, &bases).expect("lowers");
        let run = g
            .nodes
            .iter()
            .find(|n| n.instruction.starts_with("RUN"))
            .expect("run");
        assert_eq!(
            run.platform.as_ref().map(|p| p.architecture.as_str()),
            Some("amd64")
        );
        // TARGETARCH is the target's, in the build-platform stage too.
        let graph::Op::Exec(x) = &run.op else {
            panic!("exec")
        };
        assert!(
            x.env.contains(&"TARGETARCH=arm64".to_owned()),
            "{:?}",
            x.env
        );
        let target = &g.nodes[g.target];
        assert_eq!(
            target.platform.as_ref().map(|p| p.architecture.as_str()),
            Some("arm64")
        );
        assert_eq!(g.image.config.architecture, "arm64");
    }

    #[test]
    fn images_named_by_a_base_images_triggers_are_needed_too() {
        let df = crate::parse("FROM busybox AS b\nFROM parent:1\nRUN true\n").expect("parses");
        let first: Vec<String> = crate::base_images(&df, &opts())
            .expect("bases")
            .into_iter()
            .map(|r| r.reference)
            .collect();
        assert_eq!(first, ["parent:1"]);
        let known = with_triggers(&["COPY --from=other:2 /a /b", "RUN echo"]);
        let all: Vec<String> = crate::base_images_with(&df, &opts(), &known)
            .expect("bases")
            .into_iter()
            .map(|r| r.reference)
            .collect();
        assert_eq!(all, ["parent:1", "other:2"]);
    }

    /// buildx `--build-context`: a stage of that name is replaced, and FROM, `--from` and
    /// `from=` naming an image (in any spelling of it) read the given reference instead.
    #[test]
    fn named_contexts_replace_stages_and_images() {
        let src = "FROM busybox AS deps
RUN make
                   FROM docker.io/library/alpine:latest
                   COPY --from=deps /a /a
COPY --from=tools:1 /t /t
                   RUN --mount=from=deps,target=/m true
";
        let df = crate::parse(src).expect("parses");
        let mut o = opts();
        o.named_contexts = BTreeMap::from([
            ("deps".to_owned(), "sha256:".to_owned() + &"d".repeat(64)),
            (
                "alpine".to_owned(),
                "alpine@sha256:".to_owned() + &"a".repeat(64),
            ),
            ("tools:1".to_owned(), "registry.test/tools:2".to_owned()),
        ]);
        let refs: Vec<String> = crate::base_images(&df, &o)
            .expect("bases")
            .into_iter()
            .map(|r| r.reference)
            .collect();
        // The `deps` stage (and its busybox) is gone: nothing lowers it.
        assert_eq!(
            refs,
            [
                "alpine@sha256:".to_owned() + &"a".repeat(64),
                "sha256:".to_owned() + &"d".repeat(64),
                "registry.test/tools:2".to_owned(),
            ]
        );
        // As the target, the replaced stage is the named context's image.
        o.target = Some("deps".to_owned());
        let refs: Vec<String> = crate::base_images(&df, &o)
            .expect("bases")
            .into_iter()
            .map(|r| r.reference)
            .collect();
        assert_eq!(refs, ["sha256:".to_owned() + &"d".repeat(64)]);
    }

    #[test]
    fn a_failing_trigger_is_reported_at_the_from_line_that_fired_it() {
        let src = "ARG X=1\n\nFROM parent:1\nRUN true\n";
        let df = crate::parse(src).expect("parses");
        let known = with_triggers(&["RUN --network=bogus true"]);
        let e = crate::lower(&df, &opts(), &known).expect_err("bad trigger");
        assert_eq!(e.span().map(|s| s.line), Some(3), "{e}");
        assert!(e.to_string().contains("FROM parent:1"), "{e}");
    }

    /// BuildKit appends its default PATH to a base image that sets none (`docker import`),
    /// in the image config and in RUN's environment, and keeps a base image's own PATH.
    #[test]
    fn a_base_image_without_path_gets_buildkits_default_path() {
        let df = crate::parse("FROM parent:1\nRUN true\n").expect("parses");
        let mut bases = with_triggers(&[]);
        bases.get_mut("parent:1").expect("base").config.config.env = vec!["A=1".into()];
        let g = crate::lower(&df, &opts(), &bases).expect("lowers");
        let want = vec!["A=1".to_owned(), format!("PATH={}", super::DEFAULT_PATH)];
        assert_eq!(g.image.config.config.env, want);
        let run_env: Vec<&Vec<String>> = g
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                graph::Op::Exec(e) => Some(&e.env),
                _ => None,
            })
            .collect();
        assert_eq!(run_env, [&want]);

        let own = "PATH=/opt/bin".to_owned();
        bases.get_mut("parent:1").expect("base").config.config.env = vec![own.clone()];
        let g = crate::lower(&df, &opts(), &bases).expect("lowers");
        assert_eq!(g.image.config.config.env, [own]);

        let mut windows = ImageConfig::empty(&opts().platform);
        windows.os = "windows".into();
        super::default_path(&mut windows);
        assert!(
            windows.config.env.is_empty(),
            "BuildKit leaves Windows images alone"
        );
    }
}

//! Lowering: stages of instructions -> a [`BuildGraph`] plus the target's image config.
//!
//! The walk starts at the target stage and lowers a stage only when something needs it
//! (`FROM stage`, `COPY --from`, `RUN --mount from=`), so nodes come out in topological
//! order and unused stages never appear. Per stage it tracks what BuildKit's
//! `dispatchState` does: the image config, the ARGs in scope, the shell, the history.
//!
//! Where BuildKit and the Docker docs disagree we follow BuildKit; such places say so.

use crate::error::{Error, ErrorKind, suggest};
use crate::instructions::{
    ArgDef, CmdLine, Command, CopyInstr, Dockerfile, Instruction, KeyValue, RunInstr, Stage,
};
use crate::mounts;
use crate::shell::{ExpandError, Lex};
use crate::{BaseImage, BaseImageRef, BuildOptions};
use cache::oci::{Digest, Empty, ImageConfig, Platform};
use solver::graph::{
    BuildGraph, CopyAction, CopySource, ExecOp, FileAction, FileOp, HistoryStep, ImageTemplate,
    NetworkMode, Node, NodeId, Op, SourceOp, Span,
};
use std::collections::{BTreeMap, BTreeSet};

/// The default PATH of `FROM scratch` and of RUN steps whose image sets none (BuildKit's
/// `system.DefaultPathEnv` for Linux).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

/// Values of the automatic platform ARGs. kiln builds natively: the build platform is the
/// target platform.
pub fn platform_arg(name: &str, p: &Platform) -> Option<String> {
    let variant = p.variant.clone().unwrap_or_default();
    Some(match name {
        "TARGETPLATFORM" | "BUILDPLATFORM" => platform_string(p),
        "TARGETOS" | "BUILDOS" => p.os.clone(),
        "TARGETARCH" | "BUILDARCH" => p.architecture.clone(),
        "TARGETVARIANT" | "BUILDVARIANT" => variant,
        _ => return None,
    })
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
    scratch: Option<NodeId>,
    pub(crate) collected: Vec<BaseImageRef>,
    /// Names referenced in FROM lines that no ARG defines (for `check`).
    pub(crate) unmatched_from_args: Vec<(String, Span)>,
    /// `check` mode: tolerate what only matters for a real build (blank bases from unset
    /// ARGs, foreign platforms) and record it instead.
    pub(crate) lenient: bool,
    /// Base names that expanded to nothing in lenient mode.
    pub(crate) blank_bases: Vec<(String, Span)>,
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
            scratch: None,
            collected: Vec::new(),
            unmatched_from_args: Vec::new(),
            lenient: false,
            blank_bases: Vec::new(),
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
                    let name = expand(&self.lex, &d.name, &env, d.span)?;
                    let value = match self.opts.build_args.get(&name) {
                        Some(v) => Some(v.clone()),
                        None => match &d.default {
                            Some(def) => Some(expand(&self.lex, def, &env, d.span)?),
                            None => None,
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
        platform_arg(k, &self.opts.platform)
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
        let lower = name.to_ascii_lowercase();
        self.df
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
    }

    /// Lowers stage `t` and what it needs (for `check`).
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

    fn push(&mut self, op: Op, name: String, span: Option<Span>, instruction: String) -> NodeId {
        self.nodes.push(Node {
            op,
            name,
            span,
            instruction,
        });
        self.nodes.len() - 1
    }

    fn scratch_node(&mut self) -> NodeId {
        if let Some(n) = self.scratch {
            return n;
        }
        let n = self.push(
            Op::Source(SourceOp::Scratch),
            "scratch".to_owned(),
            None,
            "FROM scratch".to_owned(),
        );
        self.scratch = Some(n);
        n
    }

    /// A Source node for an image reference (shared between uses).
    fn image_node(
        &mut self,
        reference: &str,
        span: Span,
        name: String,
        flag: Option<&str>,
    ) -> Result<(NodeId, ImageConfig), Error> {
        if !self.collected.iter().any(|b| b.reference == reference) {
            self.collected.push(BaseImageRef {
                reference: reference.to_owned(),
                span,
            });
        }
        let (manifest, config) = match self.bases {
            Some(bases) => {
                match bases.get(reference) {
                    Some(b) => (b.manifest.clone(), b.config.clone()),
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
                Digest::of(reference.as_bytes()),
                ImageConfig::empty(&self.opts.platform),
            ),
        };
        if let Some(&n) = self.images.get(reference) {
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
        self.images.insert(reference.to_owned(), n);
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
        let st = self.lower_stage(stage);
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
        let platform = match &stage.platform {
            Some(p) => {
                let span = stage.platform_span.unwrap_or(stage.span);
                let env = |k: &str| self.meta_lookup(k);
                let v = expand(&self.lex, p, &env, span)?;
                let want = platform_string(&self.opts.platform);
                if !self.lenient && normalize_platform(&v) != normalize_platform(&want) {
                    return Err(self.err(
                        Error::new(ErrorKind::BadPlatform { value: v.clone() }, Some(span))
                            .with_hint(format!("kiln builds natively for {want}; remove --platform or set it to {want}")),
                    ));
                }
                Some(v)
            }
            None => None,
        };
        let _ = platform;
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
        let base = if base.is_empty() && self.lenient {
            self.blank_bases.push((
                stage
                    .base
                    .trim_start_matches(['$', '{'])
                    .trim_end_matches('}')
                    .to_owned(),
                stage.base_span,
            ));
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
                (st.node, st.config, st.history)
            } else if base == "scratch" {
                let mut config = ImageConfig::empty(&self.opts.platform);
                // BuildKit's emptyImage: WorkingDir "/" and the default PATH.
                config.config.working_dir = "/".to_owned();
                config.config.env = vec![format!("PATH={DEFAULT_PATH}")];
                (self.scratch_node(), config, Vec::new())
            } else {
                let name = format!("{} FROM {base}", step_prefix(&label, 1, total));
                let (n, c) = self.image_node(&base, stage.base_span, name, None)?;
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
        for instr in parsed_triggers.iter().chain(stage.instructions.iter()) {
            self.dispatch(stage, &mut st, instr)?;
        }
        Ok(StageState {
            node: st.node,
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

    fn dispatch(
        &mut self,
        stage: &Stage,
        st: &mut StageCtx,
        instr: &Instruction,
    ) -> Result<(), Error> {
        let span = instr.span;
        match &instr.command {
            Command::Run(run) => self.run(st, instr, run)?,
            Command::Copy(c) => self.copy(st, instr, c)?,
            Command::Workdir(w) => {
                let p = self.x(st, w, span)?;
                let cwd = if p.starts_with('/') {
                    clean_path(&p)
                } else {
                    clean_path(&format!("{}/{p}", st.cwd()))
                };
                st.config.config.working_dir = cwd.clone();
                if cwd != "/" {
                    st.step += 1;
                    let name = format!(
                        "{} {}",
                        step_prefix(&st.label, st.step, st.total),
                        instr.original
                    );
                    let n = self.push(
                        Op::File(FileOp {
                            root: st.node,
                            actions: vec![FileAction::Mkdir {
                                path: cwd.clone(),
                                owner: st.config.config.user.clone(),
                            }],
                        }),
                        name,
                        Some(span),
                        instr.original.clone(),
                    );
                    st.node = n;
                    st.history.push(HistoryStep {
                        created_by: format!("WORKDIR {cwd}"),
                        layer: Some(n),
                    });
                } else {
                    st.history.push(HistoryStep {
                        created_by: format!("WORKDIR {cwd}"),
                        layer: None,
                    });
                }
            }
            Command::Env(kvs) => {
                // All pairs see the values from before this instruction.
                let mut pairs = Vec::new();
                for kv in kvs {
                    pairs.push((
                        self.x(st, &kv.key, kv.span)?,
                        self.x(st, &kv.value, kv.span)?,
                    ));
                }
                let mut msg = "ENV".to_owned();
                for (k, v) in pairs {
                    msg.push_str(&format!(" {k}={v}"));
                    set_env(&mut st.config.config.env, &k, &v);
                }
                st.meta(msg);
            }
            Command::Label(kvs) => {
                let mut msg = "LABEL".to_owned();
                for KeyValue {
                    key, value, span, ..
                } in kvs
                {
                    let (k, v) = (self.x(st, key, *span)?, self.x(st, value, *span)?);
                    msg.push_str(&format!(" {k}={v}"));
                    st.config.config.labels.insert(k, v);
                }
                st.meta(msg);
            }
            Command::Arg(defs) => self.arg(st, defs)?,
            Command::User(u) => {
                let u = self.x(st, u, span)?;
                st.config.config.user = u.clone();
                st.meta(format!("USER {u}"));
            }
            Command::Expose(ports) => {
                let mut all = BTreeSet::new();
                for p in ports {
                    for w in self.xs(st, p, span)? {
                        for spec in
                            parse_port_spec(&w).map_err(|e| self.err(Error::new(e, Some(span))))?
                        {
                            all.insert(spec);
                        }
                    }
                }
                let shown: Vec<String> = all.iter().map(|p| format!("{p}:{{}}")).collect();
                for p in all {
                    st.config.config.exposed_ports.insert(p, Empty {});
                }
                // BuildKit prints the Go map: `EXPOSE map[80/tcp:{}]`.
                st.meta(format!("EXPOSE map[{}]", shown.join(" ")));
            }
            Command::Volume(vols) => {
                let mut list = Vec::new();
                for v in vols {
                    let v = self.x(st, v, span)?;
                    if v.trim().is_empty() {
                        return Err(self.err(Error::new(
                            ErrorKind::BlankName {
                                instruction: "VOLUME".into(),
                            },
                            Some(span),
                        )));
                    }
                    st.config.config.volumes.insert(v.clone(), Empty {});
                    list.push(v);
                }
                st.meta(format!("VOLUME [{}]", list.join(" ")));
            }
            Command::StopSignal(s) => {
                let s = self.x(st, s, span)?;
                if !valid_signal(&s) {
                    return Err(self.err(Error::new(
                        ErrorKind::BadFlagValue {
                            flag: "STOPSIGNAL".into(),
                            value: s,
                            reason: "not a signal name or number".into(),
                        },
                        Some(span),
                    )));
                }
                st.config.config.stop_signal = s.clone();
                st.meta(format!("STOPSIGNAL {s}"));
            }
            Command::Cmd(c) => {
                let args = self.command_args(st, c);
                st.config.config.cmd = Some(args.clone());
                st.cmd_set = true;
                st.meta(format!("CMD {}", go_quote_list(&args)));
            }
            Command::Entrypoint(c) => {
                let args = self.command_args(st, c);
                st.config.config.entrypoint = if args.is_empty() && !c.shell_form {
                    None
                } else {
                    Some(args.clone())
                };
                // An ENTRYPOINT resets a CMD inherited from the base (not one set in this stage).
                if !st.cmd_set {
                    st.config.config.cmd = None;
                }
                st.meta(format!("ENTRYPOINT {}", go_quote_list(&args)));
            }
            Command::Shell(args) => {
                st.config.config.shell = args.clone();
                st.meta(format!("SHELL [{}]", args.join(" ")));
            }
            Command::Healthcheck(h) => {
                st.config.config.healthcheck = Some(h.health.clone());
                st.meta(format!("HEALTHCHECK {}", go_quote_list(&h.health.test)));
            }
            Command::Onbuild(o) => {
                st.config.config.on_build.push(o.expression.clone());
                st.meta(format!("ONBUILD {}", o.expression));
            }
            Command::Maintainer(m) => {
                st.config.author = Some(m.clone());
                st.meta(format!("MAINTAINER {m}"));
            }
        }
        let _ = stage;
        Ok(())
    }

    fn arg(&mut self, st: &mut StageCtx, defs: &[ArgDef]) -> Result<(), Error> {
        let mut shown = Vec::new();
        for d in defs {
            let name = self.x(st, &d.name, d.span)?;
            let value = match self.opts.build_args.get(&name) {
                Some(v) => Some(v.clone()),
                None => match &d.default {
                    Some(def) => Some(self.x(st, def, d.span)?),
                    // A global ARG re-declared without a value takes the global value; the
                    // platform ARGs take theirs.
                    None => self
                        .meta
                        .iter()
                        .rev()
                        .find(|a| a.name == name)
                        .and_then(|a| a.value.clone())
                        .or_else(|| platform_arg(&name, &self.opts.platform)),
                },
            };
            if !PROXY_ARGS.contains(&name.as_str()) {
                shown.push(match &value {
                    Some(v) => format!("{name}={v}"),
                    None => name.clone(),
                });
            }
            st.args.retain(|a| a.name != name);
            st.args.push(ArgValue { name, value });
        }
        if !shown.is_empty() {
            st.meta(format!("ARG {}", shown.join(" ")));
        }
        Ok(())
    }

    /// CMD/ENTRYPOINT argv: exec form as is, shell form wrapped in the stage's SHELL.
    fn command_args(&self, st: &StageCtx, c: &CmdLine) -> Vec<String> {
        if c.shell_form && !c.args.is_empty() {
            let mut v = st.shell();
            v.extend(c.args.iter().cloned());
            v
        } else {
            c.args.clone()
        }
    }

    fn run(&mut self, st: &mut StageCtx, instr: &Instruction, run: &RunInstr) -> Result<(), Error> {
        let span = instr.span;
        let mut args = run.cmd.args.clone();
        if !run.cmd.heredocs.is_empty() {
            // BuildKit: a lone `<<EOF` runs the body (a file when it starts with `#!`, else
            // as the shell's command string); otherwise the heredocs are appended for the
            // shell to handle.
            let first = args.first().cloned().unwrap_or_default();
            let lone = crate::ast::parse_heredoc(&first).ok().flatten();
            args = match lone {
                Some(_) if run.cmd.heredocs.len() == 1 => {
                    vec![run.cmd.heredocs[0].chomped_content()]
                }
                _ => {
                    let mut full = first;
                    for h in &run.cmd.heredocs {
                        full.push('\n');
                        full.push_str(&h.content);
                        full.push_str(&h.name);
                    }
                    vec![full]
                }
            };
        }
        let shown_args = if run.cmd.shell_form {
            let mut v = st.shell();
            v.extend(args);
            v
        } else {
            args
        };
        let network = match &run.network {
            None => NetworkMode::Default,
            Some(n) => match self.x(st, &n.value, n.span)?.as_str() {
                "default" => NetworkMode::Default,
                "none" => NetworkMode::None,
                "host" => NetworkMode::Host,
                other => {
                    return Err(self.err(
                        Error::new(
                            ErrorKind::BadFlagValue {
                                flag: "network".into(),
                                value: other.to_owned(),
                                reason: "expected default, none or host".into(),
                            },
                            Some(n.span),
                        )
                        .with_hint("use --network=none, --network=host or --network=default"),
                    ));
                }
            },
        };
        if let Some(s) = &run.security {
            let v = self.x(st, &s.value, s.span)?;
            if v != "sandbox" {
                return Err(self.err(Error::new(
                    ErrorKind::BadFlagValue {
                        flag: "security".into(),
                        value: v,
                        reason: "kiln only runs sandboxed steps".into(),
                    },
                    Some(s.span),
                )));
            }
        }
        let mut mounts_out = Vec::new();
        for m in &run.mounts {
            let spec = self.x(st, &m.value, m.span)?;
            let parsed = mounts::parse_mount(&spec, &st.cwd())
                .map_err(|e| self.err(Error::new(e, Some(m.span))))?;
            let from = match &parsed.from {
                Some(f) => Some(self.resolve_from(st, f, m.span, "RUN --mount")?),
                None => None,
            };
            mounts_out.push(parsed.into_mount(from));
        }
        // Exec env: image ENV, then the ARGs in scope that ENV does not shadow (BuildKit:
        // ENV wins over ARG); proxies go apart so they stay out of the cache key.
        let mut env = st.config.config.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, format!("PATH={DEFAULT_PATH}"));
        }
        let mut proxy_env: Vec<String> = Vec::new();
        let mut hist_args = Vec::new();
        for a in &st.args {
            let Some(v) = &a.value else { continue };
            if PROXY_ARGS.contains(&a.name.as_str()) {
                proxy_env.push(format!("{}={v}", a.name));
                continue;
            }
            let shadowed = st
                .config
                .config
                .env
                .iter()
                .any(|e| e.split_once('=').is_some_and(|(k, _)| k == a.name));
            if !shadowed {
                env.push(format!("{}={v}", a.name));
            }
            let shown = st.lookup(&a.name).unwrap_or_else(|| v.clone());
            hist_args.push(format!("{}={shown}", a.name));
        }
        for p in PROXY_ARGS {
            if let Some(v) = self.opts.build_args.get(*p)
                && !proxy_env.iter().any(|e| e.starts_with(&format!("{p}=")))
            {
                proxy_env.push(format!("{p}={v}"));
            }
        }
        st.step += 1;
        let name = format!(
            "{} {}",
            step_prefix(&st.label, st.step, st.total),
            instr.original
        );
        let n = self.push(
            Op::Exec(ExecOp {
                root: st.node,
                args: shown_args.clone(),
                env,
                proxy_env,
                cwd: st.cwd(),
                user: st.config.config.user.clone(),
                network,
                mounts: mounts_out,
            }),
            name,
            Some(span),
            instr.original.clone(),
        );
        st.node = n;
        let mut created = "RUN ".to_owned();
        if !hist_args.is_empty() {
            created.push_str(&format!("|{} {} ", hist_args.len(), hist_args.join(" ")));
        }
        created.push_str(&shown_args.join(" "));
        created.push_str(" # buildkit");
        st.history.push(HistoryStep {
            created_by: created,
            layer: Some(n),
        });
        Ok(())
    }

    /// Resolves `--from` / `from=`: a stage name, a stage index, or an image.
    fn resolve_from(
        &mut self,
        st: &StageCtx,
        from: &str,
        span: Span,
        instr: &str,
    ) -> Result<CopySource, Error> {
        let r = self.classify_from(st, from, span, instr)?;
        Ok(match r {
            FromRef::Stage(i) => CopySource::Node(self.stage(i)?.node),
            FromRef::Image(reference) if reference.is_empty() => CopySource::Context,
            FromRef::Image(reference) => {
                let name = format!("[internal] load {reference}");
                CopySource::Node(self.image_node(&reference, span, name, Some(instr))?.0)
            }
        })
    }

    fn classify_from(
        &self,
        st: &StageCtx,
        from: &str,
        span: Span,
        instr: &str,
    ) -> Result<FromRef, Error> {
        if let Some(i) = self.find_stage(from) {
            return Ok(FromRef::Stage(i));
        }
        if let Ok(index) = from.parse::<usize>() {
            let current = st.index;
            if index >= current {
                return Err(self.err(
                    Error::new(
                        ErrorKind::BadStageIndex {
                            instruction: "--from".into(),
                            index,
                            count: current,
                        },
                        Some(span),
                    )
                    .with_hint(self.stages_hint()),
                ));
            }
            return Ok(FromRef::Stage(index));
        }
        if from.is_empty() {
            return Err(self.err(Error::new(
                ErrorKind::BlankBaseName {
                    name: from.to_owned(),
                },
                Some(span),
            )));
        }
        let names = self.stage_names();
        let typo = suggest(from, names.iter().map(String::as_str));
        // A bare name close to a stage name is a typo, not an image (`--from=biulder`).
        if looks_like_image(from) && (typo.is_none() || from.contains(['/', ':', '@'])) {
            return Ok(FromRef::Image(from.to_owned()));
        }
        let hint = match typo {
            Some(t) => format!("did you mean stage `{t}`? {}", self.stages_hint()),
            None => self.stages_hint(),
        };
        Err(self.err(
            Error::new(
                ErrorKind::UnknownStage {
                    instruction: instr.to_owned(),
                    name: from.to_owned(),
                },
                Some(span),
            )
            .with_hint(hint),
        ))
    }

    fn stages_hint(&self) -> String {
        let names = self.stage_names();
        let mut s = format!(
            "stages are numbered 0..{}",
            self.df.stages.len().saturating_sub(1)
        );
        if !names.is_empty() {
            s.push_str(&format!("; the named stages are: {}", names.join(", ")));
        }
        s
    }

    fn copy(&mut self, st: &mut StageCtx, instr: &Instruction, c: &CopyInstr) -> Result<(), Error> {
        let span = instr.span;
        let kw = if c.add { "ADD" } else { "COPY" };
        if !c.inline.is_empty() && !self.lenient {
            return Err(self.err(
                Error::new(
                    ErrorKind::HeredocNotAllowed {
                        instruction: kw.into(),
                        what: "a source (inline files are not supported yet)".into(),
                    },
                    Some(span),
                )
                .with_hint("put the content in a file in the build context"),
            ));
        }
        let mut sources = Vec::new();
        for s in &c.sources {
            sources.push(self.x(st, &s.value, s.span)?);
        }
        let dest_raw = self.x(st, &c.dest.value, c.dest.span)?;
        let dest = resolve_dest(&dest_raw, &st.cwd());
        let from = match &c.from {
            Some(f) => {
                let v = self.x(st, &f.value, f.span)?;
                Some(self.resolve_from(st, &v, f.span, if c.add { "ADD" } else { "COPY" })?)
            }
            None => None,
        };
        let chown = match &c.chown {
            Some(f) => Some(self.x(st, &f.value, f.span)?),
            None => None,
        };
        let chmod = match &c.chmod {
            Some(f) => {
                let v = self.x(st, &f.value, f.span)?;
                if !valid_chmod(&v) {
                    return Err(self.err(Error::new(
                        ErrorKind::BadFlagValue {
                            flag: "chmod".into(),
                            value: v,
                            reason: "expected octal like 0755 or symbolic like u+x".into(),
                        },
                        Some(f.span),
                    )));
                }
                Some(v)
            }
            None => None,
        };
        let mut exclude = Vec::new();
        for e in &c.exclude {
            exclude.push(self.x(st, &e.value, e.span)?);
        }
        let checksum = match &c.checksum {
            Some(f) => {
                let v = self.x(st, &f.value, f.span)?;
                Some(v.parse::<Digest>().map_err(|_| {
                    self.err(Error::new(
                        ErrorKind::BadFlagValue {
                            flag: "checksum".into(),
                            value: v.clone(),
                            reason: "expected sha256:<64 hex digits>".into(),
                        },
                        Some(f.span),
                    ))
                })?)
            }
            None => None,
        };
        let base = CopyAction {
            from: from.clone().unwrap_or(CopySource::Context),
            sources: Vec::new(),
            dest: dest.clone(),
            chown,
            chmod,
            exclude,
            parents: c.parents,
            link: c.link,
            unpack_archives: false,
            instruction: if c.add { "ADD" } else { "COPY" },
        };
        let mut actions = Vec::new();
        let mut local = Vec::new();
        for s in &sources {
            if c.add && is_url(s) {
                if is_git(s) && !self.lenient {
                    return Err(self.err(Error::new(
                        ErrorKind::BadFlagValue {
                            flag: "source".into(),
                            value: s.clone(),
                            reason: "ADD of a git repository is not supported".into(),
                        },
                        Some(span),
                    )));
                }
                actions.push(FileAction::Copy(CopyAction {
                    from: CopySource::Url {
                        url: s.clone(),
                        checksum: checksum.clone(),
                    },
                    sources: vec![s.clone()],
                    // BuildKit extracts remote archives only with --unpack=true.
                    unpack_archives: c.unpack == Some(true),
                    ..base.clone()
                }));
            } else {
                local.push(s.clone());
            }
        }
        if checksum.is_some() && actions.is_empty() {
            return Err(self.err(Error::new(
                ErrorKind::BadFlagValue {
                    flag: "checksum".into(),
                    value: c
                        .checksum
                        .as_ref()
                        .map(|f| f.value.clone())
                        .unwrap_or_default(),
                    reason: "only valid for http(s) sources".into(),
                },
                c.checksum.as_ref().map(|f| f.span),
            )));
        }
        if !local.is_empty() {
            actions.push(FileAction::Copy(CopyAction {
                sources: local,
                // ADD extracts local archives (detected by content) unless --unpack=false;
                // COPY never does.
                unpack_archives: c.add && c.unpack != Some(false),
                ..base
            }));
        }
        st.step += 1;
        let name = format!(
            "{} {}",
            step_prefix(&st.label, st.step, st.total),
            instr.original
        );
        let n = self.push(
            Op::File(FileOp {
                root: st.node,
                actions,
            }),
            name,
            Some(span),
            instr.original.clone(),
        );
        st.node = n;
        let mut created = kw.to_owned();
        for s in &sources {
            created.push(' ');
            created.push_str(s);
        }
        created.push(' ');
        created.push_str(&dest_raw);
        created.push_str(" # buildkit");
        st.history.push(HistoryStep {
            created_by: created,
            layer: Some(n),
        });
        Ok(())
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
fn parse_trigger(expr: &str, at: Span, escape: char) -> Result<Instruction, Error> {
    let src = if escape == '\\' {
        expr.to_owned()
    } else {
        format!("# escape={escape}\n{expr}")
    };
    let src = format!("{src}\n");
    let tree = crate::ast::parse_ast(&src).map_err(|e| Error::new(e.kind().clone(), Some(at)))?;
    let Some(node) = tree.nodes.into_iter().next() else {
        return Err(Error::new(ErrorKind::NoInstructions, Some(at)));
    };
    let fake = format!("FROM scratch\n{}", node.original);
    let df = crate::instructions::from_ast(crate::ast::parse_ast(&fake)?, &fake)
        .map_err(|e| Error::new(e.kind().clone(), Some(at)))?;
    let mut instr = df.stages[0]
        .instructions
        .first()
        .cloned()
        .ok_or_else(|| Error::new(ErrorKind::NoInstructions, Some(at)))?;
    if let Command::Run(r) = &mut instr.command {
        r.cmd.heredocs = node.heredocs;
    }
    instr.span = at;
    instr.end_line = at.line;
    Ok(instr)
}

fn set_env(env: &mut Vec<String>, k: &str, v: &str) {
    let entry = format!("{k}={v}");
    for e in env.iter_mut() {
        if e.split_once('=')
            .map_or(e.as_str() == k, |(key, _)| key == k)
        {
            *e = entry;
            return;
        }
    }
    env.push(entry);
}

/// `path.Clean` for absolute paths.
pub(crate) fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// COPY destinations are relative to WORKDIR; a trailing `/` (or `.`) means "into".
fn resolve_dest(dest: &str, cwd: &str) -> String {
    let dir_like = dest.ends_with('/') || dest == "." || dest.ends_with("/.") || dest == "..";
    let joined = if dest.starts_with('/') {
        dest.to_owned()
    } else {
        format!("{}/{dest}", cwd.trim_end_matches('/'))
    };
    let mut out = clean_path(&joined);
    if dir_like && !out.ends_with('/') {
        out.push('/');
    }
    out
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

fn is_git(s: &str) -> bool {
    s.starts_with("git@")
        || s.starts_with("git://")
        || (is_url(s)
            && s.split(['?', '#'])
                .next()
                .is_some_and(|p| p.ends_with(".git")))
}

fn looks_like_image(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | ':' | '@'))
        && !s.starts_with(['-', '.', '/', ':'])
}

fn normalize_platform(p: &str) -> String {
    let p = p.to_ascii_lowercase();
    let mut parts: Vec<&str> = p.split('/').collect();
    if parts.len() == 2 && parts[1] == "arm64" {
        parts.push("v8");
    }
    if parts.len() == 3 && parts[1] == "amd64" && parts[2] == "v1" {
        parts.pop();
    }
    parts.join("/")
}

fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let name = s.strip_prefix("SIG").unwrap_or(s);
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-')
}

fn valid_chmod(s: &str) -> bool {
    if !s.is_empty() && s.len() <= 4 && s.chars().all(|c| ('0'..='7').contains(&c)) {
        return true;
    }
    // Symbolic: [ugoa]*[+-=][rwxXst]* joined by commas.
    !s.is_empty()
        && s.split(',').all(|clause| {
            let who = clause.chars().take_while(|c| "ugoa".contains(*c)).count();
            let rest = &clause[who..];
            !rest.is_empty()
                && rest.starts_with(['+', '-', '='])
                && rest[1..].chars().all(|c| "rwxXst+-=".contains(c))
        })
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn go_quote_list(v: &[String]) -> String {
    let q: Vec<String> = v.iter().map(|s| crate::ast::go_quote(s)).collect();
    format!("[{}]", q.join(" "))
}

/// Expands one EXPOSE word: `80`, `53/udp`, `9000-9002`, `8000-8001/tcp` into `port/proto`.
pub(crate) fn parse_port_spec(w: &str) -> Result<Vec<String>, ErrorKind> {
    let bad = |reason: &str| ErrorKind::BadPort {
        port: w.to_owned(),
        reason: reason.to_owned(),
    };
    let (ports, proto) = match w.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (w, "tcp".to_owned()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad("protocol must be tcp, udp or sctp"));
    }
    // `ip:hostport:containerport` forms: only the container port matters for EXPOSE.
    let ports = ports.rsplit(':').next().unwrap_or(ports);
    let num = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| bad("not a port number (0-65535)"))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let p = num(ports)?;
            (p, p)
        }
    };
    if hi < lo {
        return Err(bad("range end is below its start"));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// Which image references the target needs, without lowering for real.
/// Base images, and the names FROM lines referenced that no ARG defines.
pub(crate) type Collected = (Vec<BaseImageRef>, Vec<(String, Span)>);

pub(crate) fn collect_bases(df: &Dockerfile, opts: &BuildOptions) -> Result<Collected, Error> {
    let l = Lowerer::new(df, opts, None)?;
    let mut l = l;
    let target = l.target_index()?;
    l.stage(target)?;
    let mut refs = l.collected;
    refs.sort_by_key(|r| (r.span.line, r.span.column));
    Ok((refs, l.unmatched_from_args))
}

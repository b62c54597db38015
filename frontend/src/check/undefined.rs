//! BuildKit's UndefinedVar rule: a variable a word expands that the stage does not define.
//!
//! As BuildKit v0.24's Dockerfile conversion reports it (`reportUnmatchedVariables`): the words
//! it expands before dispatching an instruction (ENV and LABEL keys and values, COPY/ADD
//! `--chown`, `--chmod`, ADD's `--checksum`, sources and destination, the bodies of heredocs
//! with an unquoted delimiter, WORKDIR, USER, VOLUME, STOPSIGNAL, the values of RUN's
//! `--mount` fields) and ARG defaults. RUN, CMD, ENTRYPOINT, EXPOSE, HEALTHCHECK and ONBUILD
//! are not looked at; the base's ONBUILD triggers run first, at the FROM line. Defined: the
//! stage's environment (the base image's ENV, `PATH` when the base sets none, the stage's ENV
//! and the ARGs with a value; a `FROM <stage>` starts from that stage's), and every ARG the
//! stage (or the stage it is built on) declares, with or without a value. A global ARG counts
//! only when the stage declares it again. The suggestion is the
//! first environment variable (in the order last set) within edit distance 2.

use super::Lint;
use crate::BuildOptions;
use crate::instructions::{Command, Dockerfile, Instruction};
use crate::lower::{DEFAULT_PATH, parse_trigger, platform_arg};
use crate::shell::Lex;
use cache::oci::Platform;
use std::collections::BTreeMap;

/// ARGs BuildKit never puts in the environment and never reports.
const NON_ENV_ARGS: &[&str] = &["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// A stage's environment in BuildKit's order: a key set again moves to the end.
#[derive(Debug, Clone, Default)]
struct Env(Vec<(String, String)>);

impl Env {
    fn get(&self, k: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    }
    fn set(&mut self, k: &str, v: &str) {
        self.0.retain(|(key, _)| key != k);
        self.0.push((k.to_owned(), v.to_owned()));
    }
}

/// What a dispatched stage leaves for a `FROM <stage>` built on it.
#[derive(Debug, Clone)]
struct StageEnv {
    env: Env,
    /// Every ARG declared (BuildKit's `buildArgs`).
    args: Vec<String>,
}

/// Plain Levenshtein distance over characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// BuildKit's suggestion (`suggest.Search`, case-sensitive): the first option closer than
/// any before it, at distance below 3; none for an exact match.
pub(crate) fn search<'a>(
    word: &str,
    options: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best = None;
    let mut min = 3;
    for o in options {
        if o == word {
            return None;
        }
        let d = distance(word, o);
        if d < min {
            min = d;
            best = Some(o);
        }
    }
    best
}

/// What the caller knows of an image a `FROM` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseEnv {
    /// The image's config: its `Env` and its platform.
    Known {
        /// `Env`.
        env: Vec<String>,
        /// `OnBuild`: triggers that run first in a stage built on it.
        on_build: Vec<String>,
        /// The platform its config names.
        platform: Platform,
    },
    /// Not available: the stage (and those built on it) are not checked.
    Unknown,
}

struct Pass<'a> {
    lex: Lex,
    lint: &'a mut Lint,
    opts: &'a BuildOptions,
    /// Stop after the instruction on this line (where the build fails).
    stop_at: Option<u32>,
    stopped: bool,
    /// Each checked WORKDIR's expansion, by line.
    workdirs: BTreeMap<u32, String>,
    /// Findings in ARG defaults: BuildKit reports them after the ARG's other findings.
    in_arg: bool,
    deferred: Vec<(String, graph::Span)>,
    /// InvalidBaseImagePlatform findings (reported while BuildKit resolves the bases).
    platforms: Vec<(String, graph::Span)>,
}

impl Pass<'_> {
    fn word(
        &mut self,
        lex: &Lex,
        word: &str,
        st: &StageEnv,
        instr: &Instruction,
    ) -> Option<String> {
        let lookup = |k: &str| st.env.get(k);
        let Ok(e) = lex.process(word, &lookup) else {
            // BuildKit stops converting on an expansion error.
            self.stopped = true;
            return None;
        };
        for name in &e.unmatched {
            if st.args.iter().any(|a| a == name) || NON_ENV_ARGS.contains(&name.as_str()) {
                continue;
            }
            let msg = match search(name, st.env.0.iter().map(|(k, _)| k.as_str())) {
                Some(s) => format!("Usage of undefined variable '${name}' (did you mean ${s}?)"),
                None => format!("Usage of undefined variable '${name}'"),
            };
            if self.in_arg {
                self.deferred.push((msg, instr.span));
            } else {
                self.lint.add("UndefinedVar", msg, instr.span);
            }
        }
        Some(e.result)
    }

    fn words(&mut self, words: &[&str], st: &StageEnv, instr: &Instruction) {
        let lex = self.lex;
        for w in words {
            if self.stopped {
                return;
            }
            self.word(&lex, w, st, instr);
        }
    }

    fn instruction(&mut self, instr: &Instruction, st: &mut StageEnv, globals: &Env) {
        match &instr.command {
            Command::Env(kvs) => {
                let mut set = Vec::new();
                for kv in kvs {
                    let lex = self.lex;
                    let k = self.word(&lex, &kv.key, st, instr);
                    let v = self.word(&lex, &kv.value, st, instr);
                    if let (Some(k), Some(v)) = (k, v) {
                        set.push((k, v));
                    }
                }
                for (k, v) in set {
                    st.env.set(&k, &v);
                }
            }
            Command::Label(kvs) => {
                for kv in kvs {
                    self.words(&[&kv.key, &kv.value], st, instr);
                }
            }
            Command::Copy(c) => {
                let mut ws: Vec<&str> = Vec::new();
                for f in [&c.chown, &c.chmod].into_iter().flatten() {
                    ws.push(&f.value);
                }
                if c.add
                    && let Some(f) = &c.checksum
                {
                    ws.push(&f.value);
                }
                ws.extend(c.sources.iter().map(|s| s.value.as_str()));
                ws.push(&c.dest.value);
                self.words(&ws, st, instr);
                let raw = Lex {
                    skip_process_quotes: true,
                    ..Lex::new('\\')
                };
                for doc in c.inline.iter().filter(|d| d.expand) {
                    if self.stopped {
                        return;
                    }
                    self.word(&raw, &doc.data, st, instr);
                }
            }
            Command::Workdir(w) => {
                let lex = self.lex;
                if let Some(r) = self.word(&lex, w, st, instr) {
                    self.workdirs.insert(instr.span.line, r);
                }
            }
            Command::User(w) | Command::StopSignal(w) => {
                self.words(&[w], st, instr);
            }
            Command::Volume(vs) => {
                let ws: Vec<&str> = vs.iter().map(String::as_str).collect();
                self.words(&ws, st, instr);
            }
            Command::Run(run) => {
                let mut ws = Vec::new();
                for m in &run.mounts {
                    for field in m.value.split(',') {
                        if let Some((_, v)) = field.split_once('=') {
                            ws.push(v);
                        }
                    }
                }
                self.words(&ws, st, instr);
            }
            Command::Arg(defs) => {
                for d in defs {
                    let value = match self.opts.build_args.get(&d.name) {
                        Some(v) => Some(v.clone()),
                        None => match &d.default {
                            Some(def) => {
                                let lex = self.lex;
                                self.in_arg = true;
                                let v = self.word(&lex, def, st, instr);
                                self.in_arg = false;
                                v
                            }
                            None => globals.get(&d.name),
                        },
                    };
                    if self.stopped {
                        return;
                    }
                    if let Some(v) = value
                        && !NON_ENV_ARGS.contains(&d.name.as_str())
                    {
                        st.env.set(&d.name, &v);
                    }
                    st.args.push(d.name.clone());
                }
            }
            Command::Cmd(_)
            | Command::Entrypoint(_)
            | Command::Shell(_)
            | Command::Expose(_)
            | Command::Healthcheck(_)
            | Command::Onbuild(_)
            | Command::Maintainer(_) => {}
        }
    }
}

/// The global ARGs as BuildKit evaluates them (build args win, defaults expanded with the
/// globals before them and the platform args).
fn global_args(df: &Dockerfile, opts: &BuildOptions, lex: &Lex) -> Env {
    let mut env = Env::default();
    for name in crate::PLATFORM_ARGS {
        if let Some(v) = platform_arg(name, &opts.platform, &opts.build_platform) {
            env.set(name, &v);
        }
    }
    for i in &df.meta_args {
        let Command::Arg(defs) = &i.command else {
            continue;
        };
        for d in defs {
            let v = match opts.build_args.get(&d.name) {
                Some(v) => Some(v.clone()),
                None => d.default.as_ref().and_then(|def| {
                    let lookup = |k: &str| env.get(k);
                    lex.process_word(def, &lookup).ok()
                }),
            };
            if let Some(v) = v {
                env.set(&d.name, &v);
            }
        }
    }
    env
}

/// Reports UndefinedVar for every dispatched stage whose base environment is known
/// (`base_env` is asked for each image a `FROM` names; `scratch` has none), stopping after
/// the line `stop_at` where the build fails, as BuildKit stops converting there. Returns the
/// [`Found`]. Also checks that a `FROM --platform` image is of that platform.
pub(super) fn undefined_vars(
    df: &Dockerfile,
    opts: &BuildOptions,
    dispatched: &[bool],
    base_env: &dyn Fn(&str, Option<&Platform>) -> BaseEnv,
    stop_at: Option<u32>,
    lint: &mut Lint,
) -> Found {
    let lex = Lex::new(df.escape);
    let globals = global_args(df, opts, &lex);
    let mut pass = Pass {
        lex,
        lint,
        opts,
        stop_at,
        stopped: false,
        workdirs: BTreeMap::new(),
        in_arg: false,
        deferred: Vec::new(),
        platforms: Vec::new(),
    };
    let mut done: Vec<Option<StageEnv>> = Vec::new();
    for stage in &df.stages {
        let lookup = |k: &str| globals.get(k);
        let base = lex.process_word(&stage.base, &lookup).ok();
        let earlier = base.as_deref().and_then(|b| {
            df.stages[..stage.index]
                .iter()
                .rposition(|s| s.name.as_deref() == Some(b))
        });
        // ONBUILD triggers of the base run first, located at this FROM (an earlier stage's
        // own ONBUILD instructions; an image's `OnBuild`).
        let mut triggers: Vec<String> = Vec::new();
        let start = match (earlier, base.as_deref()) {
            (Some(i), _) => {
                for instr in &df.stages[i].instructions {
                    if let Command::Onbuild(o) = &instr.command {
                        triggers.push(o.expression.clone());
                    }
                }
                done[i].clone()
            }
            (None, Some(b)) if b.eq_ignore_ascii_case("scratch") => Some(image_env(&[])),
            (None, Some(b)) if !b.is_empty() && opts.named_context(b).is_none() => {
                // `FROM --platform=P`: the image is resolved for P and must be P.
                let wanted = stage.platform.as_deref().and_then(|p| {
                    crate::lower::parse_platform(&lex.process_word(p, &lookup).ok()?)
                });
                match base_env(b, wanted.as_ref()) {
                    BaseEnv::Known {
                        env,
                        on_build,
                        platform,
                    } => {
                        triggers = on_build;
                        if let Some(w) = &wanted
                            && dispatched[stage.index]
                            && (w.os != platform.os || w.architecture != platform.architecture)
                        {
                            pass.platforms.push((
                                format!(
                                    "Base image {b} was pulled with platform {:?}, expected {:?} for current build",
                                    normalized(&platform),
                                    normalized(w)
                                ),
                                stage.span,
                            ));
                        }
                        Some(image_env(&env))
                    }
                    BaseEnv::Unknown => None,
                }
            }
            _ => None,
        };
        if pass.stop_at.is_some_and(|l| stage.span.line > l) {
            pass.stopped = true;
        }
        let Some(mut st) = start else {
            done.push(None);
            continue;
        };
        if dispatched[stage.index] && !pass.stopped {
            let mut parsed = Vec::new();
            for t in &triggers {
                match parse_trigger(t, stage.span, df.escape) {
                    Ok(i) => parsed.push(i),
                    // BuildKit fails there.
                    Err(_) => pass.stopped = true,
                }
            }
            for instr in parsed.iter().chain(&stage.instructions) {
                if pass.stopped {
                    break;
                }
                pass.instruction(instr, &mut st, &globals);
                if pass.stopped || pass.stop_at.is_some_and(|l| instr.span.line >= l) {
                    pass.stopped = true;
                    break;
                }
            }
        }
        done.push(Some(st));
    }
    Found {
        workdirs: pass.workdirs,
        in_args: pass.deferred,
        platforms: pass.platforms,
    }
}

/// What [`undefined_vars`] found besides the findings it added.
pub(super) struct Found {
    /// The expansion of each WORKDIR it checked, by line, for WorkdirRelativePath.
    pub workdirs: BTreeMap<u32, String>,
    /// UndefinedVar in ARG defaults, to add after the stages' other findings.
    pub in_args: Vec<(String, graph::Span)>,
    /// InvalidBaseImagePlatform: a `FROM --platform` image of another platform.
    pub platforms: Vec<(String, graph::Span)>,
}

/// A platform as BuildKit prints it normalized: no `v8` on arm64, no `v1` on amd64.
fn normalized(p: &Platform) -> String {
    let variant = match (p.architecture.as_str(), p.variant.as_deref()) {
        (_, None | Some("")) | ("arm64", Some("v8")) | ("amd64", Some("v1")) => String::new(),
        (_, Some(v)) => format!("/{v}"),
    };
    format!("{}/{}{variant}", p.os, p.architecture)
}

/// The state a stage on an image starts from: the image's `Env`, with BuildKit's default
/// `PATH` when it sets none.
fn image_env(env: &[String]) -> StageEnv {
    let mut out = Env::default();
    for kv in env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        out.set(k, v);
    }
    if out.get("PATH").is_none() {
        out.set("PATH", DEFAULT_PATH);
    }
    StageEnv {
        env: out,
        args: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_buildkits() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(search("HOMEDIRR", ["PATH", "HOMEDIR"]), Some("HOMEDIR"));
        // Case matters; the first of equally close options wins.
        assert_eq!(search("path", ["PATH"]), None);
        assert_eq!(search("AB", ["AC", "AD"]), Some("AC"));
        assert_eq!(search("GOPATH", ["PATH"]), Some("PATH"));
        assert_eq!(search("X", ["X"]), None);
    }

    fn found(src: &str, base: &dyn Fn(&str, Option<&Platform>) -> BaseEnv) -> Vec<(u32, String)> {
        let df = crate::parse(src).expect("parses");
        let opts = BuildOptions::new(cache::oci::Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
            os_version: None,
        });
        crate::check::check_with_bases(&df, &opts, base)
            .into_iter()
            .filter(|w| w.rule == "UndefinedVar")
            .map(|w| (w.span.map_or(0, |s| s.line), w.message))
            .collect()
    }

    #[test]
    fn undefined_vars_follow_buildkits_definitions() {
        let unknown = |_: &str, _: Option<&Platform>| BaseEnv::Unknown;
        let src = "ARG G=1\nFROM scratch AS a\nARG G\nARG NOVAL\nENV A=$G B=$A\n\
                   RUN echo $NOT_CHECKED\nWORKDIR /$NOVAL$TARGETARCH\nENV C=$PATH\n\
                   FROM a\nCOPY $A$B$G /x\nFROM img\nUSER $HOMEE\n";
        let msg = |v: &str| format!("Usage of undefined variable '${v}'");
        assert_eq!(
            found(src, &unknown),
            vec![
                (5, format!("{} (did you mean $G?)", msg("A"))),
                (7, msg("TARGETARCH")),
            ]
        );
        // The base image's environment counts; its stage is checked once it is known.
        let known = |r: &str, _: Option<&Platform>| {
            assert_eq!(r, "img");
            BaseEnv::Known {
                env: vec!["HOME=/root".into()],
                on_build: Vec::new(),
                platform: Platform {
                    architecture: "amd64".into(),
                    os: "linux".into(),
                    variant: None,
                    os_version: None,
                },
            }
        };
        let got = found(src, &known);
        assert_eq!(
            got.last(),
            Some(&(12, format!("{} (did you mean $HOME?)", msg("HOMEE"))))
        );
        assert_eq!(got.len(), 3);
        // A base stage's ONBUILD triggers run first, reported at the FROM line.
        let src = "FROM scratch AS a\nONBUILD ARG X\nONBUILD ENV Z=$UNDEF_OB\nFROM a\nENV Y=$X$Z\n";
        assert_eq!(found(src, &unknown), vec![(4, msg("UNDEF_OB"))]);
    }
}

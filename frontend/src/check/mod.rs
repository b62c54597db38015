//! `kiln build --check`: lint rules in the spirit of BuildKit's (`docker build --check`),
//! plus every error lowering would raise.
//!
//! Rule names are BuildKit's so that `# check=skip=RuleName` directives written for BuildKit
//! work here too. Checks that need the build context (a COPY source that is missing or
//! ignored) belong to the caller, which has the filesystem.

use crate::BuildOptions;
use crate::error::Error;
use crate::instructions::{Command, Dockerfile};
use crate::lower::{Lowerer, PLATFORM_ARGS};
use graph::Span;
use std::collections::BTreeSet;

mod rules;
mod undefined;
use rules::{lint_stage, majority_lower};
pub use rules::{rule_description, rule_url};
pub use undefined::BaseEnv;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// A lint warning.
    Warning,
    /// The build would fail (or `# check=error=true` promoted a warning).
    Error,
}

/// One finding of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// BuildKit's rule name (`StageNameCasing`), or `BuildError` for a lowering error.
    pub rule: &'static str,
    /// What is wrong.
    pub message: String,
    /// Where.
    pub span: Option<Span>,
    /// Warning or error.
    pub level: Level,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = match self.level {
            Level::Warning => "warning",
            Level::Error => "error",
        };
        match self.span {
            Some(s) => write!(
                f,
                "{}:{}: {level}: {}: {}",
                s.line, s.column, self.rule, self.message
            ),
            None => write!(f, "{level}: {}: {}", self.rule, self.message),
        }
    }
}

struct Lint {
    out: Vec<Warning>,
    skip: BTreeSet<String>,
    skip_all: bool,
    as_error: bool,
}

impl Lint {
    fn add(&mut self, rule: &'static str, message: String, span: Span) {
        if self.skip_all || self.skip.contains(&rule.to_ascii_lowercase()) {
            return;
        }
        let level = if self.as_error {
            Level::Error
        } else {
            Level::Warning
        };
        self.out.push(Warning {
            rule,
            message,
            span: Some(span),
            level,
        });
    }
}

/// Parses `# check=skip=A,B;error=true`.
fn parse_check_directive(v: &str) -> (BTreeSet<String>, bool, bool) {
    let mut skip = BTreeSet::new();
    let mut all = false;
    let mut error = false;
    for part in v.split(';') {
        let Some((k, val)) = part.trim().split_once('=') else {
            continue;
        };
        match k.trim() {
            "skip" => {
                for r in val.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                    if r.eq_ignore_ascii_case("all") {
                        all = true;
                    }
                    skip.insert(r.to_ascii_lowercase());
                }
            }
            "error" => error = val.trim().eq_ignore_ascii_case("true"),
            _ => {}
        }
    }
    (skip, all, error)
}

/// Lints `df` and lowers every stage without base image configs, reporting what a build
/// with `opts` would reject. Findings come in source order. UndefinedVar is reported only for
/// stages on `scratch` (or on such stages): see [`check_with_bases`].
pub fn check(df: &Dockerfile, opts: &BuildOptions) -> Vec<Warning> {
    check_with_bases(df, opts, &|_, _| BaseEnv::Unknown)
}

/// [`check`], with `base_env` telling the config of each image a `FROM` names (the reference
/// after ARG expansion, and the platform of its `--platform` flag if any), for UndefinedVar
/// and InvalidBaseImagePlatform. A stage whose base is [`BaseEnv::Unknown`] (and every stage
/// built on it) gets neither.
pub fn check_with_bases(
    df: &Dockerfile,
    opts: &BuildOptions,
    base_env: &dyn Fn(&str, Option<&cache::oci::Platform>) -> BaseEnv,
) -> Vec<Warning> {
    let (skip, skip_all, as_error) = df
        .directives
        .check
        .as_deref()
        .map(parse_check_directive)
        .unwrap_or_default();
    let mut lint = Lint {
        out: Vec::new(),
        skip,
        skip_all,
        as_error,
    };

    for w in &df.warnings {
        lint.add(
            "NoEmptyContinuation",
            "Empty continuation line".to_owned(),
            w.span,
        );
    }
    let meta_names: BTreeSet<String> = df
        .meta_args
        .iter()
        .flat_map(|i| match &i.command {
            Command::Arg(defs) => defs.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect();

    // Lowering errors: every stage, as if it were the target, without base image configs.
    let mut errors: Vec<Error> = Vec::new();
    // What lowering finds about FROM lines, reported after the stages' own findings.
    let mut from_lints: Vec<(&'static str, String, Span)> = Vec::new();
    // The stages BuildKit converts, whose instructions its conversion checks: all of them
    // without a target, else those the target needs.
    let mut dispatched = vec![opts.target.is_none(); df.stages.len()];
    match Lowerer::new(df, opts, None) {
        Err(e) => errors.push(e),
        Ok(mut l) => {
            l.lenient = true;
            let targets: Vec<usize> = match &opts.target {
                Some(_) => match l.target_index() {
                    Ok(t) => vec![t],
                    Err(e) => {
                        errors.push(e);
                        Vec::new()
                    }
                },
                None => (0..df.stages.len()).collect(),
            };
            for t in targets {
                if let Err(e) = l.lower_target(t)
                    && !errors.contains(&e)
                {
                    errors.push(e);
                }
            }
            if opts.target.is_some() {
                dispatched = l.lowered();
                // Even when lowering it failed.
                if let Ok(t) = l.target_index() {
                    dispatched[t] = true;
                }
            }
            // BuildKit checks the bases' defaults before it converts the stages.
            for (name, span) in std::mem::take(&mut l.blank_bases) {
                from_lints.push((
                    "InvalidDefaultArgInFrom",
                    format!(
                        "Default value for ARG {name} results in empty or invalid base image name"
                    ),
                    span,
                ));
            }
            let mut undefined = BTreeSet::new();
            for (name, span) in std::mem::take(&mut l.unmatched_from_args) {
                let declared = meta_names.contains(&name) || PLATFORM_ARGS.contains(&name.as_str());
                if !declared && undefined.insert((name.clone(), span.line)) {
                    from_lints.push((
                        "UndefinedArgInFrom",
                        format!("FROM argument '{name}' is not declared"),
                        span,
                    ));
                }
            }
        }
    }
    // BuildKit stops converting at the first error.
    let stop_at = errors.iter().filter_map(|e| e.span()).map(|s| s.line).min();
    let found = undefined::undefined_vars(df, opts, &dispatched, base_env, stop_at, &mut lint);
    let mut seen_names: Vec<String> = Vec::new();
    let majority_lower = majority_lower(df);
    for stage in &df.stages {
        lint_stage(
            &mut lint,
            stage,
            &meta_names,
            &mut seen_names,
            (majority_lower, dispatched[stage.index]),
            df.escape,
            &found.workdirs,
        );
    }
    for (message, span) in found.in_args {
        lint.add("UndefinedVar", message, span);
    }
    for (message, span) in found.platforms {
        lint.add("InvalidBaseImagePlatform", message, span);
    }
    for (rule, message, span) in from_lints {
        lint.add(rule, message, span);
    }
    let mut out = lint.out;
    for e in errors {
        out.push(Warning {
            rule: "BuildError",
            message: e.message(),
            span: e.span(),
            level: Level::Error,
        });
    }
    // By line only, as BuildKit sorts (stable: a line's findings in the order found).
    out.sort_by_key(|w| w.span.map(|s| s.line));
    out
}

/// A COPY/ADD source read from the build context by a step the target needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextSource {
    /// `COPY` or `ADD`.
    pub instruction: &'static str,
    /// The source after expansion, relative to the context.
    pub source: String,
    /// The instruction's position.
    pub span: Option<Span>,
}

/// What the caller found in the build context for a [`ContextSource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// Present and not ignored (a wildcard that matches nothing counts: BuildKit copies
    /// nothing).
    Present,
    /// Present, but excluded by `.dockerignore`.
    Ignored,
    /// Not in the context.
    Missing,
}

/// Every context source read by the stages the target needs (as BuildKit, which converts only
/// reachable stages: through `FROM <stage>`, `COPY --from` and `RUN --mount from=`), found by
/// lowering with placeholder base images. Heredoc sources and URLs are not listed. Empty when
/// lowering fails: [`check`] reports those errors.
pub fn context_sources(df: &Dockerfile, opts: &BuildOptions) -> Vec<ContextSource> {
    use graph::{CopySource, FileAction, Op};
    let Ok(refs) = crate::base_images(df, opts) else {
        return Vec::new();
    };
    let bases = refs
        .iter()
        .map(|r| {
            let placeholder = crate::BaseImage {
                manifest: cache::oci::Digest::of(r.reference.as_bytes()),
                config: cache::oci::ImageConfig::empty(&opts.platform),
            };
            (r.reference.clone(), placeholder)
        })
        .collect();
    let Ok(graph) = crate::lower(df, opts, &bases) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for n in graph.reachable() {
        let node = &graph.nodes[n];
        let Op::File(f) = &node.op else { continue };
        for a in &f.actions {
            let FileAction::Copy(c) = a else { continue };
            if c.from != CopySource::Context {
                continue;
            }
            for src in &c.sources {
                out.push(ContextSource {
                    instruction: c.instruction,
                    source: src.clone(),
                    span: node.span,
                });
            }
        }
    }
    out
}

/// The `CopyIgnoredFile` or `CopyMissingSource` finding for a source in `state`, if any.
pub fn copy_source_warning(src: &ContextSource, state: SourceState) -> Option<Warning> {
    let (rule, message) = match state {
        SourceState::Present => return None,
        // BuildKit's text names the command as `Copy` or `Add`.
        SourceState::Ignored => (
            "CopyIgnoredFile",
            format!(
                "Attempting to {}{} file {:?} that is excluded by .dockerignore",
                &src.instruction[..1],
                src.instruction[1..].to_ascii_lowercase(),
                src.source
            ),
        ),
        SourceState::Missing => (
            "CopyMissingSource",
            format!(
                "{} source {:?} is not in the build context",
                src.instruction, src.source
            ),
        ),
    };
    Some(Warning {
        rule,
        message,
        span: src.span,
        level: Level::Warning,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache::oci::Platform;

    fn rules(src: &str) -> Vec<&'static str> {
        let df = crate::parse(src).expect("parses");
        let opts = BuildOptions::new(Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
            os_version: None,
        });
        check(&df, &opts).into_iter().map(|w| w.rule).collect()
    }

    #[test]
    fn each_rule_fires() {
        assert_eq!(rules("FROM a AS Build\n"), vec!["StageNameCasing"]);
        assert_eq!(rules("FROM a as b\n"), vec!["FromAsCasing"]);
        // A WORKDIR is expanded with the stage's own ENV; one naming the base image's
        // environment counts as absolute; only the first WORKDIR is looked at.
        assert_eq!(
            rules("FROM a\nENV D=app\nWORKDIR $D\nWORKDIR rel\n"),
            vec!["WorkdirRelativePath"]
        );
        assert!(rules("FROM a\nWORKDIR $HOME\nWORKDIR rel\n").is_empty());
        assert_eq!(
            rules("FROM a\nARG GITHUB_TOKEN\nENV DB_PASSWORD=x PUBLIC_KEY=y\nARG MONKEY\n"),
            vec!["SecretsUsedInArgOrEnv", "SecretsUsedInArgOrEnv"]
        );
        assert_eq!(
            rules("FROM --platform=linux/amd64 a\n"),
            vec!["FromPlatformFlagConstDisallowed"]
        );
        // `a:` is no image reference either (BuildKit v0.24 says both, in this order).
        assert_eq!(
            rules("FROM a:$NOPE\n"),
            vec!["InvalidDefaultArgInFrom", "UndefinedArgInFrom"]
        );
        assert_eq!(rules("FROM a\nCMD run me\n"), vec!["JSONArgsRecommended"]);
        assert_eq!(
            rules("FROM a\nEXPOSE 80/TCP 127.0.0.1:81:81 8080:80/udp 90\n"),
            vec![
                "ExposeProtoCasing",
                "ExposeInvalidFormat",
                "ExposeInvalidFormat"
            ]
        );
        // With a target, the other stages' instructions are not converted, so only what
        // BuildKit's parser finds is reported there.
        let df =
            crate::parse("FROM a AS t\nFROM a AS other\nMAINTAINER m\nCMD x\n").expect("parses");
        let mut opts = BuildOptions::new(Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
            os_version: None,
        });
        opts.target = Some("t".into());
        let found: Vec<_> = check(&df, &opts).into_iter().map(|w| w.rule).collect();
        assert_eq!(found, vec!["MaintainerDeprecated"]);
        assert_eq!(
            rules("FROM a AS x\nFROM b AS x\n"),
            vec!["DuplicateStageName"]
        );
        assert_eq!(rules("FROM a\nENV k v\n"), vec!["LegacyKeyValueFormat"]);
        assert_eq!(
            rules("FROM a\nMAINTAINER me\n"),
            vec!["MaintainerDeprecated"]
        );
        assert_eq!(rules("FROM a\nWORKDIR app\n"), vec!["WorkdirRelativePath"]);
        assert!(rules("FROM a\nWORKDIR /app\nWORKDIR sub\n").is_empty());
    }

    #[test]
    fn check_directive_skips_and_promotes() {
        assert!(rules("# check=skip=JSONArgsRecommended\nFROM a\nCMD x\n").is_empty());
        let df = crate::parse("# check=error=true\nFROM a\nCMD x\n").expect("parses");
        let opts = BuildOptions::new(Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
            os_version: None,
        });
        assert_eq!(check(&df, &opts)[0].level, Level::Error);
    }

    #[test]
    fn lowering_errors_are_reported() {
        let df =
            crate::parse("FROM a AS builder\nFROM b\nCOPY --from=biulder /x /x\n").expect("parses");
        let opts = BuildOptions::new(Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
            os_version: None,
        });
        let found = check(&df, &opts);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].level, Level::Error);
        assert_eq!(found[0].span, Some(Span { line: 3, column: 6 }));
    }

    fn opts() -> BuildOptions {
        BuildOptions::new(Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
            os_version: None,
        })
    }

    #[test]
    fn json_args_recommended_covers_entrypoint_and_empty_continuation_is_reported() {
        assert_eq!(
            rules("FROM a\nENTRYPOINT run me\n"),
            vec!["JSONArgsRecommended"]
        );
        assert_eq!(
            rules("FROM a\nRUN echo a \\\n\n  b\n"),
            vec!["NoEmptyContinuation"]
        );
    }

    #[test]
    fn context_sources_come_from_every_stage_the_target_reaches_and_no_other() {
        let src = "FROM busybox AS a\nCOPY from-a /x\nFROM a AS b\nCOPY from-b /y\n\
                   FROM busybox AS c\nCOPY from-c /z\nFROM busybox AS d\nCOPY from-d /w\n\
                   FROM busybox AS e\nADD from-e /v\nFROM b\nCOPY --from=c /z /z\n\
                   RUN --mount=from=e,target=/m true\nCOPY <<EOF /inline\nhi\nEOF\n\
                   COPY last /last\n";
        let df = crate::parse(src).expect("parses");
        let found: Vec<(String, u32)> = context_sources(&df, &opts())
            .into_iter()
            .map(|s| (s.source, s.span.map_or(0, |s| s.line)))
            .collect();
        let mut names: Vec<&str> = found.iter().map(|(s, _)| s.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["from-a", "from-b", "from-c", "from-e", "last"]);
        assert!(found.contains(&("from-c".to_owned(), 6)), "{found:?}");

        let mut o = opts();
        o.target = Some("c".into());
        let only: Vec<String> = context_sources(&df, &o)
            .into_iter()
            .map(|s| s.source)
            .collect();
        assert_eq!(only, ["from-c"]);
    }

    #[test]
    fn copy_source_rules_name_the_instruction_and_the_source() {
        let s = ContextSource {
            instruction: "ADD",
            source: "a.txt".into(),
            span: Some(Span { line: 3, column: 1 }),
        };
        assert_eq!(copy_source_warning(&s, SourceState::Present), None);
        let w = copy_source_warning(&s, SourceState::Ignored).expect("ignored");
        assert_eq!(w.rule, "CopyIgnoredFile");
        assert_eq!(
            w.message,
            "Attempting to Add file \"a.txt\" that is excluded by .dockerignore"
        );
        assert_eq!(w.span, s.span);
        let w = copy_source_warning(&s, SourceState::Missing).expect("missing");
        assert_eq!(w.rule, "CopyMissingSource");
        assert_eq!(
            w.message,
            "ADD source \"a.txt\" is not in the build context"
        );
    }

    #[test]
    fn blank_base_from_missing_arg_is_a_warning() {
        assert_eq!(
            rules("ARG BASE\nFROM $BASE\n"),
            vec!["InvalidDefaultArgInFrom"]
        );
    }
}

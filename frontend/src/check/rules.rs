//! The rules `check` runs on each stage, and BuildKit's descriptions and pages of them.

use super::Lint;
use crate::instructions::{Command, Dockerfile, Stage};
use graph::Span;
use std::collections::{BTreeMap, BTreeSet};

/// BuildKit's description of a rule kiln reports (its linter's rule set), and whether it
/// has a documentation page (`https://docs.docker.com/go/dockerfile/rule/<kebab-name>/`).
/// `None` for kiln's own rules (`CopyMissingSource`, `BuildError`).
pub fn rule_description(rule: &str) -> Option<&'static str> {
    Some(match rule {
        "StageNameCasing" => "Stage names should be lowercase",
        "FromAsCasing" => "The 'as' keyword should match the case of the 'from' keyword",
        "NoEmptyContinuation" => "Empty continuation lines will become errors in a future release",
        "ConsistentInstructionCasing" => {
            "All commands within the Dockerfile should use the same casing (either upper or lower)"
        }
        "DuplicateStageName" => "Stage names should be unique",
        "ReservedStageName" => "Reserved words should not be used as stage names",
        "JSONArgsRecommended" => {
            "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals"
        }
        "MaintainerDeprecated" => {
            "The MAINTAINER instruction is deprecated, use a label instead to define an image author"
        }
        "UndefinedArgInFrom" => "FROM command must use declared ARGs",
        "UndefinedVar" => "Variables should be defined before their use",
        "InvalidBaseImagePlatform" => "Base image platform does not match expected target platform",
        "WorkdirRelativePath" => {
            "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes"
        }
        "MultipleInstructionsDisallowed" => {
            "Multiple instructions of the same type should not be used in the same stage"
        }
        "LegacyKeyValueFormat" => {
            "Legacy key/value format with whitespace separator should not be used"
        }
        "RedundantTargetPlatform" => {
            "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior"
        }
        "SecretsUsedInArgOrEnv" => "Sensitive data should not be used in the ARG or ENV commands",
        "InvalidDefaultArgInFrom" => {
            "Default value for global ARG results in an empty or invalid base image name"
        }
        "FromPlatformFlagConstDisallowed" => "FROM --platform flag should not use a constant value",
        "CopyIgnoredFile" => "Attempting to Copy file that is excluded by .dockerignore",
        "ExposeProtoCasing" => "Protocol in EXPOSE instruction should be lowercase",
        "ExposeInvalidFormat" => {
            "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release"
        }
        _ => return None,
    })
}

/// The documentation page BuildKit prints for `rule` (kebab case of its name), for the rules
/// of [`rule_description`].
pub fn rule_url(rule: &str) -> Option<String> {
    rule_description(rule)?;
    // The one rule of BuildKit's table without a page.
    if rule == "InvalidBaseImagePlatform" {
        return None;
    }
    let chars: Vec<char> = rule.chars().collect();
    let mut kebab = String::new();
    for (i, c) in chars.iter().enumerate() {
        let prev_lower = i > 0 && chars[i - 1].is_ascii_lowercase();
        let next_lower = chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
        let prev_upper = i > 0 && chars[i - 1].is_ascii_uppercase();
        if c.is_ascii_uppercase() && i > 0 && (prev_lower || (prev_upper && next_lower)) {
            kebab.push('-');
        }
        kebab.push(c.to_ascii_lowercase());
    }
    Some(format!(
        "https://docs.docker.com/go/dockerfile/rule/{kebab}/"
    ))
}

/// Whether most FROM and instruction keywords of `df` that are all one case are lowercase
/// (BuildKit's majority for ConsistentInstructionCasing; a tie is uppercase).
pub(super) fn majority_lower(df: &Dockerfile) -> bool {
    let keywords = df.stages.iter().flat_map(|s| {
        std::iter::once(s.original.as_str())
            .chain(s.instructions.iter().map(|i| i.original.as_str()))
            .filter_map(|o| o.split_whitespace().next())
    });
    let (mut lower, mut upper) = (0, 0);
    for kw in keywords {
        if kw == kw.to_ascii_lowercase() {
            lower += 1;
        } else if kw == kw.to_ascii_uppercase() {
            upper += 1;
        }
    }
    lower > upper
}

/// SecretsUsedInArgOrEnv: a stage's ARG or ENV named like a secret (a `_`-separated part
/// of the name is one of BuildKit's words, and none is `public`).
fn secret_key(lint: &mut Lint, instruction: &str, key: &str, span: Span) {
    const WORDS: &[&str] = &[
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    let parts: Vec<String> = key.split('_').map(str::to_ascii_lowercase).collect();
    if parts.iter().any(|p| WORDS.contains(&p.as_str())) && !parts.iter().any(|p| p == "public") {
        lint.add(
            "SecretsUsedInArgOrEnv",
            format!(
                "Do not use ARG or ENV instructions for sensitive data ({instruction} {key:?})"
            ),
            span,
        );
    }
}

/// ExposeProtoCasing and ExposeInvalidFormat for one (expanded) EXPOSE port, split as
/// BuildKit splits `[ip:][hostport:]port[/proto]`; a port BuildKit refuses is lowering's.
fn expose(lint: &mut Lint, port: &str, span: Span) {
    let parts: Vec<&str> = port.split(':').collect();
    let n = parts.len();
    let (ip, host, container) = match n {
        1 => (String::new(), "", parts[0]),
        2 => (String::new(), parts[0], parts[1]),
        _ => (parts[..n - 2].join(":"), parts[n - 2], parts[n - 1]),
    };
    let (num, proto) = container.split_once('/').unwrap_or((container, ""));
    let known = ["", "tcp", "udp", "sctp"].contains(&proto.to_ascii_lowercase().as_str());
    if num.is_empty() || !known {
        return;
    }
    if proto != proto.to_ascii_lowercase() {
        lint.add(
            "ExposeProtoCasing",
            format!("Defined protocol '{port}' in EXPOSE instruction should be lowercase"),
            span,
        );
    }
    if !ip.is_empty() || !host.is_empty() {
        lint.add(
            "ExposeInvalidFormat",
            format!(
                "EXPOSE instruction should not define an IP address or host-port mapping, found '{port}'"
            ),
            span,
        );
    }
}

/// ConsistentInstructionCasing for one keyword.
fn casing(lint: &mut Lint, kw: &str, majority_lower: bool, span: Span) {
    let wrong = if majority_lower {
        kw != kw.to_ascii_lowercase()
    } else {
        kw != kw.to_ascii_uppercase()
    };
    if wrong {
        lint.add(
            "ConsistentInstructionCasing",
            format!(
                "Command '{kw}' should match the case of the command majority ({})",
                if majority_lower {
                    "lowercase"
                } else {
                    "uppercase"
                }
            ),
            span,
        );
    }
}

pub(super) fn lint_stage(
    lint: &mut Lint,
    stage: &Stage,
    meta: &BTreeSet<String>,
    seen: &mut Vec<String>,
    (majority_lower, dispatched): (bool, bool),
    escape: char,
    known_workdirs: &BTreeMap<u32, String>,
) {
    let from_kw = stage.original.split_whitespace().next().unwrap_or("FROM");
    if let Some(name) = &stage.name_as_written {
        if name != &name.to_ascii_lowercase() {
            lint.add(
                "StageNameCasing",
                format!("Stage name '{name}' should be lowercase"),
                stage.span,
            );
        }
        let as_kw = stage
            .original
            .split_whitespace()
            .rev()
            .nth(1)
            .unwrap_or("AS");
        let from_upper = from_kw == from_kw.to_ascii_uppercase();
        let as_upper = as_kw == as_kw.to_ascii_uppercase();
        if from_upper != as_upper {
            lint.add(
                "FromAsCasing",
                format!("'{as_kw}' and '{from_kw}' keywords' casing do not match"),
                stage.span,
            );
        }
        let lower = name.to_ascii_lowercase();
        if lower == "scratch" || lower == "context" {
            lint.add(
                "ReservedStageName",
                format!("'{name}' is reserved and should not be used as a stage name"),
                stage.span,
            );
        }
        if seen.contains(&lower) {
            lint.add(
                "DuplicateStageName",
                format!("Duplicate stage name {lower:?}, stage names should be unique"),
                stage.span,
            );
        }
        seen.push(lower);
    }
    // BuildKit's order on a line: what its parser reports, then the casing, then what its
    // conversion reports.
    casing(lint, from_kw, majority_lower, stage.span);
    if let Some(p) = stage.platform.as_ref().filter(|_| dispatched) {
        let span = stage.platform_span.unwrap_or(stage.span);
        if !p.contains('$') {
            lint.add(
                "FromPlatformFlagConstDisallowed",
                format!("FROM --platform flag should not use constant value {p:?}"),
                span,
            );
        } else if p == "$TARGETPLATFORM" || p == "${TARGETPLATFORM}" {
            lint.add(
                "RedundantTargetPlatform",
                format!("Setting platform to predefined {p} in FROM is redundant as this is the default behavior"),
                span,
            );
        }
    }
    let _ = meta;
    let mut workdir_set = false;
    // The stage's own ENV and ARG values, to expand a WORKDIR as BuildKit does; a WORKDIR
    // naming anything else (the base image's environment, unknown here) counts as set.
    let lex = crate::shell::Lex::new(escape);
    let mut env: std::collections::BTreeMap<String, String> = Default::default();
    let mut cmd_count = 0;
    let mut entrypoint_count = 0;
    let mut health_count = 0;
    for instr in &stage.instructions {
        let kw = instr.original.split_whitespace().next().unwrap_or_default();
        if let Command::Maintainer(_) = &instr.command {
            lint.add(
                "MaintainerDeprecated",
                "Maintainer instruction is deprecated in favor of using label".to_owned(),
                instr.span,
            );
        }
        casing(lint, kw, majority_lower, instr.span);
        // The rest is what BuildKit's conversion finds, in the stages it converts.
        if !dispatched {
            continue;
        }
        match &instr.command {
            Command::Cmd(c) | Command::Entrypoint(c) => {
                let kw = instr.command.keyword();
                if c.shell_form && !c.args.is_empty() {
                    lint.add(
                        "JSONArgsRecommended",
                        format!("JSON arguments recommended for {kw} to prevent unintended behavior related to OS signals"),
                        instr.span,
                    );
                }
                let count = if kw == "CMD" {
                    &mut cmd_count
                } else {
                    &mut entrypoint_count
                };
                *count += 1;
                if *count == 2 {
                    lint.add(
                        "MultipleInstructionsDisallowed",
                        format!("Multiple {kw} instructions should not be used in the same stage because only the last one will be used"),
                        instr.span,
                    );
                }
            }
            Command::Healthcheck(_) => {
                health_count += 1;
                if health_count == 2 {
                    lint.add(
                        "MultipleInstructionsDisallowed",
                        "Multiple HEALTHCHECK instructions should not be used in the same stage because only the last one will be used".to_owned(),
                        instr.span,
                    );
                }
            }
            Command::Env(kvs) | Command::Label(kvs) => {
                let kw = instr.command.keyword();
                for kv in kvs {
                    if kv.legacy {
                        lint.add(
                            "LegacyKeyValueFormat",
                            format!("\"{kw} key=value\" should be used instead of legacy \"{kw} key value\" format"),
                            instr.span,
                        );
                    }
                    if kw == "ENV" {
                        secret_key(lint, "ENV", &kv.key, instr.span);
                        let v = lex.process_word(&kv.value, &|k: &str| env.get(k).cloned());
                        match v {
                            Ok(v) => env.insert(kv.key.clone(), v),
                            Err(_) => env.remove(&kv.key),
                        };
                    }
                }
            }
            Command::Arg(defs) => {
                for d in defs {
                    secret_key(lint, "ARG", &d.name, instr.span);
                    let v = d
                        .default
                        .as_ref()
                        .and_then(|v| lex.process_word(v, &|k: &str| env.get(k).cloned()).ok());
                    match v {
                        Some(v) => env.insert(d.name.clone(), v),
                        None => env.remove(&d.name),
                    };
                }
            }
            Command::Expose(ports) => {
                for raw in ports {
                    let Ok(p) = lex.process_word(raw, &|k: &str| env.get(k).cloned()) else {
                        continue;
                    };
                    expose(lint, &p, instr.span);
                }
            }
            Command::Workdir(w) => {
                // Expanded with the whole environment when the base's is known; else with the
                // stage's own, a variable it does not set possibly the base image's.
                let expanded = match known_workdirs.get(&instr.span.line) {
                    Some(k) => Some(k.clone()),
                    None => lex
                        .process(w, &|k: &str| env.get(k).cloned())
                        .ok()
                        .filter(|e| e.unmatched.is_empty())
                        .map(|e| e.result),
                };
                let w = match &expanded {
                    Some(e) => e.as_str(),
                    None => w.as_str(),
                };
                let absolute = w.starts_with('/') || (expanded.is_none() && w.starts_with('$'));
                // Only the stage's first WORKDIR is checked, as BuildKit does.
                if !absolute && !workdir_set {
                    lint.add(
                        "WorkdirRelativePath",
                        format!("Relative workdir {w:?} can have unexpected results if the base image changes"),
                        instr.span,
                    );
                }
                workdir_set = true;
            }
            _ => {}
        }
    }
}

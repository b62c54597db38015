//! Where a build's dates come from (README "Image dates"): `SOURCE_DATE_EPOCH` as a build arg,
//! else from the environment; else, when the context is a git checkout, its HEAD commit's
//! time; else the first build's clock, which the solver keeps in a cache record.

use anyhow::{Context as _, bail};
use solver::ops::CreatedRule;
use std::collections::BTreeMap;
use std::path::Path;

/// The rule for a build with `build_args` whose context directory is `context`.
///
/// Fails on a `SOURCE_DATE_EPOCH` that is not a whole number of seconds (BuildKit's
/// `invalid SOURCE_DATE_EPOCH`).
pub fn rule(build_args: &BTreeMap<String, String>, context: &Path) -> anyhow::Result<CreatedRule> {
    let given = match build_args.get("SOURCE_DATE_EPOCH") {
        Some(v) => Some((v.clone(), "build arg")),
        None => std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (v, "environment")),
    };
    // An empty value is none, as BuildKit's (an empty build arg also hides the environment's,
    // as buildx passes the environment's only when no build arg is given).
    if let Some((v, from)) = given.filter(|(v, _)| !v.is_empty()) {
        let Ok(secs) = v.trim().parse::<i64>() else {
            bail!("invalid SOURCE_DATE_EPOCH ({from}): {v:?} is not a whole number of seconds");
        };
        return Ok(CreatedRule::SourceDateEpoch {
            secs,
            from: from.to_owned(),
        });
    }
    Ok(git_head(context)?.unwrap_or(CreatedRule::FirstBuild))
}

/// `SOURCE_DATE_EPOCH` from the environment alone (`kiln import`, which has no build args):
/// None when unset or empty.
///
/// Fails on a value that is not a whole number of seconds, as [`rule`] does.
pub fn env_epoch() -> anyhow::Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse::<i64>() {
            Ok(secs) => Ok(Some(secs)),
            Err(_) => bail!(
                "invalid SOURCE_DATE_EPOCH (environment): {v:?} is not a whole number of seconds"
            ),
        },
        _ => Ok(None),
    }
}

/// The HEAD commit time of the git work tree that holds `context`, if it is in one.
///
/// Fails when git says the directory is a work tree but its HEAD cannot be read.
fn git_head(context: &Path) -> anyhow::Result<Option<CreatedRule>> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(context)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
    };
    // No git on the machine, or not a work tree: no commit to date the build with.
    match git(&["rev-parse", "--is-inside-work-tree"]) {
        Ok(o) if o.status.success() && o.stdout.starts_with(b"true") => {}
        _ => return Ok(None),
    }
    let out = git(&["log", "-1", "--format=%ct %H", "HEAD"])
        .with_context(|| format!("running git log in {}", context.display()))?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // A work tree without commits yet has no HEAD to date from.
    if !out.status.success() || line.is_empty() {
        return Ok(None);
    }
    let (secs, commit) = line.split_once(' ').with_context(|| {
        format!(
            "git log in {}: unexpected output {line:?}",
            context.display()
        )
    })?;
    Ok(Some(CreatedRule::GitHead {
        secs: secs
            .parse()
            .with_context(|| format!("git log in {}: commit time {secs:?}", context.display()))?,
        commit: commit.to_owned(),
    }))
}

//! ADD of a git repository: running git for the sources [`graph::git::parse_url`] describes.
//!
//! - [`resolve`]: `git ls-remote` turns the ref into a commit before cache keys are computed, so
//!   a cached step is reused only while the branch still points where it did.
//! - [`checkout`]: fetches that commit (shallow when the server allows it) into a temp dir of
//!   the store, checks it out and drops `.git` unless `--keep-git-dir`.
//!
//! Everything runs the `git` binary with prompts disabled: a remote that needs credentials
//! fails instead of waiting on a terminal.

use crate::graph::{BuildGraph, CopySource, FileAction, FileOp, GitSource, NodeId, Op};
use graph::git::is_hex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a git source failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The source reached the checkout in a state the solver should have prevented.
    #[error("ADD {url}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// `git` could not be started.
    #[error("ADD {url}: running git (is it installed?)")]
    Spawn {
        /// The URL.
        url: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A `git` command failed.
    #[error("ADD {url}: git {what} failed: {stderr}")]
    Command {
        /// The URL.
        url: String,
        /// Which command.
        what: &'static str,
        /// Its last stderr lines.
        stderr: String,
    },
    /// The ref is neither a branch, a tag, a ref nor a full commit id of the remote.
    #[error("ADD {url}: reference {reference:?} not found in the repository{}", hint(.reference))]
    RefNotFound {
        /// The URL.
        url: String,
        /// The ref.
        reference: String,
    },
    /// The commit does not match `--checksum`.
    #[error("ADD {url}: checksum mismatch: expected commit {expected}, got {actual}")]
    Checksum {
        /// The URL.
        url: String,
        /// The expected commit (prefix).
        expected: String,
        /// The resolved commit.
        actual: String,
    },
    /// The subdirectory is missing from the checkout.
    #[error("ADD {url}: directory {subdir:?} not found in the repository at {commit}")]
    NoSubdir {
        /// The URL.
        url: String,
        /// The subdirectory.
        subdir: String,
        /// The commit.
        commit: String,
    },
    /// A temp dir or file operation failed.
    #[error("ADD {url}: {what} {}", path.display())]
    Io {
        /// The URL.
        url: String,
        /// What was done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn hint(reference: &str) -> &'static str {
    if is_hex(reference) && reference.len() < 40 {
        "\nhint: a commit must be given in full (40 hex digits); short ids cannot be resolved remotely"
    } else {
        ""
    }
}

/// Every git command: no prompts, no pager, ssh in batch mode (as config, so that a
/// `GIT_SSH_COMMAND` of the caller still wins); `ssh_auth_sock` (the `--ssh` default agent)
/// for ssh remotes. A stalled server fails the step instead of hanging the build: http(s)
/// aborts below 1 byte/s for 2 minutes, ssh after 2 minutes of unanswered keepalives.
fn git(ssh_auth_sock: Option<&Path>) -> Command {
    let mut c = Command::new("git");
    c.args([
        "-c",
        "core.sshCommand=ssh -o BatchMode=yes -o ServerAliveInterval=30 -o ServerAliveCountMax=4",
        "-c",
        "http.lowSpeedLimit=1",
        "-c",
        "http.lowSpeedTime=120",
    ])
    .env("GIT_TERMINAL_PROMPT", "0")
    .env("GIT_PAGER", "cat")
    .stdin(Stdio::null());
    if let Some(sock) = ssh_auth_sock {
        c.env("SSH_AUTH_SOCK", sock);
    }
    c
}

fn run(url: &str, what: &'static str, cmd: &mut Command) -> Result<String, GitError> {
    let out = cmd.output().map_err(|source| GitError::Spawn {
        url: url.to_owned(),
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Err(GitError::Command {
            url: url.to_owned(),
            what,
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Picks the commit of `reference` from `git ls-remote` output, with git's precedence: an
/// exact ref name, then `refs/tags/R` (an annotated tag's peeled `^{}` line first), then
/// `refs/heads/R`, then `refs/R`.
pub fn pick_ref(ls_remote: &str, reference: &str) -> Option<String> {
    let refs: BTreeMap<&str, &str> = ls_remote
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(sha, name)| (name.trim(), sha.trim()))
        .collect();
    let candidates = [
        format!("{reference}^{{}}"),
        reference.to_owned(),
        format!("refs/tags/{reference}^{{}}"),
        format!("refs/tags/{reference}"),
        format!("refs/heads/{reference}"),
        format!("refs/{reference}"),
    ];
    candidates
        .iter()
        .find_map(|c| refs.get(c.as_str()))
        .map(|s| (*s).to_owned())
}

/// The commit `src.reference` names on its remote (`HEAD` when none), checked against
/// `src.checksum`. A 40-hex reference is taken as the commit itself.
///
/// Fails when git cannot reach the remote, the ref does not exist or the checksum differs.
pub fn resolve(src: &GitSource, ssh_auth_sock: Option<&Path>) -> Result<String, GitError> {
    let url = &src.url;
    let commit = match src.reference.as_deref() {
        Some(r) if r.len() == 40 && is_hex(r) => r.to_ascii_lowercase(),
        reference => {
            let r = reference.unwrap_or("HEAD");
            let out = run(
                url,
                "ls-remote",
                git(ssh_auth_sock)
                    .args(["ls-remote", "--", &src.remote, r])
                    .arg(format!("{r}^{{}}")),
            )?;
            pick_ref(&out, r).ok_or_else(|| GitError::RefNotFound {
                url: url.clone(),
                reference: r.to_owned(),
            })?
        }
    };
    if let Some(expected) = &src.checksum
        && !commit.starts_with(&expected.to_ascii_lowercase())
    {
        return Err(GitError::Checksum {
            url: url.clone(),
            expected: expected.clone(),
            actual: commit,
        });
    }
    Ok(commit)
}

/// Resolves the commit of every git source the target needs (each remote and ref once).
///
/// Fails with the node of the first source that cannot be resolved.
pub fn resolve_all(
    graph: &mut BuildGraph,
    ssh_auth_sock: Option<&Path>,
) -> Result<(), (NodeId, GitError)> {
    let mut done: BTreeMap<(String, Option<String>), String> = BTreeMap::new();
    for n in graph.reachable() {
        let Op::File(f) = &mut graph.nodes[n].op else {
            continue;
        };
        for a in &mut f.actions {
            let FileAction::Copy(c) = a else { continue };
            let CopySource::Git(g) = &mut c.from else {
                continue;
            };
            let key = (g.remote.clone(), g.reference.clone());
            let commit = match done.get(&key) {
                Some(c) => c.clone(),
                None => resolve(g, ssh_auth_sock).map_err(|e| (n, e))?,
            };
            if let Some(expected) = &g.checksum
                && !commit.starts_with(&expected.to_ascii_lowercase())
            {
                let e = GitError::Checksum {
                    url: g.url.clone(),
                    expected: expected.clone(),
                    actual: commit,
                };
                return Err((n, e));
            }
            done.insert(key, commit.clone());
            g.commit = Some(commit);
        }
    }
    Ok(())
}

/// Fetches `src.commit` into `dir` (a new, empty directory), checks it out, removes `.git`
/// unless `keep_git_dir`. Returns the directory to copy (the subdirectory, if any) and the
/// commit time in seconds since the epoch.
///
/// Fails when git fails, the commit is not on the remote or the subdirectory is missing.
pub fn checkout(
    src: &GitSource,
    dir: &Path,
    ssh_auth_sock: Option<&Path>,
) -> Result<(PathBuf, i64), GitError> {
    let url = &src.url;
    let commit = src.commit.clone().ok_or_else(|| GitError::BadUrl {
        url: url.clone(),
        reason: "the commit was not resolved before the checkout".into(),
    })?;
    let repo = dir.join("repo");
    let g = |what: &'static str, args: &[&str]| {
        run(
            url,
            what,
            git(ssh_auth_sock).arg("-C").arg(&repo).args(args),
        )
    };
    run(
        url,
        "init",
        git(ssh_auth_sock).args(["init", "-q"]).arg(&repo),
    )?;
    g(
        "remote add",
        &["remote", "add", "--", "origin", &src.remote],
    )?;
    // The ref as written (git's fetch resolves it like ls-remote did), or the commit itself.
    let want = src.reference.clone().unwrap_or_else(|| "HEAD".to_owned());
    let shallow = g(
        "fetch",
        &["fetch", "-q", "--depth=1", "--no-tags", "origin", &want],
    );
    let have = |c: &str| g("cat-file", &["cat-file", "-e", &format!("{c}^{{commit}}")]).is_ok();
    if shallow.is_err() || !have(&commit) {
        // The branch moved since ls-remote, the server refuses a commit id in `want`, or the
        // transport cannot do shallow fetches (dumb http): fetch every branch and tag.
        g(
            "fetch",
            &[
                "fetch",
                "-q",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
        )?;
        if !have(&commit) {
            return Err(GitError::RefNotFound {
                url: url.clone(),
                reference: commit,
            });
        }
    }
    g(
        "checkout",
        &[
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "-q",
            "--detach",
            &commit,
        ],
    )?;
    let mut submodule_paths = Vec::new();
    if src.submodules && repo.join(".gitmodules").is_file() {
        // Relative submodule URLs resolve against `origin`. Shallow first; a server that
        // refuses the recorded commit as a shallow `want` gets a full fetch.
        let base = ["submodule", "update", "--init", "--recursive"];
        let shallow: Vec<&str> = base.iter().copied().chain(["--depth=1"]).collect();
        if g("submodule update", &shallow).is_err() {
            g("submodule update", &base)?;
        }
        let list = g(
            "submodule foreach",
            &[
                "submodule",
                "--quiet",
                "foreach",
                "--recursive",
                "echo \"$displaypath\"",
            ],
        )?;
        submodule_paths.extend(list.lines().map(str::to_owned));
    }
    let time = g("log", &["log", "-1", "--format=%ct", &commit])?;
    let time = time.trim().parse::<i64>().unwrap_or(0);
    if !src.keep_git_dir {
        // A submodule's `.git` is a file pointing into the top `.git/modules`.
        for sub in &submodule_paths {
            let link = repo.join(sub).join(".git");
            std::fs::remove_file(&link).map_err(|source| GitError::Io {
                url: url.clone(),
                what: "removing",
                path: link.clone(),
                source,
            })?;
        }
        let dot_git = repo.join(".git");
        std::fs::remove_dir_all(&dot_git).map_err(|source| GitError::Io {
            url: url.clone(),
            what: "removing",
            path: dot_git,
            source,
        })?;
    }
    let root = if src.subdir.is_empty() {
        repo
    } else {
        // The repository is untrusted: its symlinks are followed inside the checkout only
        // (`link -> /` then `#main:link/etc` names the checkout's own `etc`). The checkout is
        // a temp dir of ours that nothing else changes, so the resolved directory's path
        // stays valid.
        let sub = executor::fsroot::Root::open(&repo)
            .and_then(|root| root.resolve(&src.subdir))
            .and_then(|r| {
                if r.is_dir()? {
                    std::fs::read_link(r.proc_path()).map(Some)
                } else {
                    Ok(None)
                }
            });
        match sub {
            Ok(Some(sub)) => sub,
            _ => {
                return Err(GitError::NoSubdir {
                    url: url.clone(),
                    subdir: src.subdir.clone(),
                    commit,
                });
            }
        }
    };
    Ok((root, time))
}

/// The checkouts of one file op. The temp dirs are removed when this is dropped.
#[derive(Debug, Default)]
pub struct Checkouts {
    /// [`checkout_key`] to the directory to copy.
    pub dirs: BTreeMap<String, PathBuf>,
    /// The newest commit time (seconds): the layer's mtime clamp, so checked-out files carry
    /// their commit's time rather than the wall clock.
    pub newest: Option<i64>,
    temps: Vec<cache::store::TempDir>,
}

/// The key of a checkout in [`Checkouts::dirs`].
pub fn checkout_key(g: &GitSource) -> String {
    format!(
        "{}\0{}\0{}\0{}\0{}",
        g.remote,
        g.commit.as_deref().unwrap_or(""),
        g.subdir,
        g.keep_git_dir,
        g.submodules
    )
}

/// Checks out every git source of `op`, each into its own temp dir of `store`.
///
/// Fails on the first source that cannot be checked out.
pub fn checkout_all(
    store: &cache::store::Store,
    op: &FileOp,
    ssh_auth_sock: Option<&Path>,
) -> Result<Checkouts, GitError> {
    let mut out = Checkouts::default();
    for a in &op.actions {
        let FileAction::Copy(c) = a else { continue };
        let CopySource::Git(g) = &c.from else {
            continue;
        };
        let key = checkout_key(g);
        if out.dirs.contains_key(&key) {
            continue;
        }
        let tmp = store.temp_dir("git-").map_err(|e| GitError::Io {
            url: g.url.clone(),
            what: "creating a temp dir in",
            path: store.dir(kroot::Dir::Tmp),
            source: std::io::Error::other(e.to_string()),
        })?;
        let (dir, time) = checkout(g, tmp.path(), ssh_auth_sock)?;
        out.newest = Some(out.newest.map_or(time, |n| n.max(time)));
        out.dirs.insert(key, dir);
        out.temps.push(tmp);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_remote_precedence_peels_tags_and_prefers_them_to_branches() {
        let out = "1111111111111111111111111111111111111111\tHEAD\n\
                   2222222222222222222222222222222222222222\trefs/heads/v1\n\
                   3333333333333333333333333333333333333333\trefs/tags/v1\n\
                   4444444444444444444444444444444444444444\trefs/tags/v1^{}\n\
                   5555555555555555555555555555555555555555\trefs/heads/main\n";
        assert_eq!(pick_ref(out, "v1").as_deref(), Some(&"4".repeat(40)[..]));
        assert_eq!(
            pick_ref(out, "refs/heads/v1").as_deref(),
            Some(&"2".repeat(40)[..])
        );
        assert_eq!(pick_ref(out, "main").as_deref(), Some(&"5".repeat(40)[..]));
        assert_eq!(pick_ref(out, "HEAD").as_deref(), Some(&"1".repeat(40)[..]));
        assert_eq!(pick_ref(out, "nope"), None);
    }

    #[test]
    fn short_commit_ids_get_a_hint() {
        let e = GitError::RefNotFound {
            url: "git://h/r.git".into(),
            reference: "abc1234".into(),
        };
        assert!(e.to_string().contains("40 hex digits"), "{e}");
    }
}

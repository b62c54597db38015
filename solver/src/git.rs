//! ADD of a git repository.
//!
//! - [`parse_url`]: BuildKit's URL forms (pure). A source is git when it is `git://...`,
//!   `ssh://...`, SCP-like `user@host:path`, or an http(s) URL whose path ends in `.git`
//!   (`gitutil.ParseGitRef`). The ref and subdirectory come from
//!   - the fragment `#ref:subdir` (`#:subdir` for the default branch),
//!   - the CSV fragment `##ref=R,subdir=D,commit=C`,
//!   - or the query `?ref=R&branch=B&tag=T&subdir=D&checksum=C` (alias `commit=`), Dockerfile
//!     1.18's structured form (`branch=B` means `refs/heads/B`, `tag=T` means `refs/tags/T`).
//! - [`resolve`]: `git ls-remote` turns the ref into a commit before cache keys are computed, so
//!   a cached step is reused only while the branch still points where it did.
//! - [`checkout`]: fetches that commit (shallow when the server allows it) into a temp dir of
//!   the store, checks it out and drops `.git` unless `--keep-git-dir`.
//!
//! Everything runs the `git` binary with prompts disabled: a remote that needs credentials
//! fails instead of waiting on a terminal.

use crate::graph::{BuildGraph, CopySource, FileAction, FileOp, GitSource, NodeId, Op};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a git source failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The URL's fragment or query is malformed.
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

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `s` names a git repository rather than a file or an http(s) download.
pub fn is_git_url(s: &str) -> bool {
    // Never something git could read as an option.
    if s.starts_with('-') {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("git://") || lower.starts_with("ssh://") {
        return true;
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let path = s.split(['?', '#']).next().unwrap_or(s);
        return path.ends_with(".git");
    }
    scp_like(s)
}

/// `user@host:path` with no scheme (git's SCP-like syntax; BuildKit requires the user part).
fn scp_like(s: &str) -> bool {
    let Some((user, rest)) = s.split_once('@') else {
        return false;
    };
    let Some((host, path)) = rest.split_once(':') else {
        return false;
    };
    !user.is_empty()
        && !user.contains(['/', ':'])
        && !host.is_empty()
        && !host.contains('/')
        && !path.is_empty()
}

/// Parses an ADD git source into a [`GitSource`] (without a resolved commit).
///
/// Fails on a malformed fragment or query: an unknown key, both a fragment and a query, or
/// conflicting `ref`/`branch`/`tag`.
pub fn parse_url(url: &str, mut keep_git_dir: bool) -> Result<GitSource, GitError> {
    let bad = |reason: String| GitError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let (before_fragment, fragment) = match url.split_once('#') {
        Some((a, f)) => (a, Some(f)),
        None => (url, None),
    };
    let mut reference: Option<String> = None;
    let mut subdir = String::new();
    let mut checksum: Option<String> = None;
    let mut submodules = true;
    let mut remote = before_fragment.to_owned();
    if let Some((base, query)) = before_fragment.split_once('?') {
        let mut recognised = false;
        let mut refs: Vec<String> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            recognised = true;
            match k {
                "ref" => refs.push(v.to_owned()),
                "branch" => refs.push(format!("refs/heads/{v}")),
                "tag" => refs.push(format!("refs/tags/{v}")),
                "subdir" => subdir = v.to_owned(),
                "checksum" | "commit" => checksum = Some(v.to_owned()),
                // Go's strconv.ParseBool; a bare key means true.
                "keep-git-dir" | "submodules" => {
                    let on = match v {
                        "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
                        "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
                        _ => return Err(bad(format!("invalid {k} value {v:?}"))),
                    };
                    if k == "keep-git-dir" {
                        keep_git_dir = on;
                    } else {
                        submodules = on;
                    }
                }
                other => {
                    return Err(bad(format!(
                        "unknown query key {other:?} (ref, branch, tag, subdir, checksum, \
                         commit, keep-git-dir, submodules)"
                    )));
                }
            }
        }
        if refs.len() > 1 {
            return Err(bad("give only one of ref=, branch= and tag=".into()));
        }
        reference = refs.pop();
        if recognised {
            remote = base.to_owned();
        }
    }
    if let Some(f) = fragment {
        if let Some(csv) = f.strip_prefix('#') {
            for field in csv.split(',').filter(|p| !p.is_empty()) {
                let Some((k, v)) = field.split_once('=') else {
                    return Err(bad(format!("fragment field {field:?} is not key=value")));
                };
                match k.to_ascii_lowercase().as_str() {
                    "ref" => reference = Some(v.to_owned()),
                    "subdir" => subdir = v.to_owned(),
                    "commit" => checksum = Some(v.to_owned()),
                    other => {
                        return Err(bad(format!(
                            "unknown fragment key {other:?} (ref, subdir, commit)"
                        )));
                    }
                }
            }
            // BuildKit: `commit=` alone is also the ref to fetch.
            if reference.is_none() {
                reference = checksum.clone();
            }
        } else {
            let (r, d) = f.split_once(':').unwrap_or((f, ""));
            if !r.is_empty() {
                if reference.as_deref().is_some_and(|q| q != r) {
                    return Err(bad(
                        "the #fragment and the ?query name different refs".into()
                    ));
                }
                reference = Some(r.to_owned());
            }
            if !d.is_empty() {
                subdir = d.to_owned();
            }
        }
    }
    if let Some(c) = &checksum
        && (!is_hex(c) || c.len() > 40)
    {
        return Err(bad(format!("checksum {c:?} is not a commit id (hex)")));
    }
    Ok(GitSource {
        url: url.to_owned(),
        remote,
        reference: reference.filter(|r| !r.is_empty()),
        subdir: executor::context::clean(&subdir),
        keep_git_dir,
        submodules,
        checksum,
        commit: None,
    })
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

    fn p(url: &str) -> GitSource {
        parse_url(url, false).expect(url)
    }

    #[test]
    fn git_urls_are_told_from_files_and_downloads() {
        for yes in [
            "https://github.com/moby/buildkit.git",
            "https://h/r.git#v1:dir",
            "http://h/r.git?branch=main",
            "git://127.0.0.1:9418/r.git",
            "ssh://git@h/r.git",
            "git@github.com:moby/buildkit.git",
            "git@github.com:moby/buildkit.git#main",
        ] {
            assert!(is_git_url(yes), "{yes}");
        }
        for no in [
            "https://h/file.tar.gz",
            "https://h/r.git/file",
            "src/",
            "a:b",
            "dir/x@y:z",
            "-u@h:r.git",
        ] {
            assert!(!is_git_url(no), "{no}");
        }
    }

    #[test]
    fn fragment_gives_ref_and_subdir() {
        let g = p("https://h/r.git#v1.2:docs/api/");
        assert_eq!(g.remote, "https://h/r.git");
        assert_eq!(g.reference.as_deref(), Some("v1.2"));
        assert_eq!(g.subdir, "docs/api");
        let g = p("https://h/r.git#:sub");
        assert_eq!((g.reference, g.subdir.as_str()), (None, "sub"));
        let g = p("git@github.com:moby/buildkit.git#pull/42/head");
        assert_eq!(g.remote, "git@github.com:moby/buildkit.git");
        assert_eq!(g.reference.as_deref(), Some("pull/42/head"));
    }

    #[test]
    fn csv_fragment_and_query_forms() {
        let g = p("https://h/r.git##ref=main,subdir=x,commit=abc123");
        assert_eq!(g.reference.as_deref(), Some("main"));
        assert_eq!(g.subdir, "x");
        assert_eq!(g.checksum.as_deref(), Some("abc123"));
        let g = p("https://h/r.git?branch=dev&subdir=a/b&checksum=66735c67");
        assert_eq!(g.remote, "https://h/r.git");
        assert_eq!(g.reference.as_deref(), Some("refs/heads/dev"));
        assert_eq!(g.subdir, "a/b");
        assert_eq!(g.checksum.as_deref(), Some("66735c67"));
        assert_eq!(
            p("https://h/r.git?tag=v1").reference.as_deref(),
            Some("refs/tags/v1")
        );
        assert!(parse_url("https://h/r.git?tag=v1&branch=x", false).is_err());
        assert!(parse_url("https://h/r.git?bogus=1", false).is_err());
        assert!(parse_url("https://h/r.git?ref=a#b", false).is_err());
        // moby/moby's Dockerfile: keep-git-dir in the query.
        let g = p("https://github.com/krallin/tini.git?ref=v0.19.0&keep-git-dir=1");
        assert_eq!(g.remote, "https://github.com/krallin/tini.git");
        assert!(g.keep_git_dir);
        assert!(p("https://h/r.git?keep-git-dir").keep_git_dir);
        assert!(p("https://h/r.git").submodules);
        assert!(!p("https://h/r.git?submodules=false").submodules);
        assert!(parse_url("https://h/r.git?keep-git-dir=maybe", false).is_err());
        assert!(parse_url("https://h/r.git##ref=a,odd=1", false).is_err());
        assert!(parse_url("https://h/r.git?checksum=xyz", false).is_err());
    }

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

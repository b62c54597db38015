//! Git URLs as BuildKit reads them (pure: nothing here runs git; the solver's `git` module
//! resolves and checks out what [`parse_url`] describes).
//!
//! A source is git when it is `git://...`, `ssh://...`, SCP-like `user@host:path`, or an
//! http(s) URL whose path ends in `.git` (`gitutil.ParseGitRef`). The ref and subdirectory
//! come from
//! - the fragment `#ref:subdir` (`#:subdir` for the default branch),
//! - the CSV fragment `##ref=R,subdir=D,commit=C`,
//! - or the query `?ref=R&branch=B&tag=T&subdir=D&checksum=C` (alias `commit=`), Dockerfile
//!   1.18's structured form (`branch=B` means `refs/heads/B`, `tag=T` means `refs/tags/T`).

use crate::GitSource;

/// A git URL whose fragment or query is malformed.
#[derive(Debug, thiserror::Error)]
#[error("ADD {url}: {reason}")]
pub struct GitUrlError {
    /// The URL.
    pub url: String,
    /// What is wrong.
    pub reason: String,
}

/// Whether `s` is a non-empty run of hex digits (a commit id or a prefix of one).
pub fn is_hex(s: &str) -> bool {
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
pub fn parse_url(url: &str, mut keep_git_dir: bool) -> Result<GitSource, GitUrlError> {
    let bad = |reason: String| GitUrlError {
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
        subdir: clean(&subdir),
        keep_git_dir,
        submodules,
        checksum,
        commit: None,
    })
}

/// Cleans a subdirectory lexically and makes it relative (`/a/./b/../c/` gives `a/c`). The
/// same rule as the context crate's `clean` for COPY sources; repeated here so that the graph
/// stays a leaf that the frontend can use without the context walker.
fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    out.join("/")
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
    fn subdir_is_cleaned_and_relative() {
        assert_eq!(p("https://h/r.git#main:/a/./b/../c/").subdir, "a/c");
        assert_eq!(p("https://h/r.git#main:../x").subdir, "x");
    }
}

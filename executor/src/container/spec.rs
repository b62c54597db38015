//! The sandbox spec of a `kiln run` container: an image's defaults plus command-line
//! overrides.
//!
//! A container's writable layer lives under `KILN_ROOT/containers/<id>/` (`upper/`, `work/`);
//! its lower dirs are the image's snapshots, newest first, which the caller (it knows the
//! store) passes in as paths. Pure apart from creating that directory.

use crate::spec::{Network, Rootfs, RunSpec};
use std::path::{Path, PathBuf};

/// What a container takes from its image: the config's defaults and the layer snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `Env`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User`.
    pub user: String,
    /// The layers' snapshot directories, newest first (overlay lower dirs).
    pub lowers: Vec<PathBuf>,
}

/// What `kiln run` flags override.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `-e K=V` (or `-e K`, taken from the caller's environment by the cli).
    pub env: Vec<String>,
    /// `-w DIR`.
    pub workdir: Option<String>,
    /// `-u USER`.
    pub user: Option<String>,
    /// `--entrypoint X` (an empty string clears the image's entrypoint).
    pub entrypoint: Option<String>,
    /// Arguments after the image name; replace the image's CMD when non-empty.
    pub cmd: Vec<String>,
    /// `-t`: stdin is a terminal.
    pub tty: bool,
    /// `-v`, `--mount`, `--tmpfs`, in order (volumes already made by the caller).
    pub mounts: Vec<crate::spec::MountSpec>,
}

/// Why a container cannot be prepared.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Neither the image nor the command line gives a command.
    #[error("no command specified: the image has no ENTRYPOINT or CMD and none was given")]
    NoCommand,
    /// The container directory could not be created.
    #[error("creating container directory {}", .path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A container with this name exists.
    #[error("container {0:?} already exists")]
    Exists(String),
    /// A container name that cannot be a directory name (`../x`, `a/b`).
    #[error(transparent)]
    Name(#[from] crate::names::NameError),
}

/// A prepared container.
#[derive(Debug, Clone)]
pub struct Container {
    /// `KILN_ROOT/containers/<id>`.
    pub dir: PathBuf,
    /// What to run.
    pub spec: RunSpec,
}

/// The argv of a container: entrypoint then cmd, Docker's rules (`--entrypoint` resets CMD).
pub fn argv(c: &Image, o: &Overrides) -> Vec<String> {
    let (entry, cmd) = match &o.entrypoint {
        Some(e) if e.is_empty() => (vec![], o.cmd.clone()),
        Some(e) => (vec![e.clone()], o.cmd.clone()),
        None => {
            let cmd = if o.cmd.is_empty() {
                c.cmd.clone().unwrap_or_default()
            } else {
                o.cmd.clone()
            };
            (c.entrypoint.clone().unwrap_or_default(), cmd)
        }
    };
    entry.into_iter().chain(cmd).collect()
}

/// The image env with `overrides` replacing variables of the same name, in order.
pub fn env(image: &[String], overrides: &[String]) -> Vec<String> {
    let name = |kv: &str| kv.split('=').next().unwrap_or("").to_owned();
    let mut out: Vec<String> = image.to_vec();
    for kv in overrides {
        let k = name(kv);
        match out.iter_mut().find(|e| name(e) == k) {
            Some(e) => e.clone_from(kv),
            None => out.push(kv.clone()),
        }
    }
    out
}

/// `-e` values plus `TERM=xterm` when a tty is allocated and neither they nor `base` (the
/// image's or container's environment) set TERM, as docker does.
pub fn with_term(mut env: Vec<String>, base: &[String], tty: bool) -> Vec<String> {
    let has = |l: &[String]| l.iter().any(|e| e.split('=').next() == Some("TERM"));
    if tty && !has(&env) && !has(base) {
        env.insert(0, "TERM=xterm".to_owned());
    }
    env
}

/// Creates `containers/<id>` (`containers` is `KILN_ROOT/containers`) and the run spec of
/// `image` with `o` applied.
///
/// Fails when `id` is not a valid container name, there is no command, or the directory cannot
/// be created.
pub fn prepare(
    containers: &Path,
    image: &Image,
    id: &str,
    o: &Overrides,
) -> Result<Container, RunError> {
    // The id is a directory name under the store: check it before it becomes a path.
    crate::names::check_container(id)?;
    let args = argv(image, o);
    if args.is_empty() {
        return Err(RunError::NoCommand);
    }
    let dir = containers.join(id);
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|source| RunError::Dir {
            path: p.to_path_buf(),
            source,
        })
    };
    mkdir(containers)?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(RunError::Exists(id.to_owned()));
        }
        Err(source) => return Err(RunError::Dir { path: dir, source }),
    }
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    mkdir(&upper)?;
    mkdir(&work)?;
    let cwd = o
        .workdir
        .clone()
        .unwrap_or_else(|| image.working_dir.clone());
    Ok(Container {
        spec: RunSpec {
            rootfs: Rootfs {
                lowers: image.lowers.clone(),
                upper,
                work,
            },
            args,
            env: env(&image.env, &o.env),
            cwd: if cwd.is_empty() { "/".to_owned() } else { cwd },
            user: o.user.clone().unwrap_or_else(|| image.user.clone()),
            hostname: id.chars().take(12).collect(),
            network: Network::Loopback,
            mounts: o.mounts.clone(),
            tty: o.tty,
            security: Default::default(),
        },
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entry: Option<&[&str]>, cmd: Option<&[&str]>) -> Image {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Image {
            entrypoint: entry.map(own),
            cmd: cmd.map(own),
            ..Default::default()
        }
    }

    /// Issue 10: `kiln run --name ../../x` wrote the container's state outside KILN_ROOT.
    #[test]
    fn container_ids_that_are_paths_create_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let containers = dir.path().join("a/root/containers");
        let c = image(None, Some(&["sh"]));
        for id in ["../../x", "a/b", ".."] {
            let e = prepare(&containers, &c, id, &Overrides::default()).expect_err(id);
            assert!(matches!(e, RunError::Name(_)), "{id}: {e}");
        }
        assert!(!dir.path().join("x").exists());
        assert!(!containers.exists());
        prepare(&containers, &c, "ok-1", &Overrides::default()).expect("a valid name");
    }

    #[test]
    fn command_line_args_replace_cmd_but_keep_entrypoint() {
        let c = image(Some(&["/bin/tini", "--"]), Some(&["sh"]));
        let o = Overrides {
            cmd: vec!["echo".into(), "hi".into()],
            ..Default::default()
        };
        assert_eq!(argv(&c, &o), ["/bin/tini", "--", "echo", "hi"]);
        assert_eq!(argv(&c, &Overrides::default()), ["/bin/tini", "--", "sh"]);
    }

    #[test]
    fn entrypoint_override_resets_cmd() {
        let c = image(Some(&["/bin/tini"]), Some(&["sh"]));
        let o = Overrides {
            entrypoint: Some("/bin/echo".into()),
            ..Default::default()
        };
        assert_eq!(argv(&c, &o), ["/bin/echo"]);
    }

    #[test]
    fn env_overrides_replace_by_name_and_append_new() {
        let got = env(
            &["PATH=/bin".into(), "A=1".into()],
            &["A=2".into(), "B=3".into()],
        );
        assert_eq!(got, ["PATH=/bin", "A=2", "B=3"]);
    }
}

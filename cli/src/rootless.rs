//! Start-up of rootless kiln: when kiln is started by a user other than root, join (or
//! create) the user's session (`executor::rootless::session`) before anything else runs.
//! Afterwards kiln is root in the session's user namespace; [`active`] tells the few places
//! that differ (default store and runtime paths, device policy, cgroups, `-p`).

use anyhow::Context as _;
use executor::rootless::{net::Backend, session, subid};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The session this process joined, when rootless.
#[derive(Debug)]
pub struct Active {
    /// `$XDG_RUNTIME_DIR/kiln`.
    pub runtime_dir: PathBuf,
    /// `$XDG_DATA_HOME/kiln` (or `~/.local/share/kiln`), unless KILN_ROOT says otherwise.
    pub data_dir: PathBuf,
}

static ACTIVE: OnceLock<Active> = OnceLock::new();

/// The rootless session of this process, if any.
pub fn active() -> Option<&'static Active> {
    ACTIVE.get()
}

/// Where runtime state goes (netns pins, leases, the RUN pool): /run/kiln as root,
/// `$XDG_RUNTIME_DIR/kiln/run` rootless.
pub fn run_dir() -> PathBuf {
    match active() {
        Some(a) => session::state_dir(&a.runtime_dir),
        None => PathBuf::from("/run/kiln"),
    }
}

/// Records the session and tells the container runtime where its state and port forwarder
/// are (`executor::container::runtime`).
fn activate(a: Active) {
    let rootless = Some(a.runtime_dir.clone());
    if ACTIVE.set(a).is_ok() {
        executor::container::runtime::configure(executor::container::runtime::Runtime {
            run_dir: run_dir(),
            rootless,
        });
    }
}

/// Joins the session when the effective uid is not 0 (must run while single-threaded).
/// `warn` says whether to print the single-id warning (commands that build or run).
pub fn enter_if_unprivileged(warn: bool) -> anyhow::Result<()> {
    let uid = rustix::process::geteuid().as_raw();
    let dirs = |uid: u32| -> anyhow::Result<(PathBuf, PathBuf)> {
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty());
        let runtime_dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|r| !r.is_empty()) {
            Some(r) => PathBuf::from(r).join("kiln"),
            None => std::env::temp_dir().join(format!("kiln-run-{uid}")),
        };
        let data_dir = match std::env::var_os("XDG_DATA_HOME").filter(|r| !r.is_empty()) {
            Some(x) => PathBuf::from(x).join("kiln"),
            None => {
                PathBuf::from(home.context("neither KILN_ROOT, XDG_DATA_HOME nor HOME is set")?)
                    .join(".local/share/kiln")
            }
        };
        Ok((runtime_dir, data_dir))
    };
    if uid == 0 {
        // A kiln started by kiln inside the session (the `run -d` supervisor) is root there
        // and inherits the environment that locates the session.
        if executor::rootless::in_user_namespace()
            && let Ok((runtime_dir, data_dir)) = dirs(0)
            && session::is_current(&runtime_dir)
        {
            activate(Active {
                runtime_dir,
                data_dir,
            });
        }
        return Ok(());
    }
    let gid = rustix::process::getegid().as_raw();
    let (runtime_dir, data_dir) = dirs(uid)?;
    let name = user_name(uid).unwrap_or_default();
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let subuids = subid::ranges(&read("/etc/subuid"), &name, uid);
    let subgids = subid::ranges(&read("/etc/subgid"), &name, gid);
    let single_id = subuids.is_empty() || subgids.is_empty();
    let (uid_map, gid_map) = if single_id {
        (subid::id_map(uid, &[]), subid::id_map(gid, &[]))
    } else {
        (subid::id_map(uid, &subuids), subid::id_map(gid, &subgids))
    };
    if single_id && warn {
        eprintln!(
            "warning: rootless: no subordinate ids for user {name} (uid {uid}) in /etc/subuid and \
             /etc/subgid: running with the single id 0 (= you); files owned by any other id cannot \
             be created (chown, USER other than root, images with other owners fail)\n\
             hint: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {name}"
        );
    }
    let mut tun_error = None;
    let net = match std::env::var("KILN_ROOTLESS_NET") {
        Ok(s) => Backend::parse(&s).with_context(|| {
            format!("KILN_ROOTLESS_NET={s}: expected slirp4netns, pasta, none or host")
        })?,
        // Without /dev/net/tun (an unprivileged container) no user-mode stack can run: keep
        // the caller's network, as rootless BuildKit does inside containers.
        Err(_) => match executor::rootless::net::tun_usable() {
            Ok(()) => Backend::Slirp4netns,
            Err(e) => {
                tun_error = Some(e);
                Backend::Host
            }
        },
    };
    let exe = std::fs::read_link("/proc/self/exe").context("finding the kiln binary")?;
    let cfg = session::Config {
        runtime_dir: runtime_dir.clone(),
        exe,
        uid,
        gid,
        uid_map,
        gid_map,
        net,
    };
    let entered = session::enter(&cfg).context("entering the rootless session")?;
    if entered.created
        && let Some(e) = tun_error
    {
        eprintln!(
            "notice: rootless: /dev/net/tun cannot be opened ({e}): the session uses the host's \
             network (KILN_ROOTLESS_NET=host)"
        );
    }
    activate(Active {
        runtime_dir,
        data_dir,
    });
    Ok(())
}

/// The name of `uid` in /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

/// Whether `--memory`/`--cpus`/`--pids-limit` (`limits`) can be applied: always as root;
/// rootless when this process's cgroup v2 subtree is delegated to the user (systemd's
/// `Delegate=yes`) and offers every controller they need
/// (`executor::cgroup::delegate`). Otherwise says so on stderr and returns false: the
/// container runs without limits.
pub fn limits_possible(limits: &executor::cgroup::Limits) -> bool {
    use executor::cgroup::delegate;
    if active().is_none() {
        return true;
    }
    let found = delegate::find();
    let why = match &found {
        Some(d) => {
            let missing = delegate::missing_controllers(d, limits);
            if missing.is_empty() {
                return true;
            }
            format!(
                "the delegated cgroup {} does not offer the {} controller{}",
                d.display(),
                missing.join(", "),
                if missing.len() > 1 { "s" } else { "" }
            )
        }
        None => "no delegated cgroup v2 subtree is writable".to_owned(),
    };
    eprintln!("warning: rootless: {why}: running without --memory/--cpus/--pids-limit limits");
    if found.is_none()
        && matches!(
            executor::cgroup::Hierarchy::host(),
            Some(executor::cgroup::Hierarchy::V2(_))
        )
    {
        eprintln!(
            "hint: systemd delegates one to a scope: systemd-run --user --scope -p Delegate=yes kiln ..."
        );
    }
    false
}

//! `kiln run`'s container, made in one call: [`create`] takes a [`Request`] (the image's
//! defaults and snapshots, the flags) and performs the whole sequence (a new id, the
//! container's directory and `spec.json`, its name reserved, its network, its cgroup, its
//! [`State`]); a step that fails undoes the ones before it, so a failed `kiln run` leaves no
//! directory, name, lease, namespace or cgroup behind. The [`Created`] container then runs in
//! the foreground ([`Created::run_attached`]: kiln waits, relaying SIGINT/SIGTERM/SIGHUP as a
//! kill, and undoes the network and cgroup itself) or under its supervisor
//! ([`Created::start_detached`]).

use super::network::{self, Joined, Mode, Record};
use super::spec::{Image, Overrides, RunError};
use super::state::{State, StateError, Status};
use super::supervisor::SuperviseError;
use super::time::now_rfc3339;
use super::{SandboxCgroups, name};
use crate::cgroup::{Cgroup, CgroupError, Limits};
use crate::net::PortMapping;
use crate::spec::{InitSpec, RunSpec, Security};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

/// Errors of creating and running a container.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Its directory or run spec could not be made.
    #[error("preparing container {}", short(.id))]
    Prepare {
        /// The container id.
        id: String,
        /// The cause.
        #[source]
        source: RunError,
    },
    /// Its spec could not be written, or its supervisor not started.
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
    /// The name is taken or cannot be reserved.
    #[error(transparent)]
    Name(#[from] name::NameError),
    /// Its network could not be set up.
    #[error(transparent)]
    Net(#[from] network::NetError),
    /// Its cgroup could not be created.
    #[error("creating the cgroup of container {id}")]
    Cgroup {
        /// The container id.
        id: String,
        /// The cause.
        #[source]
        source: CgroupError,
    },
    /// Its state could not be written.
    #[error(transparent)]
    State(#[from] StateError),
    /// Its sandbox could not be started or waited for.
    #[error("{what}")]
    Sandbox {
        /// What failed (`starting /usr/bin/kiln`, `waiting for the sandbox`).
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, CreateError>;

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// What `kiln run` asks for.
#[derive(Debug, Clone)]
pub struct Request {
    /// `KILN_ROOT/containers`.
    pub containers: PathBuf,
    /// `--name`; None for a made-up one.
    pub name: Option<String>,
    /// The image as given on the command line (what `ps` and `inspect` show).
    pub image_ref: String,
    /// The image's defaults and layer snapshots. The caller holds the store's shared lock
    /// across [`create`], which writes `spec.json` (naming the snapshots, so `kiln prune`
    /// keeps them) before anything else can fail.
    pub image: Image,
    /// The image's STOPSIGNAL, if it has one.
    pub stop_signal: Option<String>,
    /// `-e`, `-w`, `-u`, `--entrypoint`, the command, `-t`.
    pub overrides: Overrides,
    /// `--security-opt`; and `--cap-add`, `--privileged`, `--ulimit`... as the sandbox
    /// applies them (set by the caller from [`Request::options`]).
    pub security: Security,
    /// `-h`, `-l`, `--dns`, `--add-host`, `--cap-add`... as given, kept for `inspect`; `-h`,
    /// the DNS flags and `--add-host NAME:host-gateway` are applied here.
    pub options: super::options::RunOptions,
    /// `--network`.
    pub network: Mode,
    /// `-p`, `-P` (see [`network::ports`]).
    pub ports: Vec<PortMapping>,
    /// `--memory`, `--cpus`, `--pids-limit`.
    pub limits: Limits,
    /// Whether the limits are applied: false in a rootless session that cannot create
    /// cgroups (they are then recorded, not applied).
    pub apply_limits: bool,
    /// `--rm`.
    pub auto_remove: bool,
    /// `-d`.
    pub detach: bool,
}

/// A created container, its process not started yet. Dropping it without running it leaves
/// the container as created (its directory, name, network and cgroup stay).
#[allow(missing_debug_implementations)]
pub struct Created {
    containers: PathBuf,
    dir: PathBuf,
    spec: RunSpec,
    state: State,
    joined: Option<Joined>,
    cgroup: Option<Cgroup>,
    rec: Record,
}

/// Undoes what a failed [`create`] made so far, in reverse order.
struct Undo<'a> {
    containers: &'a Path,
    id: &'a str,
    dir: Option<&'a Path>,
    name: Option<String>,
    network: bool,
    joined: Option<Joined>,
}

impl Undo<'_> {
    fn run(self) {
        if let Some(j) = self.joined {
            let _ = j.teardown();
        }
        if self.network {
            network::release(self.containers, self.id, None, &[], false);
        }
        if let Some(d) = self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
        if let Some(n) = &self.name {
            name::release(self.containers, n, self.id);
        }
    }
}

/// Creates the container `req` describes (see the module's documentation). Fails, leaving
/// nothing behind, when there is no command, the name is taken, the network cannot be set
/// up (a taken port, an unknown network) or the cgroup cannot be created.
pub fn create(req: Request) -> Result<Created> {
    let id = super::state::new_id();
    let containers = req.containers.as_path();
    let mut c =
        super::spec::prepare(containers, &req.image, &id, &req.overrides).map_err(|source| {
            CreateError::Prepare {
                id: id.clone(),
                source,
            }
        })?;
    c.spec.security = req.security.clone();
    if let Some(h) = &req.options.hostname {
        c.spec.hostname.clone_from(h);
    }
    // `--device`: the host's node bound in (the device cgroup allows it, see `crate::init`).
    for d in &req.security.devices {
        c.spec.mounts.push(crate::spec::MountSpec {
            target: d.target.clone(),
            kind: crate::spec::MountKind::Bind {
                source: d.source.clone(),
            },
            readonly: false,
        });
    }
    let mut undo = Undo {
        containers,
        id: &id,
        dir: Some(&c.dir),
        name: None,
        network: false,
        joined: None,
    };
    // `kiln prune` keeps the snapshots a container's spec.json names: written first, while
    // the caller holds the store's lock.
    if let Err(e) = super::supervisor::write_spec(&c.dir, &c.spec) {
        undo.run();
        return Err(e.into());
    }
    // docker's: a 64-hex id, and a name apart from it (`--name`, else a made-up one), held
    // once the container's directory exists (see `super::name`).
    let reserved = match &req.name {
        Some(n) => name::reserve(containers, n, &id).map(|()| n.clone()),
        None => name::reserve_generated(containers, &id),
    };
    let cname = match reserved {
        Ok(n) => n,
        Err(e) => {
            undo.run();
            return Err(e.into());
        }
    };
    undo.name = Some(cname.clone());
    undo.network = true;
    let mut rec = Record::new(&id, &c.dir);
    let setup = network::setup(
        containers,
        &req.network,
        &id,
        &cname,
        &c.spec.hostname,
        &req.ports,
        &c.dir,
        req.detach,
        &mut rec,
    );
    let (net, joined) = match setup {
        Ok(n) => n,
        Err(e) => {
            undo.run();
            return Err(e.into());
        }
    };
    if req.network == Mode::Host && req.options.hostname.is_none() {
        // The host's network, the host's name (as docker's --network host).
        c.spec.hostname = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
    }
    // docker's daemon environment: PATH (its default when the image has none) and HOSTNAME
    // first, then the image's and the flags' variables (replacing those by name).
    let base = [
        format!("PATH={}", crate::init::DEFAULT_PATH),
        format!("HOSTNAME={}", c.spec.hostname),
    ];
    c.spec.env = super::spec::env(&base, &c.spec.env);
    if joined.is_some() {
        c.spec.mounts.push(network::hosts_mount(&c.dir));
    }
    c.spec.network = net;
    if let Err(e) = apply_etc_options(&mut c.spec, &req.options, joined.as_ref(), &c.dir) {
        undo.joined = joined;
        undo.run();
        return Err(e);
    }
    // Unlimited, as root, the container still gets a cgroup of its own ([`super::create_cgroup`]).
    let cgroup = if !req.apply_limits {
        Ok(None)
    } else {
        super::create_cgroup(&id, &req.limits)
    };
    let cgroup = match cgroup {
        Ok(cg) => cg,
        Err(source) => {
            undo.joined = joined;
            undo.run();
            return Err(CreateError::Cgroup { id, source });
        }
    };
    let cgroups = cgroup
        .as_ref()
        .map(|c| c.dirs().to_vec())
        .unwrap_or_default();
    if !cgroups.is_empty() {
        rec.owner.cgroups = cgroups.clone();
        rec.save_if_possible();
    }
    let state = State {
        id: id.clone(),
        name: cname,
        image: req.image_ref,
        command: c.spec.args.clone(),
        status: Status::Created,
        pid: None,
        exit_code: None,
        network: None,
        ip: None,
        gateway: None,
        ports: Vec::new(),
        auto_remove: req.auto_remove,
        stop_signal: req.stop_signal.filter(|x| !x.is_empty()),
        created: Some(now_rfc3339()),
        started_at: None,
        finished_at: None,
        cgroups,
        limits: req.limits,
        network_mode: Some(req.network.to_string()),
        options: req.options,
    };
    Ok(Created {
        containers: req.containers,
        dir: c.dir,
        spec: c.spec,
        state,
        joined,
        cgroup,
        rec,
    })
}

impl Created {
    /// The container id (64 hex digits).
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// The container's state (created).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The sandbox spec it will run.
    pub fn spec(&self) -> &RunSpec {
        &self.spec
    }

    /// Starts it under `exe __supervise ID` (`exe` is the kiln binary) and waits until it runs
    /// (see [`super::supervisor::launch`]); its network is the supervisor's from then on.
    /// Returns its id. Fails when the supervisor cannot be started or never reports it
    /// running.
    pub fn start_detached(self, exe: &Path) -> Result<String> {
        let Created {
            dir,
            spec,
            mut state,
            joined,
            ..
        } = self;
        if let Some(att) = joined.as_ref().map(|j| j.attachment.clone()) {
            state.network = Some(att.network);
            state.ip = Some(att.ip);
            state.gateway = Some(att.gateway);
            state.ports = att.ports;
        }
        let id = state.id.clone();
        super::supervisor::launch(exe, &dir, &spec, state, joined)?;
        Ok(id)
    }

    /// Runs it in the foreground with the caller's stdio (stdin only with `stdin`), through
    /// `exe __init` (`exe` is the kiln binary), and waits for it: listed by `kiln ps` while it
    /// runs and, without `--rm`, kept as an exited container (as docker's). Its network and
    /// cgroup are undone here, also when kiln gets SIGINT, SIGTERM or SIGHUP meanwhile (the
    /// container is killed then). Returns the exit status of its sandbox. Fails when the
    /// sandbox cannot be started or waited for (the container is then recorded as exited with
    /// 125), or the network cannot be undone.
    pub fn run_attached(self, exe: &Path, stdin: bool) -> Result<ExitStatus> {
        let Created {
            containers,
            dir,
            spec,
            mut state,
            joined,
            cgroup,
            mut rec,
        } = self;
        // Its network is its own to tear down, so the state names none.
        state.transition(Status::Running)?;
        state.started_at = state.created.clone();
        let cgroups = SandboxCgroups(state.cgroups.clone());
        let status = spawn_and_wait(exe, &spec, stdin, joined.is_some(), &cgroups, |pid| {
            state.pid = i32::try_from(pid).ok();
            if let Some(p) = state.pid {
                rec.owner.set_sandbox(p);
                rec.save_if_possible();
            }
            super::state::write(&dir, &state).map_err(CreateError::from)
        });
        let torn = joined.map(Joined::teardown);
        // Its record (and a shared lease nobody else claims) goes with it.
        network::release(&containers, &state.id, None, &[], false);
        if let Some(c) = &cgroup {
            let _ = c.remove();
        }
        if state.auto_remove {
            crate::volume::remove_anonymous(&spec.mounts);
            let _ = std::fs::remove_dir_all(&dir);
            name::release(&containers, state.name(), &state.id);
        } else {
            state.transition(Status::Exited)?;
            state.exit_code = Some(status.as_ref().map_or(125, super::process::exit_code));
            state.finished_at = Some(now_rfc3339());
            let written = super::state::write(&dir, &state);
            if status.is_ok() {
                written?;
            }
        }
        let status = status?;
        if let Some(t) = torn {
            t?;
        }
        Ok(status)
    }
}

/// `--add-host NAME:host-gateway` left unresolved by the caller made the bridge's gateway, the `--add-host` lines
/// written into the bridge's hosts file (`dir/hosts`) where docker puts them, and the
/// resolv.conf of `--dns`, `--dns-search`, `--dns-option` (see [`super::options`]).
fn apply_etc_options(
    spec: &mut RunSpec,
    o: &super::options::RunOptions,
    joined: Option<&Joined>,
    dir: &Path,
) -> Result<()> {
    // The caller gives host-gateway as an address; left as the word, it is this bridge's.
    let gateway = joined.map(|j| j.attachment.gateway.to_string());
    for (_, ip) in &mut spec.security.extra_hosts {
        if ip == super::options::HOST_GATEWAY {
            *ip = gateway.clone().unwrap_or_else(|| "127.0.0.1".to_owned());
        }
    }
    if let Some(j) = joined
        && !spec.security.extra_hosts.is_empty()
    {
        let path = dir.join("hosts");
        let write_err = |source| {
            CreateError::Net(network::NetError::Write {
                path: path.clone(),
                source,
            })
        };
        let hosts = std::fs::read_to_string(&path).map_err(write_err)?;
        let hosts =
            super::options::with_extra_hosts(&hosts, j.attachment.ip, &spec.security.extra_hosts);
        kroot::write_atomic(&path, hosts.as_bytes()).map_err(write_err)?;
    }
    let base = match &spec.network {
        crate::spec::Network::Join { resolv_conf, .. } => resolv_conf.clone(),
        _ => crate::net::files::resolv_conf(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        ),
    };
    spec.security.resolv_conf =
        super::options::resolv_conf(&base, &o.dns, &o.dns_search, &o.dns_options);
    Ok(())
}

/// Runs the sandbox of `spec` and waits for it; `started` gets its pid first (its failure
/// kills the sandbox). With `forward_signals`, SIGINT, SIGTERM and SIGHUP to kiln kill the
/// sandbox (see [`super::relay`]) so the caller still gets to clean up the network.
fn spawn_and_wait(
    exe: &Path,
    spec: &RunSpec,
    stdin: bool,
    forward_signals: bool,
    cgroups: &SandboxCgroups,
    started: impl FnOnce(u32) -> Result<()>,
) -> Result<ExitStatus> {
    let sandbox = |what: String| move |source| CreateError::Sandbox { what, source };
    let mut cmd = crate::sandbox::command(exe, &InitSpec::Run(spec.clone()))
        .map_err(sandbox("building the sandbox command".to_owned()))?;
    cgroups
        .pass_to(&mut cmd)
        .map_err(sandbox("passing the cgroups to the sandbox".to_owned()))?;
    if !stdin {
        cmd.stdin(Stdio::null());
    }
    let mut child = cmd
        .spawn()
        .map_err(sandbox(format!("starting {}", exe.display())))?;
    if let Err(e) = started(child.id()) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let waited = if forward_signals {
        super::relay::wait_killing_on_signal(&mut child)
    } else {
        child.wait()
    };
    waited.map_err(sandbox("waiting for the sandbox".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(containers: &Path, name: Option<&str>, network: Mode) -> Request {
        super::super::runtime::private_run_dir();
        Request {
            containers: containers.to_path_buf(),
            name: name.map(str::to_owned),
            image_ref: "busybox".to_owned(),
            image: Image {
                cmd: Some(vec!["sh".to_owned()]),
                ..Default::default()
            },
            stop_signal: None,
            overrides: Overrides::default(),
            security: Security::default(),
            options: Default::default(),
            network,
            ports: Vec::new(),
            limits: Limits::default(),
            apply_limits: true,
            auto_remove: false,
            detach: false,
        }
    }

    /// What a failed create may leave: nothing in `containers` or in `names/`.
    fn entries(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for d in ["containers", "names"] {
            if let Ok(rd) = std::fs::read_dir(root.join(d)) {
                out.extend(
                    rd.flatten()
                        .map(|e| format!("{d}/{}", e.file_name().to_string_lossy()))
                        .filter(|n| n != "names/.lock"),
                );
            }
        }
        out
    }

    #[test]
    fn a_taken_name_fails_the_create_and_removes_its_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let containers = root.path().join("containers");
        let holder = super::super::state::new_id();
        std::fs::create_dir_all(containers.join(&holder)).expect("mkdir");
        name::reserve(&containers, "web", &holder).expect("reserve");
        let e = create(request(&containers, Some("web"), Mode::None))
            .err()
            .expect("a conflict");
        assert!(
            matches!(&e, CreateError::Name(name::NameError::Conflict { holder: h, .. }) if *h == holder),
            "{e}"
        );
        assert_eq!(
            entries(root.path()),
            [format!("containers/{holder}"), "names/web".to_owned()]
        );
    }

    /// A later step failing (`--network container:X` of a container that does not exist)
    /// gives back the name reserved before it and removes the directory.
    #[test]
    fn a_failed_network_setup_releases_the_reserved_name() {
        let root = tempfile::tempdir().expect("tempdir");
        let containers = root.path().join("containers");
        let e = create(request(
            &containers,
            Some("web"),
            Mode::Container("nosuch".to_owned()),
        ))
        .err()
        .expect("no such container");
        assert!(
            matches!(
                &e,
                CreateError::Net(network::NetError::Container(StateError::NotFound(n))) if n == "nosuch"
            ),
            "{e}"
        );
        assert_eq!(entries(root.path()), Vec::<String>::new());
        // The name is free again.
        let ok = create(request(&containers, Some("web"), Mode::None)).expect("created");
        assert_eq!(ok.state().name(), "web");
        assert_eq!(ok.state().status, Status::Created);
        assert!(containers.join(ok.id()).join("spec.json").is_file());
    }

    #[test]
    fn a_command_less_image_creates_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        let containers = root.path().join("containers");
        let mut req = request(&containers, None, Mode::None);
        req.image.cmd = None;
        let e = create(req).err().expect("no command");
        assert!(
            matches!(
                &e,
                CreateError::Prepare {
                    source: RunError::NoCommand,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(entries(root.path()), Vec::<String>::new());
    }
}

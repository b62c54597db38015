//! `kiln run`'s docker flags beyond the basics (`--env-file`, `-h`, `--add-host`, `--dns*`,
//! `--cap-*`, `--group-add`, `--ulimit`, `--shm-size`, `-l`/`--label-file`, `--restart`), each
//! run on the same busybox image by kiln and by docker 20.10 (dockerd, the reference) and
//! compared on what a container sees: /proc/self/status, /etc files, `id`, `ulimit`,
//! /dev/shm, `inspect`, `ps --filter`, and the exit codes and messages of bad values. The
//! process flags (`--init`, `--stop-*`, `--device`, `--privileged`, exec's) are
//! `run_process_docker.rs`, with [`Both`] from here.

use crate::cli_docker::docker_ready;
use crate::harness::{TestDir, busybox_dir, busybox_tar, text};
use crate::network::Reaper;
use anyhow::{Context as _, ensure};
use std::process::Output;

/// docker 20.10's own client (Debian's docker.io, the reference): a newer client elsewhere
/// on PATH words some messages differently.
pub(crate) const DOCKER: &str = "/usr/bin/docker";

pub(crate) fn docker(args: &[&str]) -> Output {
    std::process::Command::new(DOCKER)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("docker runs")
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The same busybox image in kiln (`busybox`) and in docker (`image`), removed from docker
/// with every container named in `containers` on drop.
pub(crate) struct Both {
    pub(crate) t: TestDir,
    pub(crate) image: String,
    containers: std::cell::RefCell<Vec<String>>,
}

impl Drop for Both {
    fn drop(&mut self) {
        for c in self.containers.borrow().iter() {
            let _ = docker(&["rm", "-f", c]);
        }
        let _ = docker(&["rmi", "-f", &self.image]);
    }
}

impl Both {
    /// None when the privileged or docker needs are missing (the harness fails the test
    /// instead under REQUIRE_PRIVILEGED_TESTS=1).
    pub(crate) fn new(tag: &str) -> anyhow::Result<Option<Both>> {
        let Some(t) = busybox_dir(&[])? else {
            return Ok(None);
        };
        if !docker_ready() {
            return Ok(None);
        }
        let image = format!("kiln-it-rf-{tag}-{}:1", std::process::id());
        let tar = t.dir.path().join("bb.tar");
        std::fs::write(&tar, busybox_tar()?)?;
        let out = docker(&[
            "import",
            "-c",
            "CMD [\"sh\"]",
            tar.to_str().context("utf-8 path")?,
            &image,
        ]);
        ensure!(out.status.success(), "docker import: {}", text(&out));
        Ok(Some(Both {
            t,
            image,
            containers: Default::default(),
        }))
    }

    /// A container name for both, removed from docker on drop.
    pub(crate) fn name(&self, tag: &str) -> String {
        let n = format!("it-rf-{tag}-{}", std::process::id());
        self.containers.borrow_mut().push(n.clone());
        n
    }

    /// `run FLAGS IMAGE CMD` by docker and by kiln.
    pub(crate) fn run(&self, flags: &[&str], cmd: &[&str]) -> (Output, Output) {
        self.run_env(flags, cmd, &[])
    }

    pub(crate) fn run_env(
        &self,
        flags: &[&str],
        cmd: &[&str],
        env: &[(&str, &str)],
    ) -> (Output, Output) {
        let args = |image: &str| -> Vec<String> {
            ["run"]
                .iter()
                .chain(flags)
                .chain([&image])
                .chain(cmd)
                .map(|s| (*s).to_owned())
                .collect()
        };
        let dargs = args(&self.image);
        let mut d = std::process::Command::new(DOCKER);
        d.args(&dargs).stdin(std::process::Stdio::null());
        let kargs = args("busybox");
        let kargs: Vec<&str> = kargs.iter().map(String::as_str).collect();
        let mut k = self.t.cmd(&kargs);
        k.stdin(std::process::Stdio::null());
        for (key, v) in env {
            d.env(key, v);
            k.env(key, v);
        }
        (
            d.output().expect("docker runs"),
            k.output().expect("kiln runs"),
        )
    }

    /// Both succeed and print the same; returns it.
    pub(crate) fn same(&self, flags: &[&str], cmd: &[&str]) -> anyhow::Result<String> {
        let (d, k) = self.run(flags, cmd);
        ensure!(
            d.status.success() && k.status.success(),
            "{flags:?} {cmd:?}: docker {} kiln {}",
            text(&d),
            text(&k)
        );
        ensure!(
            stdout(&d) == stdout(&k),
            "{flags:?} {cmd:?}:\ndocker:\n{}kiln:\n{}",
            stdout(&d),
            stdout(&k)
        );
        Ok(stdout(&k))
    }

    /// `inspect -f F NAME` by both.
    pub(crate) fn inspect(&self, f: &str, name: &str) -> anyhow::Result<(String, String)> {
        let d = docker(&["inspect", "-f", f, name]);
        let k = self.t.kiln(&["inspect", "-f", f, name]);
        ensure!(
            d.status.success() && k.status.success(),
            "inspect {f}: docker {} kiln {}",
            text(&d),
            text(&k)
        );
        Ok((stdout(&d), stdout(&k)))
    }
}

/// Removes a docker network on drop.
struct DockerNetwork(String);

impl Drop for DockerNetwork {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.0]);
    }
}

/// The lines of /etc/hosts that name `names`, with the gateway's and the container's own
/// address replaced by GW and SELF (docker's bridge is 172.17/16, kiln's 10.88/16).
fn named_hosts_lines(out: &str, names: &[&str]) -> Vec<String> {
    let gw = out
        .lines()
        .find_map(|l| l.strip_prefix("GW "))
        .unwrap_or("?")
        .to_owned();
    let own = out
        .lines()
        .find(|l| l.ends_with("\tmyhost"))
        .and_then(|l| l.split('\t').next())
        .unwrap_or("?")
        .to_owned();
    out.lines()
        .filter(|l| names.iter().any(|n| l.ends_with(&format!("\t{n}"))))
        .map(|l| {
            let (ip, rest) = l.split_once('\t').unwrap_or((l, ""));
            let ip = match ip {
                x if x == gw => "GW",
                x if x == own => "SELF",
                x => x,
            };
            format!("{ip}\t{rest}")
        })
        .collect()
}

#[test]
fn hostname_add_host_and_dns_flags_write_dockers_etc_files() -> anyhow::Result<()> {
    let Some(b) = Both::new("etc")? else {
        return Ok(());
    };
    let reap = Reaper::new(&b.t);
    let flags = [
        "--rm",
        "-h",
        "myhost",
        "--add-host",
        "db:10.1.2.3",
        "--add-host",
        "gw:host-gateway",
        "--dns",
        "1.1.1.1",
        "--dns-search",
        "example.com",
        "--dns-option",
        "ndots:2",
    ];
    let script = "cat /etc/resolv.conf; echo ---; hostname; cat /etc/hostname; echo ---; \
                  cat /etc/hosts; echo GW $(ip route | awk '/default/ {print $3}')";
    let (d, k) = b.run(&flags, &["sh", "-c", script]);
    ensure!(
        d.status.success() && k.status.success(),
        "docker {} kiln {}",
        text(&d),
        text(&k)
    );
    let (d, k) = (stdout(&d), stdout(&k));
    let head = |s: &str| s.split("---").take(2).collect::<Vec<_>>().join("---");
    ensure!(
        head(&d) == head(&k),
        "resolv.conf and hostname:\ndocker:\n{d}kiln:\n{k}"
    );
    ensure!(
        head(&k).starts_with("search example.com\nnameserver 1.1.1.1\noptions ndots:2\n"),
        "{k}"
    );
    let names = ["db", "gw", "myhost"];
    let (dl, kl) = (named_hosts_lines(&d, &names), named_hosts_lines(&k, &names));
    ensure!(
        dl == kl && dl == ["10.1.2.3\tdb", "GW\tgw", "SELF\tmyhost"],
        "/etc/hosts lines:\ndocker {dl:?}\nkiln {kl:?}\ndocker:\n{d}kiln:\n{k}"
    );

    // host-gateway is the default bridge's address on any network (docker0's, kiln0's);
    // -h and the /etc flags apply with the host's network too.
    let gw_of = |o: &str| named_hosts_lines(o, &["gw"]);
    let (d2, k2) = b.run(
        &["--rm", "--network", "none", "--add-host", "gw:host-gateway"],
        &["sh", "-c", "grep -w gw /etc/hosts; echo GW none"],
    );
    let bridge_gw = |o: &str| {
        o.lines()
            .find_map(|l| l.strip_prefix("GW "))
            .unwrap_or("?")
            .to_owned()
    };
    for (who, out, bridged) in [("docker", &d2, &d), ("kiln", &k2, &k)] {
        let want = format!("{}\tgw\nGW none\n", bridge_gw(bridged));
        ensure!(
            stdout(out) == want,
            "{who} --network none host-gateway: {} (want {want:?}; {:?})",
            text(out),
            gw_of(bridged)
        );
    }
    let out = b.same(
        &[
            "--rm",
            "--network",
            "host",
            "-h",
            "foo",
            "--add-host",
            "a:1.2.3.4",
            "--dns",
            "8.8.8.8",
        ],
        &[
            "sh",
            "-c",
            "hostname; grep -w a /etc/hosts; cat /etc/resolv.conf",
        ],
    )?;
    ensure!(out == "foo\n1.2.3.4\ta\nnameserver 8.8.8.8\n", "{out:?}");

    // On a user network the hosts file is rewritten as peers come and go: -h and --add-host
    // stay in it.
    let net = format!("it-rf-net-{}", std::process::id());
    reap.network(&net);
    let dnet = DockerNetwork(net.clone());
    for out in [
        docker(&["network", "create", &dnet.0]),
        b.t.kiln(&["network", "create", &net]),
    ] {
        ensure!(out.status.success(), "network create: {}", text(&out));
    }
    let (first, peer) = (b.name("first"), b.name("peer"));
    let (d, k) = b.run(
        &[
            "-d",
            "--name",
            &first,
            "--network",
            &net,
            "-h",
            "myhost",
            "--add-host",
            "db:10.1.2.3",
        ],
        &["sleep", "60"],
    );
    ensure!(d.status.success() && k.status.success(), "{}", text(&k));
    let (d, k) = b.run(
        &["-d", "--name", &peer, "--network", &net],
        &["sleep", "60"],
    );
    ensure!(d.status.success() && k.status.success(), "{}", text(&k));
    let hosts = ["sh", "-c", "cat /etc/hosts; echo GW none"];
    let args: Vec<&str> = ["exec", first.as_str()]
        .iter()
        .copied()
        .chain(hosts)
        .collect();
    let (d, k) = (docker(&args), b.t.kiln(&args));
    let (dl, kl) = (
        named_hosts_lines(&stdout(&d), &["db", "myhost"]),
        named_hosts_lines(&stdout(&k), &["db", "myhost"]),
    );
    ensure!(
        dl == kl && kl == ["10.1.2.3\tdb", "SELF\tmyhost"],
        "user network hosts after a peer joined: docker {dl:?} kiln {kl:?}\n{}",
        stdout(&k)
    );
    for c in [&first, &peer] {
        let _ = docker(&["rm", "-f", c]);
        let _ = b.t.kiln(&["rm", "-f", c]);
    }

    // HOSTNAME is in the environment, after PATH, as docker's daemon sets it.
    let out = b.same(&["--rm", "-h", "myhost", "-e", "A=1"], &["env"])?;
    ensure!(out.contains("\nHOSTNAME=myhost\nA=1\n"), "{out}");

    // One DNS flag alone keeps the network's others (its nameservers here).
    b.same(
        &["--rm", "--dns-search", "a.com"],
        &["cat", "/etc/resolv.conf"],
    )?;
    // Without a bridge: the file holds exactly the flags; `.` is no search line.
    let out = b.same(
        &[
            "--rm",
            "--network",
            "none",
            "--dns",
            "9.9.9.9",
            "--dns-search",
            ".",
        ],
        &["cat", "/etc/resolv.conf"],
    )?;
    ensure!(out == "nameserver 9.9.9.9\n", "{out:?}");
    Ok(())
}

#[test]
fn capabilities_groups_ulimits_and_shm_size_match_docker() -> anyhow::Result<()> {
    let Some(b) = Both::new("caps")? else {
        return Ok(());
    };
    let _reap = Reaper::new(&b.t);
    let caps = ["grep", "-E", "^Cap(Prm|Eff|Bnd)", "/proc/self/status"];
    for flags in [
        &["--rm"][..],
        &["--rm", "--cap-add", "NET_ADMIN", "--cap-drop", "chown"],
        &["--rm", "--cap-drop", "ALL", "--cap-add", "CAP_KILL"],
        &["--rm", "--cap-drop", "ALL"],
        &["--rm", "--cap-add", "sys_admin", "--cap-add", "SYS_PTRACE"],
    ] {
        b.same(flags, &caps)?;
    }
    // A non-root user keeps no effective capability, whatever is added.
    b.same(&["--rm", "-u", "1000", "--cap-add", "NET_ADMIN"], &caps)?;
    // CAP_SYS_ADMIN also opens docker's seccomp profile for mount(2).
    b.same(
        &["--rm", "--cap-add", "SYS_ADMIN"],
        &[
            "sh",
            "-c",
            "mkdir /m && mount -t tmpfs t /m && echo mounted",
        ],
    )?;

    let out = b.same(
        &[
            "--rm",
            "-u",
            "1000",
            "--group-add",
            "nogroup",
            "--group-add",
            "10",
        ],
        &["id"],
    )?;
    ensure!(out.contains("groups=") && out.contains("10"), "{out}");
    b.same(&["--rm", "--group-add", "0", "--group-add", "4"], &["id"])?;

    let out = b.same(
        &["--rm", "--ulimit", "nofile=1024:2048", "--ulimit", "core=0"],
        &["sh", "-c", "ulimit -n; ulimit -Hn; ulimit -c"],
    )?;
    ensure!(out == "1024\n2048\n0\n", "{out:?}");

    let shm = ["sh", "-c", "df -k /dev/shm | awk 'NR==2 {print $2}'"];
    let out = b.same(&["--rm", "--shm-size", "16m"], &shm)?;
    ensure!(out == "16384\n", "{out:?}");
    for flags in [&["--rm"][..], &["--rm", "--shm-size", "0"]] {
        let out = b.same(flags, &shm)?;
        ensure!(out == "65536\n", "{flags:?}: {out:?}");
    }
    Ok(())
}

#[test]
fn env_file_labels_inspect_and_ps_filter_match_docker() -> anyhow::Result<()> {
    let Some(b) = Both::new("labels")? else {
        return Ok(());
    };
    let _reap = Reaper::new(&b.t);
    let envf = b.t.dir.path().join("vars.env");
    // Comments, blanks, a value with spaces and quotes kept verbatim, `K` alone (set and not
    // set in the caller's environment), an empty value.
    std::fs::write(
        &envf,
        "# comment\nA=1\n  B=x y \nC=\"q\"\nRF_FROM_CALLER\nRF_NOT_SET\n\nD=\n #c2\n",
    )?;
    let envf = envf.to_str().context("utf-8")?;
    let (d, k) = b.run_env(
        &[
            "--rm",
            "--env-file",
            envf,
            "-e",
            "A=from-e",
            "-e",
            "RF_E_FROM_CALLER",
            "-e",
            "RF_E_NOT_SET",
        ],
        &["sh", "-c", "env | grep -E '^(A|B|C|D|RF_[A-Z_]*)=' | sort"],
        &[("RF_FROM_CALLER", "caller's"), ("RF_E_FROM_CALLER", "e")],
    );
    ensure!(
        d.status.success() && k.status.success() && stdout(&d) == stdout(&k),
        "docker {}\nkiln {}",
        text(&d),
        text(&k)
    );
    ensure!(
        stdout(&k)
            == "A=from-e\nB=x y \nC=\"q\"\nD=\nRF_E_FROM_CALLER=e\nRF_FROM_CALLER=caller's\n",
        "{:?}",
        stdout(&k)
    );

    let name = b.name("lab");
    let flags = [
        "-d",
        "--name",
        &name,
        "-l",
        "a=1",
        "-l",
        "b",
        "--label-file",
        envf,
        "-h",
        "hh",
        "--cap-add",
        "NET_ADMIN",
        "--cap-drop",
        "chown",
        "--dns",
        "1.1.1.1",
        "--dns-search",
        "x.com",
        "--dns-option",
        "ndots:1",
        "--add-host",
        "x:1.2.3.4",
        "--group-add",
        "10",
        "--ulimit",
        "nofile=1024:2048",
        "--shm-size",
        "1m",
        "--stop-signal",
        "SIGUSR1",
        "--stop-timeout",
        "3",
        "--init",
        "--restart",
        "no",
    ];
    let (d, k) = b.run(&flags, &["sleep", "60"]);
    ensure!(
        d.status.success() && k.status.success(),
        "docker {} kiln {}",
        text(&d),
        text(&k)
    );
    for f in [
        "{{json .Config.Labels}}",
        "{{.Config.Hostname}} {{.Config.StopSignal}} {{.Config.StopTimeout}}",
        "{{json .HostConfig.CapAdd}} {{json .HostConfig.CapDrop}} {{.HostConfig.Privileged}} {{.HostConfig.Init}}",
        "{{json .HostConfig.Dns}} {{json .HostConfig.DnsSearch}} {{json .HostConfig.DnsOptions}} {{json .HostConfig.ExtraHosts}}",
        "{{json .HostConfig.GroupAdd}} {{.HostConfig.ShmSize}} {{.HostConfig.RestartPolicy.Name}}",
        "{{range .HostConfig.Ulimits}}{{.Name}}={{.Soft}}:{{.Hard}}{{end}}",
    ] {
        let (dv, kv) = b.inspect(f, &name)?;
        ensure!(dv == kv, "inspect -f {f}: docker {dv:?} kiln {kv:?}");
    }
    let (labels, _) = b.inspect("{{json .Config.Labels}}", &name)?;
    ensure!(
        labels.trim() == r#"{"A":"1","B":"x y ","C":"\"q\"","D":"","a":"1","b":""}"#,
        "{labels}"
    );

    // A container without the flags shows docker's defaults.
    let plain = b.name("plain");
    let (d, k) = b.run(&["-d", "--name", &plain], &["sleep", "60"]);
    ensure!(d.status.success() && k.status.success(), "{}", text(&k));
    let f = "{{json .Config.Labels}} {{json .HostConfig.CapAdd}} {{json .HostConfig.Dns}} \
             {{json .HostConfig.ExtraHosts}} {{json .HostConfig.GroupAdd}} {{.HostConfig.ShmSize}} \
             {{.HostConfig.Privileged}} {{json .HostConfig.Ulimits}} {{.HostConfig.RestartPolicy.Name}} \
             {{json .HostConfig.Devices}}";
    let (dv, kv) = b.inspect(f, &plain)?;
    ensure!(dv == kv, "inspect -f {f}: docker {dv:?} kiln {kv:?}");

    // ps --filter label=K and label=K=V (docker lists other containers too: look for ours).
    for (filter, listed) in [
        ("label=a=1", true),
        ("label=b", true),
        ("label=a=2", false),
        ("label=nosuch", false),
    ] {
        for (who, out) in [
            (
                "docker",
                docker(&["ps", "--filter", filter, "--format", "{{.Names}}"]),
            ),
            (
                "kiln",
                b.t.kiln(&["ps", "--filter", filter, "--format", "{{.Names}}"]),
            ),
        ] {
            ensure!(out.status.success(), "{who}: {}", text(&out));
            let found = stdout(&out).lines().any(|l| l == name);
            ensure!(
                found == listed,
                "{who} ps --filter {filter}: {}",
                stdout(&out)
            );
            ensure!(
                !stdout(&out).lines().any(|l| l == plain) || filter == "label=nosuch",
                "{who} ps --filter {filter} lists the unlabelled container"
            );
        }
    }
    let sorted = |o: Output| {
        let mut v: Vec<String> = stdout(&o).trim().split(',').map(str::to_owned).collect();
        v.sort();
        v
    };
    // docker's daemon is shared: only this test's container.
    let only = format!("name=^/{name}$");
    let dargs = [
        "ps",
        "--filter",
        "label=a",
        "--filter",
        &only,
        "--format",
        "{{.Labels}}",
    ];
    let kargs = ["ps", "--filter", "label=a", "--format", "{{.Labels}}"];
    let (dl, kl) = (sorted(docker(&dargs)), sorted(b.t.kiln(&kargs)));
    ensure!(dl == kl, "ps {{.Labels}}: docker {dl:?} kiln {kl:?}");
    Ok(())
}

#[test]
fn bad_values_fail_with_dockers_exit_code_and_message() -> anyhow::Result<()> {
    let Some(b) = Both::new("bad")? else {
        return Ok(());
    };
    let _reap = Reaper::new(&b.t);
    let dir = b.t.dir.path();
    let bad_env = dir.join("bad.env");
    std::fs::write(&bad_env, "bad line=1\n")?;
    let bad_env = bad_env.to_str().context("utf-8")?.to_owned();
    let missing = dir
        .join("missing.env")
        .to_str()
        .context("utf-8")?
        .to_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--add-host", "db:nope"],
            "invalid IP address in add-host: \"nope\"",
        ),
        (vec!["--add-host", "nocolon"], "bad format for add-host"),
        (vec!["--dns", "nope"], "nope is not an ip address"),
        (
            vec!["--cap-add", "bogus"],
            "unknown capability: \"CAP_BOGUS\"",
        ),
        (vec!["--shm-size", "foo"], "invalid size: 'foo'"),
        (
            vec!["--ulimit", "nofile=x"],
            "invalid argument \"nofile=x\" for \"--ulimit\" flag: strconv.ParseInt: parsing \"x\": invalid syntax",
        ),
        (
            vec!["--ulimit", "bogus=1"],
            "invalid argument \"bogus=1\" for \"--ulimit\" flag: invalid ulimit type: bogus",
        ),
        (
            vec!["--ulimit", "nofile=5:2"],
            "ulimit soft limit must be less than or equal to hard limit: 5 > 2",
        ),
        (
            vec!["--ulimit", "nofile"],
            "invalid ulimit argument: nofile",
        ),
        (vec!["--restart", "bogus"], "invalid restart policy 'bogus'"),
        (
            vec!["--rm", "--restart", "always"],
            "Conflicting options: --restart and --rm",
        ),
        (vec!["--stop-signal", "BOGUS"], "Invalid signal: BOGUS"),
        (vec!["--env-file", &missing], "no such file or directory"),
        (
            vec!["--env-file", &bad_env],
            "poorly formatted environment: variable 'bad line' contains whitespaces",
        ),
        (
            vec!["--rm", "--group-add", "nosuch"],
            "to find group nosuch: no matching entries in group file",
        ),
    ];
    for (flags, msg) in &cases {
        let (d, k) = b.run(flags, &["true"]);
        for (who, out) in [("docker", &d), ("kiln", &k)] {
            ensure!(
                out.status.code() == Some(125) && text(out).contains(msg),
                "{flags:?}: {who} exit {:?}, wanted 125 and {msg:?}:\n{}",
                out.status.code(),
                text(out)
            );
        }
    }
    // The restart policies that need a daemon: docker's keeps the container for it to
    // restart; kiln has none and says so instead of pretending.
    let k = b.t.kiln(&["run", "--restart", "always", "busybox", "true"]);
    ensure!(
        k.status.code() == Some(125) && text(&k).contains("kiln has no daemon"),
        "{}",
        text(&k)
    );
    let k =
        b.t.kiln(&["run", "--rm", "--restart", "no", "busybox", "true"]);
    ensure!(k.status.success(), "{}", text(&k));
    Ok(())
}

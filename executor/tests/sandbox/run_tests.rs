//! RunSpec execution.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use anyhow::{Result, ensure};
use executor::spec::{MountKind, MountSpec, Network};

use super::fixture::{Layer, TestFn, busybox_root, ensure_eq, run_spec, sh, sh_ok, tree};

pub const TESTS: &[(&str, TestFn)] = &[
    ("run_true_exits_zero", run_true_exits_zero),
    ("run_exit_status_propagates", run_exit_status_propagates),
    ("run_command_is_pid_1", run_command_is_pid_1),
    ("run_ps_sees_only_the_sandbox", run_ps_sees_only_the_sandbox),
    ("run_hostname_is_set", run_hostname_is_set),
    (
        "run_network_has_only_lo_and_it_is_up",
        run_network_has_only_lo_and_it_is_up,
    ),
    (
        "run_host_network_sees_host_links",
        run_host_network_sees_host_links,
    ),
    (
        "run_proc_dev_and_etc_files_are_mounted",
        run_proc_dev_and_etc_files_are_mounted,
    ),
    (
        "run_writes_land_in_upper_and_deletions_are_whiteouts",
        run_writes_land_in_upper_and_deletions_are_whiteouts,
    ),
    (
        "run_mount_points_do_not_leak_into_upper",
        run_mount_points_do_not_leak_into_upper,
    ),
    (
        "run_scratch_root_reports_missing_command_and_leaks_nothing",
        run_scratch_root_reports_missing_command_and_leaks_nothing,
    ),
    (
        "run_user_by_name_gets_groups_and_home",
        run_user_by_name_gets_groups_and_home,
    ),
    ("run_user_by_uid_gid", run_user_by_uid_gid),
    (
        "run_missing_user_is_a_clear_error",
        run_missing_user_is_a_clear_error,
    ),
    (
        "run_missing_command_exits_127",
        run_missing_command_exits_127,
    ),
    ("run_cwd_is_created", run_cwd_is_created),
    (
        "run_root_has_docker_default_caps_and_no_new_privs",
        run_root_has_docker_default_caps_and_no_new_privs,
    ),
    (
        "run_non_root_has_no_capabilities",
        run_non_root_has_no_capabilities,
    ),
    (
        "run_proc_paths_are_masked_and_sys_is_read_only",
        run_proc_paths_are_masked_and_sys_is_read_only,
    ),
    ("run_sixty_lowers_work", run_sixty_lowers_work),
    (
        "run_extra_bind_and_tmpfs_mounts",
        run_extra_bind_and_tmpfs_mounts,
    ),
    (
        "run_symlinked_etc_hosts_stays_inside_the_root",
        run_symlinked_etc_hosts_stays_inside_the_root,
    ),
    (
        "run_tty_becomes_the_controlling_terminal",
        run_tty_becomes_the_controlling_terminal,
    ),
    (
        "run_joins_an_existing_network_namespace",
        run_joins_an_existing_network_namespace,
    ),
    (
        "run_signals_to_init_reach_pid_1",
        run_signals_to_init_reach_pid_1,
    ),
];

fn busybox() -> Vec<PathBuf> {
    vec![busybox_root().to_path_buf()]
}

fn run_true_exits_zero() -> Result<()> {
    let layer = Layer::new()?;
    let mut spec = sh(&layer, busybox(), "");
    spec.args = vec!["true".into()];
    let (code, _, err) = run_spec(spec)?;
    ensure!(code == 0, "exit {code}: {err}");
    Ok(())
}

fn run_exit_status_propagates() -> Result<()> {
    let layer = Layer::new()?;
    let (code, _, _) = run_spec(sh(&layer, busybox(), "exit 3"))?;
    ensure_eq!(code, 3);
    Ok(())
}

fn run_command_is_pid_1() -> Result<()> {
    ensure_eq!(sh_ok("echo $$")?, "1\n");
    Ok(())
}

fn run_ps_sees_only_the_sandbox() -> Result<()> {
    let out = sh_ok("ps -o pid,comm")?;
    let pids: Vec<u32> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    ensure!(pids.contains(&1), "{out}");
    ensure!(pids.len() <= 2 && pids.iter().all(|p| *p <= 2), "{out}");
    Ok(())
}

fn run_hostname_is_set() -> Result<()> {
    ensure_eq!(
        sh_ok("hostname; cat /etc/hostname")?,
        "kiln-test\nkiln-test\n"
    );
    Ok(())
}

fn run_network_has_only_lo_and_it_is_up() -> Result<()> {
    let out = sh_ok(
        "ls /sys/class/net; cat /sys/class/net/lo/flags; ping -c1 -W1 127.0.0.1 >/dev/null && echo ping-ok",
    )?;
    let lines: Vec<&str> = out.lines().collect();
    ensure_eq!(lines[0], "lo");
    let flags = u32::from_str_radix(lines[1].trim_start_matches("0x"), 16)?;
    ensure!(flags & 1 == 1, "lo is down: {out}");
    ensure_eq!(lines[2], "ping-ok");
    Ok(())
}

fn run_host_network_sees_host_links() -> Result<()> {
    let host_links = std::fs::read_dir("/sys/class/net")?.count();
    let layer = Layer::new()?;
    let mut spec = sh(
        &layer,
        busybox(),
        "ls /sys/class/net | wc -l; cat /etc/resolv.conf",
    );
    spec.network = Network::Host;
    let (code, out, err) = run_spec(spec)?;
    ensure!(code == 0, "{err}");
    let n: usize = out.lines().next().unwrap_or("").trim().parse()?;
    ensure_eq!(n, host_links);
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    ensure_eq!(
        out.split_once('\n').map(|x| x.1).unwrap_or(""),
        host_resolv.as_str()
    );
    Ok(())
}

fn run_proc_dev_and_etc_files_are_mounted() -> Result<()> {
    let out = sh_ok(
        "cat /proc/1/comm; \
         echo x > /dev/null && echo null-ok; \
         head -c4 /dev/zero | wc -c; \
         test -c /dev/urandom && echo urandom-ok; \
         test -L /dev/ptmx && test -d /dev/pts && echo pts-ok; \
         echo shm > /dev/shm/x && cat /dev/shm/x; \
         readlink /dev/fd; \
         grep -c localhost /etc/hosts",
    )?;
    ensure_eq!(
        out,
        "sh\nnull-ok\n4\nurandom-ok\npts-ok\nshm\n/proc/self/fd\n2\n"
    );
    Ok(())
}

fn run_writes_land_in_upper_and_deletions_are_whiteouts() -> Result<()> {
    let layer = Layer::new()?;
    let (code, _, err) = run_spec(sh(
        &layer,
        busybox(),
        "echo hi > /new && rm /data/old && mkdir -p /a/b && touch /a/b/c",
    ))?;
    ensure!(code == 0, "{err}");
    let upper = layer.upper();
    ensure_eq!(std::fs::read_to_string(upper.join("new"))?, "hi\n");
    let wh = std::fs::symlink_metadata(upper.join("data/old"))?;
    ensure!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "not a whiteout"
    );
    ensure_eq!(
        tree(&upper)?,
        vec!["a", "a/b", "a/b/c", "data", "data/old", "new"]
    );
    Ok(())
}

fn run_mount_points_do_not_leak_into_upper() -> Result<()> {
    // The busybox root has no /proc, /dev, /sys or /etc/hosts: the sandbox creates them.
    let layer = Layer::new()?;
    let (code, _, err) = run_spec(sh(
        &layer,
        busybox(),
        "test -f /etc/hosts && test -d /proc/1",
    ))?;
    ensure!(code == 0, "{err}");
    ensure_eq!(tree(&layer.upper())?, Vec::<String>::new());
    Ok(())
}

fn run_scratch_root_reports_missing_command_and_leaks_nothing() -> Result<()> {
    let layer = Layer::new()?;
    let mut spec = sh(&layer, vec![], "");
    spec.args = vec!["/bin/sh".into()];
    let (code, _, err) = run_spec(spec)?;
    ensure_eq!(code, 127);
    ensure!(err.starts_with("kiln: exec /bin/sh"), "{err}");
    ensure_eq!(tree(&layer.upper())?, Vec::<String>::new());
    Ok(())
}

fn run_user_by_name_gets_groups_and_home() -> Result<()> {
    let layer = Layer::new()?;
    let mut spec = sh(&layer, busybox(), "id -u; id -g; id -G; echo $HOME; whoami");
    spec.user = "alice".into();
    let (code, out, err) = run_spec(spec)?;
    ensure!(code == 0, "{err}");
    ensure_eq!(out, "1000\n1000\n1000 10\n/home/alice\nalice\n");
    Ok(())
}

fn run_user_by_uid_gid() -> Result<()> {
    let layer = Layer::new()?;
    let mut spec = sh(&layer, busybox(), "id -u; id -g; echo $HOME");
    spec.user = "4242:4343".into();
    let (code, out, err) = run_spec(spec)?;
    ensure!(code == 0, "{err}");
    ensure_eq!(out, "4242\n4343\n/\n");
    Ok(())
}

fn run_missing_user_is_a_clear_error() -> Result<()> {
    let layer = Layer::new()?;
    let mut spec = sh(&layer, busybox(), "true");
    spec.user = "mallory".into();
    let (code, _, err) = run_spec(spec)?;
    ensure_eq!(code, 125);
    ensure_eq!(
        err,
        "kiln: unable to find user mallory: no matching entries in passwd file\n"
    );
    Ok(())
}

fn run_missing_command_exits_127() -> Result<()> {
    let layer = Layer::new()?;
    let mut spec = sh(&layer, busybox(), "");
    spec.args = vec!["no-such-tool".into()];
    let (code, _, err) = run_spec(spec)?;
    ensure_eq!(code, 127);
    ensure_eq!(
        err,
        "kiln: no-such-tool: executable file not found in $PATH\n"
    );
    Ok(())
}

fn run_cwd_is_created() -> Result<()> {
    let layer = Layer::new()?;
    let mut spec = sh(&layer, busybox(), "pwd");
    spec.cwd = "/work/dir".into();
    let (code, out, err) = run_spec(spec)?;
    ensure!(code == 0, "{err}");
    ensure_eq!(out, "/work/dir\n");
    ensure!(layer.upper().join("work/dir").is_dir());
    Ok(())
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn run_root_has_docker_default_caps_and_no_new_privs() -> Result<()> {
    let status = sh_ok("cat /proc/self/status")?;
    ensure_eq!(status_field(&status, "CapEff:"), "00000000a80425fb");
    ensure_eq!(status_field(&status, "CapBnd:"), "00000000a80425fb");
    ensure_eq!(status_field(&status, "CapInh:"), "0000000000000000");
    ensure_eq!(status_field(&status, "NoNewPrivs:"), "1");
    Ok(())
}

fn run_non_root_has_no_capabilities() -> Result<()> {
    let layer = Layer::new()?;
    let mut spec = sh(&layer, busybox(), "cat /proc/self/status");
    spec.user = "1000".into();
    let (code, status, err) = run_spec(spec)?;
    ensure!(code == 0, "{err}");
    ensure_eq!(status_field(&status, "CapEff:"), "0000000000000000");
    ensure_eq!(status_field(&status, "CapPrm:"), "0000000000000000");
    Ok(())
}

fn run_proc_paths_are_masked_and_sys_is_read_only() -> Result<()> {
    let out = sh_ok(
        "wc -c < /proc/timer_list; \
         wc -c < /proc/keys; \
         ls /sys/firmware | wc -l; \
         echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || echo proc-sys-ro; \
         touch /sys/x 2>/dev/null || echo sys-ro",
    )?;
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    ensure_eq!(lines, vec!["0", "0", "0", "proc-sys-ro", "sys-ro"]);
    Ok(())
}

fn run_sixty_lowers_work() -> Result<()> {
    let layers = tempfile::tempdir()?;
    let mut lowers = Vec::new();
    // Newest first: layer 59 ... layer 1, then busybox.
    for i in (1..60).rev() {
        let dir = layers
            .path()
            .join(format!("layer-with-a-long-content-addressed-name-{i:03}"));
        std::fs::create_dir_all(dir.join("l"))?;
        std::fs::write(dir.join(format!("l/{i}")), format!("{i}\n"))?;
        std::fs::write(dir.join("l/top"), format!("{i}\n"))?;
        lowers.push(dir);
    }
    lowers.push(busybox_root().to_path_buf());
    let layer = Layer::new()?;
    let (code, out, err) = run_spec(sh(&layer, lowers, "ls /l | wc -l; cat /l/top /l/1"))?;
    ensure!(code == 0, "{err}");
    ensure_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        vec!["60", "59", "1"]
    );
    Ok(())
}

fn run_extra_bind_and_tmpfs_mounts() -> Result<()> {
    let host = tempfile::tempdir()?;
    std::fs::write(host.path().join("in.txt"), "from host\n")?;
    std::fs::create_dir(host.path().join("rw"))?;
    let file = host.path().join("single");
    std::fs::write(&file, "one file\n")?;
    let layer = Layer::new()?;
    let mut spec = sh(
        &layer,
        busybox(),
        "cat /src/in.txt; touch /src/x 2>/dev/null || echo src-ro; \
         echo out > /out/res; cat /one/file; \
         echo t > /scratch/t && cat /scratch/t",
    );
    spec.mounts = vec![
        MountSpec {
            target: "/src".into(),
            kind: MountKind::Bind {
                source: host.path().to_path_buf(),
            },
            readonly: true,
        },
        MountSpec {
            target: "/out".into(),
            kind: MountKind::Bind {
                source: host.path().join("rw"),
            },
            readonly: false,
        },
        MountSpec {
            target: "/one/file".into(),
            kind: MountKind::Bind { source: file },
            readonly: true,
        },
        MountSpec {
            target: "/scratch".into(),
            kind: MountKind::Tmpfs {
                size: Some(1 << 20),
            },
            readonly: false,
        },
    ];
    let (code, out, err) = run_spec(spec)?;
    ensure!(code == 0, "{err}");
    ensure_eq!(out, "from host\nsrc-ro\none file\nt\n");
    ensure_eq!(
        std::fs::read_to_string(host.path().join("rw/res"))?,
        "out\n"
    );
    ensure_eq!(tree(&layer.upper())?, Vec::<String>::new());
    Ok(())
}

fn run_symlinked_etc_hosts_stays_inside_the_root() -> Result<()> {
    // An image whose /etc/hosts points outside: the mount must land inside the root.
    let top = tempfile::tempdir()?;
    std::fs::create_dir_all(top.path().join("etc"))?;
    std::os::unix::fs::symlink(
        "../../../../../../tmp/kiln-escape-hosts",
        top.path().join("etc/hosts"),
    )?;
    let layer = Layer::new()?;
    let spec = sh(
        &layer,
        vec![top.path().to_path_buf(), busybox_root().to_path_buf()],
        "grep -c localhost /tmp/kiln-escape-hosts",
    );
    let (code, out, err) = run_spec(spec)?;
    ensure!(code == 0, "{err}");
    ensure_eq!(out, "2\n");
    ensure!(!std::path::Path::new("/tmp/kiln-escape-hosts").exists());
    ensure_eq!(tree(&layer.upper())?, Vec::<String>::new());
    Ok(())
}

fn run_tty_becomes_the_controlling_terminal() -> Result<()> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use std::io::Read;
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_string_lossy().as_ref())?;
    let layer = Layer::new()?;
    let mut spec = sh(
        &layer,
        busybox(),
        "test -t 0 && test -t 1 && echo is-a-tty; set -- $(cat /proc/1/stat); [ $6 = 1 ] && [ $7 != 0 ] && echo ctty-ok",
    );
    spec.tty = true;
    let exe = std::env::current_exe()?;
    let mut child = executor::sandbox::command(&exe, &executor::spec::InitSpec::Run(spec))?
        .stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave)
        .spawn()?;
    let status = child.wait()?;
    let mut out = Vec::new();
    let mut master = std::fs::File::from(master);
    // Read what is buffered; EIO once the slave side is closed everywhere.
    let mut buf = [0u8; 4096];
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let out = String::from_utf8_lossy(&out).replace('\r', "");
    ensure!(status.success(), "{status}: {out}");
    ensure_eq!(out, "is-a-tty\nctty-ok\n");
    Ok(())
}

/// A named netns from `ip netns add`, deleted on drop.
struct IpNetns(String);

impl Drop for IpNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip").args(args).output()?;
    ensure!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn run_joins_an_existing_network_namespace() -> Result<()> {
    let ns = IpNetns(format!("kiln-sbx-test-{}", std::process::id()));
    ip(&["netns", "add", &ns.0])?;
    ip(&[
        "-n", &ns.0, "link", "add", "kiln-a", "type", "veth", "peer", "name", "kiln-b",
    ])?;
    let layer = Layer::new()?;
    let mut spec = sh(
        &layer,
        busybox(),
        "ls /sys/class/net | tr '\\n' ' '; echo; cat /etc/hosts /etc/resolv.conf",
    );
    spec.network = Network::Join {
        netns: PathBuf::from("/run/netns").join(&ns.0),
        hosts: "10.88.0.9\tbox\n".into(),
        resolv_conf: "nameserver 10.88.0.1\n".into(),
    };
    let (code, out, err) = run_spec(spec)?;
    ensure!(code == 0, "{err}");
    ensure_eq!(
        out,
        "kiln-a kiln-b lo \n10.88.0.9\tbox\nnameserver 10.88.0.1\n"
    );
    // A missing namespace is a setup error naming it.
    let layer = Layer::new()?;
    let mut spec = sh(&layer, busybox(), "true");
    spec.network = Network::Join {
        netns: "/run/netns/kiln-no-such-ns".into(),
        hosts: String::new(),
        resolv_conf: String::new(),
    };
    let (code, _, err) = run_spec(spec)?;
    ensure_eq!(code, 125);
    ensure!(
        err.starts_with("kiln: /run/netns/kiln-no-such-ns: "),
        "{err}"
    );
    Ok(())
}

fn run_signals_to_init_reach_pid_1() -> Result<()> {
    use std::io::{BufRead, BufReader};
    let layer = Layer::new()?;
    let spec = sh(
        &layer,
        busybox(),
        "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done",
    );
    let exe = std::env::current_exe()?;
    let mut child = executor::sandbox::command(&exe, &executor::spec::InitSpec::Run(spec))?
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line)?;
    ensure_eq!(line, "ready\n");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    let status = child.wait()?;
    line.clear();
    out.read_line(&mut line)?;
    ensure_eq!(line, "got-term\n");
    ensure_eq!(status.code(), Some(7));
    Ok(())
}

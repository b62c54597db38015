use super::*;

/// `cat /sys/fs/cgroup/devices/devices.list` inside `docker run` (Docker 20.10, runc, this
/// project's CI machine), sorted: what docker's containers may use.
const DOCKER_DEVICES_LIST: &str = "\
b *:* m
c *:* m
c 1:3 rwm
c 1:5 rwm
c 1:7 rwm
c 1:8 rwm
c 1:9 rwm
c 5:0 rwm
c 5:1 rwm
c 5:2 rwm
c 10:200 rwm
c 136:* rwm
";

#[test]
fn default_rules_are_dockers_device_list() {
    let mut ours: Vec<String> = DEFAULT_RULES.iter().map(Rule::v1_line).collect();
    let mut docker: Vec<String> = DOCKER_DEVICES_LIST.lines().map(str::to_string).collect();
    ours.sort();
    docker.sort();
    assert_eq!(ours, docker);
}

#[test]
fn hybrid_hosts_use_the_v1_devices_controller_and_pure_v2_the_program() {
    let hybrid = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
33 31 0:30 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    assert_eq!(
        DeviceCgroup::parse(hybrid),
        Some(DeviceCgroup::V1 {
            mount: "/sys/fs/cgroup/devices".into(),
            path: "kiln/sandbox".into(),
        })
    );
    let unified = "25 20 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
    assert_eq!(
        DeviceCgroup::parse(unified),
        Some(DeviceCgroup::V2 {
            mount: "/sys/fs/cgroup".into(),
            parent: "kiln".into()
        })
    );
    assert_eq!(
        DeviceCgroup::parse("1 0 0:1 / / rw - ext4 /dev/sda rw\n"),
        None
    );
}

#[test]
fn a_process_inside_the_policy_cgroup_is_not_moved_again() {
    let v1 = DeviceCgroup::V1 {
        mount: "/sys/fs/cgroup/devices".into(),
        path: "kiln/sandbox".into(),
    };
    assert!(v1.contains("5:devices:/kiln/sandbox\n0::/\n"));
    assert!(v1.contains("3:cpu,devices:/kiln/sandbox/x\n"));
    assert!(!v1.contains("5:devices:/\n0::/kiln/sandbox\n"));
    assert!(!v1.contains("5:devices:/kiln/sandboxes\n"));
    let v2 = DeviceCgroup::V2 {
        mount: "/sys/fs/cgroup".into(),
        parent: "kiln".into(),
    };
    assert!(v2.contains("0::/kiln/web\n"));
    assert!(!v2.contains("0::/user.slice\n5:devices:/kiln\n"));
}

#[test]
fn program_checks_type_access_and_numbers_per_rule() {
    let p = program(&DEFAULT_RULES);
    // Prologue (6), per rule: type check, access check (3) for partial access, major and
    // minor checks where given, return 1 (2); epilogue (2).
    let expected: usize = 6
        + DEFAULT_RULES
            .iter()
            .map(|r| {
                1 + if r.access == RWM { 0 } else { 3 }
                    + usize::from(r.major.is_some())
                    + usize::from(r.minor.is_some())
                    + 2
            })
            .sum::<usize>()
        + 2;
    assert_eq!(p.len(), expected);
    // Every failed check jumps exactly to the start of the next rule's block.
    let mut i = 6;
    for r in &DEFAULT_RULES {
        let len = 1
            + if r.access == RWM { 0 } else { 3 }
            + usize::from(r.major.is_some())
            + usize::from(r.minor.is_some())
            + 2;
        for (j, ins) in p[i..i + len].iter().enumerate() {
            if ins.code == JNE_K {
                assert_eq!(i + j + 1 + ins.off as usize, i + len, "rule {r:?}");
            }
        }
        i += len;
    }
}

/// Why the privileged tests cannot run here, if they cannot.
fn unprivileged() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root".into());
    }
    None
}

fn skip_or_fail(why: String) {
    if std::env::var("REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        panic!("REQUIRE_PRIVILEGED_TESTS=1 but {why}");
    }
    eprintln!("skipped: {why}");
}

/// A block device of the host that root may open here (so that only the device policy can
/// refuse it in the test).
fn openable_block_device() -> (u32, u32) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut found = None;
    for e in std::fs::read_dir("/dev").expect("/dev").flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.file_type().is_block_device() && std::fs::File::open(e.path()).is_ok() {
            let rdev = m.rdev();
            found = Some((rustix::fs::major(rdev), rustix::fs::minor(rdev)));
            break;
        }
    }
    found.expect("a block device root can open on the host (e.g. /dev/loop0)")
}

/// Runs a shell that moves itself into `procs` and reports what it can open.
fn probe(procs: &Path, dir: &Path) -> String {
    let (major, minor) = openable_block_device();
    let script = format!(
        "echo $$ > {procs} || exit 9
         {{ true </dev/null; }} 2>/dev/null && echo null=ok || echo null=denied
         {{ true <{dir}/disk; }} 2>/dev/null && echo disk=ok || echo disk=denied
         mknod {dir}/disk2 b {major} {minor} && echo mknod=ok || echo mknod=denied",
        procs = procs.display(),
        dir = dir.display(),
    );
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("disk"),
        rustix::fs::FileType::BlockDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rustix::fs::makedev(major, minor),
    )
    .expect("mknod on the host");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const CONFINED: &str = "null=ok\ndisk=denied\nmknod=ok\n";

#[test]
fn v1_devices_cgroup_allows_null_and_mknod_but_not_opening_a_disk() {
    if let Some(why) = unprivileged() {
        return skip_or_fail(why);
    }
    let Some(DeviceCgroup::V1 { mount, .. }) = DeviceCgroup::host().ok() else {
        return skip_or_fail("the v1 devices controller is not mounted".into());
    };
    let parent = mount.join(format!("kiln-test-{}", std::process::id()));
    let dir = parent.join("sandbox");
    setup_v1(&dir).expect("setup");
    // Set up once: a second setup finds it complete and keeps it.
    setup_v1(&dir).expect("setup again");
    let list = std::fs::read_to_string(dir.join("devices.list")).expect("devices.list");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = probe(&dir.join("cgroup.procs"), tmp.path());
    let _ = std::fs::remove_dir(&dir);
    let _ = std::fs::remove_dir(&parent);
    let mut list: Vec<&str> = list.lines().collect();
    list.sort();
    let mut docker: Vec<&str> = DOCKER_DEVICES_LIST.lines().collect();
    docker.sort();
    assert_eq!(list, docker);
    assert_eq!(out, CONFINED);
}

#[test]
fn v2_device_program_allows_null_and_mknod_but_not_opening_a_disk() {
    if let Some(why) = unprivileged() {
        return skip_or_fail(why);
    }
    // On a hybrid host the v2 hierarchy has no controllers, but a device program needs none.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let Some((mount, _, _)) = crate::cgroup::cgroup_mounts(&mountinfo).find(|m| m.1 == "cgroup2")
    else {
        return skip_or_fail("no cgroup2 hierarchy is mounted".into());
    };
    let parent = mount.join(format!("kiln-test-{}", std::process::id()));
    ensure_v2_program(&parent).expect("attach");
    ensure_v2_program(&parent).expect("recognised");
    let cg = std::fs::File::open(&parent).expect("cgroup dir");
    let attached = bpf::device_programs(&cg).expect("query");
    let leaf = parent.join("sandbox");
    std::fs::create_dir(&leaf).expect("leaf");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = probe(&leaf.join("cgroup.procs"), tmp.path());
    let _ = std::fs::remove_dir(&leaf);
    let _ = std::fs::remove_dir(&parent);
    assert_eq!(attached.len(), 1, "attached once: {attached:?}");
    assert_eq!(out, CONFINED);
}

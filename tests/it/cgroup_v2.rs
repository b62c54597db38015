//! kiln on a pure cgroup v2 host, in a qemu guest ([`crate::vm`]): the limits of `kiln run`
//! (memory.max, pids.max, cpu.max written and enforced), the eBPF device program, a build's
//! RUN step, `kiln build --cgroup-parent`, `RUN --security=insecure` leaving the device
//! program, and rootless limits in a delegated subtree.

use crate::harness::{busybox_tar, kiln_bin};
use crate::vm;
use anyhow::ensure;

/// The start of every guest script: kiln, a store on the guest's tmpfs, busybox imported.
fn prelude() -> String {
    format!(
        "K={kiln}\nexport KILN_ROOT=/tmp/kiln\n\
         $K import --change 'CMD [\"sh\"]' /run/vm/busybox.tar busybox >/dev/null || exit 90\n\
         echo fstype=$(awk '$2==\"/sys/fs/cgroup\" {{print $3}}' /proc/mounts)\n",
        kiln = kiln_bin().display()
    )
}

/// Waits (up to 60 s: TCG is slow) until a cgroup below `$1` other than kiln's device policy's
/// `sandbox` (or podman's `conmon`) holds a process (cgroup files have no size: `test -s`
/// cannot tell); prints it.
const WAIT_CGROUP: &str = r#"
wait_cgroup() {
  for i in $(seq 1 600); do
    for d in $1/*/; do
      case $d in */sandbox/|*/conmon/) continue;; esac
      [ -n "$(cat $d/cgroup.procs 2>/dev/null)" ] && { echo "${d%/}"; return 0; }
    done
    sleep 0.1
  done
  return 1
}

# The cgroup of the process whose command line is $1 (waiting up to 60 s for it).
cgroup_of() {
  for i in $(seq 1 600); do
    for p in /proc/[0-9]*; do
      [ "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" = "$1 " ] && { cat $p/cgroup; return 0; }
    done
    sleep 0.1
  done
  return 1
}
"#;

#[test]
fn cgroup_v2_root_limits_hold_devices_are_denied_and_run_steps_build() -> anyhow::Result<()> {
    if !vm::available(&["podman"]) {
        return Ok(());
    }
    let script = format!(
        r#"{prelude}{WAIT_CGROUP}
$K run -d --name lim --network none --memory 64m --pids-limit 20 --cpus 0.5 busybox \
  sh -c 'while :; do :; done' >/dev/null || exit 91
d=$(wait_cgroup /sys/fs/cgroup/kiln) || exit 92
echo cgroup=$d
echo memory.max=$(cat $d/memory.max)
echo pids.max=$(cat $d/pids.max)
echo cpu.max=$(cat $d/cpu.max)
sleep 1
echo throttled=$(grep nr_throttled $d/cpu.stat | cut -d' ' -f2)
$K rm -f lim >/dev/null || exit 93
[ -e $d ] && echo removed=no || echo removed=yes

# The same flags under podman (its cgroupfs manager: no systemd in the guest), for comparison.
P="podman --root /tmp/podman --runroot /run/podman --cgroup-manager cgroupfs --events-backend file --storage-driver overlay"
$P import /run/vm/busybox.tar localhost/busybox >/dev/null 2>/tmp/pimport.log || {{ cat /tmp/pimport.log; exit 96; }}
$P run -d --name lim --network none --memory 64m --pids-limit 20 --cpus 0.5 localhost/busybox \
  sh -c 'while :; do :; done' >/dev/null || exit 97
pd=$(wait_cgroup /sys/fs/cgroup/libpod_parent) || exit 98
echo podman.memory.max=$(cat $pd/memory.max)
echo podman.pids.max=$(cat $pd/pids.max)
echo podman.cpu.max=$(cat $pd/cpu.max)
$P rm -f -t 0 lim >/dev/null
$P run --rm --network none --memory 32m localhost/busybox dd if=/dev/zero of=/dev/null bs=64M count=1
echo podman_oom_rc=$?
# (podman 4 drops CAP_MKNOD by default; docker and kiln keep it)
$P run --rm --network none --cap-add mknod localhost/busybox sh -c \
  'mknod /tmp/blk b 7 0 && echo podman_mknod=ok; head -c1 /tmp/blk 2>&1 | sed s/^/podman:/; head -c1 /dev/null; echo podman_null_rc=$?'

$K run --rm --network none --pids-limit 20 busybox \
  sh -c 'for i in $(seq 1 40); do sleep 3 & done; wait'
echo pids_rc=$?

$K run --rm --network none --memory 32m busybox dd if=/dev/zero of=/dev/null bs=64M count=1
echo oom_rc=$?
$K run --rm --network none --memory 256m busybox dd if=/dev/zero of=/dev/null bs=64M count=1
echo big_rc=$?

$K run --rm --network none busybox sh -c \
  'mknod /tmp/blk b 7 0 && echo mknod=ok; head -c1 /tmp/blk; echo block_rc=$?; head -c1 /dev/null; echo null_rc=$?'

mkdir /tmp/ctx
printf 'FROM busybox\nRUN echo built > /f && mknod /blk b 7 0 && ! head -c1 /blk && rm /blk\n' > /tmp/ctx/Dockerfile
$K build --progress plain --network none -t built /tmp/ctx >/tmp/build.log 2>&1 || {{ cat /tmp/build.log; exit 94; }}
echo file=$($K run --rm --network none built cat /f)

# A step's /proc/self/cgroup reads 0::/ (its own cgroup namespace, as BuildKit's on v2): the
# guest reads the cgroup of the step's `sleep` from outside.
mkdir /tmp/ctx2
printf 'FROM busybox\nRUN cat /proc/self/cgroup && sleep 5 && mknod /blk b 7 0 && ! head -c1 /blk && rm /blk\n' > /tmp/ctx2/Dockerfile
$K build --progress plain --network none --cgroup-parent /ci/jobs -t parented /tmp/ctx2 >/tmp/parent.log 2>&1 &
echo parent_run=$(cgroup_of 'sleep 5')
wait $! || {{ cat /tmp/parent.log; exit 95; }}
echo parent_ns=$(grep -o '0::/[^ ]*' /tmp/parent.log | head -n1)
echo parent_left=$(find /sys/fs/cgroup/ci/jobs -mindepth 1 -type d | wc -l)

# RUN --security=insecure leaves the device program's cgroup (kiln-insecure): /dev/kmsg
# (c 1 11, not on the list; opened write-only, which needs no capability) opens there and
# not in a normal step. $((..)) keeps the markers out of the steps' titles in the log.
mkdir /tmp/ctx3
printf 'FROM busybox\nRUN --security=insecure cat /proc/self/cgroup && sleep 6 && mknod /k c 1 11 && echo kiln-insecure-step > /k && echo insecure_open=$((1+1))\nRUN mknod /k2 c 1 11 && (echo x > /k2) 2>&1 | grep "Operation not permitted" && echo secure_denied=$((1+1))\n' > /tmp/ctx3/Dockerfile
$K build --progress plain --network none --allow security.insecure -t insecure /tmp/ctx3 >/tmp/insecure.log 2>&1 &
echo insecure_cgroup=$(cgroup_of 'sleep 6')
wait $! || {{ cat /tmp/insecure.log; exit 99; }}
echo insecure_ns=$(grep -o '0::/[^ ]*' /tmp/insecure.log | head -n1)
grep -o 'insecure_open=2\|secure_denied=2' /tmp/insecure.log
"#,
        prelude = prelude()
    );
    let g = vm::run(&script, &[("busybox.tar", &busybox_tar()?)])?.ok()?;
    let out = &g.output;
    ensure!(g.value("fstype") == Some("cgroup2"), "{out}");
    ensure!(g.value("memory.max") == Some("67108864"), "{out}");
    ensure!(g.value("pids.max") == Some("20"), "{out}");
    ensure!(g.value("cpu.max") == Some("50000 100000"), "{out}");
    // podman (runc's cgroup v2 code) writes the same values for the same flags and
    // reports the same OOM exit.
    for key in ["memory.max", "pids.max", "cpu.max"] {
        ensure!(
            g.value(&format!("podman.{key}")) == g.value(key),
            "{key} differs from podman's:\n{out}"
        );
    }
    ensure!(g.value("podman_oom_rc") == g.value("oom_rc"), "{out}");
    ensure!(
        g.value("throttled").and_then(|t| t.parse::<u64>().ok()) > Some(0),
        "a busy loop under --cpus 0.5 was never throttled:\n{out}"
    );
    ensure!(g.value("removed") == Some("yes"), "{out}");
    ensure!(
        g.value("pids_rc") != Some("0") && out.contains("can't fork"),
        "{out}"
    );
    ensure!(g.value("oom_rc") == Some("137"), "{out}");
    ensure!(g.value("big_rc") == Some("0"), "{out}");
    ensure!(g.value("mknod") == Some("ok"), "{out}");
    ensure!(
        g.value("block_rc") == Some("1") && out.contains("/tmp/blk: Operation not permitted"),
        "{out}"
    );
    ensure!(g.value("null_rc") == Some("0"), "{out}");
    ensure!(
        g.value("podman_mknod") == Some("ok")
            && out.contains("podman:head: /tmp/blk: Operation not permitted")
            && g.value("podman_null_rc") == g.value("null_rc"),
        "the device policy differs from podman's:\n{out}"
    );
    ensure!(g.value("file") == Some("built"), "{out}");
    // --cgroup-parent on v2: the RUN step ran in /ci/jobs/kiln-<pid> (under the device
    // program attached there: the mknod'ed block device did not open), removed afterwards.
    ensure!(
        g.value("parent_run")
            .is_some_and(|c| c.starts_with("0::/ci/jobs/kiln-")),
        "{out}"
    );
    ensure!(g.value("parent_left") == Some("0"), "{out}");
    ensure!(
        g.value("parent_ns") == Some("0::/") && g.value("insecure_ns") == Some("0::/"),
        "{out}"
    );
    ensure!(
        g.value("insecure_cgroup") == Some("0::/kiln-insecure")
            && g.value("insecure_open") == Some("2")
            && g.value("secure_denied") == Some("2"),
        "{out}"
    );
    Ok(())
}

/// Rootless, as systemd's `Delegate=yes` leaves it: a cgroup owned by the user (the directory
/// and its cgroup.procs, cgroup.subtree_control, cgroup.threads), memory, pids and cpu enabled
/// in the parent's subtree_control, the user's shell inside. `kiln run` limits apply in a
/// child cgroup of it (the shell and the session moved into a leaf); a session outside any
/// delegated subtree, or in one without a needed controller, warns and runs unlimited.
#[test]
fn cgroup_v2_rootless_limits_apply_in_a_delegated_subtree() -> anyhow::Result<()> {
    if !vm::available(&[]) {
        return Ok(());
    }
    let kiln = kiln_bin();
    let user = format!(
        r#"K={kiln}
$K import --change 'CMD ["sh"]' /run/vm/busybox.tar busybox >/dev/null || exit 80
{WAIT_CGROUP}
echo own=$(cat /proc/self/cgroup)
$K run -d --name lim --network none --memory 64m --pids-limit 20 --cpus 0.5 busybox \
  sh -c 'while :; do :; done' >/dev/null 2>$HOME/run.err || {{ cat $HOME/run.err; exit 81; }}
echo warned=$(grep -c 'warning: rootless' $HOME/run.err)
d=$(wait_cgroup $D/kiln) || exit 82
echo cgroup=${{d#$D/}}
echo memory.max=$(cat $d/memory.max)
echo pids.max=$(cat $d/pids.max)
echo cpu.max=$(cat $d/cpu.max)
echo moved=$(cat /proc/self/cgroup)
echo parent_procs=$(cat $D/cgroup.procs | wc -l)
$K rm -f lim >/dev/null || exit 83
[ -e $d ] && echo removed=no || echo removed=yes
$K run --rm --network none --pids-limit 20 busybox \
  sh -c 'for i in $(seq 1 40); do sleep 3 & done; wait'
echo pids_rc=$?
$K run --rm --network none --memory 32m busybox dd if=/dev/zero of=/dev/null bs=64M count=1
echo oom_rc=$?
# Its cgroup view, as rootless podman's: the own cgroup read-only in a cgroup namespace.
$K run --rm --network none --memory 64m busybox sh -c 'echo view_cg=$(cat /proc/self/cgroup); \
  echo view_mem=$(cat /sys/fs/cgroup/memory.max); mkdir /sys/fs/cgroup/x 2>&1 | sed s/^/view_mkdir=/'
mkdir $HOME/ctx && printf 'FROM busybox\nRUN echo built > /f\n' > $HOME/ctx/Dockerfile
$K build --progress plain --network none -t built $HOME/ctx >$HOME/build.log 2>&1 || {{ cat $HOME/build.log; exit 84; }}
echo file=$($K run --rm --network none built cat /f)
"#,
        kiln = kiln.display()
    );
    let undelegated = r#"$K run --rm --network none --memory 32m busybox dd if=/dev/zero of=/dev/null bs=64M count=1 2>$HOME/u.err
echo unlimited_rc=$?
cat $HOME/u.err
"#;
    let nocpu = r#"$K run --rm --network none --cpus 0.5 --memory 64m busybox echo ran 2>$HOME/c.err
echo nocpu_rc=$?
cat $HOME/c.err
"#;
    let script = r#"
useradd -M -l -K SUB_UID_COUNT=0 -K SUB_GID_COUNT=0 kvm || exit 70
usermod --add-subuids 600000-665535 --add-subgids 600000-665535 kvm || exit 71
D=/sys/fs/cgroup/deleg
echo '+memory +pids +cpu' > /sys/fs/cgroup/cgroup.subtree_control || exit 72
mkdir $D && chown kvm:kvm $D $D/cgroup.procs $D/cgroup.subtree_control $D/cgroup.threads || exit 73
# The user's shell in the delegated cgroup, as a systemd scope with Delegate=yes has it.
sh -c "echo \$\$ > $D/cgroup.procs && exec sh /run/vm/as_user.sh a /run/vm/user.sh" || exit 74
# A session outside any delegated subtree (in the root cgroup).
sh /run/vm/as_user.sh b /run/vm/undelegated.sh || exit 75
# A delegated cgroup whose parent enables memory and pids but not cpu.
M=/sys/fs/cgroup/mid; D2=$M/deleg2
mkdir $M && echo '+memory +pids' > $M/cgroup.subtree_control && mkdir $D2 || exit 76
chown kvm:kvm $D2 $D2/cgroup.procs $D2/cgroup.subtree_control $D2/cgroup.threads || exit 77
sh -c "echo \$\$ > $D2/cgroup.procs && exec sh /run/vm/as_user.sh c /run/vm/nocpu.sh" || exit 78
"#;
    let as_user = r#"mkdir -p /home/$1/run && chown -R kvm:kvm /home/$1 && chmod 700 /home/$1/run
exec setpriv --reuid=kvm --regid=kvm --clear-groups -- env -i D=/sys/fs/cgroup/deleg \
  PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/home/$1 XDG_RUNTIME_DIR=/home/$1/run \
  KILN_ROOT=/home/$1/kiln KILN_ROOTLESS_NET=none sh $2
"#;
    let busybox = busybox_tar()?;
    let with_busybox = |body: &str| {
        format!(
            "K={kiln}\n$K import --change 'CMD [\"sh\"]' /run/vm/busybox.tar busybox >/dev/null || exit 80\n{body}",
            kiln = kiln.display()
        )
    };
    let g = vm::run(
        script,
        &[
            ("busybox.tar", &busybox),
            ("as_user.sh", as_user.as_bytes()),
            ("user.sh", user.as_bytes()),
            ("undelegated.sh", with_busybox(undelegated).as_bytes()),
            ("nocpu.sh", with_busybox(nocpu).as_bytes()),
        ],
    )?
    .ok()?;
    let out = &g.output;
    ensure!(g.value("own") == Some("0::/deleg"), "{out}");
    ensure!(g.value("warned") == Some("0"), "{out}");
    ensure!(
        g.value("cgroup").is_some_and(|c| c.starts_with("kiln/")),
        "{out}"
    );
    ensure!(g.value("memory.max") == Some("67108864"), "{out}");
    ensure!(g.value("pids.max") == Some("20"), "{out}");
    ensure!(g.value("cpu.max") == Some("50000 100000"), "{out}");
    ensure!(g.value("moved") == Some("0::/deleg/kiln-init"), "{out}");
    ensure!(g.value("parent_procs") == Some("0"), "{out}");
    ensure!(g.value("removed") == Some("yes"), "{out}");
    ensure!(
        g.value("pids_rc") != Some("0") && out.contains("can't fork"),
        "{out}"
    );
    ensure!(g.value("oom_rc") == Some("137"), "{out}");
    ensure!(
        g.value("view_cg") == Some("0::/")
            && g.value("view_mem") == Some("67108864")
            && g.value("view_mkdir")
                .is_some_and(|e| e.ends_with("Read-only file system")),
        "{out}"
    );
    // A rootless RUN step and a two-layer container on Linux 6.1 (the overlay's `lowerdir`
    // fallback, with `userxattr`).
    ensure!(g.value("file") == Some("built"), "{out}");
    ensure!(g.value("unlimited_rc") == Some("0"), "{out}");
    ensure!(
        out.contains("warning: rootless: no delegated cgroup v2 subtree is writable: running without --memory/--cpus/--pids-limit limits\nhint: systemd delegates one to a scope: systemd-run --user --scope -p Delegate=yes kiln ..."),
        "{out}"
    );
    ensure!(
        g.value("nocpu_rc") == Some("0") && out.contains("\nran\n"),
        "{out}"
    );
    ensure!(
        out.contains("warning: rootless: the delegated cgroup /sys/fs/cgroup/mid/deleg2 does not offer the cpu controller: running without --memory/--cpus/--pids-limit limits"),
        "{out}"
    );
    Ok(())
}

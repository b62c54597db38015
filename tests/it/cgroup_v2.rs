//! kiln on a pure cgroup v2 host, in a qemu guest ([`crate::vm`]): the limits of `kiln run`
//! (memory.max, pids.max, cpu.max written and enforced), the eBPF device program, a build's
//! RUN step, and rootless limits in a delegated subtree.

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

/// Waits (up to 60 s: TCG is slow) until a cgroup below `$1` other than the device policy's
/// `sandbox` holds a process (cgroup files have no size: `test -s` cannot tell); prints it.
const WAIT_CGROUP: &str = r#"
wait_cgroup() {
  for i in $(seq 1 600); do
    for d in $1/*/; do
      case $d in */sandbox/) continue;; esac
      [ -n "$(cat $d/cgroup.procs 2>/dev/null)" ] && { echo "${d%/}"; return 0; }
    done
    sleep 0.1
  done
  return 1
}
"#;

#[test]
fn cgroup_v2_root_limits_hold_devices_are_denied_and_run_steps_build() -> anyhow::Result<()> {
    if !vm::available() {
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
"#,
        prelude = prelude()
    );
    let g = vm::run(&script, &[("busybox.tar", &busybox_tar()?)])?.ok()?;
    let out = &g.output;
    ensure!(g.value("fstype") == Some("cgroup2"), "{out}");
    ensure!(g.value("memory.max") == Some("67108864"), "{out}");
    ensure!(g.value("pids.max") == Some("20"), "{out}");
    ensure!(g.value("cpu.max") == Some("50000 100000"), "{out}");
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
    ensure!(g.value("file") == Some("built"), "{out}");
    Ok(())
}

#!/usr/bin/env bash
# Rootless kiln against root kiln and rootless podman, in one run:
# - many-steps: a 40-RUN Dockerfile built with --no-cache, as root and as an ordinary user;
# - start-to-exit: `kiln run --rm IMAGE true` rootless, against rootless `podman run --rm`.
# Medians of N runs (wall clock); compare ratios within one run (these machines are noisy).
#
# Usage: bench/rootless.sh [-n RUNS] [--kiln PATH]
# Needs root (it creates the user kiln-bench-rl with a subordinate range), /bin/busybox,
# uidmap and slirp4netns; podman for the comparison (skipped with a note when missing).
set -euo pipefail

runs=10
here=$(cd "$(dirname "$0")" && pwd)
kiln="$here/../target/release/kiln"
while [ $# -gt 0 ]; do
  case "$1" in
    -n) runs=$2; shift 2 ;;
    --kiln) kiln=$2; shift 2 ;;
    *) echo "usage: $0 [-n RUNS] [--kiln PATH]" >&2; exit 2 ;;
  esac
done
[ -x "$kiln" ] || { echo "bench: $kiln missing: cargo build --release -p kiln-cli" >&2; exit 1; }
kiln=$(readlink -f "$kiln")
user=kiln-bench-rl
if ! id "$user" >/dev/null 2>&1; then
  useradd -M -K SUB_UID_COUNT=0 -K SUB_GID_COUNT=0 "$user"
  usermod --add-subuids 700000-765535 --add-subgids 700000-765535 "$user"
fi
uid=$(id -u "$user"); gid=$(id -g "$user")

work=$(mktemp -d /var/tmp/kiln-rootless-bench.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/home" "$work/run" "$work/ctx"
chown "$uid:$gid" "$work/home" "$work/run"
chmod 700 "$work/run"
cleanup() {
  [ -f "$work/run/kiln/pause.pid" ] && kill "$(cat "$work/run/kiln/pause.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"$here/../examples/make-busybox-rootfs.sh" "$work/busybox.tar"
chmod 644 "$work/busybox.tar"
{
  echo "FROM busybox"
  for i in $(seq 1 40); do echo "RUN echo $i > /f$i"; done
} > "$work/ctx/Dockerfile"

as_user() {
  setpriv --reuid="$uid" --regid="$gid" --clear-groups -- env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin \
    HOME="$work/home" XDG_RUNTIME_DIR="$work/run" "$@"
}

# median MS-LIST: the middle value.
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# time_ms CMD...: wall milliseconds of one run (output discarded; failure stops the bench).
time_ms() {
  local t0 t1
  t0=$(date +%s%N)
  "$@" >/dev/null 2>&1 || { echo "bench: failed: $*" >&2; "$@" >&2 || true; exit 1; }
  t1=$(date +%s%N)
  echo $(( (t1 - t0) / 1000000 ))
}
bench() { # NAME CMD...
  local name=$1 all=""; shift
  for _ in $(seq 1 "$runs"); do all="$all $(time_ms "$@")"; done
  printf '%-40s median %6s ms  (%s)\n' "$name" "$(echo "$all" | median)" "$all"
}

KILN_ROOT="$work/root-root" "$kiln" import --change 'CMD ["sh"]' "$work/busybox.tar" busybox >/dev/null
as_user env KILN_ROOT="$work/home/root" "$kiln" import --change 'CMD ["sh"]' "$work/busybox.tar" busybox >/dev/null

echo "== many-steps: 40 RUN, --no-cache ($runs runs each)"
bench "root kiln build" env KILN_ROOT="$work/root-root" "$kiln" build --no-cache -q -t m "$work/ctx"
bench "rootless kiln build" as_user env KILN_ROOT="$work/home/root" "$kiln" build --no-cache -q -t m "$work/ctx"

echo "== start-to-exit: run --rm IMAGE true ($runs runs each)"
bench "root kiln run --rm" env KILN_ROOT="$work/root-root" "$kiln" run --rm busybox true
bench "rootless kiln run --rm" as_user env KILN_ROOT="$work/home/root" "$kiln" run --rm busybox true
bench "rootless kiln run --rm --network none" as_user env KILN_ROOT="$work/home/root" "$kiln" run --rm --network none busybox true
if command -v podman >/dev/null; then
  as_user env KILN_ROOT="$work/home/root" "$kiln" save busybox -o "$work/home/busybox-image.tar"
  image=$(as_user podman load -i "$work/home/busybox-image.tar" | sed -n 's/^Loaded image[s]*: *//p' | head -1)
  # As bench/run-start.sh: runc (crun fails on this machine's hybrid cgroups), explicit ulimits.
  podman_run="podman --runtime /usr/sbin/runc run --rm --ulimit nofile=1024:1024 --ulimit nproc=1024:1024"
  bench "rootless podman run --rm --network none" as_user $podman_run --network none "$image" true
  bench "rootless podman run --rm (slirp4netns)" as_user $podman_run "$image" true
  as_user podman system reset -f >/dev/null 2>&1 || true
else
  echo "(podman missing: no comparison)"
fi

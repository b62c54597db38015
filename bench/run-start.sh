#!/usr/bin/env bash
# Container start-to-exit: `kiln run --rm IMAGE true` on the bridge and with --network none,
# against podman (runc) running the same image (imported with `podman load` of `kiln save`).
# hyperfine medians; compare ratios within one run (these machines are noisy).
#
# Usage: bench/run-start.sh [-n RUNS] [--kiln PATH]
# Needs root, /bin/busybox (busybox-static), hyperfine, python3; podman and runc for the
# comparison (apt-get install -y podman runc; skipped with a note when missing). podman is
# run as the issue asks: `--runtime /usr/sbin/runc` (crun fails on this machine's hybrid
# cgroups) and explicit ulimits (podman's defaults are refused here).
set -euo pipefail

runs=30
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
command -v hyperfine >/dev/null || { echo "bench: hyperfine missing" >&2; exit 1; }
kiln=$(readlink -f "$kiln")

work=$(mktemp -d /var/tmp/kiln-run-start.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$here/../examples/make-busybox-rootfs.sh" "$work/busybox.tar"
export KILN_ROOT="$work/root"
"$kiln" import --change 'CMD ["sh"]' "$work/busybox.tar" kiln-bench-busybox:latest >/dev/null

cmds=(
  "$kiln run --rm --network none kiln-bench-busybox true"
  "$kiln run --rm kiln-bench-busybox true"
)
names=("kiln none" "kiln bridge")

podman_image=""
if command -v podman >/dev/null && [ -x /usr/sbin/runc ]; then
  "$kiln" save kiln-bench-busybox:latest -o "$work/image.tar"
  podman_image=$(podman load -i "$work/image.tar" | sed -n 's/^Loaded image[s]*: *//p' | head -1)
  podman_run="podman --runtime /usr/sbin/runc run --rm --ulimit nofile=1024:1024 --ulimit nproc=1024:1024"
  cmds+=("$podman_run --network none $podman_image true" "$podman_run $podman_image true")
  names+=("podman none" "podman bridge")
else
  echo "note: podman or /usr/sbin/runc missing: kiln only"
fi

echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); runs=$runs"
args=()
for i in "${!cmds[@]}"; do args+=(-n "${names[$i]}" "${cmds[$i]}"); done
hyperfine -N --warmup 3 --runs "$runs" --export-json "$work/result.json" "${args[@]}" >/dev/null

python3 - "$work/result.json" <<'EOF'
import json, statistics, sys
res = {r["command"]: statistics.median(r["times"]) * 1000 for r in json.load(open(sys.argv[1]))["results"]}
for name, ms in res.items():
    print(f"{name:<14} median {ms:7.1f} ms")
for mode in ("none", "bridge"):
    k, p = res.get(f"kiln {mode}"), res.get(f"podman {mode}")
    if k and p:
        print(f"podman/kiln {mode:<6} {p / k:5.1f}x (target >= 3x)")
EOF
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "$podman_image" ]; then podman rmi -f "$podman_image" >/dev/null 2>&1 || true; fi

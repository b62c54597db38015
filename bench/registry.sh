#!/usr/bin/env bash
# Registry benchmark: push and pull of a single-layer image (512 MiB by default) to and from a
# local CNCF registry (Debian's docker-registry), kiln against `skopeo copy` of the same image
# in the same run. Prints medians of RUNS runs and the peak RSS of each tool.
#
#   bench/registry.sh                # SIZE_MIB=512 RUNS=3
#   SIZE_MIB=1024 RUNS=1 bench/registry.sh
#   RT=1 bench/registry.sh           # a quiet machine on a busy one (see below)
#
# RT=1 runs the registry and every timed kiln and skopeo operation (not the cold push) with
# the real-time round-robin policy (`chrt -r 10`), so that on a machine shared with busy
# neighbours both tools get the CPUs as on an idle one. Both get the same treatment; the
# kernel's RT throttling still leaves 5% to everything else.
#
# kiln's side runs one library operation per process (cache/tests/registry_bench.rs, release
# build). Each push goes to a freshly started registry with empty storage, so nothing is
# skipped or mounted. "kiln push" reuses the memoized gzip blob, as skopeo copies an
# already-compressed blob; the first, cold push (compression included) is shown separately.
# "kiln pull" verifies both digests (blob and diff_id) and unpacks into a snapshot, keeping the
# compressed blob (not the tar); "skopeo pull" (to an OCI dir) only downloads and verifies.
# The machine is shared: the load average is printed, and the ratios (same run) are what to
# compare.
set -euo pipefail
SIZE_MIB=${SIZE_MIB:-512}
RUNS=${RUNS:-3}
RT=${RT:-0}
PRIO=()
if [ "$RT" = 1 ]; then PRIO=(chrt -r 10); fi
cd "$(dirname "$0")/.."

for tool in docker-registry skopeo /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "bench/registry.sh: $tool is missing" >&2; exit 1; }
done

echo "building the release bench binary..." >&2
bin=$(cargo test --release -p kiln-cache --test registry_bench --no-run 2>&1 |
    sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -1)
[ -x "$bin" ] || { echo "bench/registry.sh: cannot find the bench binary" >&2; exit 1; }

W=$(mktemp -d /var/tmp/kiln-registry-bench.XXXXXX)
source "$(dirname "$0")/lib/registry.sh"
trap 'stop_registry; rm -rf "$W"' EXIT

# measure NAME CMD...: appends "seconds kib" to $W/NAME.
measure() {
    local name=$1; shift
    if ! /usr/bin/time -f "%e %M" -o "$W/time" "$@" >"$W/out" 2>"$W/err"; then
        echo "bench/registry.sh: $name failed:" >&2; tail -20 "$W/err" >&2; exit 1
    fi
    cat "$W/time" >> "$W/$name"
}

KILN=("$bin" --ignored --exact registry_bench_op --nocapture --test-threads 1)
# kiln_op OP ROOT [REF]: the words of one kiln operation, for `measure` or direct use.
kiln_op() {
    env KILN_BENCH_OP="$1" KILN_BENCH_ROOT="$2" KILN_BENCH_REF="${3:-}" KILN_BENCH_SIZE_MIB="$SIZE_MIB" \
        KILN_BENCH_OUT="$W/saved.tar" "${KILN[@]}"
}
kiln_words() {
    echo env KILN_BENCH_OP="$1" KILN_BENCH_ROOT="$2" KILN_BENCH_REF="${3:-}" "${KILN[@]}"
}

echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "making a ${SIZE_MIB} MiB single-layer image..." >&2
kiln_op make "$W/src" >/dev/null 2>&1
start_registry
measure kiln-push-cold $(kiln_words push "$W/src" "127.0.0.1:$PORT/kiln/cold:1")
kiln_op save "$W/src" >/dev/null 2>&1
mkdir -p "$W/oci" && tar -xf "$W/saved.tar" -C "$W/oci"

for i in $(seq "$RUNS"); do
    echo "run $i/$RUNS..." >&2
    start_registry
    rm -rf "$W/src/registry"
    measure kiln-push "${PRIO[@]}" $(kiln_words push "$W/src" "127.0.0.1:$PORT/kiln/bench:$i")
    rm -rf "$W/dst"
    measure kiln-pull "${PRIO[@]}" $(kiln_words pull "$W/dst" "127.0.0.1:$PORT/kiln/bench:$i")
    start_registry
    measure skopeo-push "${PRIO[@]}" skopeo copy -q --dest-tls-verify=false "oci:$W/oci" "docker://127.0.0.1:$PORT/skopeo/bench:$i"
    rm -rf "$W/skopeo-dst"
    measure skopeo-pull "${PRIO[@]}" skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$PORT/skopeo/bench:$i" "oci:$W/skopeo-dst:bench"
done
stop_registry

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

printf '%-16s %10s %10s %14s\n' "operation" "median s" "MB/s" "peak RSS MiB"
for name in kiln-push-cold kiln-push skopeo-push kiln-pull skopeo-pull; do
    secs=$(awk '{print $1}' "$W/$name" | median)
    rss=$(awk '{print $2}' "$W/$name" | sort -n | tail -1)
    printf '%-16s %10.2f %10.0f %14.1f\n' "$name" "$secs" "$(echo "$SIZE_MIB * 1.048576 / $secs" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
done
echo "(${SIZE_MIB} MiB uncompressed, about half compressible; ${RUNS} runs; RT=$RT; MB/s of uncompressed size)"
for op in push pull; do
    k=$(awk '{print $1}' "$W/kiln-$op" | median)
    sk=$(awk '{print $1}' "$W/skopeo-$op" | median)
    printf 'kiln/skopeo %s time ratio: %.2f (below 1: kiln faster)\n' "$op" "$(echo "$k / $sk" | bc -l)"
done

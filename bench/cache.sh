#!/usr/bin/env bash
# Remote cache benchmark (issue 5), against a local CNCF registry (Debian's docker-registry):
#
#   re-export   `kiln build --cache-to type=registry,mode=max` of a build already exported
#               (every step cached, every blob already in the registry): the export line's
#               own time and the whole command. Target: under 1 s.
#   fresh       a fresh runner: an empty KILN_ROOT (busybox imported) building the same
#               Dockerfile with `--cache-from` (zero RUN executed, final layers downloaded).
#   warm+pull   the warm local no-op rebuild plus `kiln pull` of the final image into an empty
#               root. Target: fresh <= warm+pull.
#
# The Dockerfile has a builder stage (SIZE_MIB of random data, never needed by the fresh
# runner: a lazy import skips it) and a final stage with SIZE_MIB/2 of data plus a COPY.
#
#   bench/cache.sh                       # SIZE_MIB=64 RUNS=5, target/release/kiln
#   SIZE_MIB=256 RUNS=3 KILN=target/debug/kiln bench/cache.sh
#
# Needs root (namespaces, overlayfs), /bin/busybox, docker-registry, python3.
set -euo pipefail
SIZE_MIB=${SIZE_MIB:-64}
RUNS=${RUNS:-5}
cd "$(dirname "$0")/.."
KILN=$(readlink -f "${KILN:-target/release/kiln}")
[ -x "$KILN" ] || { echo "bench/cache.sh: $KILN missing: cargo build --release -p kiln-cli" >&2; exit 1; }
for tool in docker-registry python3 /bin/busybox; do
    command -v "$tool" >/dev/null || { echo "bench/cache.sh: $tool is missing" >&2; exit 1; }
done

W=$(mktemp -d /var/tmp/kiln-cache-bench.XXXXXX)
source "$(dirname "$0")/lib/registry.sh"
BENCH=bench/cache.sh
source "$(dirname "$0")/lib/cache-build.sh"
trap 'stop_registry; rm -rf "$W"' EXIT
start_registry

make_cache_bench_inputs

for i in $(seq "$RUNS"); do
    echo "run $i/$RUNS..." >&2
    CACHE="127.0.0.1:$PORT/bench/cache:run$i"
    IMAGE="127.0.0.1:$PORT/bench/app:run$i"
    new_root "$W/a"
    KILN_ROOT="$W/a" t "$KILN" build --progress plain -t "$IMAGE" --cache-to "type=registry,ref=$CACHE,mode=max" "$W/ctx" >> "$W/cold-export"
    KILN_ROOT="$W/a" t "$KILN" build --progress plain -t "$IMAGE" --cache-to "type=registry,ref=$CACHE,mode=max" "$W/ctx" >> "$W/reexport-cmd"
    reexport_time "$W/reexport" ""
    KILN_ROOT="$W/a" t "$KILN" build --progress plain -t "$IMAGE" "$W/ctx" >> "$W/warm"
    KILN_ROOT="$W/a" "$KILN" push "$IMAGE" >/dev/null 2>&1
    rm -rf "$W/p"
    KILN_ROOT="$W/p" t "$KILN" pull "$IMAGE" >> "$W/pull"
    new_root "$W/f"
    KILN_ROOT="$W/f" t "$KILN" build --progress plain -t "$IMAGE" --cache-from "$CACHE" "$W/ctx" >> "$W/fresh"
    no_cache_miss ""
done

printf '%-34s %10s\n' "measure (median of $RUNS)" "seconds"
for name in cold-export reexport reexport-cmd warm pull fresh; do
    printf '%-34s %10.3f\n' "$name" "$(median < "$W/$name")"
done
warm=$(median < "$W/warm"); pull=$(median < "$W/pull"); fresh=$(median < "$W/fresh")
printf '%-34s %10.3f\n' "warm+pull" "$(echo "$warm + $pull" | bc -l)"
printf '%-34s %10.2f\n' "fresh / (warm+pull)" "$(echo "$fresh / ($warm + $pull)" | bc -l)"
echo "(builder stage ${SIZE_MIB} MiB, final image $((SIZE_MIB / 2)) MiB + 1 MiB; load: $(cut -d' ' -f1-3 /proc/loadavg))"

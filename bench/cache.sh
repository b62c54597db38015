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
trap 'stop_registry; rm -rf "$W"' EXIT
start_registry

# A busybox rootfs tar (the same bytes every time, so every root gets the same base digest).
mkdir -p "$W/rootfs/bin" "$W/rootfs/etc" "$W/rootfs/tmp"
cp /bin/busybox "$W/rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$W/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$W/rootfs/etc/passwd"
echo 'root:x:0:' > "$W/rootfs/etc/group"
tar -C "$W/rootfs" --mtime=@0 --owner=0 --group=0 --sort=name -cf "$W/busybox.tar" .

mkdir -p "$W/ctx"
head -c 1M /dev/urandom > "$W/ctx/src.bin"
cat > "$W/ctx/Dockerfile" <<DF
FROM busybox AS builder
RUN dd if=/dev/urandom of=/toolchain bs=1048576 count=${SIZE_MIB} 2>/dev/null && echo built > /artifact

FROM busybox
RUN dd if=/dev/urandom of=/runtime-data bs=1048576 count=$((SIZE_MIB / 2)) 2>/dev/null
COPY src.bin /app/src.bin
COPY --from=builder /artifact /app/artifact
RUN cat /app/artifact > /app/ready
DF

new_root() {
    rm -rf "$1"
    KILN_ROOT="$1" "$KILN" import --change 'ENV PATH=/bin' "$W/busybox.tar" busybox >/dev/null
}
now() { date +%s.%N; }
# t CMD...: runs CMD (output to $W/out), prints its wall time in seconds.
t() {
    local s; s=$(now)
    if ! "$@" >"$W/out" 2>&1; then echo "bench/cache.sh: failed: $*" >&2; tail -20 "$W/out" >&2; exit 1; fi
    echo "$(now) - $s" | bc -l
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

for i in $(seq "$RUNS"); do
    echo "run $i/$RUNS..." >&2
    CACHE="127.0.0.1:$PORT/bench/cache:run$i"
    IMAGE="127.0.0.1:$PORT/bench/app:run$i"
    new_root "$W/a"
    KILN_ROOT="$W/a" t "$KILN" build --progress plain -t "$IMAGE" --cache-to "type=registry,ref=$CACHE,mode=max" "$W/ctx" >> "$W/cold-export"
    KILN_ROOT="$W/a" t "$KILN" build --progress plain -t "$IMAGE" --cache-to "type=registry,ref=$CACHE,mode=max" "$W/ctx" >> "$W/reexport-cmd"
    sed -n 's/^exporting cache to .* in \([0-9.]*\)s$/\1/p' "$W/out" >> "$W/reexport"
    grep -q '(0 uploaded, 0 mounted' "$W/out" || { echo "re-export uploaded something:" >&2; grep exporting "$W/out" >&2; exit 1; }
    KILN_ROOT="$W/a" t "$KILN" build --progress plain -t "$IMAGE" "$W/ctx" >> "$W/warm"
    KILN_ROOT="$W/a" "$KILN" push "$IMAGE" >/dev/null 2>&1
    rm -rf "$W/p"
    KILN_ROOT="$W/p" t "$KILN" pull "$IMAGE" >> "$W/pull"
    new_root "$W/f"
    KILN_ROOT="$W/f" t "$KILN" build --progress plain -t "$IMAGE" --cache-from "$CACHE" "$W/ctx" >> "$W/fresh"
    if grep -q 'cache miss' "$W/out"; then echo "fresh runner missed the cache:" >&2; grep 'cache miss' "$W/out" >&2; exit 1; fi
done

printf '%-34s %10s\n' "measure (median of $RUNS)" "seconds"
for name in cold-export reexport reexport-cmd warm pull fresh; do
    printf '%-34s %10.3f\n' "$name" "$(median < "$W/$name")"
done
warm=$(median < "$W/warm"); pull=$(median < "$W/pull"); fresh=$(median < "$W/fresh")
printf '%-34s %10.3f\n' "warm+pull" "$(echo "$warm + $pull" | bc -l)"
printf '%-34s %10.2f\n' "fresh / (warm+pull)" "$(echo "$fresh / ($warm + $pull)" | bc -l)"
echo "(builder stage ${SIZE_MIB} MiB, final image $((SIZE_MIB / 2)) MiB + 1 MiB; load: $(cut -d' ' -f1-3 /proc/loadavg))"

#!/usr/bin/env bash
# ADD of compressed tars: `kiln build --no-cache` of `ADD a.tar.<codec> /x/` (decoded in-process
# by the bzip2 / liblzma / flate2 / zstd crates) against the host's `<tool> -dc | tar -x` of the
# same archive, in the same run. Prints the median wall time of RUNS runs per codec. kiln's time
# includes committing the layer (tar, SHA-256, snapshot); the host's is decode and extract only.
#
#   bench/archives.sh [--kiln PATH]      # SIZE_MIB=84 RUNS=3
#
# The archive holds copies of binaries from /usr/bin and /usr/lib (mixed, partly compressible
# data). Host tools only create the archives and give the baseline. A debug kiln is fine here:
# dependencies build with opt-level 2 even in the dev profile (Cargo.toml).
# Needs root (kiln build), /bin/busybox, bzip2, xz, gzip, zstd.
set -euo pipefail
SIZE_MIB=${SIZE_MIB:-84}
RUNS=${RUNS:-3}
here=$(cd "$(dirname "$0")" && pwd)
kiln="$here/../target/release/kiln"
[ "${1:-}" = "--kiln" ] && kiln=$2
[ -x "$kiln" ] || { echo "bench/archives.sh: $kiln missing (cargo build [--release] -p kiln-cli)" >&2; exit 1; }
for t in bzip2 xz gzip zstd /bin/busybox; do
  command -v "$t" >/dev/null || { echo "bench/archives.sh: $t is missing" >&2; exit 1; }
done

W=$(mktemp -d /var/tmp/kiln-archives-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
export KILN_ROOT="$W/root"

# Data: whole files from /usr/bin and /usr/lib until SIZE_MIB.
mkdir -p "$W/data" "$W/ctx"
limit=$((SIZE_MIB * 1024 * 1024)); total=0; i=0
while IFS= read -r f; do
  s=$(stat -c %s "$f"); [ "$s" -gt 0 ] || continue
  cp "$f" "$W/data/$i"; i=$((i + 1)); total=$((total + s))
  [ "$total" -lt "$limit" ] || break
done < <(find /usr/bin /usr/lib -maxdepth 2 -type f -size +8k 2>/dev/null | sort)
tar -cf "$W/ctx/a.tar" -C "$W" data
bzip2 -9 -k "$W/ctx/a.tar"; xz -6 -T1 -k "$W/ctx/a.tar"; gzip -6 -k "$W/ctx/a.tar"
zstd -3 -q -k "$W/ctx/a.tar"

# A busybox base image.
mkdir -p "$W/bb/bin"; cp /bin/busybox "$W/bb/bin/busybox"; ln -s busybox "$W/bb/bin/sh"
tar -cf "$W/bb.tar" -C "$W/bb" .
"$kiln" import "$W/bb.tar" busybox >/dev/null

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
elapsed() { awk -v s="$1" -v e="$(now)" 'BEGIN {printf "%.3f\n", e - s}'; }

printf '%-6s %10s %10s %12s %12s\n' codec tar_MB file_MB kiln_s host_s
for c in bz2:bzip2 xz:xz gz:gzip zst:zstd; do
  ext=${c%%:*}; tool=${c#*:}
  printf 'FROM busybox\nADD a.tar.%s /x/\n' "$ext" > "$W/ctx/Dockerfile"
  k=$(for _ in $(seq "$RUNS"); do
        s=$(now); "$kiln" build --no-cache --progress plain -t bench:archives "$W/ctx" >/dev/null 2>&1
        elapsed "$s"; done | median)
  h=$(for _ in $(seq "$RUNS"); do
        rm -rf "$W/out"; mkdir "$W/out"; s=$(now)
        "$tool" -dc "$W/ctx/a.tar.$ext" | tar -x -C "$W/out"
        elapsed "$s"; done | median)
  printf '%-6s %10d %10d %12.2f %12.2f\n' "$ext" $(( $(stat -c %s "$W/ctx/a.tar") / 1000000 )) \
    $(( $(stat -c %s "$W/ctx/a.tar.$ext") / 1000000 )) "$k" "$h"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

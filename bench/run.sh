#!/usr/bin/env bash
# kiln benchmarks: cold and warm builds of a few scenarios, medians and peak RSS.
#
#   bench/run.sh [--quick] [--reps N] [--only SCENARIO] [--kiln PATH]
#
# Scenarios: parallel (three CPU-bound stages and a final stage copying from them),
# run40 (40 RUN steps), ctx20k (COPY of a 20,000-file context), layer512 (a 512 MiB RUN layer),
# edit (edit one context file and rebuild), run-true (`kiln run --rm IMAGE true`: sandbox
# start-to-exit).
#
# cold = fresh KILN_ROOT holding only the busybox base image; warm = the same build again.
# Wall time and peak RSS come from /usr/bin/time (Debian package `time`). When a docker daemon
# answers, the same scenarios run with `DOCKER_BUILDKIT=1 /usr/bin/docker build` (cold =
# --no-cache). Needs root, overlayfs and /bin/busybox (busybox-static).
set -euo pipefail

REPS=5
ONLY=""
HERE="$(cd "$(dirname "$0")" && pwd)"
KILN="$HERE/../target/release/kiln"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) REPS=1 ;;
    --reps) REPS="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    --kiln) KILN="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ ! -x "$KILN" ]; then
  echo "building kiln (release)..." >&2
  (cd "$HERE/.." && cargo build --release -p kiln-cli >&2)
fi
[ -x /usr/bin/time ] || { echo "bench: /usr/bin/time missing (apt-get install time)" >&2; exit 1; }

WORK="$(mktemp -d /tmp/kiln-bench.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# The busybox base image, as a rootfs tarball.
mkdir -p "$WORK/rootfs/bin" "$WORK/rootfs/etc" "$WORK/rootfs/tmp"
cp /bin/busybox "$WORK/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$WORK/rootfs/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$WORK/rootfs/etc/passwd"
printf 'root:x:0:\n' > "$WORK/rootfs/etc/group"
tar -C "$WORK/rootfs" -cf "$WORK/busybox.tar" .

# Scenario contexts.
mk_parallel() {
  local c="$1/ctx"; mkdir -p "$c"
  {
    for s in a b c; do
      echo "FROM busybox AS $s"
      echo "RUN i=0; while [ \$i -lt 300000 ]; do i=\$((i+1)); done; echo $s > /$s"
    done
    echo "FROM busybox"
    for s in a b c; do echo "COPY --from=$s /$s /$s"; done
  } > "$c/Dockerfile"
}
mk_run40() {
  local c="$1/ctx"; mkdir -p "$c"
  { echo "FROM busybox"; for i in $(seq 1 40); do echo "RUN echo $i > /f$i"; done; } > "$c/Dockerfile"
}
mk_ctx20k() {
  local c="$1/ctx"; mkdir -p "$c/files"
  for d in $(seq 0 199); do
    mkdir -p "$c/files/d$d"
    for f in $(seq 0 99); do echo "$d/$f" > "$c/files/d$d/f$f"; done
  done
  printf 'FROM busybox\nCOPY files /files\nRUN ls /files | wc -l\n' > "$c/Dockerfile"
}
mk_layer512() {
  local c="$1/ctx"; mkdir -p "$c"
  printf 'FROM busybox\nRUN head -c 536870912 /dev/urandom > /big\n' > "$c/Dockerfile"
}
mk_edit() {
  local c="$1/ctx"; mkdir -p "$c"
  echo one > "$c/app.txt"
  printf 'FROM busybox\nRUN echo deps > /deps\nCOPY app.txt /app.txt\nRUN cat /app.txt > /out\n' > "$c/Dockerfile"
}

# measure OUTFILE CMD...: appends "seconds max_rss_kib" to OUTFILE.
measure() {
  local out="$1"; shift
  /usr/bin/time -f "%e %M" -o "$WORK/t" "$@" >/dev/null 2>"$WORK/err" || {
    echo "bench: command failed: $*" >&2; tail -20 "$WORK/err" >&2; exit 1; }
  cat "$WORK/t" >> "$out"
}

# median FILE COLUMN
median() { awk -v c="$2" '{print $c}' "$1" | sort -n | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
peak() { awk -v c="$2" 'BEGIN{m=0} {if ($c>m) m=$c} END {print m}' "$1"; }

report() { # name tool phase file
  printf '%-10s %-9s %-6s median %8ss  peak RSS %6d MiB  (n=%d)\n' "$1" "$2" "$3" \
    "$(median "$4" 1)" "$(( $(peak "$4" 2) / 1024 ))" "$(wc -l < "$4")"
}

fresh_root() { # dir
  rm -rf "$1/root"
  KILN_ROOT="$1/root" "$KILN" import --change 'CMD ["sh"]' --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
    "$WORK/busybox.tar" busybox >/dev/null
}

bench_kiln() { # scenario
  local s="$1" d="$WORK/$1"
  mkdir -p "$d"; "mk_$s" "$d"
  : > "$d/cold"; : > "$d/warm"
  for _ in $(seq 1 "$REPS"); do
    fresh_root "$d"
    measure "$d/cold" env KILN_ROOT="$d/root" "$KILN" build --progress plain -t bench "$d/ctx"
    if [ "$s" = edit ]; then
      echo "edit $RANDOM" > "$d/ctx/app.txt"
    fi
    measure "$d/warm" env KILN_ROOT="$d/root" "$KILN" build --progress plain -t bench "$d/ctx"
  done
  local warm=warm; [ "$s" = edit ] && warm=edited
  report "$s" kiln cold "$d/cold"; report "$s" kiln "$warm" "$d/warm"
}

bench_run_true() {
  local d="$WORK/run-true"; mkdir -p "$d"; fresh_root "$d"; : > "$d/t"
  for _ in $(seq 1 $(( REPS * 10 ))); do
    measure "$d/t" env KILN_ROOT="$d/root" "$KILN" run --rm busybox true
  done
  report run-true kiln run "$d/t"
}

docker_up() { timeout 5 /usr/bin/docker info >/dev/null 2>&1; }

bench_docker() { # scenario
  local s="$1" d="$WORK/docker-$1"
  mkdir -p "$d"; "mk_$s" "$d"
  : > "$d/cold"; : > "$d/warm"
  for _ in $(seq 1 "$REPS"); do
    measure "$d/cold" env DOCKER_BUILDKIT=1 /usr/bin/docker build --no-cache --progress plain -t kiln-bench "$d/ctx"
    [ "$s" = edit ] && echo "edit $RANDOM" > "$d/ctx/app.txt"
    measure "$d/warm" env DOCKER_BUILDKIT=1 /usr/bin/docker build --progress plain -t kiln-bench "$d/ctx"
  done
  local warm=warm; [ "$s" = edit ] && warm=edited
  report "$s" buildkit cold "$d/cold"; report "$s" buildkit "$warm" "$d/warm"
}

SCENARIOS="parallel run40 ctx20k layer512 edit"
echo "kiln: $KILN   reps: $REPS   cores: $(nproc)"
echo "(peak RSS is kiln's own process, or the docker client's for BuildKit)"
for s in $SCENARIOS; do
  [ -z "$ONLY" ] || [ "$ONLY" = "$s" ] || continue
  bench_kiln "$s"
done
if [ -z "$ONLY" ] || [ "$ONLY" = run-true ]; then bench_run_true; fi
if docker_up; then
  /usr/bin/docker import "$WORK/busybox.tar" busybox:latest >/dev/null
  for s in $SCENARIOS; do
    [ -z "$ONLY" ] || [ "$ONLY" = "$s" ] || continue
    bench_docker "$s"
  done
else
  echo "no docker daemon answers: BuildKit comparison skipped (start dockerd to include it)"
fi

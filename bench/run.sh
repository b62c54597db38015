#!/usr/bin/env bash
# kiln build benchmarks: cold and warm builds of a few scenarios, medians and peak RSS.
# Runs the same scenarios with BuildKit (DOCKER_BUILDKIT=1 /usr/bin/docker build) when a docker
# daemon answers. Compare the two as ratios within one run: these machines are noisy.
#
# Usage: bench/run.sh [-n REPS] [-s SCENARIO[,SCENARIO]] [--kiln PATH]
#   scenarios: parallel, steps40, steps40bridge, context20k, layer512m, edit, runtrue
#   (steps40bridge: 40 RUN steps on the default bridge network vs --network none; target <= 1.2x)
# DOCKER_BUILD_ARGS: extra `docker build` flags (`--network host` for a dockerd started with
# --bridge=none so that it leaves the host's network alone).
# Needs root (namespaces, overlayfs), /bin/busybox (busybox-static) and /usr/bin/time (time).
set -euo pipefail
DOCKER_BUILD_ARGS=${DOCKER_BUILD_ARGS:-}

reps=5
only=""
here=$(cd "$(dirname "$0")" && pwd)
kiln="$here/../target/release/kiln"
while [ $# -gt 0 ]; do
  case "$1" in
    -n) reps=$2; shift 2 ;;
    -s) only=$2; shift 2 ;;
    --kiln) kiln=$2; shift 2 ;;
    *) echo "usage: $0 [-n REPS] [-s SCENARIOS] [--kiln PATH]" >&2; exit 2 ;;
  esac
done
[ -x "$kiln" ] || { echo "bench: $kiln missing: cargo build --release" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "bench: /usr/bin/time missing: apt-get install time" >&2; exit 1; }
kiln=$(readlink -f "$kiln")

work=$(mktemp -d /var/tmp/kiln-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$here/../examples/make-busybox-rootfs.sh" "$work/busybox.tar"

docker_ok=0
if [ -x /usr/bin/docker ] && /usr/bin/docker info >/dev/null 2>&1; then
  docker_ok=1
  /usr/bin/docker import -c 'CMD ["sh"]' "$work/busybox.tar" busybox:latest >/dev/null
fi

want() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }

# median of the numbers on stdin
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# timed CMD...: runs CMD, appends "seconds rss_kib" to $work/sample
timed() {
  /usr/bin/time -f '%e %M' -o "$work/t" "$@" >"$work/out" 2>&1 || { echo "bench: failed: $*" >&2; tail -20 "$work/out" >&2; exit 1; }
  cat "$work/t" >> "$work/sample"
}

report() { # name
  local name=$1
  local secs rss
  secs=$(awk '{print $1}' "$work/sample" | median)
  rss=$(awk '{print $2}' "$work/sample" | sort -n | tail -1)
  printf '%-34s median %8ss   peak RSS %6s MiB   (n=%s)\n' "$name" "$secs" "$((rss / 1024))" "$(wc -l < "$work/sample")"
  : > "$work/sample"
}

fresh_root() {
  rm -rf "$work/root"
  export KILN_ROOT="$work/root"
  "$kiln" import --change 'CMD ["sh"]' "$work/busybox.tar" busybox:latest >/dev/null
}

# bench_scenario NAME CONTEXT-DIR [EDIT-CMD]
bench_scenario() {
  local name=$1 ctx=$2 edit=${3:-}
  : > "$work/sample"
  for _ in $(seq "$reps"); do fresh_root; timed "$kiln" build --progress=plain -t bench "$ctx"; done
  report "kiln $name cold"
  fresh_root; "$kiln" build --progress=plain -t bench "$ctx" >/dev/null 2>&1
  for _ in $(seq "$reps"); do timed "$kiln" build --progress=plain -t bench "$ctx"; done
  report "kiln $name warm (no-op)"
  if [ -n "$edit" ]; then
    for i in $(seq "$reps"); do (cd "$ctx" && eval "$edit $i"); timed "$kiln" build --progress=plain -t bench "$ctx"; done
    report "kiln $name edit+rebuild"
  fi
  if [ "$docker_ok" = 1 ]; then
    for _ in $(seq "$reps"); do timed env DOCKER_BUILDKIT=1 /usr/bin/docker build $DOCKER_BUILD_ARGS --no-cache -q -t bench "$ctx"; done
    report "buildkit $name cold"
    for _ in $(seq "$reps"); do timed env DOCKER_BUILDKIT=1 /usr/bin/docker build $DOCKER_BUILD_ARGS -q -t bench "$ctx"; done
    report "buildkit $name warm (no-op)"
    if [ -n "$edit" ]; then
      for i in $(seq "$reps"); do (cd "$ctx" && eval "$edit x$i"); timed env DOCKER_BUILDKIT=1 /usr/bin/docker build $DOCKER_BUILD_ARGS -q -t bench "$ctx"; done
      report "buildkit $name edit+rebuild"
    fi
  fi
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r); reps=$reps; docker=$docker_ok"

if want parallel; then
  d="$work/ctx-parallel"; mkdir -p "$d"
  cat > "$d/Dockerfile" <<'EOF'
FROM busybox AS a
RUN i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; echo a > /a
FROM busybox AS b
RUN i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; echo b > /b
FROM busybox
COPY --from=a /a /a
COPY --from=b /b /b
EOF
  bench_scenario "parallel stages" "$d"
fi

if want steps40; then
  d="$work/ctx-steps40"; mkdir -p "$d"
  { echo "FROM busybox"; for i in $(seq 40); do echo "RUN echo $i >> /steps"; done; } > "$d/Dockerfile"
  bench_scenario "40 RUN steps" "$d"
fi

if want context20k; then
  # 200 directories of 100 files of 10,000 bytes: 20,000 files, 200 MB (issue 5's warm no-op case).
  d="$work/ctx-20k"; mkdir -p "$d/src"
  for i in $(seq 200); do mkdir -p "$d/src/d$i"; done
  awk -v d="$d/src" 'BEGIN { pad = "x"; while (length(pad) < 9980) pad = pad pad; pad = substr(pad, 1, 9980); for (i = 1; i <= 200; i++) for (j = 1; j <= 100; j++) { f = d "/d" i "/f" j; printf "%s %d %d\n", pad, i, j > f; close(f) } }'
  printf 'FROM busybox\nCOPY src /src\nRUN ls -R /src | wc -l\n' > "$d/Dockerfile"
  bench_scenario "20,000-file 200 MB context" "$d" 'echo >> src/d1/f1; true'
fi

if want layer512m; then
  d="$work/ctx-512m"; mkdir -p "$d"
  printf 'FROM busybox\nRUN head -c 536870912 /dev/urandom > /big\n' > "$d/Dockerfile"
  bench_scenario "512 MiB layer" "$d"
fi

if want edit; then
  d="$work/ctx-edit"; mkdir -p "$d"
  echo one > "$d/a.txt"; echo two > "$d/b.txt"
  printf 'FROM busybox\nRUN echo base > /base\nCOPY a.txt /a.txt\nRUN cat /a.txt > /copy\nCOPY b.txt /b.txt\n' > "$d/Dockerfile"
  bench_scenario "edit-and-rebuild" "$d" 'echo edit >> a.txt; true'
fi

if want runtrue; then
  fresh_root
  : > "$work/sample"
  for _ in $(seq $((reps * 4))); do timed "$kiln" run --rm busybox true; done
  report "kiln run --rm busybox true"
fi

if want steps40bridge; then
  d="$work/ctx-steps40b"; mkdir -p "$d"
  { echo "FROM busybox"; for i in $(seq 40); do echo "RUN echo $i >> /steps"; done; } > "$d/Dockerfile"
  # One build first: the RUN namespace pool (/run/kiln/pool) lives across builds, like the
  # bridge itself; what is measured is the per-step cost.
  fresh_root; "$kiln" build -t warm "$d" >/dev/null 2>&1
  declare -A med
  for mode in default none; do
    : > "$work/sample"
    for _ in $(seq "$reps"); do fresh_root; timed "$kiln" build --progress=plain --network "$mode" -t bench "$d"; done
    med[$mode]=$(awk '{print $1}' "$work/sample" | median)
    report "kiln 40 RUN steps --network $mode"
  done
  awk -v a="${med[default]}" -v b="${med[none]}" 'BEGIN { printf "bridge/none ratio: %.2f (target <= 1.20)\n", a / b }'
fi

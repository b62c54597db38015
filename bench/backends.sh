#!/usr/bin/env bash
# Cache backends benchmark (issue 14): the same build shared through each backend, all
# servers local on 127.0.0.1 (so it measures kiln's requests and work, not a network):
#
#   registry  Debian's docker-registry (CNCF distribution)
#   local     an OCI layout directory
#   s3        moto_server (PyPI moto[server])
#   azblob    azurite-blob (npm azurite), telemetry off
#
# For each backend and run:
#   reexport  `--cache-to ...,mode=max` of a build already exported: the export line's time
#             (target: under 1 s)
#   fresh     a fresh runner (empty KILN_ROOT, busybox imported) building with --cache-from
#             (zero RUN executed); target: within 1.2x of the registry backend's fresh time
#   requests  requests the fresh runner sent to the server (from its access log)
# Then the servers' own speed: the same GETs (the smallest blob, 20 times; the final image's
# largest layer, 5 times) sent by curl to the registry, moto and azurite, kiln not involved.
#
#   bench/backends.sh                         # SIZE_MIB=32 RUNS=5, target/release/kiln
#   RUNS=3 KILN=target/debug/kiln bench/backends.sh
#
# Needs root, /bin/busybox, docker-registry, moto_server, azurite-blob, python3, bc, curl.
set -euo pipefail
SIZE_MIB=${SIZE_MIB:-32}
RUNS=${RUNS:-5}
cd "$(dirname "$0")/.."
KILN=$(readlink -f "${KILN:-target/release/kiln}")
[ -x "$KILN" ] || { echo "bench/backends.sh: $KILN missing: cargo build --release -p kiln-cli" >&2; exit 1; }
for tool in docker-registry moto_server azurite-blob python3 bc curl /bin/busybox; do
    command -v "$tool" >/dev/null || { echo "bench/backends.sh: $tool is missing" >&2; exit 1; }
done

W=$(mktemp -d /var/tmp/kiln-backends-bench.XXXXXX)
REG_ACCESSLOG=1
source "$(dirname "$0")/lib/registry.sh"
BENCH=bench/backends.sh
source "$(dirname "$0")/lib/cache-build.sh"
PIDS=()
cleanup() {
    stop_registry
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$W"
}
trap cleanup EXIT
# wait_server PORT: waits up to 20 s for the server on PORT.
wait_server() { wait_port "$1" 400 || { echo "bench/backends.sh: nothing listens on $1" >&2; exit 1; }; }

start_registry
S3_PORT=$(free_port)
moto_server -H 127.0.0.1 -p "$S3_PORT" 2>"$W/s3.log" >/dev/null &
PIDS+=($!)
AZ_PORT=$(free_port)
azurite-blob --blobHost 127.0.0.1 --blobPort "$AZ_PORT" --location "$W/azurite" \
    --disableTelemetry --skipApiVersionCheck >"$W/azblob.log" 2>/dev/null &
PIDS+=($!)
wait_server "$S3_PORT"; wait_server "$AZ_PORT"
python3 - "$S3_PORT" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1])); c.request("PUT", "/bench"); assert c.getresponse().status == 200
PY
AZ_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

# spec BACKEND NAME: the --cache-from value (add ,mode=max for --cache-to).
spec() {
    case $1 in
    registry) echo "type=registry,ref=127.0.0.1:$PORT/bench/cache:$2" ;;
    local) echo "type=local,dest=$W/layout-$2" ;;
    s3) echo "type=s3,region=us-east-1,bucket=bench,endpoint_url=http://127.0.0.1:$S3_PORT,use_path_style=true,access_key_id=AKIABENCH,secret_access_key=x,name=$2" ;;
    azblob) echo "type=azblob,account_url=http://127.0.0.1:$AZ_PORT/devstoreaccount1,secret_access_key=$AZ_KEY,container=bench,name=$2" ;;
    esac
}
from_spec() { spec "$@" | sed 's/,dest=/,src=/'; }
log_of() {
    case $1 in registry) echo "$W/reg/log" ;; s3) echo "$W/s3.log" ;; azblob) echo "$W/azblob.log" ;; *) echo /dev/null ;; esac
}
# Requests in a log: lines naming an HTTP method in quotes (the access log format of all three).
requests() { grep -cE '"(GET|HEAD|PUT|POST|PATCH|DELETE) ' "$1" 2>/dev/null || true; }

make_cache_bench_inputs

BACKENDS="registry local s3 azblob"
for i in $(seq "$RUNS"); do
    echo "run $i/$RUNS..." >&2
    new_root "$W/a"
    for b in $BACKENDS; do
        to="$(spec $b run$i),mode=max"
        KILN_ROOT="$W/a" t "$KILN" build --progress plain -t app "$W/ctx" --cache-to "$to" >/dev/null
        KILN_ROOT="$W/a" t "$KILN" build --progress plain -t app "$W/ctx" --cache-to "$to" >/dev/null
        reexport_time "$W/$b.reexport" "$b: "
    done
    for b in $BACKENDS; do
        new_root "$W/f"
        log=$(log_of $b); before=$(requests "$log")
        KILN_ROOT="$W/f" t "$KILN" build --progress plain -t app --cache-from "$(from_spec $b run$i)" "$W/ctx" >> "$W/$b.fresh"
        no_cache_miss "$b: "
        echo $(( $(requests "$log") - before )) >> "$W/$b.requests"
    done
done

# Server latency: the same GETs sent by curl to each server (kiln not involved), for the
# smallest blob of the cache (a request's fixed cost) and the final image's largest layer.
# The registry serves them from its own storage, moto from memory, azurite from its files.
AZ_SAS=$(python3 - "$AZ_KEY" <<'PY'
import base64, hashlib, hmac, sys, urllib.parse
f = dict(sv="2021-08-06", ss="b", srt="sco", sp="rl", se="2099-01-01T00:00:00Z", spr="https,http")
s = "\n".join(["devstoreaccount1", f["sp"], f["ss"], f["srt"], "", f["se"], "", f["spr"], f["sv"], "", ""])
f["sig"] = base64.b64encode(hmac.new(base64.b64decode(sys.argv[1]), s.encode(), hashlib.sha256).digest()).decode()
print(urllib.parse.urlencode(f))
PY
)
blobs=$W/layout-run1/blobs/sha256
small=$(ls -S "$blobs" | tail -1); large=$(ls -S "$blobs" | sed -n 2p)
# url BACKEND HEX
url() {
    case $1 in
    registry) echo "http://127.0.0.1:$PORT/v2/bench/cache/blobs/sha256:$2" ;;
    s3) echo "http://127.0.0.1:$S3_PORT/bench/blobs/sha256:$2" ;;
    azblob) echo "http://127.0.0.1:$AZ_PORT/devstoreaccount1/bench/blobs/sha256:$2?$AZ_SAS" ;;
    esac
}
# get_time BACKEND HEX: one GET's total time in ms (fails unless 200).
get_time() {
    local out
    out=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' --aws-sigv4 aws:amz:us-east-1:s3 --user AKIABENCH:x \
        -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$(url "$1" "$2")")
    [ "${out%% *}" = 200 ] || { echo "$BENCH: GET $(url "$1" "$2"): HTTP ${out%% *}" >&2; exit 1; }
    echo "${out#* } * 1000" | bc -l
}
for b in registry s3 azblob; do
    for _ in $(seq 20); do get_time $b "$small"; done | median > "$W/$b.small"
    for _ in $(seq 5); do get_time $b "$large"; done | median > "$W/$b.large"
done

reg=$(median < "$W/registry.fresh")
printf '%-10s %14s %12s %16s %18s\n' backend "re-export (s)" "fresh (s)" "fresh/registry" "requests (fresh)"
for b in $BACKENDS; do
    f=$(median < "$W/$b.fresh")
    req=$(median < "$W/$b.requests"); [ "$b" = local ] && req="- (files)"
    printf '%-10s %14.3f %12.3f %16.2f %18s\n' "$b" "$(median < "$W/$b.reexport")" "$f" "$(echo "$f / $reg" | bc -l)" "$req"
done
printf '\nthe same GETs with curl, no kiln (medians; ms):\n%-10s %22s %30s\n' server "$(stat -c %s "$blobs/$small") B blob (x20)" "$(( $(stat -c %s "$blobs/$large") >> 20 )) MiB layer (x5)"
for b in registry s3 azblob; do printf '%-10s %22.1f %30.1f\n' "$b" "$(cat "$W/$b.small")" "$(cat "$W/$b.large")"; done
echo "(medians of $RUNS; builder stage ${SIZE_MIB} MiB, final image $((SIZE_MIB / 2)) MiB + 1 MiB; $KILN; load: $(cut -d' ' -f1-3 /proc/loadavg))"

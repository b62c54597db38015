# Sourced by the bench scripts: a throwaway CNCF distribution registry on a free 127.0.0.1
# port, storing under $W/reg. Needs W set; PRIO (an array, e.g. chrt -r 10) prefixes the
# registry command when set. start_registry sets PORT; stop_registry is safe to call twice.
# REG_ACCESSLOG=1 keeps the access log (one line per request, in $W/reg/log).
declare -p PRIO >/dev/null 2>&1 || PRIO=()
REG_PID=
stop_registry() {
    if [ -n "$REG_PID" ]; then kill "$REG_PID" 2>/dev/null || true; wait "$REG_PID" 2>/dev/null || true; REG_PID=; fi
}
start_registry() {
    stop_registry
    rm -rf "$W/reg"
    mkdir -p "$W/reg"
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat > "$W/reg/config.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: $([ "${REG_ACCESSLOG:-0}" = 1 ] && echo false || echo true)
storage:
  filesystem:
    rootdirectory: $W/reg/data
http:
  addr: 127.0.0.1:$PORT
  secret: kiln-bench
YML
    "${PRIO[@]}" docker-registry serve "$W/reg/config.yml" >"$W/reg/log" 2>&1 &
    REG_PID=$!
    for _ in $(seq 200); do
        (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0
        sleep 0.05
    done
    echo "registry did not start" >&2; cat "$W/reg/log" >&2; exit 1
}

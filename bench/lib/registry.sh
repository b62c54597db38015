# Sourced by the bench scripts: a throwaway CNCF distribution registry on a free 127.0.0.1
# port, storing under $W/reg. Needs W set; PRIO (an array, e.g. chrt -r 10) prefixes the
# registry command when set. start_registry sets PORT; stop_registry is safe to call twice.
# REG_ACCESSLOG=1 keeps the access log (one line per request, in $W/reg/log).
declare -p PRIO >/dev/null 2>&1 || PRIO=()
# free_port: prints a port on 127.0.0.1 that was free a moment ago (for any server a bench starts).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_port PORT TRIES: waits until something listens on 127.0.0.1:PORT, polling every 50 ms
# at most TRIES times; fails when nothing does.
wait_port() {
    for _ in $(seq "$2"); do
        (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}
REG_PID=
stop_registry() {
    if [ -n "$REG_PID" ]; then kill "$REG_PID" 2>/dev/null || true; wait "$REG_PID" 2>/dev/null || true; REG_PID=; fi
}
start_registry() {
    stop_registry
    rm -rf "$W/reg"
    mkdir -p "$W/reg"
    PORT=$(free_port)
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
    wait_port "$PORT" 200 && return 0
    echo "registry did not start" >&2; cat "$W/reg/log" >&2; exit 1
}

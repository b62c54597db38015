# Sourced by the remote cache benchmarks (bench/cache.sh, bench/backends.sh): the busybox base
# and the build they share, and their timing helpers. Needs W, KILN, SIZE_MIB and BENCH (the
# script's name, for messages).
#
# The Dockerfile in $W/ctx has a builder stage (SIZE_MIB of random data, never needed by a
# fresh runner: a lazy import skips it) and a final stage with SIZE_MIB/2 of data plus a COPY.

# A busybox rootfs tar in $W/busybox.tar (the same bytes every time, so every root gets the
# same base digest), and the build context in $W/ctx.
make_cache_bench_inputs() {
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
}

# new_root DIR: an empty KILN_ROOT with busybox imported.
new_root() {
    rm -rf "$1"
    KILN_ROOT="$1" "$KILN" import --change 'ENV PATH=/bin' "$W/busybox.tar" busybox >/dev/null
}
now() { date +%s.%N; }
# t CMD...: runs CMD (output to $W/out), prints its wall time in seconds.
t() {
    local s; s=$(now)
    if ! "$@" >"$W/out" 2>&1; then echo "$BENCH: failed: $*" >&2; tail -20 "$W/out" >&2; exit 1; fi
    echo "$(now) - $s" | bc -l
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# reexport_time FILE WHO: appends the export line's own time in $W/out (a re-export) to FILE;
# fails naming WHO when that re-export uploaded or mounted anything.
reexport_time() {
    sed -n 's/^exporting cache to .* in \([0-9.]*\)s$/\1/p' "$W/out" >> "$1"
    grep -q '(0 uploaded, 0 mounted' "$W/out" || { echo "${2}re-export uploaded something:" >&2; grep exporting "$W/out" >&2; exit 1; }
}

# no_cache_miss WHO: fails naming WHO when the build in $W/out missed the cache.
no_cache_miss() {
    if grep -q 'cache miss' "$W/out"; then echo "${1}fresh runner missed the cache:" >&2; grep 'cache miss' "$W/out" >&2; exit 1; fi
}

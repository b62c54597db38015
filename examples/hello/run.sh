#!/bin/sh
# The example end to end, offline: import a busybox base image, build, run, rebuild, save.
# Usage: run.sh [PATH-TO-KILN]   (as root; needs /bin/busybox from Debian's busybox-static)
set -eu
kiln=$(readlink -f "${1:-$(command -v kiln)}")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export KILN_ROOT="${KILN_ROOT:-$work/root}"

# A root filesystem: static busybox, its applets as symlinks, and minimal /etc files.
"$here/../make-busybox-rootfs.sh" "$work/busybox.tar"
"$kiln" import --change 'CMD ["sh"]' "$work/busybox.tar" busybox:latest

echo "== build (cold)"
"$kiln" build --progress=plain -t hello:latest "$here"
echo "== run"
"$kiln" run --rm hello:latest
echo "== build (warm: every step CACHED)"
"$kiln" build --progress=plain -t hello:latest "$here"
echo "== save"
"$kiln" save hello:latest -o "$work/hello.tar"
ls -l "$work/hello.tar"
"$kiln" images

#!/usr/bin/env bash
# Builds the bftd container image from this checkout, with no base image
# (FROM scratch; see deploy/Dockerfile for why and what goes in).
#
#   deploy/build-image.sh                 release build, tag bftd:local
#   deploy/build-image.sh --debug         the debug binary (CI: no release build)
#   BFTD_BIN=path deploy/build-image.sh   an existing binary, as is
#   BFTD_IMAGE=bftd:test ...              another tag
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/rootfs.sh
profile=release
if [[ "${1:-}" == "--debug" ]]; then profile=debug; fi
image="${BFTD_IMAGE:-bftd:local}"
target="${CARGO_TARGET_DIR:-target}"

if [[ -n "${BFTD_BIN:-}" ]]; then
    bin="$BFTD_BIN"
    profile="$(basename "$(dirname "$bin")")"
else
    if [[ "$profile" == release ]]; then
        cargo build --release -p bftd --bin bftd
    else
        cargo build -p bftd --bin bftd
    fi
    bin="$target/$profile/bftd"
fi
[[ -x "$bin" ]] || { echo "build-image: no bftd binary at $bin" >&2; exit 1; }

context="$(mktemp -d "${TMPDIR:-/tmp}/bftd-image.XXXXXX")"
trap 'rm -rf "$context"' EXIT
rootfs="$context/rootfs"
mkdir -p "$rootfs/etc" "$rootfs/config" "$rootfs/tmp" "$context/data"
# Without debug information (a debug build's is most of its size); the
# symbols stay, so a backtrace still names functions.
strip --strip-debug -o "$rootfs/bftd" "$bin" 2>/dev/null || cp "$bin" "$rootfs/bftd"
copy_linked_libraries "$bin" "$rootfs"
# The loader is also reached through /lib64 on x86_64 Debian (a symlink to
# usr/lib64 on merged-/usr systems): keep the path the ELF header names.
loader="$(readelf -l "$bin" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')"
if [[ -n "$loader" && ! -e "$rootfs$loader" ]]; then
    mkdir -p "$rootfs$(dirname "$loader")"
    cp -L "$loader" "$rootfs$loader"
fi
printf 'root:x:0:0:root:/:/bftd\nbftd:x:10001:10001:bftd:/data:/bftd\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nbftd:x:10001:\n' > "$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"
# An empty file keeps data/ in the context on every builder; the store
# ignores it.
touch "$context/data/.keep"
cp deploy/Dockerfile "$context/Dockerfile"
# The legacy builder: this Docker has no buildx, and FROM scratch needs
# nothing BuildKit adds.
DOCKER_BUILDKIT=0 docker build -q -t "$image" "$context" >/dev/null 2>"$context/build.log" || {
    cat "$context/build.log" >&2; exit 1; }
size="$(docker image inspect -f '{{.Size}}' "$image")"
echo "built $image from $bin ($profile): $((size / 1024 / 1024)) MiB"

#!/usr/bin/env bash
# Builds a Prometheus image with no base image: Debian's `prometheus`
# package (fetched with apt-get download from the machine's Debian mirror,
# unpacked, never installed), its binary and the libraries it links, and
# deploy/prometheus/prometheus.yml (scraping the 4 nodes of
# deploy/docker-compose.yml).
#
#   deploy/prometheus/build-image.sh      tag bftd-prometheus:local
set -euo pipefail
cd "$(dirname "$0")"
source ../rootfs.sh
image="${PROMETHEUS_IMAGE:-bftd-prometheus:local}"
context="$(mktemp -d "${TMPDIR:-/tmp}/bftd-prometheus.XXXXXX")"
trap 'rm -rf "$context"' EXIT
(cd "$context" && apt-get download prometheus >/dev/null 2>"$context/apt.log") || {
    echo "build-prometheus: apt-get download prometheus failed (is a Debian mirror reachable? try apt-get update):" >&2
    cat "$context/apt.log" >&2; exit 1; }
dpkg -x "$context"/prometheus_*.deb "$context/pkg"
rootfs="$context/rootfs"
mkdir -p "$rootfs/bin" "$rootfs/etc/prometheus" "$rootfs/tmp" "$context/data"
cp "$context/pkg/usr/bin/prometheus" "$rootfs/bin/prometheus"
copy_linked_libraries "$rootfs/bin/prometheus" "$rootfs"
cp prometheus.yml rules.yml "$rootfs/etc/prometheus/"
printf 'root:x:0:0:root:/:/bin/prometheus\nnobody:x:65534:65534:nobody:/prometheus:/bin/prometheus\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"
touch "$context/data/.keep"
cp Dockerfile "$context/Dockerfile"
version="$(dpkg-deb -f "$context"/prometheus_*.deb Version)"
DOCKER_BUILDKIT=0 docker build -q -t "$image" "$context" >/dev/null 2>"$context/build.log" || {
    cat "$context/build.log" >&2; exit 1; }
echo "built $image from Debian's prometheus $version"

#!/usr/bin/env bash
# One command from a fresh clone: builds the bftd image (release; --debug
# for the debug binary) and the Prometheus image, generates the 4-node
# cluster in deploy/cluster/ once (keys, cluster file, node directories,
# stores: `bftnet init --compose`), and starts deploy/docker-compose.yml.
# Grafana starts too when GRAFANA_IMAGE names an image you have.
#
#   deploy/up.sh [--debug]
#   bftd submit --cluster deploy/cluster/cluster.toml --key deploy/cluster/client.key hello
#   deploy/down.sh [--clean]
set -euo pipefail
cd "$(dirname "$0")/.."
profile_flag="${1:-}"
target="${CARGO_TARGET_DIR:-target}"
if [[ "$profile_flag" == --debug ]]; then
    cargo build -p bftnet -p bftd
    bftnet="$target/debug/bftnet"
else
    cargo build --release -p bftnet -p bftd
    bftnet="$target/release/bftnet"
fi
deploy/build-image.sh $profile_flag
deploy/prometheus/build-image.sh
if [[ ! -e deploy/cluster/cluster.toml ]]; then
    "$bftnet" init --compose --out deploy/cluster \
        --hosts 172.28.0.10,172.28.0.11,172.28.0.12,172.28.0.13 >/dev/null
    echo "generated deploy/cluster/ (keys and stores: keep it; deploy/down.sh --clean removes it)"
fi
# The containers run as a non-root user that must read the node
# directories and write data/: the image's bftd user (10001) when we can
# give it the files, else the caller's own uid.
if [[ "$(id -u)" == 0 ]]; then
    chown -R 10001:10001 deploy/cluster/node*
    export BFTD_USER=10001:10001
else
    export BFTD_USER="$(id -u):$(id -g)"
fi
profiles=()
if [[ -n "${GRAFANA_IMAGE:-}" ]]; then profiles=(--profile grafana); fi
docker-compose -p bftd -f deploy/docker-compose.yml "${profiles[@]}" up -d
echo "waiting for the nodes to be healthy ..."
for _ in $(seq 60); do
    healthy=0
    for i in 0 1 2 3; do
        state="$(docker inspect -f '{{.State.Health.Status}}' "$(docker-compose -p bftd -f deploy/docker-compose.yml ps -q node$i)" 2>/dev/null || true)"
        [[ "$state" == healthy ]] && healthy=$((healthy + 1))
    done
    [[ $healthy == 4 ]] && break
    sleep 1
done
echo "$healthy of 4 nodes healthy; Prometheus on http://127.0.0.1:9090${GRAFANA_IMAGE:+, Grafana on http://127.0.0.1:3000}"
echo "try: $bftnet check --cluster deploy/cluster/cluster.toml"
echo "     bftd submit --cluster deploy/cluster/cluster.toml --key deploy/cluster/client.key hello"
[[ $healthy == 4 ]]

#!/usr/bin/env bash
# Stops the compose cluster of deploy/up.sh (SIGTERM: every node flushes
# its store and exits). Keeps deploy/cluster/ (keys and stores) unless
# --clean, which also removes Prometheus's volume.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == --clean ]]; then
    docker-compose -p bftd -f deploy/docker-compose.yml --profile grafana down -v
    rm -rf deploy/cluster
else
    docker-compose -p bftd -f deploy/docker-compose.yml --profile grafana down
fi

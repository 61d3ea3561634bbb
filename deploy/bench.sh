#!/usr/bin/env bash
# The same bftd binary as 4 plain processes on loopback and as 4 containers
# on a Docker bridge network, under the same open-loop load from the host
# (`bftnet load --cluster`): committed tx/s and latency of each, then the
# containers again with 20 ms of netem delay on every container's link if
# the kernel has netem (a line says so if not). BENCHMARKS.md quotes it.
#
#   deploy/bench.sh [RATE] [SECONDS]      default 5000 tx/s for 10 s, 512 B
#   BFTD_BIN=... BFTNET_BIN=...           default target/release/{bftd,bftnet}
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:-5000}"
seconds="${2:-10}"
target="${CARGO_TARGET_DIR:-target}"
bftd="$(realpath "${BFTD_BIN:-$target/release/bftd}")"
bftnet="$(realpath "${BFTNET_BIN:-$target/release/bftnet}")"
tag="bftd-bench-$$"
work="$(mktemp -d "${TMPDIR:-/tmp}/$tag.XXXXXX")"
pids=()
containers=()
network=""
image_id=""
cleanup() {
    set +e
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    for id in "${containers[@]}"; do docker rm -f "$id" >/dev/null 2>&1; done
    [[ -n "$network" ]] && docker network rm "$network" >/dev/null 2>&1
    [[ -n "$image_id" ]] && docker rmi -f "$image_id" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

healthy() { "$bftd" health --address "$1" >/dev/null 2>&1; }
wait_healthy() { # addresses...
    local deadline=$((SECONDS + 60))
    for address in "$@"; do
        until healthy "$address"; do
            ((SECONDS < deadline)) || { echo "bench: $address not healthy in 60 s" >&2; exit 1; }
            sleep 0.2
        done
    done
}
measure() { # label, cluster file
    timeout 60 "$bftd" submit --cluster "$2" first >/dev/null
    # Warm-up (connections, batching), not counted.
    "$bftnet" load --cluster "$2" --rate "$rate" --duration 3s --size 512 --clients 1 >/dev/null 2>&1
    "$bftnet" load --cluster "$2" --rate "$rate" --duration "${seconds}s" --size 512 --clients 1 --json \
        >"$work/$1.json" 2>/dev/null
    local j="$work/$1.json"
    get() { grep -o "\"$1\": *[0-9.]*" "$j" | head -1 | grep -o '[0-9.]*$'; }
    printf '%-28s offered %6s tx/s: committed %8.0f tx/s, p50 %7.1f ms, p99 %7.1f ms (%s timed out, %s not sent)\n' \
        "$1" "$rate" "$(get achieved_rate)" "$(get p50)" "$(get p99)" "$(get timed_out)" "$(get skipped)"
}

# --- plain processes on loopback
base=$((30000 + RANDOM % 20000))
"$bftnet" init --out "$work/processes" --metrics-port $((base + 100)) \
    --hosts "127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))" >/dev/null
for i in 0 1 2 3; do
    (cd "$work/processes/node$i" && exec "$bftd" run --config node.toml 2>"../node$i.log") &
    pids+=($!)
done
wait_healthy 127.0.0.1:$((base + 100)) 127.0.0.1:$((base + 101)) 127.0.0.1:$((base + 102)) 127.0.0.1:$((base + 103))
measure "processes (loopback)" "$work/processes/cluster.toml"
for pid in "${pids[@]}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
pids=()

# --- containers
BFTD_BIN="$bftd" BFTD_IMAGE="$tag:latest" deploy/build-image.sh >/dev/null
image_id="$(docker image inspect -f '{{.Id}}' "$tag:latest")"
for _ in 1 2 3 4 5 6 7 8; do
    prefix="172.31.$((RANDOM % 200 + 20))"
    network="$(docker network create --subnet "$prefix.0/24" "$tag" 2>/dev/null)" && break
    network=""
done
[[ -n "$network" ]] || { echo "bench: no free 172.31.x.0/24" >&2; exit 1; }
ips=("$prefix.10" "$prefix.11" "$prefix.12" "$prefix.13")
"$bftnet" init --compose --out "$work/containers" --hosts "$(IFS=,; echo "${ips[*]}")" >/dev/null
user=10001:10001
if [[ "$(id -u)" == 0 ]]; then chown -R "$user" "$work"/containers/node*; else user="$(id -u):$(id -g)"; fi
for i in 0 1 2 3; do
    containers[$i]="$(docker run -d --user "$user" --network "$network" --ip "${ips[$i]}" \
        -v "$work/containers/node$i:/config:ro" -v "$work/containers/node$i/data:/data" "$image_id")"
done
wait_healthy "${ips[0]}:9100" "${ips[1]}:9100" "${ips[2]}:9100" "${ips[3]}:9100"
measure "containers (bridge)" "$work/containers/cluster.toml"

# --- containers with 20 ms between them
netem() { nsenter -t "$(docker inspect -f '{{.State.Pid}}' "${containers[$1]}")" -n tc qdisc "$2" dev eth0 root netem delay 20ms; }
if netem 0 add 2>"$work/tc.err"; then
    for i in 1 2 3; do netem "$i" add; done
    measure "containers + 20 ms netem" "$work/containers/cluster.toml"
else
    echo "containers + 20 ms netem: not measured: $(tr -d '\n' <"$work/tc.err") (this kernel has no sch_netem)"
fi

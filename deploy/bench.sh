#!/usr/bin/env bash
# The same bftd binary as 4 plain processes on loopback and as 4 containers
# on a Docker bridge network, under the same open-loop load from the host
# (`bftnet load --cluster`): committed tx/s and latency of each, then the
# containers again with 20 ms added between them: with netem on every
# container's egress if the kernel has sch_netem, otherwise through
# `bftnet relay`, a userspace UDP delay relay on the bridge's gateway that
# holds every node-to-node datagram 20 ms in each direction (one-way
# +20 ms, round trip +40 ms; the load's own client traffic goes straight
# to the nodes, undelayed); and the processes again through the same relay
# on loopback. BENCHMARKS.md quotes it.
#
#   deploy/bench.sh [RATE] [SECONDS]      default 5000 tx/s for 10 s, 512 B
#   BFTD_BIN=... BFTNET_BIN=...           default target/release/{bftd,bftnet}
#   BENCH_RELAY=1 deploy/bench.sh         the relay even where netem exists
#   BENCH_DELAY_MS=40 deploy/bench.sh     another delay than 20 ms (0: the
#                                         relay in the path, holding nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:-5000}"
seconds="${2:-10}"
delay_ms="${BENCH_DELAY_MS:-20}"
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
    printf '%-38s offered %6s tx/s: committed %8.0f tx/s, p50 %7.1f ms, p99 %7.1f ms (%s timed out, %s not sent; views after: %s)\n' \
        "$1" "$rate" "$(get achieved_rate)" "$(get p50)" "$(get p99)" "$(get timed_out)" "$(get skipped)" "$(views)"
}
# The view of every node in `metrics` (their /status), "?" if it does not
# answer: a view above 0 means a view change happened during the phase.
metrics=()
views() {
    local address out=()
    for address in "${metrics[@]}"; do
        out+=("$(timeout 2 bash -c "exec 3<>/dev/tcp/${address%:*}/${address##*:} && printf 'GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3 && cat <&3" 2>/dev/null \
            | grep -o '"view": *[0-9]*' | head -1 | grep -o '[0-9]*$' || true)")
        [[ -n "${out[-1]}" ]] || out[-1]="?"
    done
    echo "${out[*]}"
}
# What the relay whose log is $1 counted (printed when it stops).
relay_counters() { grep 'datagrams relayed' "$1" | tail -1 | sed 's/^bftnet proxy: /  relay: /' || true; }

# relay CLUSTER BIND_IP OUT: starts `bftnet relay` for CLUSTER's nodes on
# BIND_IP and waits until it has written OUT (the cluster with its ports);
# its PID joins pids (stopped by stop_pids and by the cleanup).
relay() {
    local log="$work/relay-$(basename "$(dirname "$1")").log"
    "$bftnet" relay --cluster "$1" --bind "$2" --delay "$delay_ms" --write-cluster "$3" 2>"$log" &
    local pid=$!
    pids+=("$pid")
    local deadline=$((SECONDS + 20))
    until [[ -s "$3" ]]; do
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "bench: bftnet relay exited" >&2; exit 1; }
        ((SECONDS < deadline)) || { echo "bench: bftnet relay wrote no $3 in 20 s" >&2; exit 1; }
        sleep 0.1
    done
}
stop_pids() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; done; pids=(); }
# Nodes dial each other at the relayed cluster's addresses (their node
# files keep `listen` at their real address); clients keep the original.
use_cluster() { # cluster file, init directory
    for i in 0 1 2 3; do cp "$1" "$2/node$i/cluster.toml"; done
}
init_processes() { # directory, first port
    "$bftnet" init --out "$1" --metrics-port $(($2 + 100)) \
        --hosts "127.0.0.1:$2,127.0.0.1:$(($2 + 1)),127.0.0.1:$(($2 + 2)),127.0.0.1:$(($2 + 3))" >/dev/null
}
start_processes() { # init directory, first port
    for i in 0 1 2 3; do
        (cd "$1/node$i" && exec "$bftd" run --config node.toml 2>"../node$i.log") &
        pids+=($!)
    done
    metrics=(127.0.0.1:$(($2 + 100)) 127.0.0.1:$(($2 + 101)) 127.0.0.1:$(($2 + 102)) 127.0.0.1:$(($2 + 103)))
    wait_healthy "${metrics[@]}"
}

# --- plain processes on loopback
base=$((30000 + RANDOM % 20000))
init_processes "$work/processes" "$base"
start_processes "$work/processes" "$base"
measure "processes (loopback)" "$work/processes/cluster.toml"
stop_pids

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
# The host's address on the network: where the relay listens.
gateway="$(docker network inspect -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' "$network")"
gateway="${gateway:-$prefix.1}"
user=10001:10001
[[ "$(id -u)" == 0 ]] || user="$(id -u):$(id -g)"
init_containers() { # directory
    "$bftnet" init --compose --out "$1" --hosts "$(IFS=,; echo "${ips[*]}")" >/dev/null
}
start_containers() { # init directory
    if [[ "$(id -u)" == 0 ]]; then chown -R "$user" "$1"/node*; fi
    for i in 0 1 2 3; do
        containers[$i]="$(docker run -d --user "$user" --network "$network" --ip "${ips[$i]}" \
            -v "$1/node$i:/config:ro" -v "$1/node$i/data:/data" "$image_id")"
    done
    metrics=("${ips[0]}:9100" "${ips[1]}:9100" "${ips[2]}:9100" "${ips[3]}:9100")
    wait_healthy "${metrics[@]}"
}
remove_containers() {
    for id in "${containers[@]}"; do docker rm -f "$id" >/dev/null 2>&1 || true; done
    containers=()
}
init_containers "$work/containers"
start_containers "$work/containers"
measure "containers (bridge)" "$work/containers/cluster.toml"

# --- containers with 20 ms between them
netem() { nsenter -t "$(docker inspect -f '{{.State.Pid}}' "${containers[$1]}")" -n tc qdisc "$2" dev eth0 root netem delay "${delay_ms}ms"; }
if [[ "${BENCH_RELAY:-0}" != 1 ]] && netem 0 add 2>"$work/tc.err"; then
    for i in 1 2 3; do netem "$i" add; done
    measure "containers + $delay_ms ms netem" "$work/containers/cluster.toml"
    remove_containers
else
    [[ "${BENCH_RELAY:-0}" == 1 ]] \
        || echo "(no netem: $(tr -d '\n' <"$work/tc.err"); this kernel has no sch_netem: the userspace relay adds the delay)"
    # A fresh cluster whose nodes dial each other through the relay on the
    # bridge's gateway; the host's load dials the containers directly.
    remove_containers
    init_containers "$work/containers-relay"
    relay "$work/containers-relay/cluster.toml" "$gateway" "$work/containers-relay.toml"
    use_cluster "$work/containers-relay.toml" "$work/containers-relay"
    start_containers "$work/containers-relay"
    measure "containers + $delay_ms ms (userspace relay)" "$work/containers-relay/cluster.toml"
    remove_containers
    stop_pids
    relay_counters "$work/relay-containers-relay.log"
fi

# --- processes with 20 ms between them, through the same relay on loopback
base=$((base + 200))
init_processes "$work/processes-relay" "$base"
relay "$work/processes-relay/cluster.toml" 127.0.0.1 "$work/processes-relay.toml"
use_cluster "$work/processes-relay.toml" "$work/processes-relay"
start_processes "$work/processes-relay" "$base"
measure "processes + $delay_ms ms (userspace relay)" "$work/processes-relay/cluster.toml"
stop_pids
relay_counters "$work/relay-processes-relay.log"
echo "(+$delay_ms ms: every node-to-node datagram held $delay_ms ms, each direction: one-way +$delay_ms ms, round trip +$((2 * delay_ms)) ms; client traffic not delayed. Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"

#!/usr/bin/env bash
# Cross-container fault tests: 4 bftd containers (the FROM-scratch image of
# deploy/Dockerfile) on their own Docker network, load driven from the host
# (`bftnet load --cluster`), safety checked from the host (`bftnet check
# --cluster`: every node's log verified and prefix-consistent, no request
# executed twice). Each test prints what it measured:
#
#   (a) docker kill of the primary under load -> time until commits resume
#   (b) a node cut off (docker network disconnect) and reconnected -> its
#       catch-up time
#   (c) a 2/2 split (blackhole routes in each container's network
#       namespace, with the host's `ip` via nsenter: the image has no
#       tools) -> no commits, no divergence; heal -> time to resume
#   (d) a rolling restart of all four (docker stop = SIGTERM, then start),
#       one at a time, under load -> every stop clean (exit 0), and no
#       acknowledged transaction lost (acknowledged vs found in every log)
#   (e) 20 ms between containers with tc netem (the host's tc via nsenter)
#       or, if the kernel has no netem, with `bftnet relay` (a userspace UDP
#       delay relay on the bridge's gateway holding every node-to-node
#       datagram 20 ms each way; the nodes restarted with its cluster file)
#       -> commits continue, p50 at least 3 x 20 ms, check ok
#
# Everything it creates (containers, network, image, work directory) is
# removed by id on exit, failure or interrupt included.
#
#   deploy/test.sh                 uses target/debug/{bftd,bftnet}
#   BFTD_BIN=... BFTNET_BIN=... deploy/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
if ! docker info >/dev/null 2>&1; then
    echo "container tests: SKIPPED (docker info fails: no Docker daemon reachable)"
    exit 0
fi
target="${CARGO_TARGET_DIR:-target}"
bftd="$(realpath "${BFTD_BIN:-$target/debug/bftd}")"
bftnet="$(realpath "${BFTNET_BIN:-$target/debug/bftnet}")"
for bin in "$bftd" "$bftnet"; do
    [[ -x "$bin" ]] || { echo "deploy/test.sh: $bin missing: cargo build -p bftd -p bftnet" >&2; exit 1; }
done

tag="bftd-test-$$"
work="$(mktemp -d "${TMPDIR:-/tmp}/$tag.XXXXXX")"
containers=()
load_pid=""
relay_pid=""
network=""
image_id=""
cleanup() {
    local status=$?
    set +e
    if [[ $status != 0 && ${#containers[@]} -gt 0 ]]; then
        for i in "${!containers[@]}"; do
            echo "--- node$i's last log lines:"
            docker logs --tail 15 "${containers[$i]}" 2>&1 | sed 's/^/    /'
        done
    fi
    [[ -n "$load_pid" ]] && kill "$load_pid" 2>/dev/null
    [[ -n "$relay_pid" ]] && kill "$relay_pid" 2>/dev/null
    for id in "${containers[@]}"; do docker rm -f "$id" >/dev/null 2>&1; done
    [[ -n "$network" ]] && docker network rm "$network" >/dev/null 2>&1
    [[ -n "$image_id" ]] && docker rmi -f "$image_id" >/dev/null 2>&1
    rm -rf "$work"
    echo "container tests: $( [[ $status == 0 ]] && echo PASS || echo FAIL ) in $((SECONDS - started)) s (cleaned up)"
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# --- the image and the network
BFTD_BIN="$bftd" BFTD_IMAGE="$tag:latest" deploy/build-image.sh
image_id="$(docker image inspect -f '{{.Id}}' "$tag:latest")"
for _ in 1 2 3 4 5 6 7 8; do
    prefix="172.30.$((RANDOM % 200 + 20))"
    if network="$(docker network create --subnet "$prefix.0/24" --label "$tag" "$tag" 2>/dev/null)"; then
        break
    fi
    network=""
done
[[ -n "$network" ]] || fail "no free 172.30.x.0/24 for the test network"
ips=("$prefix.10" "$prefix.11" "$prefix.12" "$prefix.13")
"$bftnet" init --compose --out "$work/cluster" --hosts "$(IFS=,; echo "${ips[*]}")" >/dev/null
cluster="$work/cluster/cluster.toml"
user=10001:10001
if [[ "$(id -u)" == 0 ]]; then chown -R "$user" "$work"/cluster/node*; else user="$(id -u):$(id -g)"; fi
for i in 0 1 2 3; do
    containers[$i]="$(docker create --name "$tag-node$i" --label "$tag" --user "$user" \
        --network "$network" --ip "${ips[$i]}" --stop-timeout 20 \
        -v "$work/cluster/node$i:/config:ro" -v "$work/cluster/node$i/data:/data" \
        "$image_id")"
done
# All four at once, as a cluster is usually started.
docker start "${containers[@]}" >/dev/null

# --- helpers (the host reaches the containers' addresses on the bridge)
status() { # node -> /status JSON, or nothing
    timeout 2 bash -c "exec 3<>/dev/tcp/${ips[$1]}/9100 && printf 'GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3 && cat <&3" 2>/dev/null || true
}
field() { grep -o "\"$2\": *[0-9]*" <<<"$1" | head -1 | grep -o '[0-9]*$' || true; }
height() { local h; h="$(field "$(status "$1")" height)"; echo "${h:--1}"; }
max_height() { local m=-1 h; for i in "$@"; do h="$(height "$i")"; ((h > m)) && m=$h; done; echo "$m"; }
healthy() { "$bftd" health --address "${ips[$1]}:9100" >/dev/null 2>&1; }
wait_until() { # seconds, description, command...
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        ((SECONDS < deadline)) || fail "$what: not within $limit s"
        sleep 0.2
    done
}
all_healthy() { for i in 0 1 2 3; do healthy "$i" || return 1; done; }
load_bg() { # seconds, rate, output file; sets load_pid (a child of this shell, to wait for)
    "$bftnet" load --cluster "$cluster" --duration "$1" --rate "$2" --size 64 --clients 1 --json >"$3" 2>"$3.log" &
    load_pid=$!
}
committed() { field "$(cat "$1")" committed; }
check() { # context
    "$bftnet" check --cluster "$cluster" --json >"$work/check.json" 2>&1 \
        || { cat "$work/check.json" >&2; fail "$1: bftnet check"; }
}
in_namespace() { # node, command... (the host's tools in the container's network namespace)
    local node=$1; shift
    nsenter -t "$(docker inspect -f '{{.State.Pid}}' "${containers[$node]}")" -n "$@"
}
acknowledged=0

wait_until 60 "all 4 containers healthy" all_healthy
# Healthy is a quorum in touch; the first commit also needs the first
# view's primary to have heard from everyone it needs.
timeout 60 "$bftd" submit --cluster "$cluster" first >/dev/null || fail "no first commit within 60 s"
echo "4 containers healthy and committing after $((SECONDS - started)) s (image build included)"

# --- (a) docker kill of the primary
out="$work/a.json"
load_bg 20 100 "$out"; pid=$load_pid
sleep 4
s="$(status 0)"; primary="$(field "$s" primary)"; view="$(field "$s" view)"
survivors=(); for i in 0 1 2 3; do [[ $i != "$primary" ]] && survivors+=("$i"); done
docker kill "${containers[$primary]}" >/dev/null
killed_at="$(now)"; base="$(max_height "${survivors[@]}")"
resumed() {
    local s; s="$(status "${survivors[0]}")"
    (( $(field "$s" view) > view && $(max_height "${survivors[@]}") > base + 1 ))
}
wait_until 60 "(a) commits after killing primary $primary" resumed
resume="$(since "$killed_at")"
docker start "${containers[$primary]}" >/dev/null
wait "$pid" || fail "(a) load: $(cat "$out.log")"
acknowledged=$((acknowledged + $(committed "$out")))
caught_up() { (( $(height "$1") >= $(max_height "${survivors[@]}") - 1 )); }
wait_until 60 "(a) node $primary back" caught_up "$primary"
check "(a)"
echo "(a) kill primary: node $primary SIGKILLed in view $view; survivors in a new view and committing after ${resume} s; $(committed "$out") tx acknowledged; restarted, caught up; check ok"

# --- (b) disconnect and reconnect a node
s="$(status 0)"; primary="$(field "$s" primary)"
cut=$(( (primary + 1) % 4 ))
others=(); for i in 0 1 2 3; do [[ $i != "$cut" ]] && others+=("$i"); done
docker network disconnect "$network" "${containers[$cut]}"
out="$work/b.json"
load_bg 8 200 "$out"; pid=$load_pid
wait "$pid" || fail "(b) load: $(cat "$out.log")"
acknowledged=$((acknowledged + $(committed "$out")))
target_height="$(max_height "${others[@]}")"
docker network connect --ip "${ips[$cut]}" "$network" "${containers[$cut]}"
reconnected_at="$(now)"
reached() { (( $(height "$cut") >= target_height )); }
wait_until 60 "(b) node $cut catching up to $target_height" reached
catchup="$(since "$reconnected_at")"
check "(b)"
echo "(b) disconnect: node $cut cut off while $(committed "$out") tx committed (height $target_height); reconnected, caught up in ${catchup} s; check ok"

# --- (c) a 2/2 split
split_ok=1
for i in 0 1; do for j in 2 3; do
    in_namespace "$i" ip route add blackhole "${ips[$j]}/32" 2>/dev/null || split_ok=0
    in_namespace "$j" ip route add blackhole "${ips[$i]}/32" 2>/dev/null || split_ok=0
done; done
if [[ $split_ok == 1 ]]; then
    sleep 1
    before=(); for i in 0 1 2 3; do before[$i]="$(height "$i")"; done
    out="$work/c.json"
    "$bftnet" load --cluster "$cluster" --duration 6 --rate 50 --size 64 --clients 1 --json >"$out" 2>"$out.log" &
    pid=$!
    sleep 7
    after=(); moved=0
    for i in 0 1 2 3; do after[$i]="$(height "$i")"; (( after[i] > before[i] )) && moved=1; done
    (( moved == 0 )) || fail "(c) heights moved during the split: ${before[*]} -> ${after[*]}"
    check "(c) split"
    for i in 0 1; do for j in 2 3; do
        in_namespace "$i" ip route del blackhole "${ips[$j]}/32"
        in_namespace "$j" ip route del blackhole "${ips[$i]}/32"
    done; done
    healed_at="$(now)"; base="$(max_height 0 1 2 3)"
    moving() { (( $(max_height 0 1 2 3) > base )); }
    wait_until 60 "(c) commits after healing" moving
    heal="$(since "$healed_at")"
    wait "$pid" || fail "(c) load: $(cat "$out.log")"
    acknowledged=$((acknowledged + $(committed "$out")))
    check "(c) healed"
    echo "(c) 2/2 split {0,1}|{2,3}: heights ${before[*]} stayed for 7 s under load, no divergence; healed, commits resumed after ${heal} s; $(committed "$out") of the split's tx acknowledged once healed; check ok"
else
    echo "(c) 2/2 split: SKIPPED (cannot add routes in the containers' namespaces: needs root and nsenter)"
fi

# --- (d) rolling restart under load
out="$work/d.json"
load_bg 45 100 "$out"; pid=$load_pid
sleep 2
stops=""
for i in 0 1 2 3; do
    t="$(now)"
    docker stop -t 20 "${containers[$i]}" >/dev/null
    took="$(since "$t")"
    code="$(docker inspect -f '{{.State.ExitCode}}' "${containers[$i]}")"
    [[ "$code" == 0 ]] || fail "(d) node $i exited $code on SIGTERM (not a clean stop)"
    stops+=" node$i ${took}s"
    docker start "${containers[$i]}" >/dev/null
    wait_until 60 "(d) node $i healthy again" healthy "$i"
    sleep 2
done
wait "$pid" || fail "(d) load: $(cat "$out.log")"
acknowledged=$((acknowledged + $(committed "$out")))
same() { local m; m="$(max_height 0 1 2 3)"; for i in 0 1 2 3; do (( $(height "$i") == m )) || return 1; done; }
wait_until 60 "(d) every node at the same height" same
check "(d)"
found="$(grep -o '"requests": *[0-9]*' "$work/check.json" | grep -o '[0-9]*$' | sort -n | head -1)"
(( found >= acknowledged )) || fail "(d) $acknowledged transactions acknowledged, only $found in the shortest log"
echo "(d) rolling restart under load: SIGTERM stops exited 0 in${stops}; $(committed "$out") tx acknowledged during it; all runs: $acknowledged acknowledged, $found executed in every node's log (none lost); check ok"

# --- (e) latency between containers
p50_at_least() { # file, ms: the load's p50 is at least that
    local p50; p50="$(grep -o '"p50": *[0-9.]*' "$1" | grep -o '[0-9.]*$')"
    awk -v p="$p50" -v m="$2" 'BEGIN { exit !(p >= m) }'
}
if in_namespace 0 tc qdisc add dev eth0 root netem delay 20ms 2>"$work/tc.err"; then
    for i in 1 2 3; do in_namespace "$i" tc qdisc add dev eth0 root netem delay 20ms; done
    out="$work/e.json"
    load_bg 8 100 "$out"; pid=$load_pid; wait "$pid" || fail "(e) load"
    p50="$(grep -o '"p50": *[0-9.]*' "$out" | grep -o '[0-9.]*$')"
    for i in 0 1 2 3; do in_namespace "$i" tc qdisc del dev eth0 root; done
    check "(e)"
    echo "(e) 20 ms netem on every container: $(committed "$out") tx committed, p50 ${p50} ms; check ok"
else
    # No netem: the same 20 ms from `bftnet relay` on the host's address on
    # the network. The nodes restart (SIGTERM, same stores) with the
    # relayed cluster file, so they dial each other through it; the load
    # and the check keep dialling the containers directly.
    gateway="$(docker network inspect -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' "$network")"
    "$bftnet" relay --cluster "$cluster" --bind "${gateway:-$prefix.1}" --delay 20 \
        --write-cluster "$work/relayed.toml" 2>"$work/relay.log" &
    relay_pid=$!
    wait_until 20 "(e) bftnet relay writing its cluster file" test -s "$work/relayed.toml"
    for i in 0 1 2 3; do cp "$work/relayed.toml" "$work/cluster/node$i/cluster.toml"; done
    e_started=$SECONDS
    docker restart -t 20 "${containers[@]}" >/dev/null
    wait_until 60 "(e) all 4 healthy through the relay" all_healthy
    # As at the start: healthy is a quorum in touch, not yet committing.
    timeout 60 "$bftd" submit --cluster "$cluster" relayed >/dev/null || fail "(e) no commit through the relay within 60 s"
    out="$work/e.json"
    load_bg 8 100 "$out"; pid=$load_pid; wait "$pid" || fail "(e) load: $(cat "$out.log")"
    (( $(committed "$out") > 0 )) || fail "(e) nothing committed through the relay"
    p50="$(grep -o '"p50": *[0-9.]*' "$out" | grep -o '[0-9.]*$')"
    # A commit needs at least three one-way trips between nodes
    # (pre-prepare, prepare, commit): 60 ms if the relay is in the path.
    p50_at_least "$out" 60 || fail "(e) p50 ${p50} ms: under 3 x 20 ms, the delay is not in the path"
    check "(e)"
    echo "(e) 20 ms between containers (bftnet relay, no netem on this kernel: $(tr -d '\n' <"$work/tc.err")): $(committed "$out") tx committed, p50 $(printf %.1f "$p50") ms (>= 60 ms: three one-way trips of +20 ms); check ok; $((SECONDS - e_started)) s"
fi

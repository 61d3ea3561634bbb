#!/usr/bin/env bash
# What the dashboard's polling costs a testnet (docs/design-notes.md §32).
# One detached testnet; runs alternate with and without a dashboard
# (`bftnet ui`, the same server and poller as `bftnet up`'s) and a stream
# client standing for an open page.
#   BFTNET=target/debug/bftnet docs/dashboard-cost.sh capacity 6   # load pairs
#   BFTNET=target/debug/bftnet docs/dashboard-cost.sh idle 2       # node CPU, 60 s windows
set -euo pipefail
B=${BFTNET:-target/debug/bftnet}
MODE=${1:-capacity}
PAIRS=${2:-4}
RATE=${RATE:-20000}
WINDOW=${WINDOW:-500}
PORT=${PORT:-7399}
T=$(mktemp -d)
D=$T/testnet
"$B" up --dir "$D" --detach --idle > /dev/null 2>&1
trap '"$B" down --dir "$D" --clean > /dev/null; rm -rf "$T"' EXIT
pids=$(python3 -c "import json; print(' '.join(str(n['pid']) for n in json.load(open('$D/testnet.json'))['nodes']))")
node_ticks() { local t=0; for p in $pids; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
for _ in $(seq "$PAIRS"); do
  for with in yes no; do
    if [ $with = yes ]; then
      "$B" ui --dir "$D" --port "$PORT" > /dev/null & UI=$!
      sleep 2
      curl -sN "http://127.0.0.1:$PORT/api/stream" > /dev/null & SSE=$!
      sleep 1
    fi
    if [ "$MODE" = idle ]; then
      a=$(node_ticks); sleep 60; b=$(node_ticks)
      echo "dashboard=$with  node CPU $((b - a)) ticks (10 ms) in 60 s"
    else
      "$B" load --dir "$D" --rate "$RATE" --max-in-flight "$WINDOW" --duration 10s --json 2>/dev/null |
        python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_ms"]; print("dashboard='$with'  %.1f tx/s  p50 %.1f ms  p99 %.1f ms" % (r["achieved_rate"], l["p50"], l["p99"]))'
    fi
    if [ $with = yes ]; then
      echo "  dashboard process CPU $(awk '{print $14+$15}' /proc/$UI/stat) ticks"
      kill $SSE; kill -INT $UI; wait $UI || true
    fi
  done
done

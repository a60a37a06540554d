#!/usr/bin/env bash
# Reproduces the HTTP results of BENCHMARKS.md on this machine, one command:
#
#   scripts/bench.sh                 # 3 alternating rounds of 10 s each
#   ROUNDS=5 DURATION=20s scripts/bench.sh
#
# Measures, with the server and the load generator sharing the machine:
#   1. single-impression POST: this server vs the no-op axum handler, in
#      alternating runs, and the ratio of their medians;
#   2. batch ingest (1,000 per request), embedded store and durable store;
#   3. stats read latency at a campaign with 0, 1M and 10M counted impressions;
#   4. stats read latency while batch ingest runs at full speed, and while it
#      runs paced at 1M impressions/s.
# Raw JSON summaries go to target/bench/; the table goes to stdout.
# Everything targets 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
OUT=target/bench
mkdir -p "$OUT"
rm -f "$OUT"/*.json

cargo build --release -q -p impression-counter -p loadgen
BIN=target/release

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Starts the server in the background with extra env; sets SERVER_PID, PORT.
start_server() {
  PORT=$(free_port)
  env STORAGE=memory RUST_LOG=warn SERVER_PORT="$PORT" BIND_ADDR=127.0.0.1 "$@" \
    "$BIN/impression-counter" >"$OUT/server-$PORT.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "the server did not become ready; see $OUT/server-$PORT.log" >&2
  exit 1
}

SERVER_PID=
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}
trap 'stop_server' EXIT

echo "== 1. single POST vs no-op handler ($ROUNDS alternating rounds of $DURATION, 64 connections)" >&2
for r in $(seq "$ROUNDS"); do
  "$BIN/loadgen" --spawn --mode single --connections 64 --duration "$DURATION" --quiet \
    --json "$OUT/single-server-$r.json" >/dev/null
  "$BIN/loadgen" --spawn-noop --mode single --connections 64 --duration "$DURATION" --quiet \
    --json "$OUT/single-noop-$r.json" >/dev/null
done

echo "== 2. batch ingest ($ROUNDS rounds of $DURATION, batches of 1000, 8 connections)" >&2
for r in $(seq "$ROUNDS"); do
  "$BIN/loadgen" --spawn --mode batch --batch-size 1000 --connections 8 --duration "$DURATION" --quiet \
    --json "$OUT/batch-memory-$r.json" >/dev/null
  data=$(mktemp -d)
  "$BIN/loadgen" --spawn --mode batch --batch-size 1000 --connections 8 --duration "$DURATION" --quiet \
    --server-env STORAGE=disk --server-env DATA_DIR="$data" --server-env FSYNC=everysec \
    --json "$OUT/batch-disk-$r.json" >/dev/null
  rm -rf "$data"
done

echo "== 3. stats latency at 0, 1M and 10M counted impressions (1,000 reads/s for $DURATION)" >&2
for n in 0 1000000 10000000; do
  start_server
  "$BIN/stats-probe" --url "http://127.0.0.1:$PORT" --fill "$n" --rate 1000 --duration "$DURATION" \
    --json "$OUT/stats-$n.json" >/dev/null
  stop_server
done

# Stats reads while batch ingest runs: at full speed (both cores busy), and
# paced at 1,000,000 impressions/s (the batch budget), open loop.
stats_under_load() { # name, extra loadgen args...
  local name=$1; shift
  start_server IMPRESSIONS_QUEUE_SIZE=100000
  "$BIN/stats-probe" --url "http://127.0.0.1:$PORT" --fill 1000000 --rate 1 --duration 1s \
    --json "$OUT/stats-filled.json" >/dev/null
  campaign=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["campaign_id"])' "$OUT/stats-filled.json")
  "$BIN/loadgen" --url "http://127.0.0.1:$PORT" --mode batch --batch-size 1000 --connections 8 \
    --duration "$DURATION" "$@" --quiet --no-verify --json "$OUT/ingest-$name.json" >/dev/null &
  LOAD_PID=$!
  sleep 1
  "$BIN/stats-probe" --url "http://127.0.0.1:$PORT" --campaign "$campaign" --rate 1000 \
    --duration "$(python3 -c "import re,sys; d=sys.argv[1]; n=int(re.sub('[^0-9]','',d)); print(f'{max(n-2,1)}s')" "$DURATION")" \
    --json "$OUT/stats-$name.json" >/dev/null
  wait "$LOAD_PID"
  stop_server
}
echo "== 4. stats latency while batch ingest runs at full speed, then at 1M impressions/s" >&2
stats_under_load under-load
stats_under_load under-1m --rate 1000000
trap - EXIT

python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
load = lambda name: json.load(open(f"{out}/{name}.json"))
med = lambda xs: statistics.median(xs)
rps = lambda kind: [load(f"single-{kind}-{r}")["throughput"]["requests_per_s"] for r in range(1, rounds + 1)]
p99 = lambda kind: [load(f"single-{kind}-{r}")["latency_ms"]["p99"] for r in range(1, rounds + 1)]
server, noop = rps("server"), rps("noop")
print("| measurement | median | runs | notes |")
print("|---|---|---|---|")
print(f"| single POST, this server (req/s) | {med(server):,.0f} | {', '.join(f'{x:,.0f}' for x in server)} | p99 {med(p99('server'))} ms |")
print(f"| single POST, no-op handler (req/s) | {med(noop):,.0f} | {', '.join(f'{x:,.0f}' for x in noop)} | p99 {med(p99('noop'))} ms |")
print(f"| **server / no-op** | **{med(server) / med(noop) * 100:.1f}%** | | budget: at least 85% |")
for store in ["memory", "disk"]:
    runs = [load(f"batch-{store}-{r}")["throughput"]["impressions_per_s"] for r in range(1, rounds + 1)]
    print(f"| batch ingest, {store} store (impressions/s) | {med(runs):,.0f} | {', '.join(f'{x:,.0f}' for x in runs)} | budget: at least 1,000,000 |")
for n in [0, 1000000, 10000000]:
    s = load(f"stats-{n}")["latency_us"]
    print(f"| stats read, {n:,} counted (µs) | p50 {s['p50']} | p99 {s['p99']}, p99.9 {s['p99_9']}, max {s['max']} | |")
for name, how in [("under-load", "full speed"), ("under-1m", "paced")]:
    s = load(f"stats-{name}")["latency_us"]
    ingest = load(f"ingest-{name}")["throughput"]["impressions_per_s"]
    print(f"| stats read during batch ingest, {how}, at {ingest:,.0f}/s (µs) | p50 {s['p50']} | p99 {s['p99']}, p99.9 {s['p99_9']}, max {s['max']} | budget: p99 under 1,000 µs |")
EOF

#!/usr/bin/env bash
# Reproduces the HTTP results of BENCHMARKS.md on this machine, one command:
#
#   scripts/bench.sh                 # ≈ 6 min
#   SINGLE_ROUNDS=20 ROUNDS=5 DURATION=20s scripts/bench.sh
#
# Measures, with the server and the load generator sharing the machine:
#   1. single-impression POST: this server vs the no-op axum handler, in
#      SINGLE_ROUNDS (10) alternating pairs of SINGLE_DURATION (5 s) runs;
#      reports the ratio of the medians and the median of the ratios of
#      each pair (the pairs share the machine's mood of the moment);
#   2. batch ingest (1,000 per request), embedded store and durable store;
#   3. stats read latency at a campaign with 0, 1M and 10M counted impressions;
#   4. stats read latency while batch ingest runs at full speed, and while it
#      runs paced at 1M impressions/s;
#   5. (REDIS=1, the default, if redis-server is on PATH) the Redis backend
#      against its budgets, on its own redis-server processes on free ports:
#      raw `redis-benchmark -P 1024 SET k v PX` on new keys, batch ingest
#      over one Redis node and over a local 3-master cluster, and single
#      POSTs with STORAGE=redis against the embedded store in alternating
#      pairs. Every loadgen run checks exact totals (MATCH).
# Also, because this kind of machine (a VM on a shared host) changes speed
# from hour to hour: a host-speed probe (SHA-256 throughput of one core) and
# the CPU time the hypervisor took (steal) during each part. Numbers from
# runs on different days compare only as ratios within a run.
# Raw JSON summaries go to target/bench/ (under $CARGO_TARGET_DIR if set); the table goes to stdout.
# Everything targets 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
SINGLE_ROUNDS=${SINGLE_ROUNDS:-10}
SINGLE_DURATION=${SINGLE_DURATION:-5s}
OUT=${CARGO_TARGET_DIR:-target}/bench
mkdir -p "$OUT"
rm -f "$OUT"/*.json

cargo build --release -q -p impression-counter -p loadgen
BIN=${CARGO_TARGET_DIR:-target}/release

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

# CPU time stolen by the hypervisor since the last call, as a percentage of
# the wall time of both cores (from /proc/stat); "?" where unreadable.
STEAL_LAST=
steal_since_last() {
  local now
  now=$(awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8+$9, $9}' /proc/stat 2>/dev/null || true)
  if [ -n "$STEAL_LAST" ] && [ -n "$now" ]; then
    python3 -c "import sys; t0,s0,t1,s1=map(int,sys.argv[1:]); print(f'{(s1-s0)/max(t1-t0,1)*100:.0f}')" $STEAL_LAST $now
  else
    echo "?"
  fi
  STEAL_LAST=$now
}
record_steal() { # name
  echo "$1 $(steal_since_last)" >>"$OUT/steal.txt"
}

echo "== 0. host speed (SHA-256 of 256 MiB on one core)" >&2
python3 -c "
import hashlib, time
data = bytes(1 << 20); h = hashlib.sha256(); t = time.perf_counter()
for _ in range(256): h.update(data)
print(f'{256 / (time.perf_counter() - t):.0f}')" >"$OUT/host-speed.txt"
: >"$OUT/steal.txt"
steal_since_last >/dev/null

# ONLY_REDIS=1 runs part 5 alone.
if [ "${ONLY_REDIS:-0}" != 1 ]; then
echo "== 1. single POST vs no-op handler ($SINGLE_ROUNDS alternating pairs of $SINGLE_DURATION, 64 connections)" >&2
for r in $(seq "$SINGLE_ROUNDS"); do
  "$BIN/loadgen" --spawn --mode single --connections 64 --duration "$SINGLE_DURATION" --quiet \
    --json "$OUT/single-server-$r.json" >/dev/null
  "$BIN/loadgen" --spawn-noop --mode single --connections 64 --duration "$SINGLE_DURATION" --quiet \
    --json "$OUT/single-noop-$r.json" >/dev/null
done
record_steal single

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
record_steal batch

echo "== 3. stats latency at 0, 1M and 10M counted impressions (1,000 reads/s for $DURATION)" >&2
for n in 0 1000000 10000000; do
  start_server
  "$BIN/stats-probe" --url "http://127.0.0.1:$PORT" --fill "$n" --rate 1000 --duration "$DURATION" \
    --json "$OUT/stats-$n.json" >/dev/null
  stop_server
done
record_steal stats

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
record_steal under-load
stats_under_load under-1m --rate 1000000
record_steal under-1m
fi

REDIS=${REDIS:-1}
if [ "$REDIS" = 1 ] && command -v redis-server >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1; then
  echo "== 5. Redis backend: raw SET, batch over one node and a 3-master cluster, single POST vs memory" >&2
  RDIR=$(mktemp -d)
  REDIS_PIDS=()
  start_redis() { # port, extra args...
    local port=$1; shift
    mkdir -p "$RDIR/$port"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$RDIR/$port" \
      --daemonize no "$@" >"$RDIR/$port/log" 2>&1 &
    REDIS_PIDS+=($!)
    for _ in $(seq 300); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "redis-server on $port did not start:" >&2; cat "$RDIR/$port/log" >&2; exit 1
  }
  stop_redis() { for pid in "${REDIS_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$RDIR"; }
  trap 'stop_server; stop_redis' EXIT
  RPORT=$(free_port)
  start_redis "$RPORT"
  # New keys every time: a random key space of 10^9 and a fresh run each round.
  for r in $(seq "$ROUNDS"); do
    redis-cli -p "$RPORT" flushall >/dev/null
    redis-benchmark -p "$RPORT" -q -n 2000000 -r 1000000000 -P 1024 \
      SET "key:__rand_int__" 1735689600000 PX 3660000 2>/dev/null | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1 | cut -d' ' -f1 \
      >"$OUT/redis-raw-$r.txt"
    redis-cli -p "$RPORT" flushall >/dev/null
    "$BIN/loadgen" --spawn --mode batch --batch-size 1000 --connections 8 --duration "$DURATION" --quiet \
      --users 4000000000 --server-env STORAGE=redis --server-env REDIS_URL="redis://127.0.0.1:$RPORT" \
      --server-env IMPRESSIONS_QUEUE_SIZE=16000 --json "$OUT/batch-redis-$r.json" >/dev/null
  done
  for r in $(seq "$SINGLE_ROUNDS"); do
    redis-cli -p "$RPORT" flushall >/dev/null
    "$BIN/loadgen" --spawn --mode single --connections 64 --duration "$SINGLE_DURATION" --quiet \
      --users 4000000000 --server-env STORAGE=redis --server-env REDIS_URL="redis://127.0.0.1:$RPORT" \
      --json "$OUT/single-redis-$r.json" >/dev/null
    "$BIN/loadgen" --spawn --mode single --connections 64 --duration "$SINGLE_DURATION" --quiet \
      --users 4000000000 --json "$OUT/single-memory-$r.json" >/dev/null
  done
  redis-cli -p "$RPORT" info commandstats >"$OUT/redis-commandstats.txt"
  CPORTS=()
  for _ in 1 2 3; do
    p=$(free_port); CPORTS+=("$p")
    start_redis "$p" --cluster-enabled yes --cluster-config-file nodes.conf
  done
  redis-cli --cluster create "127.0.0.1:${CPORTS[0]}" "127.0.0.1:${CPORTS[1]}" "127.0.0.1:${CPORTS[2]}" \
    --cluster-replicas 0 --cluster-yes >/dev/null
  for _ in $(seq 100); do
    redis-cli -p "${CPORTS[0]}" cluster info | grep -q 'cluster_state:ok' && break; sleep 0.1
  done
  NODES="redis://127.0.0.1:${CPORTS[0]},redis://127.0.0.1:${CPORTS[1]},redis://127.0.0.1:${CPORTS[2]}"
  for r in $(seq "$ROUNDS"); do
    for p in "${CPORTS[@]}"; do redis-cli -p "$p" flushall >/dev/null; done
    "$BIN/loadgen" --spawn --mode batch --batch-size 1000 --connections 8 --duration "$DURATION" --quiet \
      --users 4000000000 --server-env STORAGE=redis --server-env REDIS_CLUSTER_NODES="$NODES" \
      --server-env IMPRESSIONS_QUEUE_SIZE=16000 --json "$OUT/batch-cluster-$r.json" >/dev/null
  done
  record_steal redis
  stop_redis
fi
trap - EXIT

python3 - "$OUT" "$ROUNDS" "$SINGLE_ROUNDS" <<'EOF'
import json, statistics, sys
out, rounds, single_rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
load = lambda name: json.load(open(f"{out}/{name}.json"))
med = lambda xs: statistics.median(xs)
rps = lambda kind: [load(f"single-{kind}-{r}")["throughput"]["requests_per_s"] for r in range(1, single_rounds + 1)]
p99 = lambda kind: [load(f"single-{kind}-{r}")["latency_ms"]["p99"] for r in range(1, single_rounds + 1)]
import os
core = os.path.exists(f"{out}/single-server-1.json")
server, noop = (rps("server"), rps("noop")) if core else ([1], [1])
paired = [s / n * 100 for s, n in zip(server, noop)]
steal = dict(line.split() for line in open(f"{out}/steal.txt"))
print(f"host speed: {open(f'{out}/host-speed.txt').read().strip()} MB/s SHA-256 on one core; "
      f"CPU stolen by the hypervisor: " + ", ".join(f"{k} {v}%" for k, v in steal.items()))
print()
print("| measurement | median | runs | notes |")
print("|---|---|---|---|")
if core:
  print(f"| single POST, this server (req/s) | {med(server):,.0f} | {', '.join(f'{x:,.0f}' for x in server)} | p99 {med(p99('server'))} ms |")
  print(f"| single POST, no-op handler (req/s) | {med(noop):,.0f} | {', '.join(f'{x:,.0f}' for x in noop)} | p99 {med(p99('noop'))} ms |")
  print(f"| **server / no-op** | **{med(server) / med(noop) * 100:.1f}%** | pairs: {', '.join(f'{x:.0f}%' for x in paired)} | median of the pairs {med(paired):.1f}%; budget: at least 85% |")
for store in ["memory", "disk"] if core else []:
    runs = [load(f"batch-{store}-{r}")["throughput"]["impressions_per_s"] for r in range(1, rounds + 1)]
    print(f"| batch ingest, {store} store (impressions/s) | {med(runs):,.0f} | {', '.join(f'{x:,.0f}' for x in runs)} | budget: at least 1,000,000 |")
for n in [0, 1000000, 10000000] if core else []:
    s = load(f"stats-{n}")["latency_us"]
    print(f"| stats read, {n:,} counted (µs) | p50 {s['p50']} | p99 {s['p99']}, p99.9 {s['p99_9']}, max {s['max']} | |")
for name, how in [("under-load", "full speed"), ("under-1m", "paced")] if core else []:
    s = load(f"stats-{name}")["latency_us"]
    ingest = load(f"ingest-{name}")["throughput"]["impressions_per_s"]
    print(f"| stats read during batch ingest, {how}, at {ingest:,.0f}/s (µs) | p50 {s['p50']} | p99 {s['p99']}, p99.9 {s['p99_9']}, max {s['max']} | budget: p99 under 1,000 µs |")
import os
batch = lambda store: [load(f"batch-{store}-{r}")["throughput"]["impressions_per_s"] for r in range(1, rounds + 1)]
if core:
  mem, disk = batch("memory"), batch("disk")
  print(f"| **disk / memory batch** | **{med(disk) / med(mem):.2f}×** | pairs: {', '.join(f'{d / m:.2f}' for d, m in zip(disk, mem))} | budget: at least 0.9× |")
if os.path.exists(f"{out}/batch-redis-1.json"):
    raw = [float(open(f"{out}/redis-raw-{r}.txt").read().strip() or 0) for r in range(1, rounds + 1)]
    redis, cluster = batch("redis"), batch("cluster")
    print(f"| raw Redis `SET k v PX`, -P 1024, new keys (commands/s) | {med(raw):,.0f} | {', '.join(f'{x:,.0f}' for x in raw)} | |")
    print(f"| batch ingest, `STORAGE=redis`, one node (impressions/s) | {med(redis):,.0f} | {', '.join(f'{x:,.0f}' for x in redis)} | |")
    print(f"| **Redis batch / raw SET** | **{med(redis) / med(raw):.2f}×** | pairs: {', '.join(f'{a / b:.2f}' for a, b in zip(redis, raw))} | budget: at least 0.8× |")
    print(f"| batch ingest, 3-master cluster (impressions/s) | {med(cluster):,.0f} | {', '.join(f'{x:,.0f}' for x in cluster)} | |")
    print(f"| **cluster / one node** | **{med(cluster) / med(redis):.2f}×** | | budget: at least 1× |")
    rs = [load(f"single-redis-{r}")["throughput"]["requests_per_s"] for r in range(1, single_rounds + 1)]
    ms = [load(f"single-memory-{r}")["throughput"]["requests_per_s"] for r in range(1, single_rounds + 1)]
    print(f"| single POST, `STORAGE=redis` / memory (req/s) | {med(rs):,.0f} / {med(ms):,.0f} | pairs: {', '.join(f'{a / b:.2f}' for a, b in zip(rs, ms))} | |")
    print(f"| **Redis single / memory single** | **{med(rs) / med(ms):.2f}×** | | budget: at least 0.8× |")
EOF

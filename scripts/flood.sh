#!/usr/bin/env bash
# The hostile flood of issue 18 against a release build: batches of new
# user ids over 10,000 invented ad ids of three campaigns, from 4
# connections, as fast as they go. Shows that the state stops at
# MEMORY_LIMIT and what RSS that takes. One command:
#
#   scripts/flood.sh                       # MEMORY_LIMIT=512MiB, 60 s
#   MEMORY_LIMIT=128MiB FLOOD=30s scripts/flood.sh
#   MEMORY_LIMIT= FLOOD=15m scripts/flood.sh   # the default limit (half of RAM)
#
# Samples every 5 s: RSS (anonymous), the service's own account of its
# state (sum of memory_state_bytes), and impressions refused at the limit.
# Ends with loadgen's report, whose verification checks that every
# acknowledged impression was counted.
set -euo pipefail
cd "$(dirname "$0")/.."

FLOOD=${FLOOD:-60s}
MEMORY_LIMIT=${MEMORY_LIMIT-512MiB}
OUT=${CARGO_TARGET_DIR:-target}/bench
mkdir -p "$OUT"
cargo build --release -q -p impression-counter -p loadgen
BIN=${CARGO_TARGET_DIR:-target}/release

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
limit_env=(-u MEMORY_LIMIT)
[ -n "$MEMORY_LIMIT" ] && limit_env=(MEMORY_LIMIT="$MEMORY_LIMIT")
env "${limit_env[@]}" STORAGE=memory SERVER_PORT="$PORT" BIND_ADDR=127.0.0.1 \
  "$BIN/impression-counter" >"$OUT/flood-server.log" 2>&1 &
SERVER_PID=$!
trap 'kill -TERM $SERVER_PID 2>/dev/null || true; kill $LOAD_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
grep -o 'memory_limit=[^"]*' "$OUT/flood-server.log" | head -1 || true

"$BIN/loadgen" --url "http://127.0.0.1:$PORT" --mode batch --batch-size 2000 --connections 4 \
  --campaigns 3 --ads 10000 --users 1000000000000 --duration "$FLOOD" \
  >"$OUT/flood-load.txt" 2>&1 &
LOAD_PID=$!

echo "elapsed_s rss_anon_mib accounted_mib refused_at_limit" | tee "$OUT/flood.txt"
start=$(date +%s)
while kill -0 "$LOAD_PID" 2>/dev/null; do
  sleep 5
  rss_kib=$(awk '/RssAnon/ {print $2}' "/proc/$SERVER_PID/status")
  metrics=$(curl -sf "http://127.0.0.1:$PORT/metrics" || true)
  accounted=$(echo "$metrics" | awk '/^memory_state_bytes/ {s += $2} END {printf "%.1f", s / 1048576}')
  refused=$(echo "$metrics" | awk -F' ' '/reason="memory_limit"/ {print $2}')
  echo "$(( $(date +%s) - start )) $(( rss_kib / 1024 )) $accounted ${refused:-0}" | tee -a "$OUT/flood.txt"
done
wait "$LOAD_PID" || true
echo "peak RSS: $(awk '/VmHWM/ {print int($2 / 1024) " MiB"}' "/proc/$SERVER_PID/status")"
cat "$OUT/flood-load.txt"

#!/usr/bin/env bash
# Sustained ingest with a short TTL: memory must stay flat (expired keys
# really freed). One command:
#
#   scripts/soak.sh              # 10 minutes at 200,000 new keys per second
#   SOAK=60m scripts/soak.sh     # the hour of the budget (RSS at the end
#                                # within 5% of its 10-minute value)
#   SOAK=2m RATE=100000 scripts/soak.sh
#
# Starts the server (embedded store, TTL=2s), drives it with loadgen in open
# loop (batches of 1,000, almost every key new, one campaign and one ad),
# and samples every 10 s the server's resident memory, its live dedup keys
# and the state it accounts for (memory_state_bytes, all kinds). Prints the
# samples, per-minute means, and RSS at the end against minute 10.
#
# One campaign and one ad: the unique-user sketches are the one state that
# legitimately grows here (a sketch per counter per minute, kept a day; at
# this rate each is 8-12 KiB, so ~1.4 MiB an hour for the two counters), so
# what RSS does beyond that is the allocator's and the index's.
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK=${SOAK:-10m}
RATE=${RATE:-200000}
OUT=${OUT:-${CARGO_TARGET_DIR:-target}/bench}
mkdir -p "$OUT"
cargo build --release -q -p impression-counter -p loadgen
BIN=${CARGO_TARGET_DIR:-target}/release

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
STORAGE=memory TTL=2s MAX_EVENT_AGE=0s IMPRESSIONS_QUEUE_SIZE=100000 RUST_LOG=warn \
  SERVER_PORT="$PORT" BIND_ADDR=127.0.0.1 "$BIN/impression-counter" >"$OUT/soak-server.log" 2>&1 &
SERVER_PID=$!
trap 'kill -TERM $SERVER_PID 2>/dev/null || true; kill $LOAD_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done

"$BIN/loadgen" --url "http://127.0.0.1:$PORT" --mode batch --batch-size 1000 --connections 4 \
  --rate "$RATE" --users 4000000000 --campaigns 1 --ads 1 --duration "$SOAK" --quiet --no-verify \
  --json "$OUT/soak-load.json" >/dev/null &
LOAD_PID=$!

echo "elapsed_s rss_mib live_dedup_keys state_mib" | tee "$OUT/soak.txt"
start=$(date +%s)
while kill -0 "$LOAD_PID" 2>/dev/null; do
  sleep 10
  rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status")
  metrics=$(curl -sf "http://127.0.0.1:$PORT/metrics" || true)
  keys=$(awk '/^dedup_live_keys / {print $2}' <<<"$metrics")
  state=$(awk '/^memory_state_bytes\{/ {s += $2} END {printf "%.1f", s / 1048576}' <<<"$metrics")
  echo "$(( $(date +%s) - start )) $(( rss_kib / 1024 )) ${keys:-?} ${state:-?}" | tee -a "$OUT/soak.txt"
done
wait "$LOAD_PID" || true

python3 - "$OUT" <<'EOF'
import json, statistics, sys
out = sys.argv[1]
rows = [l.split() for l in open(f"{out}/soak.txt").read().splitlines()[1:] if l.strip()]
state = {int(r[0]): float(r[3]) for r in rows if len(r) >= 4 and r[3] != "?"}
rows = [(int(t), int(r)) for t, r, *_ in rows]
load = json.load(open(f"{out}/soak-load.json"))
print(f"ingest: {load['throughput']['impressions_per_s']:,.0f} impressions/s for {load['elapsed_s']:.0f} s")
# Warm-up: the first minute, while the index fills to its steady size.
warm = [(t, r) for t, r in rows if t >= 60]
if len(warm) >= 2:
    print("| minutes | RSS mean | min – max |")
    print("|---|---|---|")
    for m in range(1, max(t for t, _ in warm) // 60 + 1):
        rs = [r for t, r in warm if m * 60 <= t < (m + 1) * 60]
        if rs:
            print(f"| {m}–{m + 1} | {statistics.mean(rs):.0f} MiB | {min(rs)} – {max(rs)} MiB |")
    ts, rs = [t for t, _ in warm], [r for _, r in warm]
    mt, mr = statistics.mean(ts), statistics.mean(rs)
    slope = sum((t - mt) * (r - mr) for t, r in warm) / sum((t - mt) ** 2 for t in ts) * 60
    half = len(rs) // 2
    print(f"RSS after warm-up: mean {mr:.0f} MiB, min {min(rs)}, max {max(rs)}; trend {slope:+.1f} MiB/min "
          f"(least squares); first half mean {statistics.mean(rs[:half]):.0f} MiB, "
          f"second half {statistics.mean(rs[half:]):.0f} MiB")
    # The budget: the last minute's mean against minute 10's (9:00-10:00).
    ten = [r for t, r in warm if 540 <= t < 600]
    last_t = max(ts)
    last = [r for t, r in warm if t > last_t - 60]
    if ten and last_t >= 1200:
        a, b = statistics.mean(ten), statistics.mean(last)
        st = [s for t, s in state.items() if 540 <= t < 600]
        sl = [s for t, s in state.items() if t > last_t - 60]
        extra = ""
        if st and sl:
            extra = f"; accounted state {statistics.mean(st):.1f} -> {statistics.mean(sl):.1f} MiB"
        print(f"RSS minute 10: {a:.0f} MiB, last minute: {b:.0f} MiB, {100 * (b / a - 1):+.1f}% "
              f"(budget: within 5%){extra}")
        # Accounted state breathes with a period of minutes (index rebuilds,
        # sketches of the minute), so one minute can fall on a trough: the
        # same comparison over ten-minute windows, minutes 5-15 and the last 10.
        early = [r for t, r in warm if 300 <= t < 900]
        late = [r for t, r in warm if t > last_t - 600]
        es = [s for t, s in state.items() if 300 <= t < 900]
        ls = [s for t, s in state.items() if t > last_t - 600]
        if early and late and es and ls:
            a, b = statistics.mean(early), statistics.mean(late)
            print(f"RSS minutes 5-15: {a:.1f} MiB, last 10 minutes: {b:.1f} MiB, {100 * (b / a - 1):+.1f}%; "
                  f"accounted state {statistics.mean(es):.1f} -> {statistics.mean(ls):.1f} MiB")
EOF

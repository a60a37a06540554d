#!/usr/bin/env bash
# Measures the service and the no-op ceiling with the same client and the same
# options, one after the other, and prints the ratio.
#
#   crates/loadgen/compare.sh                     # single mode, 10 s each
#   crates/loadgen/compare.sh --duration 5s --connections 32
#
# Extra arguments go to both runs. The noop server only has the single
# endpoint, so this compares single mode. Needs jq for the ratio line.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release -p impression-counter -p loadgen
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

./target/release/loadgen --spawn --mode single --quiet --json "$out/server.json" "$@"
./target/release/loadgen --spawn-noop --mode single --quiet --json "$out/noop.json" "$@"

if command -v jq >/dev/null; then
  jq -rn --slurpfile s "$out/server.json" --slurpfile n "$out/noop.json" '
    ($s[0].throughput.requests_per_s) as $sr | ($n[0].throughput.requests_per_s) as $nr |
    "server \($sr|floor) req/s (p99 \($s[0].latency_ms.p99) ms), " +
    "noop \($nr|floor) req/s (p99 \($n[0].latency_ms.p99) ms): " +
    "server/noop = \(($sr / $nr * 100)|floor)%"'
fi

#!/usr/bin/env bash
# Runs Schemathesis against the live server with the server's own
# /openapi.json: every response must conform to the spec (documented status
# codes, content types, headers and body schemas), and none may be a 5xx.
#
#   scripts/schemathesis.sh                 # 100 examples per operation
#   MAX_EXAMPLES=200 scripts/schemathesis.sh
#   scripts/schemathesis.sh --seed 42       # extra arguments go to schemathesis
#
# Builds the binary (debug, as `cargo test` does: PROFILE=release for an
# optimized one), starts it with STORAGE=memory on a free loopback port,
# waits for /readyz, runs Schemathesis with scripts/schemathesis.toml and
# stops the server. Needs `schemathesis` on the PATH (CI installs the
# version it pins: python3 -m pip install schemathesis==4.32.5).
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXAMPLES=${MAX_EXAMPLES:-100}
PROFILE=${PROFILE:-debug}
OUT=${CARGO_TARGET_DIR:-target}/schemathesis
mkdir -p "$OUT"

# The console script, or the module when pip's script directory is not on
# the PATH.
if command -v schemathesis >/dev/null 2>&1; then
  ST=(schemathesis)
elif python3 -c 'import schemathesis' 2>/dev/null; then
  ST=(python3 -m schemathesis.cli)
else
  echo "schemathesis is not installed: python3 -m pip install schemathesis" >&2
  exit 2
fi

if [ "$PROFILE" = release ]; then
  cargo build --release -q -p impression-counter
else
  cargo build -q -p impression-counter
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
BASE="http://127.0.0.1:$PORT"

STORAGE=memory BIND_ADDR=127.0.0.1 SERVER_PORT=$PORT RUST_LOG=warn \
  "${CARGO_TARGET_DIR:-target}/$PROFILE/impression-counter" >"$OUT/server.log" 2>&1 &
SERVER=$!
stop_server() {
  kill -TERM "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
}
trap stop_server EXIT

for _ in $(seq 1 100); do
  if curl -fsS "$BASE/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "the server exited; its log:" >&2
    cat "$OUT/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
curl -fsS "$BASE/readyz" >/dev/null

# A campaign that exists and has started, so generated impressions can also
# pass validation (and `{id}` can be found) rather than only fail it.
CAMPAIGN=$(curl -fsS "$BASE/api/v1/campaigns" -H 'content-type: application/json' \
  -d '{"name": "schemathesis"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "==> schemathesis against $BASE (campaign $CAMPAIGN, $MAX_EXAMPLES examples per operation)"

# One worker: several threads trip a CPython 3.11 bug in Hypothesis's use
# of `ast.parse` ("AST constructor recursion depth mismatch"); one is fast
# enough (about 20 s for 100 examples per operation).
"${ST[@]}" --config-file scripts/schemathesis.toml run "$BASE/openapi.json" \
  --url "$BASE" \
  --checks all \
  --max-examples "$MAX_EXAMPLES" \
  --workers 1 \
  --request-timeout 10 \
  --seed "${SEED:-$RANDOM}" \
  --report junit --report-dir "$OUT" \
  "$@"

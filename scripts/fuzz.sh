#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for N seconds each, one
# after the other:
#
#   scripts/fuzz.sh              # 60 s per target
#   scripts/fuzz.sh 300          # 5 min per target
#   scripts/fuzz.sh 600 frame_reader log_record   # only these targets
#
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs
# cargo-fuzz if missing. Corpora grow in fuzz/corpus/<target> (seeded here
# on first use) and crashes land in fuzz/artifacts/<target>; neither is
# committed: a crash becomes a regression test next to the parser instead.
# Stops at the first target that finds a crash (exit status 1).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

SECONDS_PER_TARGET=${1:-60}
shift || true

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "the nightly toolchain is needed: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# A few valid inputs per target, so the fuzzer starts from the real formats.
seed() {
  local target=$1 name=$2
  mkdir -p "corpus/$target"
  cat >"corpus/$target/seed-$name"
}
seed_all() {
  local id=0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a
  printf '{"campaign_id":"%s","user_id":"u1","ad_id":"a1","timestamp":"2025-01-01T00:00:00.250+02:00"}' "$id" | seed track_body valid
  printf '{"campaign_id":"%s","user_id":"","ad_id":1,"campaign_id":null}' "$id" | seed track_body wrong
  printf '{"name":" Summer sale ","start_time":"2030-01-01T00:00:00Z"}' | seed create_campaign_body valid
  printf '{"name":"x","start_time":12}' | seed create_campaign_body wrong
  printf '[{"campaign_id":"%s","user_id":"u","ad_id":"a"},{"user_id":""},1]' "$id" | seed batch_split array
  printf '\x01{"campaign_id":"%s","user_id":"u","ad_id":"a"}\r\n\n{broken\n' "$id" | seed batch_split ndjson
  printf 'campaign_id=%s&ad_id=a&user_id=u&ts=1735689600000\na=1; uid="v"\nuid=w' "$id" | seed pixel_query valid
  printf 'ad_id=%%FF&ts=2025-01-01T00:00:00Z&ad_id=b' | seed pixel_query odd
  printf '1h 30m' | seed duration units
  printf '250ms' | seed duration millis
  printf '\x0290m\n\x06100ms\n\x082d\n\x0a25h\n\x1e7s' | seed config_flags durations
  printf '\x00\x00\x00\x00\x00\x00\x00\x002025-01-01T02:00:00.250+02:00' | seed rfc3339 offset
  # A campaign record: type 1, id, start ms, name "c".
  printf '\x01%b\x00\x7c\x29\x1f\x94\x01\x00\x00\x01\x00c' "$(printf '\\x%02x' $(seq 1 16))" | seed log_record campaign
  # A counted batch of one: type 2, count 1, campaign, fingerprint, time, ad "a".
  printf '\x02\x01\x00\x00\x00%b%b\x00\x7c\x29\x1f\x94\x01\x00\x00\x01\x00a' \
    "$(printf '\\x%02x' $(seq 1 16))" "$(printf '\\x%02x' $(seq 17 32))" | seed log_record counted
  # The end section: type 12, two u64 counts.
  printf '\x0c\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00' | seed snapshot_section end
  printf '\x0b\x01\x00\x00\x00%b\x05\x00\x00\x00\x00\x00\x00\x00' "$(printf '\\x%02x' $(seq 1 16))" | seed snapshot_section dedup
  # Magic selector, then one frame holding "abc" (crc32 0x352441c2).
  printf '\x01\x03\x00\x00\x00\xfc\xff\xff\xff\xc2\x41\x24\x35abc' | seed frame_reader one
}
seed_all

dict_of() {
  case $1 in
    track_body | create_campaign_body | batch_split) echo dict/json.dict ;;
    pixel_query) echo dict/query.dict ;;
    duration | rfc3339) echo dict/time.dict ;;
    config_flags) echo dict/config.dict ;;
    *) echo "" ;;
  esac
}

cargo +nightly fuzz build
for target in "${targets[@]}"; do
  echo "==> $target: ${SECONDS_PER_TARGET}s"
  # No single allocation over 64 MiB: a parser that trusts a length or
  # count field from its input shows up as a crash, not as memory use.
  args=(-max_total_time="$SECONDS_PER_TARGET" -malloc_limit_mb=64 -print_final_stats=1)
  dict=$(dict_of "$target")
  if [ -n "$dict" ]; then args+=(-dict="$dict"); fi
  cargo +nightly fuzz run "$target" -- "${args[@]}"
done
echo "==> no crashes in ${#targets[@]} targets"


-- track: one chunk on a single Redis node, dedup and counting in one
-- atomic step.
--
-- KEYS: the dedup key of each impression, in batch order.
-- ARGV: now_ms, ttl_ms, retention_ms, dedup_slack_ms, window_slack_s,
--       history_hours, max_ads, ncamp, then ncamp campaign bases, then per
--       impression: campaign number (1-based), ad id, t_ms.
-- Returns one character per impression: "1" counted, "0" duplicate.
local now_ms = tonumber(ARGV[1])
local ctx = window_ctx(now_ms, tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
local ncamp = tonumber(ARGV[8])
local off = 8 + ncamp
local n = #KEYS
local decided = dedup(KEYS, 1, n, function(i) return tonumber(ARGV[off + 3 * i]) end,
  now_ms, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
local tally = new_tally()
local memo = {}
local out = {}
for i = 1, n do
  if decided[i] then
    local base = ARGV[8 + tonumber(ARGV[off + 3 * i - 2])]
    count(tally, base, ARGV[off + 3 * i - 1], tonumber(ARGV[off + 3 * i]), ctx, memo)
    out[i] = '1'
  else
    out[i] = '0'
  end
end
tally_flush(tally, ctx)
return table.concat(out)

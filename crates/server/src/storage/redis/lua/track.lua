
-- track: one chunk on a single Redis node, dedup and counting in one
-- atomic step.
--
-- KEYS: the dedup key of each impression, in batch order.
-- ARGV: now_ms, ttl_ms, retention_ms, dedup_slack_ms, window_slack_s,
--       history_hours, max_ads, keep_hours, ncamp, then ncamp campaign
--       bases, then per impression: campaign number (1-based), ad id, t_ms,
--       user id, user hash (signed decimal).
-- Returns one character per impression: "1" counted, "0" duplicate.
local now_ms = tonumber(ARGV[1])
local ctx = window_ctx(now_ms, tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]),
  tonumber(ARGV[8]))
local ncamp = tonumber(ARGV[9])
local off = 9 + ncamp
local n = #KEYS
local decided = dedup(KEYS, 1, n, function(i) return tonumber(ARGV[off + 5 * i - 2]) end,
  now_ms, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
local tally = new_tally()
local memo = {}
local out = {}
for i = 1, n do
  local at = off + 5 * i - 5
  if decided[i] then
    local base = ARGV[9 + tonumber(ARGV[at + 1])]
    count(tally, base, ARGV[at + 2], tonumber(ARGV[at + 3]), ARGV[at + 4], ARGV[at + 5], ctx, memo)
    out[i] = '1'
  else
    out[i] = '0'
  end
end
tally_flush(tally, ctx)
return table.concat(out)

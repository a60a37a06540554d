
-- dedup: Redis Cluster step 1, for the impressions of one dedup bucket
-- (all its keys share the bucket's hash tag, so one slot).
--
-- Decides as track.lua does, and journals the counted impressions under the
-- chunk's id in the bucket's journal (same slot, same atomic step), so that
-- if step 2 (counting, in each campaign's slot) never completes, any node
-- can finish it later.
--
-- KEYS: the bucket's journal, then the dedup key of each impression.
-- ARGV: now_ms, ttl_ms, retention_ms, dedup_slack_ms, chunk id, created_ms
--       (wall clock, for the journal's age), ncamp, then ncamp campaign ids,
--       then per impression: campaign number (1-based), ad id, t_ms, user
--       id, user hash.
-- Returns one character per impression: "1" counted, "0" duplicate.
local now_ms = tonumber(ARGV[1])
local ncamp = tonumber(ARGV[7])
local off = 7 + ncamp
local n = #KEYS - 1
local decided = dedup(KEYS, 2, n, function(i) return tonumber(ARGV[off + 5 * i - 2]) end,
  now_ms, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
local items = {}
local out = {}
for i = 1, n do
  if decided[i] then
    local at = off + 5 * i - 5
    items[#items + 1] = { tonumber(ARGV[at + 1]), ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], ARGV[at + 5] }
    out[i] = '1'
  else
    out[i] = '0'
  end
end
if #items > 0 then
  local campaigns = {}
  for j = 1, ncamp do
    campaigns[j] = ARGV[7 + j]
  end
  redis.call('HSET', KEYS[1], ARGV[5],
    cjson.encode({ c = ARGV[6], n = ARGV[1], cs = campaigns, it = items }))
end
return table.concat(out)


-- count: Redis Cluster step 2, for the counted impressions of one campaign
-- (all its keys share the campaign's hash tag, so one slot).
--
-- Idempotent per (chunk, bucket): the marker field of the chunk says which
-- buckets' impressions were already counted ("*" = all of them), so a replay
-- from the journal after a crash or a lost reply never counts twice.
--
-- KEYS: the campaign's ":tot" hash, its marker hash for the chunk's minute,
-- and a key never written (see `KeySpace::campaign_absent`).
-- ARGV: now_ms, window_slack_s, history_hours, max_ads, keep_hours, chunk
--       id, marker_ttl_ms, mode ("*" = every bucket of the chunk is here,
--       "r" = a replay of some), n, then n times: bucket, ad id, t_ms, user
--       id, user hash (in batch order, which decides which ads get their
--       own counters).
-- Returns the number of impressions counted by this call.
local base = string.sub(KEYS[1], 1, -5)
local mark = redis.call('HGET', KEYS[2], ARGV[6])
if mark == '*' then
  return 0
end
mark = mark or ''
local ctx = window_ctx(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
  tonumber(ARGV[5]))
local tally = new_tally()
local memo = {}
local counted = 0
local added = {}
local fresh = {}
for i = 0, tonumber(ARGV[9]) - 1 do
  local at = 10 + 5 * i
  local bucket = ARGV[at]
  if not string.find(mark, ',' .. bucket .. ',', 1, true) then
    count(tally, base, ARGV[at + 1], tonumber(ARGV[at + 2]), ARGV[at + 3], ARGV[at + 4], ctx, memo)
    counted = counted + 1
    if not fresh[bucket] then
      fresh[bucket] = true
      added[#added + 1] = bucket
    end
  end
end
tally_flush(tally, ctx)
if ARGV[8] == '*' then
  mark = '*'
elseif #added > 0 then
  if mark == '' then
    mark = ','
  end
  mark = mark .. table.concat(added, ',') .. ','
end
redis.call('HSET', KEYS[2], ARGV[6], mark)
redis.call('PEXPIRE', KEYS[2], ARGV[7])
return counted

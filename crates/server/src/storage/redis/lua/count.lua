
-- count: Redis Cluster step 2, for the counted impressions of one campaign
-- (all its keys share the campaign's hash tag, so one slot).
--
-- Idempotent per (chunk, bucket): the marker field of the chunk says which
-- buckets' impressions were already counted ("*" = all of them), so a replay
-- from the journal after a crash or a lost reply never counts twice.
--
-- KEYS: the campaign's ":tot" hash, its marker hash for the chunk's minute.
-- ARGV: now_ms, window_slack_s, history_hours, max_ads, chunk id,
--       marker_ttl_ms, mode ("*" = every bucket of the chunk is here,
--       "r" = a replay of some), n, then n times: bucket, ad id, t_ms (in
--       batch order, which decides which ads get their own counters).
-- Returns the number of impressions counted by this call.
local base = string.sub(KEYS[1], 1, -5)
local mark = redis.call('HGET', KEYS[2], ARGV[5])
if mark == '*' then
  return 0
end
mark = mark or ''
local ctx = window_ctx(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
local tally = new_tally()
local memo = {}
local counted = 0
local added = {}
local fresh = {}
for i = 0, tonumber(ARGV[8]) - 1 do
  local bucket = ARGV[9 + 3 * i]
  if not string.find(mark, ',' .. bucket .. ',', 1, true) then
    count(tally, base, ARGV[10 + 3 * i], tonumber(ARGV[11 + 3 * i]), ctx, memo)
    counted = counted + 1
    if not fresh[bucket] then
      fresh[bucket] = true
      added[#added + 1] = bucket
    end
  end
end
tally_flush(tally, ctx)
if ARGV[7] == '*' then
  mark = '*'
elseif #added > 0 then
  if mark == '' then
    mark = ','
  end
  mark = mark .. table.concat(added, ',') .. ','
end
redis.call('HSET', KEYS[2], ARGV[5], mark)
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return counted

-- create_campaign: adds a campaign to the index unless its id is there.
--
-- KEYS: the campaign index (sorted set, every score 0, members ordered by
--       bytes: "<uuid>|<start_ms>|<name>", so by id).
-- ARGV: the hyphenated id, the member.
-- Returns 1 if added, 0 if the id existed.
local found = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. ARGV[1] .. '|', '(' .. ARGV[1] .. '}', 'LIMIT', 0, 1)
if #found > 0 then
  return 0
end
redis.call('ZADD', KEYS[1], 0, ARGV[2])
return 1


-- series: a campaign's counts per second, minute or hour, from the same
-- buckets as the windows (so they always agree).
--
-- KEYS: the campaign's ":tot" hash, and a key never written (see
-- `KeySpace::campaign_absent`).
-- ARGV: resolution ("s", "m" or "h"), first bucket, count, metric ("i"
--       impressions, "u" unique users: per minute or hour, each at most the
--       bucket's impressions; per second there are no sketches: zeros).
-- Returns count integers, oldest first.
local base = string.sub(KEYS[1], 1, -5)
local first = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local users = ARGV[4] == 'u'
-- Seconds are fields of minute hashes, minutes of hour hashes, hours of
-- day hashes.
local kind, per, sketch
if ARGV[1] == 's' then
  kind, per = ':m:', 60
elseif ARGV[1] == 'm' then
  kind, per, sketch = ':h:', 60, ':um:'
else
  kind, per, sketch = ':d:', 24, ':uh:'
end
local out = {}
if users and not sketch then
  for i = 1, n do
    out[i] = 0
  end
  return out
end
local i = 0
while i < n do
  local group = floor((first + i) / per)
  local fields = {}
  local start = i
  while i < n and floor((first + i) / per) == group do
    fields[#fields + 1] = int((first + i) % per)
    i = i + 1
  end
  local values = redis.call('HMGET', base .. ':a' .. kind .. int(group), unpack(fields))
  for j = 1, #fields do
    local count = tonumber(values[j]) or 0
    if users and count > 0 then
      local distinct = count_union({ base .. ':a' .. sketch .. int(first + start + j - 1) })
      count = math.min(count, distinct)
    end
    out[start + j] = count
  end
end
return out

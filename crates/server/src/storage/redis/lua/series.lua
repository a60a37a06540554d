
-- series: a campaign's counts per second, minute or hour, from the same
-- buckets as the windows (so they always agree).
--
-- KEYS: the campaign's ":tot" hash.
-- ARGV: resolution ("s", "m" or "h"), first bucket, count.
-- Returns count integers, oldest first.
local base = string.sub(KEYS[1], 1, -5)
local first = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
-- Seconds are fields of minute hashes, minutes of hour hashes, hours of
-- day hashes.
local kind, per
if ARGV[1] == 's' then
  kind, per = ':m:', 60
elseif ARGV[1] == 'm' then
  kind, per = ':h:', 60
else
  kind, per = ':d:', 24
end
local out = {}
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
    out[start + j] = tonumber(values[j]) or 0
  end
end
return out


-- stats: a campaign's windows and totals, read in one atomic step so the
-- numbers are one snapshot (per ad, they add up to the campaign's).
--
-- KEYS: the campaign's ":tot" hash, and a key never written (see
-- `KeySpace::campaign_absent`).
-- ARGV: now_s, mode ("a": the campaign only; "ads": also every ad and
--       "other").
-- Returns, for "a": the campaign's six numbers (below); for "ads":
-- {exceeded, nads, the campaign's six, other's six, then per ad: ad id and
-- its six}. The six: last_hour, last_day, total, then unique users of the
-- same three windows.
--
-- A window [lo, now] is summed as WindowCounter::count_since does: the
-- seconds of lo's minute from lo on, the minute totals of the rest of lo's
-- hour, then the hour totals after lo's hour (up to the highest recorded).
-- An ad's windows (and "other"'s) are whole minutes, as AdCounter's: the
-- minute totals of lo's hour from lo's minute on, then the hour totals.
-- That is a handful of HMGETs per counter, whatever the volume.
--
-- Unique users as UniqueCounter answers: last_hour the union of minutes
-- m-59 on, last_day of hours h-23 on, total the total sketch (m, h: now's
-- minute and hour; "on" reaches the highest minute with users), each at
-- most the impressions counted in the same whole minutes or hours.
local base = string.sub(KEYS[1], 1, -5)
local now = tonumber(ARGV[1])

local function hmget_into(sums, counters, suffix, fields)
  if #fields == 0 then
    return
  end
  for j = 1, #counters do
    local values = redis.call('HMGET', base .. ':' .. counters[j] .. suffix, unpack(fields))
    local s = sums[j]
    for i = 1, #fields do
      local v = values[i]
      if v then
        s = s + tonumber(v)
      end
    end
    sums[j] = s
  end
end

-- Counted impressions of each counter since second lo (by_minute false)
-- or since minute lo (by_minute true).
local function since(counters, lo, maxh, by_minute)
  local sums = {}
  for j = 1, #counters do
    sums[j] = 0
  end
  local minute, first_minute
  if by_minute then
    minute = lo
    first_minute = minute % 60
  else
    minute = floor(lo / 60)
    first_minute = minute % 60 + 1
    local fields = {}
    for s = lo % 60, 59 do
      fields[#fields + 1] = int(s)
    end
    hmget_into(sums, counters, ':m:' .. int(minute), fields)
  end
  local hour = floor(minute / 60)
  local fields = {}
  for m = first_minute, 59 do
    fields[#fields + 1] = int(m)
  end
  hmget_into(sums, counters, ':h:' .. int(hour), fields)
  if maxh then
    local h = hour + 1
    while h <= maxh do
      local day = floor(h / 24)
      fields = {}
      while h <= maxh and floor(h / 24) == day do
        fields[#fields + 1] = int(h % 24)
        h = h + 1
      end
      hmget_into(sums, counters, ':d:' .. int(day), fields)
    end
  end
  return sums
end

local function at_least_zero(n)
  if n < 0 then return 0 end
  return n
end
local hour_lo = at_least_zero(now - 3599)
local day_lo = at_least_zero(now - 86399)
local now_minute = floor(now / 60)
local hour_lo_minute = at_least_zero(now_minute - 59)
local day_lo_minute = at_least_zero(now_minute - 1439)

local now_hour = floor(now / 3600)
local users_hour_lo = now_minute - 59
local users_day_lo = (now_hour - 23) * 60
if users_hour_lo < 0 then users_hour_lo = 0 end
if users_day_lo < 0 then users_day_lo = 0 end
local tot_mu

-- Distinct users of the sketches at keys, at most clamp: the impressions
-- counted in the same minutes or hours. Every one of them has its user in
-- those sketches, so with at most one impression the answer is that
-- number, and the sketches are read only when it could be more (an ad
-- breakdown of thousands of quiet ads stays cheap).
local function users_at_most(keys_of, clamp)
  if clamp <= 1 then
    return clamp
  end
  return math.min(count_union(keys_of()), clamp)
end

-- Appends a counter's six numbers to out.
local function push_six(out, k, last_hour, last_day, total, clamp_hour, clamp_day)
  local prefix = base .. ':' .. k
  local top = now_minute
  if tot_mu and tot_mu > top then
    top = math.min(tot_mu, now_minute + 1440)
  end
  out[#out + 1] = last_hour
  out[#out + 1] = last_day
  out[#out + 1] = total
  out[#out + 1] = users_at_most(function()
    local minutes = {}
    for m = users_hour_lo, top do
      minutes[#minutes + 1] = prefix .. ':um:' .. int(m)
    end
    return minutes
  end, clamp_hour)
  out[#out + 1] = users_at_most(function()
    local hours = {}
    for h = floor(users_day_lo / 60), floor(top / 60) do
      hours[#hours + 1] = prefix .. ':uh:' .. int(h)
    end
    return hours
  end, clamp_day)
  out[#out + 1] = users_at_most(function() return { prefix .. ':ut' } end, total)
end

if ARGV[2] == 'a' then
  local tot = redis.call('HMGET', KEYS[1], 'a', 'mh', 'mu')
  local maxh = tonumber(tot[2])
  tot_mu = tonumber(tot[3])
  local counters = { 'a' }
  local out = {}
  push_six(out, 'a', since(counters, hour_lo, maxh)[1], since(counters, day_lo, maxh)[1],
    tonumber(tot[1]) or 0, since(counters, users_hour_lo, maxh, true)[1],
    since(counters, users_day_lo, maxh, true)[1])
  return out
end

local ads = redis.call('HGETALL', base .. ':ads')
local counters = { 'o' }
local names = {}
for i = 1, #ads, 2 do
  names[#names + 1] = ads[i]
  counters[#counters + 1] = ads[i + 1]
end
-- HGETALL, not HMGET: up to MAX_ADS_PER_CAMPAIGN fields would exceed
-- what Lua's unpack can pass.
local all = redis.call('HGETALL', KEYS[1])
local tot = {}
for i = 1, #all, 2 do
  tot[all[i]] = all[i + 1]
end
local maxh = tonumber(tot['mh'])
tot_mu = tonumber(tot['mu'])
local out = { tot['x'] and 1 or 0, #names }
push_six(out, 'a', since({ 'a' }, hour_lo, maxh)[1], since({ 'a' }, day_lo, maxh)[1],
  tonumber(tot['a']) or 0, since({ 'a' }, users_hour_lo, maxh, true)[1],
  since({ 'a' }, users_day_lo, maxh, true)[1])
local hour = since(counters, hour_lo_minute, maxh, true)
local day = since(counters, day_lo_minute, maxh, true)
local day_whole_hours = since(counters, users_day_lo, maxh, true)
for j = 1, #counters do
  if j > 1 then
    out[#out + 1] = names[j - 1]
  end
  -- An ad's last hour is whole minutes already: its own clamp.
  push_six(out, counters[j], hour[j], day[j], tonumber(tot[counters[j]]) or 0, hour[j],
    day_whole_hours[j])
end
return out


-- range: a campaign's counts over UTC ranges [from, to) of whole quarter
-- hours (local days and hours in any time zone), as Engine::range_counts.
--
-- KEYS: the campaign's ":tot" hash, and a key never written (see
-- `KeySpace::campaign_absent`).
-- ARGV: metric ("i" impressions, "u" unique users), now_s, keep_hours (of
--       quarter-hour counts), history_hours (of hour sketches), n, then n
--       times from, to (Unix seconds).
-- Impressions: the quarters starting in the range that are still kept.
-- Users: the distinct users of the hours that start in the range (and are
-- still kept), at most those hours' impressions.
-- Returns n integers.
local base = string.sub(KEYS[1], 1, -5)
local users = ARGV[1] == 'u'
local now_hour = floor(tonumber(ARGV[2]) / 3600)
local keep = tonumber(ARGV[3])
local history = tonumber(ARGV[4])
local n = tonumber(ARGV[5])

local days = {}
local function quarters_of(day)
  local q = days[day]
  if not q then
    q = {}
    local all = redis.call('HGETALL', base .. ':a:q:' .. int(day))
    for i = 1, #all, 2 do
      q[tonumber(all[i])] = tonumber(all[i + 1])
    end
    days[day] = q
  end
  return q
end

-- Impressions of the quarters starting in [from, to).
local function quarter_sum(from, to)
  local total = 0
  for q = math.ceil(from / 900), math.ceil(to / 900) - 1 do
    if floor(q / 4) + keep >= now_hour then
      local v = quarters_of(floor(q / 96))[q % 96]
      if v then
        total = total + v
      end
    end
  end
  return total
end

local out = {}
for i = 1, n do
  local from = tonumber(ARGV[4 + 2 * i])
  local to = tonumber(ARGV[5 + 2 * i])
  if users then
    local first, last = math.ceil(from / 3600), math.ceil(to / 3600) - 1
    local hours = {}
    for h = first, last do
      if h + history > now_hour then
        hours[#hours + 1] = base .. ':a:uh:' .. int(h)
      end
    end
    out[i] = math.min(count_union(hours), quarter_sum(first * 3600, (last + 1) * 3600))
  else
    out[i] = quarter_sum(from, to)
  end
end
return out

-- Shared by every counting and reading script (prepended to each).
--
-- Layout under a campaign's base B = "<prefix>{c<uuid>}" (one hash tag, so
-- one Redis Cluster slot per campaign):
--
--   B..":tot"              hash  counter -> all-time total; "x" -> "1" once an
--                                ad was refused its own counters; "mh" -> the
--                                highest hour (Unix hours) recorded
--   B..":ads"              hash  ad id -> its counter, "0", "1", ... in the
--                                order ads were first counted
--   B..":a:m:"..min        hash  second of the minute (0..59) -> count
--   B..":"..k..":h:"..hour hash  minute of the hour (0..59) -> count
--   B..":"..k..":d:"..day  hash  hour of the day (0..23) -> count
--   B..":a:q:"..day        hash  quarter hour of the UTC day (0..95) -> count
--                                (the campaign only: calendar reports)
--   B..":"..k..":um:"..min, B..":"..k..":uh:"..hour, B..":"..k..":ut"
--                          unique-user sketches of a minute, an hour, all
--                          time, each two keys: S..":s" a set of the users'
--                          hashes (signed decimal) while at most 128, or
--                          {"x"} once past; S..":p" an HLL that gets
--                          PFADD of every user id (crates/core/src/uniques)
--
-- k is "a" (the whole campaign), "o" (ads beyond the limit) or an ad's
-- counter. This mirrors crates/core/src/window/: the campaign ("a") keeps
-- per-second counts for the last day (WindowCounter), an ad or "o" only
-- minute totals (AdCounter); both keep hour totals for the retained history
-- and a total, with the same conditions for what is recorded, so the
-- answers are the embedded engine's.
--
-- Unique users go straight into their minute's, their hour's and the total
-- sketch (the engine folds minutes into hours when an hour closes): a
-- window's count depends only on the set of users in the union of its
-- sketches, so both give the same numbers. "mu" in ":tot" is the highest
-- minute with users (reads look that far ahead, for clock skew).
--
-- Times are the calling node's (ARGV), never Redis's clock. Key expiry only
-- reclaims memory: every relative expiry is the time until the node-time
-- moment the engine would drop the bucket, plus a slack.

local floor = math.floor

local function int(n)
  return string.format('%d', n)
end

-- Window settings from ARGV, shared by the counting scripts.
local function window_ctx(now_ms, slack_s, history_hours, max_ads, keep_hours)
  local now_sec = floor(now_ms / 1000)
  return {
    now_sec = now_sec,
    now_min = floor(now_sec / 60),
    now_hour = floor(now_sec / 3600),
    slack = slack_s,
    history = history_hours,
    max_ads = max_ads,
    -- Hours of quarter-hour counts kept behind the current one.
    keep = keep_hours,
  }
end

-- Counted impressions gathered per (campaign, counter, second) and written
-- at the end, once per (key, field): a chunk of a thousand impressions in
-- one second is a handful of HINCRBYs, and the per-impression work is one
-- table increment.
local function new_tally()
  return { seconds = {}, inc = {}, ttl = {}, maxh = {}, hour_keys = {}, users = {}, maxu = {}, ukeys = {} }
end

local function tally_add(tally, key, field, n, ttl_s)
  local fields = tally.inc[key]
  if not fields then
    fields = {}
    tally.inc[key] = fields
  end
  fields[field] = (fields[field] or 0) + n
  if ttl_s and (not tally.ttl[key] or ttl_s > tally.ttl[key]) then
    tally.ttl[key] = ttl_s
  end
end

-- WindowCounter::record, n times, for counter k of the campaign at base.
local function record(tally, base, k, sec, n, ctx)
  local minute = floor(sec / 60)
  local hour = floor(sec / 3600)
  local prefix = base .. ':' .. k
  -- Minute buckets cover the last 1,440 minutes and the current one; only
  -- the campaign's hold its seconds.
  if minute + 1440 >= ctx.now_min then
    if k == 'a' then
      tally_add(tally, prefix .. ':m:' .. int(minute), int(sec % 60), n,
        (minute + 1441) * 60 - ctx.now_sec + ctx.slack)
    end
    tally_add(tally, prefix .. ':h:' .. int(hour), int(minute % 60), n,
      (hour * 60 + 60 + 1440) * 60 - ctx.now_sec + ctx.slack)
  end
  -- Hour buckets cover the retained history.
  if hour + ctx.history > ctx.now_hour then
    local day = floor(hour / 24)
    local key = prefix .. ':d:' .. int(day)
    tally_add(tally, key, int(hour % 24), n,
      (day * 24 + 24 + ctx.history) * 3600 - ctx.now_sec + ctx.slack)
    tally.hour_keys[key] = base
    if not tally.maxh[base] or hour > tally.maxh[base] then
      tally.maxh[base] = hour
    end
  end
  -- Quarter hours of the daily history (QuarterCounter), campaign only.
  if k == 'a' and hour + ctx.keep >= ctx.now_hour then
    local day = floor(hour / 24)
    tally_add(tally, base .. ':a:q:' .. int(day), int(floor((sec % 86400) / 900)), n,
      (day * 24 + 24 + ctx.keep) * 3600 - ctx.now_sec + ctx.slack)
  end
  tally_add(tally, base .. ':tot', k, n, nil)
end

-- UniqueCounter::record for counter k of the campaign at base: the user
-- goes into the sketches of its minute (while within the last day), its
-- hour (while within the history) and the total. A chunk's users are
-- gathered per (counter, minute), one list for all three sketches, and
-- written at the flush: per impression, two table appends.
local function count_user(tally, base, k, sec, id, hash)
  local minute = floor(sec / 60)
  local per_base = tally.ukeys[base]
  if not per_base then
    per_base = {}
    tally.ukeys[base] = per_base
  end
  local groups = per_base[k]
  if not groups then
    groups = {}
    per_base[k] = groups
  end
  local g = groups[minute]
  if not g then
    g = { base = base, k = k, minute = minute, ids = {}, hashes = {} }
    groups[minute] = g
    tally.users[#tally.users + 1] = g
  end
  local n = #g.ids + 1
  g.ids[n] = id
  g.hashes[n] = hash
end

-- Adds users to the sketch at key: one PFADD and (while exact) one SADD,
-- whatever their number. ttl_s: the sketch's expiry (nil: none).
local function sketch_write(key, ids, hashes, ttl_s)
  local set, hll = key .. ':s', key .. ':p'
  redis.call('PFADD', hll, unpack(ids))
  local promoted = false
  if redis.call('SISMEMBER', set, 'x') == 0 then
    if redis.call('SADD', set, unpack(hashes)) > 0 and redis.call('SCARD', set) > 128 then
      -- Past the exact threshold for good: the HLL answers from now on.
      redis.call('DEL', set)
      redis.call('SADD', set, 'x')
      promoted = true
    end
  end
  if ttl_s then
    -- A sketch's expiry depends on its key alone: set once, when its HLL
    -- is new (the set is made in the same call), or again for a set that
    -- was just replaced.
    if ttl_s < 1 then ttl_s = 1 end
    if redis.call('EXPIRE', hll, int(ttl_s), 'NX') == 1 or promoted then
      redis.call('EXPIRE', set, int(ttl_s), 'NX')
    end
  end
end

-- Writes the users gathered per (counter, minute) to the sketches of that
-- minute, its hour and the total, under the conditions of count_user.
local function users_flush(tally, ctx)
  for _, g in ipairs(tally.users) do
    local prefix = g.base .. ':' .. g.k
    local minute = g.minute
    local hour = floor(minute / 60)
    if minute + 1440 >= ctx.now_min then
      sketch_write(prefix .. ':um:' .. int(minute), g.ids, g.hashes,
        (minute + 1441) * 60 - ctx.now_sec + ctx.slack)
      local top = tally.maxu[g.base]
      if not top or minute > top then
        tally.maxu[g.base] = minute
      end
    end
    if hour + ctx.history > ctx.now_hour then
      sketch_write(prefix .. ':uh:' .. int(hour), g.ids, g.hashes,
        (hour + ctx.history) * 3600 - ctx.now_sec + ctx.slack)
    end
    sketch_write(prefix .. ':ut', g.ids, g.hashes, nil)
  end
  for base, minute in pairs(tally.maxu) do
    local current = tonumber(redis.call('HGET', base .. ':tot', 'mu'))
    if not current or minute > current then
      redis.call('HSET', base .. ':tot', 'mu', int(minute))
    end
  end
end

-- Distinct users of the union of the sketches whose keys are keys (the
-- rule of crates/core/src/uniques/mod.rs): the size of the union of the
-- sets while none is past the threshold and it has at most 128 members,
-- else PFCOUNT of all the HLLs together.
local function count_union(keys)
  local n = #keys
  if n == 0 then
    return 0
  end
  local sets = {}
  for i = 1, n do
    sets[i] = keys[i] .. ':s'
  end
  local members = redis.call('SUNION', unpack(sets))
  if #members <= 128 then
    local exact = true
    for i = 1, #members do
      if members[i] == 'x' then
        exact = false
        break
      end
    end
    if exact then
      return #members
    end
  end
  local hlls = {}
  for i = 1, n do
    hlls[i] = keys[i] .. ':p'
  end
  return redis.call('PFCOUNT', unpack(hlls))
end

-- Counts one impression for counter k at second sec (recorded at the flush).
local function tally_count(tally, base, k, sec)
  local per_base = tally.seconds[base]
  if not per_base then
    per_base = {}
    tally.seconds[base] = per_base
  end
  local per_k = per_base[k]
  if not per_k then
    per_k = {}
    per_base[k] = per_k
  end
  per_k[sec] = (per_k[sec] or 0) + 1
end

local function tally_flush(tally, ctx)
  for base, per_base in pairs(tally.seconds) do
    for k, per_k in pairs(per_base) do
      for sec, n in pairs(per_k) do
        record(tally, base, k, sec, n, ctx)
      end
    end
  end
  local new_hours = {}
  for key, fields in pairs(tally.inc) do
    -- A bucket key's expiry depends on the key alone, so it is set when
    -- one of its fields is created (which includes the key's creation),
    -- not on every write.
    local created = false
    for field, n in pairs(fields) do
      if redis.call('HINCRBY', key, field, n) == n then
        created = true
      end
    end
    local ttl = tally.ttl[key]
    if ttl and created then
      if ttl < 1 then ttl = 1 end
      redis.call('EXPIRE', key, int(ttl))
    end
    if created and tally.hour_keys[key] then
      new_hours[tally.hour_keys[key]] = true
    end
  end
  -- The highest hour can only grow when an hour bucket gets a new field.
  for base, _ in pairs(new_hours) do
    local hour = tally.maxh[base]
    local current = tonumber(redis.call('HGET', base .. ':tot', 'mh'))
    if not current or hour > current then
      redis.call('HSET', base .. ':tot', 'mh', int(hour))
    end
  end
  users_flush(tally, ctx)
end

-- The counter of an ad: its own while fewer than max_ads ads have one,
-- "o" (other) after that. Decided here, inside the script, so the first
-- max_ads ads counted win whichever node counted them.
local function counter_of(base, ad, ctx, memo)
  local known = memo[base]
  if not known then
    known = {}
    memo[base] = known
  end
  local k = known[ad]
  if k then
    return k
  end
  k = redis.call('HGET', base .. ':ads', ad)
  if not k then
    local n = redis.call('HLEN', base .. ':ads')
    if n < ctx.max_ads then
      k = int(n)
      redis.call('HSET', base .. ':ads', ad, k)
    else
      k = 'o'
      redis.call('HSET', base .. ':tot', 'x', '1')
    end
  end
  known[ad] = k
  return k
end

-- Counts one impression (already decided to count) at t_ms, of the user
-- with that id and hash.
local function count(tally, base, ad, t_ms, id, hash, ctx, memo)
  local sec = floor(t_ms / 1000)
  local k = counter_of(base, ad, ctx, memo)
  tally_count(tally, base, 'a', sec)
  tally_count(tally, base, k, sec)
  count_user(tally, base, 'a', sec, id, hash)
  count_user(tally, base, k, sec, id, hash)
end

-- DedupRule::decide for n impressions whose dedup keys are keys[from ..
-- from + n - 1] and whose times are t_of(1..n), in order. Per key the value
-- is L, the latest counted time (ms). Returns one boolean per impression:
-- true = counted. A counted key's entry is kept (PX) until the node-time
-- moment L + retention (TTL + the lateness allowed), plus a slack.
local function dedup(keys, from, n, t_of, now_ms, ttl_ms, retention_ms, slack_ms)
  local decided = {}
  if n == 0 then
    return decided
  end
  local stored = redis.call('MGET', unpack(keys, from, from + n - 1))
  local latest = {}
  for i = 1, n do
    local key = keys[from + i - 1]
    local t = t_of(i)
    local last = latest[key]
    if last == nil then
      last = tonumber(stored[i]) or false
    end
    if last and math.abs(t - last) < ttl_ms then
      decided[i] = false
    else
      local new_last = t
      if last and last > t then
        new_last = last
      end
      latest[key] = new_last
      local px = new_last + retention_ms - now_ms
      if px < 0 then
        px = 0
      end
      redis.call('SET', key, int(new_last), 'PX', int(px + slack_ms))
      decided[i] = true
    end
  end
  return decided
end

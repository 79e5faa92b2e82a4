-- Prepended to every script (CMakeLists.txt). A script checks every key it
-- touches before its first write, so that an error reply always means that
-- nothing changed.

-- An error naming key unless it is absent or holds a kind ('hash', 'zset',
-- 'string'); nil when it is fine.
local function expect(key, kind)
  local t = redis.call('TYPE', key)
  t = t.ok or t
  if t ~= kind and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. t ..
                             ', not a ' .. kind)
  end
end

-- An error naming key unless INCRBY can count on it; nil when it can. The
-- GET is the type check too (one command, not two); TYPE only names what
-- a key of another kind holds.
local function incrementable(key)
  local v = redis.pcall('GET', key)
  if type(v) == 'table' and v.err then
    return expect(key, 'string') or v
  end
  if v and not string.match(v, '^%-?%d+$') then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds no integer')
  end
end

-- Redis's own clock, ms.
local function redis_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- HDEL of fields, in slices that unpack can take.
local function hdel_all(key, fields)
  for i = 1, #fields, 1000 do
    redis.call('HDEL', key, unpack(fields, i, math.min(i + 999, #fields)))
  end
end

-- Fences, shared by a deployment's replicas in three keys that carry no
-- TTL (an eviction policy can take none of them):
--   f.fences  hash: replica id -> the highest number applied or fenced off
--   f.used    sorted set: replica id -> when its fence last moved (Redis ms)
--   f.skips   sorted set of fenced-off ranges "id:first-last", scored by
--             last (journal mode; usually empty)
-- A fence unused for `age` ms is forgotten with its ranges, two at a time
-- by whichever script moves a fence next: nothing grows without bound.
-- A journal write may pass an age of 0: its replica noted its fence's use
-- less than a second ago (SCRIPTS_FENCE_NOTE_MS), against an age of a day,
-- so the write moves the fence alone, two commands cheaper.

-- Forgets the ranges of replica id that end at or below upto.
local function skips_forget(f, id, upto)
  local p = id .. ':'
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', f.skips, '-inf', upto)) do
    if string.sub(m, 1, #p) == p then
      redis.call('ZREM', f.skips, m)
    end
  end
end

-- Fences off numbers first..last of replica id.
local function skips_add(f, id, first, last)
  redis.call('ZADD', f.skips, last,
             string.format('%s:%.0f-%.0f', id, first, last))
end

-- Whether number seq of replica id lies in a fenced-off range.
local function skipped(f, id, seq)
  local p = id .. ':'
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', f.skips, seq, '+inf')) do
    if string.sub(m, 1, #p) == p and
       tonumber(string.match(m, ':(%d+)-')) <= seq then
      return true
    end
  end
  return false
end

local function fence_get(f, id)
  return tonumber(redis.call('HGET', f.fences, id) or 0)
end

-- now: Redis's clock (redis_ms), read once by the caller. age 0: the
-- fence moves, its use is not noted and no stale fence is looked for.
local function fence_set(f, id, n, age, now)
  redis.call('HSET', f.fences, id, n)
  if age == 0 then
    return
  end
  redis.call('ZADD', f.used, now, id)
  local stale = redis.call('ZRANGEBYSCORE', f.used, '-inf', now - age,
                           'LIMIT', 0, 2)
  for _, old in ipairs(stale) do
    redis.call('HDEL', f.fences, old)
    redis.call('ZREM', f.used, old)
    skips_forget(f, old, '+inf')
  end
end

-- An error unless the fences' keys are of their kinds; nil when they are.
local function fences_ok(f)
  return expect(f.fences, 'hash') or expect(f.used, 'zset') or
         expect(f.skips, 'zset')
end

-- Idempotency keys (both modes): a sorted set, the client's key -> when
-- it was first counted (Redis's clock, ms). No TTL: a key counted longer
-- than ttl ms ago is forgotten by the next script that prunes the set (a
-- journal write or a memory-mode batch that carries keys, every lease
-- renewal).
local function idem_prune(key, now, ttl)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - ttl)
end

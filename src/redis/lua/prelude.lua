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

-- An error naming key unless INCRBY can count on it; nil when it can.
local function incrementable(key)
  local e = expect(key, 'string')
  if e then
    return e
  end
  local v = redis.call('GET', key)
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


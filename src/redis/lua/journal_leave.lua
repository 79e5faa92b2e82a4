-- Journal mode: a replica stops. Its lease ends at once, so that what its
-- journal still holds (a shutdown cut short) is adopted without waiting for
-- the lease to run out; an empty journal leaves no trace.
--   KEYS[1] journal   KEYS[2] replicas (sorted set, journal_renew.lua)
--   ARGV[1] this replica's id
-- Returns the increments left for others to adopt.
local e = expect(KEYS[1], 'hash') or expect(KEYS[2], 'zset')
if e then
  return e
end
local left = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  left = left + tonumber(v)
end
if left == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
end
return left

-- Journal mode: a replica stops. Its lease goes at once, so that what its
-- journal still holds (a shutdown cut short) is adopted without waiting for
-- the lease to lapse; an empty journal leaves no trace.
--   KEYS[1] journal   KEYS[2] lease   KEYS[3] replicas (set)
--   ARGV[1] this replica's id
-- Returns the increments left for others to adopt.
local left = 0
for i, v in ipairs(redis.call('HVALS', KEYS[1])) do
  left = left + tonumber(v)
end
if left == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[3], ARGV[1])
end
redis.call('DEL', KEYS[2])
return left

-- Journal mode: settle a write whose reply was lost (a timeout, a broken
-- connection). Redis may or may not have applied it, and a copy may still
-- wait in a paused Redis's buffers.
--   KEYS[1] fence   KEYS[2] fenced-off writes (zset)
--   ARGV[1] write number   ARGV[2] fence lifetime, ms
-- Writes are resolved in the order they were sent. One not yet applied is
-- fenced off here, so a late copy can never apply it; the set remembers it
-- in case this reply is lost too.
-- Returns 1 when the write is in the journal, 0 when it is not and never
-- will be.
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or 0)
if seq > last then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('ZADD', KEYS[2], seq, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 0
end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return 0
end
return 1

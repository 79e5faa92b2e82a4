-- Journal mode: settle a write whose reply was lost (a timeout, a broken
-- connection). Redis may or may not have applied it, and a copy may still
-- wait in a paused Redis's buffers.
--   KEYS[1] fence   KEYS[2] fenced-off writes (ranges, see journal_write.lua)
--   ARGV[1] write number   ARGV[2] fence lifetime, ms
-- A write not yet applied is fenced off here, with every number below it
-- not yet seen, so that no late copy can ever apply them; the ranges
-- remember them in case this reply is lost too.
-- Returns 1 when the write is in the journal, 0 when it is not and never
-- will be.
local e = expect(KEYS[1], 'string') or expect(KEYS[2], 'zset')
if e then
  return e
end
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or 0)
if seq > last then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('ZADD', KEYS[2], seq, string.format('%.0f-%.0f', last + 1, seq))
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 0
end
local r = redis.call('ZRANGEBYSCORE', KEYS[2], seq, '+inf', 'LIMIT', 0, 1)
if r[1] and tonumber(string.match(r[1], '^(%d+)-')) <= seq then
  return 0
end
return 1

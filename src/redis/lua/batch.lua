-- Memory mode: one batch of increments that fell due together, counted
-- exactly once however often it is sent.
--   KEYS[1] the counter   KEYS[2] this replica's fence (the last batch applied)
--   ARGV[1] batch number  ARGV[2] increments  ARGV[3] fence lifetime, ms
--   ARGV[4] the replica's lowest batch not yet settled: those below it were
--           applied or failed for good (an error before this script ran,
--           NOPERM say), and are passed over
-- Batches of one replica apply strictly in order: a copy of a batch already
-- applied (a retry, or a late execution of a command from a broken
-- connection) answers 0 and changes nothing; a batch whose predecessor has
-- not been applied answers -1 (the replica sends both again, in order).
-- Returns 1 when applied; an error reply when the counter refused it (OOM
-- leaves the fence as it was, so the batch is sent again; any other error
-- consumes the batch number: no retry can fix it).
local e = expect(KEYS[2], 'string')
if e then
  return e
end
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[2]) or 0)
if seq <= last then
  return 0
end
if last < tonumber(ARGV[4]) - 1 then
  last = tonumber(ARGV[4]) - 1
end
if seq ~= last + 1 then
  return -1
end
local r = redis.pcall('INCRBY', KEYS[1], ARGV[2])
if type(r) == 'table' and r.err then
  if string.sub(r.err, 1, 3) ~= 'OOM' then
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  end
  return r
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
return 1

-- Memory mode: one batch of increments that fell due together, counted
-- exactly once however often it is sent.
--   KEYS[1] the counter   KEYS[2..4] the deployment's fences, their uses
--   and fenced-off ranges (prelude.lua)
--   ARGV[1] batch number  ARGV[2] increments
--   ARGV[3] a fence unused this long (ms) is forgotten
--   ARGV[4] the replica's lowest batch not yet settled: those below it were
--           applied or failed for good (an error before this script ran,
--           NOPERM say), and are passed over
--   ARGV[5] the replica's id
-- Batches of one replica apply strictly in order: a copy of a batch already
-- applied (a retry, or a late execution of a command from a broken
-- connection) answers 0 and changes nothing; a batch whose predecessor has
-- not been applied answers -1 (the replica sends both again, in order).
-- Returns 1 when applied; an error reply when the counter refused it (OOM
-- leaves the fence as it was, so the batch is sent again; any other error
-- consumes the batch number: no retry can fix it).
local f = {fences = KEYS[2], used = KEYS[3], skips = KEYS[4]}
local e = fences_ok(f)
if e then
  return e
end
local id = ARGV[5]
local age = tonumber(ARGV[3])
local seq = tonumber(ARGV[1])
local last = fence_get(f, id)
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
    fence_set(f, id, seq, age, redis_ms())
  end
  return r
end
fence_set(f, id, seq, age, redis_ms())
return 1

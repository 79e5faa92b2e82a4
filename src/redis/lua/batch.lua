-- Memory mode: one batch of increments that fell due together, counted
-- exactly once however often it is sent.
--   KEYS[1] the counter   KEYS[2..4] the deployment's fences, their uses
--   and fenced-off ranges (prelude.lua)
--   KEYS[5] the Idempotency-Keys counted (prelude.lua)
--   ARGV[1] batch number  ARGV[2] increments, keyed ones too
--   ARGV[3] a fence unused this long (ms) is forgotten
--   ARGV[4] the replica's lowest batch not yet settled: those below it were
--           applied or failed for good (an error before this script ran,
--           NOPERM say), and are passed over
--   ARGV[5] the replica's id
--   ARGV[6] IDEMPOTENCY_TTL_MS
--   ARGV[7...] the Idempotency-Keys of some of the increments, one each
-- Batches of one replica apply strictly in order: a copy of a batch already
-- applied (a retry, or a late execution of a command from a broken
-- connection) answers 0 and changes nothing, its keys included; a batch
-- whose predecessor has not been applied answers -1 (the replica sends both
-- again, in order).
-- A key counted already (by any replica, within the TTL) is skipped: its
-- increment is not counted again. The others are recorded in the same step
-- as the INCRBY that counts them, so a batch counts and records its keys
-- together or not at all.
-- Returns 1 when applied; an error reply when the counter refused it (OOM
-- leaves the fence and the keys as they were, so the batch is sent again;
-- any other error consumes the batch number: no retry can fix it).
local f = {fences = KEYS[2], used = KEYS[3], skips = KEYS[4]}
local e = fences_ok(f) or expect(KEYS[5], 'zset')
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
local now = redis_ms()
local ttl = tonumber(ARGV[6])
local n = tonumber(ARGV[2])
-- Read before any write: the keys new to the set, and how many count.
local fresh = {}
local seen = {}
for i = 7, #ARGV do
  local key = ARGV[i]
  local at = redis.call('ZSCORE', KEYS[5], key)
  if seen[key] or (at and tonumber(at) > now - ttl) then
    n = n - 1
  else
    seen[key] = true
    fresh[#fresh + 1] = key
  end
end
-- The INCRBY is the first write: refused for OOM, nothing changed.
if n > 0 then
  local r = redis.pcall('INCRBY', KEYS[1], n)
  if type(r) == 'table' and r.err then
    if string.sub(r.err, 1, 3) ~= 'OOM' then
      fence_set(f, id, seq, age, now)
    end
    return r
  end
end
if #ARGV > 6 then
  idem_prune(KEYS[5], now, ttl)
  for _, key in ipairs(fresh) do
    redis.call('ZADD', KEYS[5], now, key)
  end
end
fence_set(f, id, seq, age, now)
return 1

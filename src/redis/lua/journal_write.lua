-- Journal mode: record increments in this replica's journal before their
-- 200s are sent. One write per loop turn, for every /incr of that turn;
-- the moves that fell due meanwhile ride with it.
--   KEYS[1] journal (hash: deadline ms -> increments)
--   KEYS[2..4] the deployment's fences, their uses and fenced-off ranges
--   (prelude.lua)   KEYS[5] replicas (sorted set: id -> the end of its
--   lease, Redis's clock, ms)   KEYS[6] the counter
--   ARGV[1] write number   ARGV[2] deadline, wall-clock ms   ARGV[3] increments
--   ARGV[4] writes up to this number have a known outcome (their fenced-off
--   ranges are forgotten)
--   ARGV[5] lease, ms   ARGV[6] a fence unused this long (ms) is forgotten
--   ARGV[7] replica id
--   ARGV[8...] deadlines (journal fields) that fell due, to move
-- Nothing is written unless every key is of its kind and the counter can
-- be incremented: an increment that could never be counted is never held
-- (the error reply answers its /incr 503) and no journal grows for it.
-- A write is sent once and never again: when its reply is lost, the replica
-- resolves it with journal_resolve.lua instead. The fence holds the highest
-- number applied or fenced off; a write at or below it is a late copy and
-- records nothing. Numbers passed over (writes still on their way, or never
-- to arrive) are fenced off here as one range, so that their resolution
-- answers "not written" whatever order Redis sees things in.
-- The moves run whether the write is recorded or not: an entry moved is
-- gone, so that a move sent again, or run late, counts nothing twice. A
-- move alone is a write numbered 0, which records nothing.
-- Returns 1 when recorded, 0 when not; with deadlines to move, {that, the
-- increments moved}, the second an error when the counter refused them
-- (the journal keeps them then).
local f = {fences = KEYS[2], used = KEYS[3], skips = KEYS[4]}

local function record()
  local id = ARGV[7]
  local seq = tonumber(ARGV[1])
  local last = fence_get(f, id)
  if seq <= last then
    return 0
  end
  redis.call('HINCRBY', KEYS[1], ARGV[2], ARGV[3])
  if seq > last + 1 then
    skips_add(f, id, last + 1, seq - 1)
  end
  local now = redis_ms()
  fence_set(f, id, seq, tonumber(ARGV[6]), now)
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[5]), id)
  skips_forget(f, id, ARGV[4])
  return 1
end

local e = expect(KEYS[1], 'hash') or fences_ok(f) or
          expect(KEYS[5], 'zset') or incrementable(KEYS[6])
if e then
  return e
end
local recorded = record()
if #ARGV == 7 then
  return recorded
end
local total = 0
local found = {}
for i = 8, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v then
    total = total + tonumber(v)
    found[#found + 1] = ARGV[i]
  end
end
if total > 0 then
  local r = redis.pcall('INCRBY', KEYS[6], total)
  if type(r) == 'table' and r.err then
    return {recorded, r}
  end
  hdel_all(KEYS[1], found)
end
return {recorded, total}

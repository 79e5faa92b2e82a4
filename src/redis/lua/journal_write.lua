-- Journal mode: record increments in this replica's journal before their
-- 200s are sent. One write per loop turn, for every /incr of that turn;
-- the moves that fell due meanwhile ride with it.
--   KEYS[1] journal (hash: deadline ms -> increments)   KEYS[2] fence
--   KEYS[3] fenced-off writes   KEYS[4] replicas (sorted set: id -> the end
--   of its lease, Redis's clock, ms)   KEYS[5] the counter
--   ARGV[1] write number   ARGV[2] deadline, wall-clock ms   ARGV[3] increments
--   ARGV[4] writes up to this number have a known outcome (prune KEYS[3])
--   ARGV[5] lease, ms   ARGV[6] fence lifetime, ms   ARGV[7] replica id
--   ARGV[8...] deadlines (journal fields) that fell due, to move
-- Nothing is written unless every key is of its kind and the counter can
-- be incremented: an increment that could never be counted is never held
-- (the error reply answers its /incr 503) and no journal grows for it.
-- A write is sent once and never again: when its reply is lost, the replica
-- resolves it with journal_resolve.lua instead. The fence holds the highest
-- number applied or fenced off; a write at or below it is a late copy and
-- records nothing. Numbers passed over (writes still on their way, or never
-- to arrive) are fenced off here as one range, so that their resolution
-- answers "not written" whatever order Redis sees things in. KEYS[3] is a
-- sorted set of ranges "first-last", scored by last.
-- The moves run whether the write is recorded or not: an entry moved is
-- gone, so that a move sent again, or run late, counts nothing twice. A
-- move alone is a write numbered 0, which records nothing.
-- Returns 1 when recorded, 0 when not; with deadlines to move, {that, the
-- increments moved}, the second an error when the counter refused them
-- (the journal keeps them then).
local function record()
  local seq = tonumber(ARGV[1])
  local last = tonumber(redis.call('GET', KEYS[2]) or 0)
  if seq <= last then
    return 0
  end
  redis.call('HINCRBY', KEYS[1], ARGV[2], ARGV[3])
  if seq > last + 1 then
    redis.call('ZADD', KEYS[3], seq - 1,
               string.format('%.0f-%.0f', last + 1, seq - 1))
    redis.call('PEXPIRE', KEYS[3], ARGV[6])
  end
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[6])
  redis.call('ZADD', KEYS[4], redis_ms() + tonumber(ARGV[5]), ARGV[7])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[4])
  return 1
end

local e = expect(KEYS[1], 'hash') or expect(KEYS[2], 'string') or
          expect(KEYS[3], 'zset') or expect(KEYS[4], 'zset') or
          incrementable(KEYS[5])
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
  local r = redis.pcall('INCRBY', KEYS[5], total)
  if type(r) == 'table' and r.err then
    return {recorded, r}
  end
  hdel_all(KEYS[1], found)
end
return {recorded, total}

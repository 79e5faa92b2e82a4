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
--   ARGV[5] lease, ms   ARGV[6] a fence unused this long (ms) is forgotten;
--   0: the replica noted its fence's use a moment ago (prelude.lua)
--   ARGV[7] replica id
--   ARGV[8] IDEMPOTENCY_TTL_MS   ARGV[9] k, the Idempotency-Keys the write
--   carries (each one of its increments)   ARGV[10..9+k] the keys
--   ARGV[10+k...] deadlines (journal fields) that fell due, to move
--   KEYS[7] the Idempotency-Keys counted (sorted set, prelude.lua)
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
-- A key counted already (by any replica, within the TTL) is a replay: its
-- increment is not recorded; the others are recorded as counted, in the
-- same step as their increments.
-- Returns 1 when recorded, 0 when not; with deadlines to move, {that, the
-- increments moved}, the second an error when the counter refused them
-- (the journal keeps them then); with keys, always {that, the increments
-- moved or 0, one character per key: '1' a replay, '0' counted now} (no
-- characters when not recorded).
local f = {fences = KEYS[2], used = KEYS[3], skips = KEYS[4]}

local k = tonumber(ARGV[9])

-- Records the keys not counted yet; returns the replays' flags and count.
local function idem_record(now)
  local flags = {}
  local replays = 0
  idem_prune(KEYS[7], now, tonumber(ARGV[8]))
  for i = 1, k do
    local key = ARGV[9 + i]
    if redis.call('ZSCORE', KEYS[7], key) then
      flags[i] = '1'
      replays = replays + 1
    else
      redis.call('ZADD', KEYS[7], now, key)
      flags[i] = '0'
    end
  end
  return table.concat(flags), replays
end

local function record()
  local id = ARGV[7]
  local seq = tonumber(ARGV[1])
  local last = fence_get(f, id)
  if seq <= last then
    return 0, ''
  end
  local now = redis_ms()
  local flags, replays = '', 0
  if k > 0 then
    flags, replays = idem_record(now)
  end
  local n = tonumber(ARGV[3]) - replays
  if n > 0 then
    redis.call('HINCRBY', KEYS[1], ARGV[2], n)
  end
  if seq > last + 1 then
    skips_add(f, id, last + 1, seq - 1)
  end
  fence_set(f, id, seq, tonumber(ARGV[6]), now)
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[5]), id)
  skips_forget(f, id, ARGV[4])
  return 1, flags
end

local e = expect(KEYS[1], 'hash') or fences_ok(f) or
          expect(KEYS[5], 'zset') or incrementable(KEYS[6]) or
          expect(KEYS[7], 'zset')
if e then
  return e
end
local recorded, flags = record()
if k == 0 and #ARGV == 9 then
  return recorded
end
local total = 0
local found = {}
for i = 10 + k, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v then
    total = total + tonumber(v)
    found[#found + 1] = ARGV[i]
  end
end
if total > 0 then
  local r = redis.pcall('INCRBY', KEYS[6], total)
  if type(r) == 'table' and r.err then
    return k > 0 and {recorded, r, flags} or {recorded, r}
  end
  hdel_all(KEYS[1], found)
end
if k > 0 then
  return {recorded, total, flags}
end
return {recorded, total}

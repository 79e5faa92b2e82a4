-- Journal mode: the lease, renewed every third of its length; and the
-- journal as Redis holds it, not as the replica remembers it.
--   KEYS[1] this replica's journal   KEYS[2] replicas (sorted set: id ->
--   the end of its lease, Redis's clock, ms)   KEYS[3] the counter
--   ARGV[1] this replica's id   ARGV[2] lease, ms
--   ARGV[3] entries due at or before this (this replica's wall clock, ms)
--           are moved to the counter here; 0: none (the journal is not
--           read: a renewal while the queue is known to hold everything)
--   KEYS[4] the Idempotency-Keys counted   ARGV[4] IDEMPOTENCY_TTL_MS:
--   those counted longer ago are forgotten here (prelude.lua), so that the
--   set shrinks back when the keyed requests stop
-- Every due entry of the journal moves, whatever the replica's queue says:
-- entries adopted by a reply that was lost, or whose queue push failed, are
-- moved by the next renewal after they fall due. A move the queue sends for
-- an entry already moved here finds nothing and counts nothing.
-- Returns {increments moved (or the counter's error), {lapsed ids}}: the
-- replicas whose lease has run out, to adopt one by one
-- (journal_adopt.lua); at most 16 a time.
local e = expect(KEYS[1], 'hash') or expect(KEYS[2], 'zset') or
          expect(KEYS[4], 'zset')
if e then
  return e
end
local now = redis_ms()
idem_prune(KEYS[4], now, tonumber(ARGV[4]))
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
local due = tonumber(ARGV[3])
local fields = {}
local total = 0
local all = {}
if due > 0 then
  all = redis.call('HGETALL', KEYS[1])
end
for i = 1, #all, 2 do
  if tonumber(all[i]) <= due then
    fields[#fields + 1] = all[i]
    total = total + tonumber(all[i + 1])
  end
end
-- A counter that cannot count, or Redis out of memory: the lease is
-- renewed all the same, and the journal keeps them.
local moved = total
if total > 0 then
  moved = incrementable(KEYS[3]) or redis.pcall('INCRBY', KEYS[3], total)
  if type(moved) == 'table' and moved.err then
    total = 0
  else
    moved = total
    hdel_all(KEYS[1], fields)
  end
end
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now,
                          'LIMIT', 0, 16)
return {moved, lapsed}

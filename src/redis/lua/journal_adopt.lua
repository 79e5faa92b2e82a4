-- Journal mode: take over the journal of one replica whose lease has run
-- out (journal_renew.lua names them).
--   KEYS[1] this replica's journal   KEYS[2] the other's journal
--   KEYS[3] replicas (sorted set: id -> the end of its lease, Redis's clock)
--   ARGV[1] this replica's id   ARGV[2] the other's id
--   ARGV[3] this replica's clock now, wall-clock ms
-- Only while this replica's own lease runs and the other's has run out,
-- both by Redis's clock: a replica that has lapsed itself adopts nothing,
-- and a journal adopted already (or left empty) is not there any more.
-- Each adopted entry is due when Redis's clock passes its deadline,
-- whatever the clocks of the two replicas say: it is re-filed in this
-- journal at ARGV[3] plus the time left, at least 0. Should the reply be
-- lost, this replica's renewals move them all the same.
-- Returns {the other's id, increments adopted, {deadline, increments, ...}}
-- (the entries added to this journal, merged per deadline).
local e = expect(KEYS[1], 'hash') or expect(KEYS[2], 'hash') or
          expect(KEYS[3], 'zset')
if e then
  return e
end
local now = redis_ms()
local mine = redis.call('ZSCORE', KEYS[3], ARGV[1])
local theirs = redis.call('ZSCORE', KEYS[3], ARGV[2])
if not mine or tonumber(mine) <= now or not theirs or
   tonumber(theirs) > now then
  return {ARGV[2], 0, {}}
end
local at0 = tonumber(ARGV[3])
local added = {}
local n = 0
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local left = tonumber(all[i]) - now
  if left < 0 then
    left = 0
  end
  local at = string.format('%.0f', at0 + left)
  local c = tonumber(all[i + 1])
  redis.call('HINCRBY', KEYS[1], at, c)
  added[at] = (added[at] or 0) + c
  n = n + c
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
local flat = {}
for at, c in pairs(added) do
  flat[#flat + 1] = at
  flat[#flat + 1] = c
end
return {ARGV[2], n, flat}

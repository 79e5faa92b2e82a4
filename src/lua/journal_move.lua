-- Journal mode: increments whose deadline has come move from the journal to
-- the counter, in one atomic step.
--   KEYS[1] the counter   KEYS[2] journal
--   ARGV    the deadlines (journal fields) that fell due
-- Idempotent: a moved entry is gone, so sending this again (after a lost
-- reply) or late moves nothing twice; an entry another replica adopted is
-- not here any more and is moved by that replica.
-- Returns the number of increments moved.
local total = 0
local found = {}
for i = 1, #ARGV do
  local v = redis.call('HGET', KEYS[2], ARGV[i])
  if v then
    total = total + tonumber(v)
    found[#found + 1] = ARGV[i]
  end
end
if total > 0 then
  -- Counted first: if the counter refuses (WRONGTYPE, OOM) the journal
  -- still holds the increments.
  redis.call('INCRBY', KEYS[1], total)
  redis.call('HDEL', KEYS[2], unpack(found))
end
return total

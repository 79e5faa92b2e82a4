-- Journal mode: take over the journals of replicas whose lease has lapsed.
--   KEYS[1] this replica's journal   KEYS[2] replicas (set)
--   ARGV[1] key prefix   ARGV[2] this replica's id
--   ARGV[3] this replica's clock now, wall-clock ms
-- Each adopted entry is due when Redis's clock (TIME) passes its deadline,
-- whatever the clocks of the two replicas say: it is re-filed in this
-- replica's journal at ARGV[3] plus the time left, at least 0.
-- This replica registers itself here too, so that what it adopts is
-- adopted from it in turn should it die before it writes anything.
-- Returns { {id, increments, ...}, {deadline, increments, ...} }: who was
-- adopted, and the entries added to this journal (merged per deadline).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = tonumber(ARGV[3])
local who = {}
local added = {}
redis.call('SADD', KEYS[2], ARGV[2])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if id ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. 'lease:' .. id) == 0 then
    local key = ARGV[1] .. 'journal:' .. id
    local e = redis.call('HGETALL', key)
    local n = 0
    for i = 1, #e, 2 do
      local left = tonumber(e[i]) - now
      if left < 0 then
        left = 0
      end
      local at = string.format('%.0f', mine + left)
      local c = tonumber(e[i + 1])
      redis.call('HINCRBY', KEYS[1], at, c)
      added[at] = (added[at] or 0) + c
      n = n + c
    end
    redis.call('DEL', key)
    redis.call('SREM', KEYS[2], id)
    who[#who + 1] = id
    who[#who + 1] = n
  end
end
local flat = {}
for at, c in pairs(added) do
  flat[#flat + 1] = at
  flat[#flat + 1] = c
end
return {who, flat}

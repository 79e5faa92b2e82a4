-- Journal mode: settle a write whose reply was lost (a timeout, a broken
-- connection). Redis may or may not have applied it, and a copy may still
-- wait in a paused Redis's buffers.
--   KEYS[1..3] the deployment's fences, their uses and fenced-off ranges
--   (prelude.lua)
--   ARGV[1] write number   ARGV[2] a fence unused this long (ms) is
--   forgotten   ARGV[3] the replica's id
-- A write not yet applied is fenced off here, with every number below it
-- not yet seen, so that no late copy can ever apply them; the ranges
-- remember them in case this reply is lost too.
-- Returns 1 when the write is in the journal, 0 when it is not and never
-- will be.
local f = {fences = KEYS[1], used = KEYS[2], skips = KEYS[3]}
local e = fences_ok(f)
if e then
  return e
end
local id = ARGV[3]
local seq = tonumber(ARGV[1])
local last = fence_get(f, id)
if seq > last then
  skips_add(f, id, last + 1, seq)
  fence_set(f, id, seq, tonumber(ARGV[2]), redis_ms())
  return 0
end
if skipped(f, id, seq) then
  return 0
end
return 1

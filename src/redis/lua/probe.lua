#!lua flags=no-writes
-- Before a connection is used, on Redis 7 and later (redis.acl_check_cmd):
-- whether this connection's user may run every command gracefuld's scripts
-- run, on the keys they run them on. Runs none of them, and writes nothing
-- (the flag lets it through a CLIENT PAUSE WRITE). Older servers cannot
-- compile it: the check is skipped there.
--   ARGV: the checks, each a count n, then n words: a command and its
--         arguments, as a script would run it
-- Returns OK, or a NOPERM error naming the first command refused.
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local words = {}
  for k = 1, n do
    words[k] = ARGV[i + k]
  end
  if not redis.acl_check_cmd(unpack(words)) then
    return redis.error_reply('NOPERM this user may not run ' ..
                             string.upper(words[1]) .. ' ' ..
                             (words[2] or ''))
  end
  i = i + n + 1
end
return redis.status_reply('OK')

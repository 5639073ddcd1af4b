-- Empties the dead-letter stream, saying how much it held.
-- Everything, or (with a time in ARGV[1]) the entries older than it: a dead entry's id is the
-- Redis time it was added at.
-- KEYS: the dead-letter stream. ARGV: none, or the time (ms) before which letters go.
if ARGV[1] then
  return redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
end
local n = redis.call('XLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n

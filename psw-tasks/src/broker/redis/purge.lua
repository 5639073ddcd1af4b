-- Empties the dead-letter stream, saying how much it held.
-- Everything, or (with a time in ARGV[1]) the entries older than it: a dead entry's id is the
-- Redis time it was added at. The byte count goes down by what the removed letters took.
-- KEYS: the dead-letter stream, its byte count. ARGV: none, or the time (ms) before which
-- letters go.
if ARGV[1] then
  local removed, bytes = 0, 0
  local boundary = '(' .. ARGV[1]
  while true do
    local page = redis.call('XRANGE', KEYS[1], '-', boundary, 'COUNT', 500)
    if #page == 0 then break end
    local ids = {}
    for i, letter in ipairs(page) do
      ids[i] = letter[1]
      bytes = bytes + letter_bytes(letter[2])
    end
    removed = removed + redis.call('XDEL', KEYS[1], unpack(ids))
  end
  local left = redis.call('DECRBY', KEYS[2], bytes)
  if left < 0 then redis.call('SET', KEYS[2], 0) end
  return removed
end
local n = redis.call('XLEN', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
return n

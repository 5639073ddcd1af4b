-- Empties the dead-letter stream, saying how much it held.
-- Everything, or (with a time in ARGV[1]) the entries older than it: a dead entry's id is the
-- Redis time it was added at. The byte count goes down by what the removed letters took.
-- KEYS: the dead-letter stream, its byte count, the failure group index. ARGV: none, or the time (ms) before which
-- letters go and the most to remove in this call.
if ARGV[1] then
  -- One page per call, so that no call holds Redis long or copies more than a page of letters
  -- into Lua; the caller calls again until nothing is left. The end `(<ms>-0` excludes the
  -- whole millisecond (an incomplete id would include it).
  local page = redis.call('XRANGE', KEYS[1], '-', '(' .. ARGV[1] .. '-0', 'COUNT', tonumber(ARGV[2]))
  if #page == 0 then return 0 end
  local ids, bytes = {}, 0
  for i, letter in ipairs(page) do
    ids[i] = letter[1]
    bytes = bytes + letter_bytes(letter[2])
    group_removed(KEYS[3], letter[2])
  end
  local removed = redis.call('XDEL', KEYS[1], unpack(ids))
  local left = redis.call('DECRBY', KEYS[2], bytes)
  if left < 0 then redis.call('SET', KEYS[2], 0) end
  return removed
end
local n = redis.call('XLEN', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return n

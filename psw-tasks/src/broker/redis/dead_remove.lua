-- Removes the dead letters named in ARGV (entry ids), those still there, keeping the byte count
-- and the failure group index true. Called a page at a time by the purge of a group or a task.
-- KEYS: the dead-letter stream, its byte count, the failure group index. Returns how many went.
local removed, bytes = 0, 0
for _, id in ipairs(ARGV) do
  local letter = redis.call('XRANGE', KEYS[1], id, id, 'COUNT', 1)[1]
  if letter and redis.call('XDEL', KEYS[1], id) == 1 then
    removed = removed + 1
    bytes = bytes + letter_bytes(letter[2])
    group_removed(KEYS[3], letter[2])
  end
end
if removed > 0 then
  local left = redis.call('DECRBY', KEYS[2], bytes)
  if left < 0 then redis.call('SET', KEYS[2], 0) end
end
return removed

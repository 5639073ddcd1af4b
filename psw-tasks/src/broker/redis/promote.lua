-- Moves due members of delayed sets into their streams, atomically, so that two promoters can
-- never move one job twice: the sets of one queue's lanes, the first pair's first, at most a
-- given number in all. Returns {moved, earliest remaining due time in any of them or -1}.
-- KEYS: per lane, its delayed set then its stream. ARGV: now (ms), most to move, the job field.
local left = tonumber(ARGV[2])
local moved = 0
local earliest = -1
for i = 1, #KEYS, 2 do
  if left > 0 then
    local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', ARGV[1], 'LIMIT', 0, left)
    for _, member in ipairs(due) do
      redis.call('XADD', KEYS[i + 1], '*', ARGV[3], member)
    end
    if #due > 0 then
      redis.call('ZREM', KEYS[i], unpack(due))
    end
    moved = moved + #due
    left = left - #due
  end
  local nxt = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if nxt[2] then
    local at = tonumber(nxt[2])
    if earliest < 0 or at < earliest then earliest = at end
  end
end
return {moved, earliest}

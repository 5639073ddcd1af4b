-- Moves due members of a delayed set into the queue's stream, atomically, so that two
-- promoters can never move one job twice. Returns {moved, earliest remaining due time or -1}.
-- KEYS: the queue's delayed set, its stream. ARGV: now (ms), most to move, the job field.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', ARGV[3], member)
end
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then
  return {#due, tonumber(nxt[2])}
end
return {#due, -1}

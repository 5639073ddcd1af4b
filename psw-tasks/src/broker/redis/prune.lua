-- Deletes consumers that own nothing and have been idle long enough: the traces of dead
-- workers. Pending count and deletion are read and done in one step, so an entry can never
-- be dropped with its consumer. A live worker that is removed by mistake is recreated by its
-- next read.
-- KEYS: the queue's stream. ARGV: the group, the consumer to keep (the caller), the idle time
-- (ms). Returns the names removed.
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['name'] ~= ARGV[2] and info['pending'] == 0 and info['idle'] >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed

-- Deletes a consumer only when it owns no pending entry: DELCONSUMER drops the consumer's
-- pending entries from the group, which would lose them.
-- KEYS: the queue's stream. ARGV: the group, the consumer. Returns 1 when removed, -1 when it
-- still owns entries.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1

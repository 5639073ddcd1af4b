-- Resets the idle time of entries the consumer still owns. XCLAIM alone would also take
-- entries that another worker has reclaimed meanwhile, so ownership is checked first.
-- KEYS: the queue's stream. ARGV: the group, the consumer, then the entry ids. Returns how many
-- it still owned.
local renewed = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed

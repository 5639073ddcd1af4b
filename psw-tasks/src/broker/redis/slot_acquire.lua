-- Takes (or keeps) a concurrency slot: the set's members are the holders' job ids, scored by
-- the end of their lease in ms on the server's clock. Leases that ran out (their worker died
-- or stalled) are dropped first, so a lost slot comes back within its lease.
-- KEYS: the slots' sorted set. ARGV: the holder, the number of slots, the lease (ms).
-- Returns 1 when the holder has a slot, 0 when live leases hold all of them.
local now = math.floor(server_us() / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
-- The set outlives its longest lease (workers may be set up with different ones).
if redis.call('PTTL', KEYS[1]) < lease * 2 then redis.call('PEXPIRE', KEYS[1], lease * 2) end
return 1

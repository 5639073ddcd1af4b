-- Extends a held concurrency slot's lease; a slot given up, or dropped as expired by another
-- worker's acquire, stays so.
-- KEYS: the slots' sorted set. ARGV: the holder, the lease (ms). Returns 1 when it was held.
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local now = math.floor(server_us() / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease * 2 then redis.call('PEXPIRE', KEYS[1], lease * 2) end
return 1

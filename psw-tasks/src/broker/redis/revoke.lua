-- Marks a job cancelled, stamped with the server's clock (ms) so that every worker reads the
-- marks in one order whatever their clocks, and drops marks older than they are kept.
-- KEYS: the set of cancelled job ids. ARGV: the job id, how long marks are kept (ms).
-- Returns the stamp.
local now = math.floor(server_us() / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return now

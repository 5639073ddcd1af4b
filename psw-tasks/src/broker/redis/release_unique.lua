-- Releases a unique lock if the given job holds it: a lock that expired and was taken by
-- another job since stays. KEYS: the lock. ARGV: the job's id. Returns 1 when released.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0

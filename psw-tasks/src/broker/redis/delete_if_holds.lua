-- Deletes a key if it holds the given job's id, saying whether it did: a unique lock the job
-- holds (one that expired and was taken by another job since stays), or a debounce key whose
-- last job it is. KEYS: the key. ARGV: the job's id. Returns 1 when deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0

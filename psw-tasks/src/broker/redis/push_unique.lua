-- Adds one job unless its unique lock is held: takes the lock for the job (its id, with a
-- TTL) and adds the job in one step, so that of two producers racing on a key one adds it.
-- Returns false when added, else the id of the job that holds the lock.
-- KEYS: the lock, the queue's stream or delayed set (one slot: the queue's). ARGV: the job's
-- id, how long the lock lasts (ms), the payload, its due time in ms (empty: ready now, to the
-- stream), the stream's job field.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('GET', KEYS[1])
end
add_job(KEYS[2], ARGV[3], ARGV[4], ARGV[5])
return false

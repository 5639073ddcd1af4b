-- Adds one job and makes it the last of its debounce key, in one step: a job of the key
-- enqueued before is superseded (the worker that takes it finds another id in the key).
-- KEYS: the debounce key, the queue's stream or delayed set (one slot: the queue's). ARGV: the
-- job's id, how long the key lasts (ms), the payload, its due time in ms (empty: ready now, to
-- the stream), the stream's job field.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
add_job(KEYS[2], ARGV[3], ARGV[4], ARGV[5])
return 1

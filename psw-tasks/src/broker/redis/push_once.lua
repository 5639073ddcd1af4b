-- Adds one job with a fixed id unless a job of that id was added before and is still known:
-- its id is held (the hold runs from its enqueue through its delay and the result TTL) or its
-- record is kept. The check and the add are one step, so two producers, or one retrying
-- after a lost reply, add it once. Returns 1 when added, 0 when the id was known.
-- KEYS: the id's hold, the job's record, the queue's stream or delayed set, the set of queue
-- names. ARGV: the payload, its due time in ms (empty: ready now, to the stream), how long
-- the id is held (ms), the queue's name, the stream's job field.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[3]) then return 0 end
add_job(KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[4], ARGV[5])
return 1

-- Adds one job with a fixed id unless a job of that id was added before and is still held
-- (the hold runs from its enqueue through its delay and the result TTL). The check and the
-- add are one step, so two producers, or one retrying after a lost reply, add it once. (The
-- caller has checked the job's record first: it is on the namespace's slot, the hold and the
-- add on the queue's.) The hold keeps the stream entry id of the job (`1` when it was
-- delayed), so that a later try learns where the job went. Returns {1, the entry id or ''
-- when delayed} when added, {0, what the hold keeps} when the id was held.
-- KEYS: the id's hold, the queue's stream or delayed set. ARGV: the payload, its due time in
-- ms (empty: ready now, to the stream), how long the id is held (ms), the stream's job field.
local held = redis.call('GET', KEYS[1])
if held then return {0, held} end
local entry = add_job(KEYS[2], ARGV[1], ARGV[2], ARGV[4])
redis.call('SET', KEYS[1], entry == '' and '1' or entry, 'PX', ARGV[3])
return {1, entry}

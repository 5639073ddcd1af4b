-- Takes over entries idle for at least the lease, returning each with its new delivery count
-- (for fencing). Never an entry the consumer holds, whoever owns it now: after a pause longer
-- than the lease, another worker may have taken it over and died, and taking it back would
-- make a second copy in this process (which still runs the first). That is also why this is
-- not XAUTOCLAIM. XCLAIM re-checks the idle time, so two reclaimers cannot both take an entry.
-- Returns {cursor (always 0-0), {{id, fields, deliveries}...}, ids deleted from the stream}.
-- KEYS: the queue's stream. ARGV: the group, the consumer, the lease (min idle, ms), most to
-- take, then the entry ids the consumer holds (never taken).
local limit = tonumber(ARGV[4])
local holds = {}
for i = 5, #ARGV do holds[ARGV[i]] = true end
local ids = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', limit * 10)) do
  if #ids < limit and not holds[p[1]] then ids[#ids + 1] = p[1] end
end
if #ids == 0 then return {'0-0', {}, {}} end
local got = {}
local claimed = {}
for _, e in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], unpack(ids))) do
  if e and e[2] then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    claimed[#claimed + 1] = {e[1], e[2], p[1][4]}
    got[e[1]] = true
  end
end
local deleted = {}
for _, id in ipairs(ids) do
  if not got[id] then deleted[#deleted + 1] = id end
end
return {'0-0', claimed, deleted}

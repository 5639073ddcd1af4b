-- Applies a batch of writes, each only while the consumer still holds its delivery with the
-- delivery count it saw: a worker that lost its lease (paused, partitioned) can neither
-- acknowledge nor write the record of a job another worker took over. XACK alone checks
-- nothing.
--
-- KEYS[1] is the consumer's receipt, KEYS[2] the dead-letter stream, KEYS[3] its trimmed
-- counter, KEYS[4] its byte count, KEYS[5] the failure group index; a call whose ops add no
-- dead letter may pass the receipt alone (on a cluster, a batch's part on a queue's slot:
-- see settle.rs). Each op names its keys by position. An op whose stream position (op[1]) is 0
-- is applied unfenced: the caller checked the delivery, on another slot. ARGV[10] names this batch
-- among the consumer's, and ARGV[11] is how long its receipt is kept (ms): a batch applied
-- again (its reply was lost, and the writer retried it) changes nothing and returns the reply
-- it first gave, so that its own settlements are not taken for another worker's. ARGV[4] is the most dead letters kept, ARGV[9] the most
-- bytes they may take (each letter's is op[12], and its `bytes` field once stored). ARGV[6] holds the ops that write something (a record, a retry, a dead letter), as
-- MessagePack; the bare acknowledgements, most of a drain with results off, come after
-- ARGV[8] as flat (stream, entry id, delivery count) triples, which cost Lua no table each.
-- op[13] is the key position of a unique lock to release with the op (0: none) and op[14]
-- the job id that must hold it. Writing ops are applied first, in order, then the bare acknowledgements: records stay before
-- their delivery's settlement, and a batch settles a delivery once (see `Write`). ARGV[7] is
-- how many streams follow as (stream, first id, last id) triples: the range of each stream's
-- entries in the batch, so that XPENDING reads what the consumer holds there, not all it
-- holds.
-- A stream or group that is gone (deleted, or Redis restarted empty) fences only the writes about
-- its entries, and a write Redis refuses (a key of the wrong type, say) fails only its own op,
-- which is then not acknowledged: one bad part never fails the batch.
-- Returns {indexes of fenced writing ops (from 0), dead letters trimmed, {id, bytes} of the dead
-- letters added, indexes of fenced bare acknowledgements (from 0), key positions of the
-- streams whose group is gone, {index of a failed writing op, Redis's error} pairs}.
local receipt = redis.call('GET', KEYS[1])
if receipt then
  local stored = cmsgpack.unpack(receipt)
  if stored[1] == ARGV[10] then return stored[2] end
end
local ops = cmsgpack.unpack(ARGV[6])
-- What this consumer holds in each stream's range: entry id -> delivery count. One XPENDING
-- per stream and batch, not one per entry.
local held = {}
local missing = {}
local streams = tonumber(ARGV[7])
for s = 0, streams - 1 do
  local at = 12 + 3 * s
  local stream = tonumber(ARGV[at])
  local map = {}
  local pending = redis.pcall('XPENDING', KEYS[stream], ARGV[1], ARGV[at + 1], ARGV[at + 2], ARGV[8], ARGV[2])
  if pending.err then
    missing[#missing + 1] = stream
  else
    for _, e in ipairs(pending) do
      map[e[1]] = e[4]
    end
  end
  held[stream] = map
end
-- A write that Redis may refuse: its reply, or nil and Redis's error.
local function write(...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then return nil, reply.err end
  return reply
end
local fenced = {}
local finished = {}
local acks = {}
local function ack(stream, id)
  local ids = acks[stream]
  if not ids then ids = {}; acks[stream] = ids end
  ids[#ids + 1] = id
  -- Settled: a second write about it in this batch is stale.
  held[stream][id] = nil
end
local dead = 0
local dead_ids = {}
local added_bytes = 0
local failed = {}
for i, op in ipairs(ops) do
  if op[1] == 0 or held[op[1]][op[2]] == op[3] then
    local id, failure, _
    if op[5] > 0 then _, failure = write('SET', KEYS[op[5]], op[6], 'PX', ARGV[3]) end
    if not failure and op[7] > 0 then _, failure = write('ZADD', KEYS[op[7]], op[8], op[9]) end
    if not failure and #op[10] > 0 then id, failure = write('XADD', KEYS[2], '*', unpack(op[10])) end
    if failure then
      failed[#failed + 1] = {i - 1, failure}
    else
      if id then
        group_added(KEYS[5], id, op[10])
        dead = dead + 1
        dead_ids[dead] = {id, op[12]}
        added_bytes = added_bytes + op[12]
      end
      if op[4] == 1 then ack(op[1], op[2]) end
      if op[11] ~= '' then finished[#finished + 1] = op[11] end
      -- The job ends: its unique lock goes, unless another job holds it by now.
      if op[13] > 0 and redis.call('GET', KEYS[op[13]]) == op[14] then redis.call('DEL', KEYS[op[13]]) end
    end
  else
    fenced[#fenced + 1] = i - 1
  end
end
local bare_fenced = {}
local first = 12 + 3 * streams
for at = first, #ARGV, 3 do
  local stream = tonumber(ARGV[at])
  local id = ARGV[at + 1]
  if held[stream][id] == tonumber(ARGV[at + 2]) then
    ack(stream, id)
  else
    bare_fenced[#bare_fenced + 1] = (at - first) / 3
  end
end
for stream, ids in pairs(acks) do
  redis.call('XACK', KEYS[stream], ARGV[1], unpack(ids))
  redis.call('XDEL', KEYS[stream], unpack(ids))
end
local trimmed = 0
if dead > 0 then
  local len = redis.call('XLEN', KEYS[2])
  local bytes
  if len == dead then
    -- The stream held nothing before (new, purged, or deleted by hand): count afresh.
    bytes = added_bytes
  else
    bytes = tonumber(redis.call('GET', KEYS[4]) or '0') + added_bytes
  end
  local max_len, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[9])
  -- The oldest go first, one at a time, until both limits hold; the newest always stays.
  while len > 1 and (len > max_len or bytes > max_bytes) do
    local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
    redis.call('XDEL', KEYS[2], oldest[1])
    group_removed(KEYS[5], oldest[2])
    bytes = bytes - letter_bytes(oldest[2])
    len = len - 1
    trimmed = trimmed + 1
  end
  redis.call('SET', KEYS[4], math.max(bytes, 0))
  if trimmed > 0 then redis.call('INCRBY', KEYS[3], trimmed) end
end
if #finished > 0 then redis.call('PUBLISH', ARGV[5], table.concat(finished, ' ')) end
local reply = {fenced, trimmed, dead_ids, bare_fenced, missing, failed}
redis.call('SET', KEYS[1], cmsgpack.pack({ARGV[10], reply}), 'PX', ARGV[11])
return reply

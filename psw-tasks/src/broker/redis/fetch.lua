-- Reads new entries of several queues for one consumer, at most a given number in all: a
-- plain XREADGROUP over several streams applies its COUNT to each, so a worker on four queues
-- could hold four times its bound. The streams are read in KEYS order (the caller orders them
-- by its queue priorities: round-robin, weights or strict) until the budget is spent.
-- Returns {{stream, entries}...}, or, when no stream had a new entry, {{}, ids}: each stream's
-- last delivered id, from which the caller waits with a blocking XREAD (scripts cannot block).
-- A stream or group that is gone raises NOGROUP, as XREADGROUP does.
-- KEYS: the queues' streams. ARGV: the group, the consumer, most to take in all.
local left = tonumber(ARGV[3])
local read = {}
for _, key in ipairs(KEYS) do
  if left <= 0 then break end
  local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', left, 'STREAMS', key, '>')
  if reply and reply[1] and #reply[1][2] > 0 then
    read[#read + 1] = reply[1]
    left = left - #reply[1][2]
  end
end
if #read > 0 then return read end
local ids = {}
for i, key in ipairs(KEYS) do
  ids[i] = '$'
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local name, last
    for j = 1, #group, 2 do
      if group[j] == 'name' then name = group[j + 1] end
      if group[j] == 'last-delivered-id' then last = group[j + 1] end
    end
    if name == ARGV[1] and last then ids[i] = last end
  end
end
return {{}, ids}

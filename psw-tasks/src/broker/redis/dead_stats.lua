-- The dead-letter queue's length, trimmed count and entries ever added (Redis 7.0 reports
-- `entries-added`; before it, length + trimmed stands in); none added while the stream does
-- not exist (never used, or purged whole).
-- KEYS: the dead-letter stream, its trimmed counter, its byte count. Returns {len, trimmed,
-- added, bytes}.
local len = redis.call('XLEN', KEYS[1])
local trimmed = tonumber(redis.call('GET', KEYS[2]) or '0')
local added = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  added = len + trimmed
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'entries-added' then added = info[i + 1] end
  end
end
local bytes = 0
if len > 0 then bytes = tonumber(redis.call('GET', KEYS[3]) or '0') end
return {len, trimmed, added, bytes}

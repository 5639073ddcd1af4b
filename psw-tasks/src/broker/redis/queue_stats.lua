-- What each queue holds, read in one step so the numbers agree with each other. KEYS: per
-- queue, its stream then its delayed set. ARGV[1]: the group. Returns {ready, pending,
-- delayed, consumers, oldest age in ms or -1} per queue. Redis answers a nil `lag` when
-- entries were deleted after the group's last delivery (acknowledging deletes them); then the
-- stream length minus the pending entries is the same number, as long as acknowledged
-- entries are deleted at once. The oldest job waiting is the first entry after the group's
-- last delivered one; its id is the server's time when it became ready (added, or promoted
-- from the delayed set), so its age is on the server's clock.
local now_ms = math.floor(server_us() / 1000)
local function entry_ms(id)
  return tonumber(string.match(id, '^(%d+)-'))
end
local out = {}
for i = 1, #KEYS, 2 do
  local ready, pending, consumers, oldest = 0, 0, 0, -1
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local len = redis.call('XLEN', KEYS[i])
    ready = len
    local after = '-'
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[i])) do
      local info = {}
      for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
      if info['name'] == ARGV[1] then
        pending = info['pending']
        consumers = info['consumers']
        after = '(' .. info['last-delivered-id']
        if info['lag'] then
          ready = info['lag']
        else
          ready = math.max(len - pending, 0)
        end
      end
    end
    if ready > 0 then
      local first = redis.call('XRANGE', KEYS[i], after, '+', 'COUNT', 1)[1]
      if first then
        oldest = math.max(now_ms - entry_ms(first[1]), 0)
      end
    end
  end
  out[#out + 1] = {ready, pending, redis.call('ZCARD', KEYS[i + 1]), consumers, oldest}
end
return out

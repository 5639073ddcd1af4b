-- What each queue holds, read in one step so the numbers agree with each other. KEYS: per
-- queue, its stream then its delayed set. ARGV[1]: the group. Returns {ready, pending,
-- delayed, consumers} per queue. Redis answers a nil `lag` when entries were deleted after
-- the group's last delivery (acknowledging deletes them); then the stream length minus the
-- pending entries is the same number, as long as acknowledged entries are deleted at once.
local out = {}
for i = 1, #KEYS, 2 do
  local ready, pending, consumers = 0, 0, 0
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local len = redis.call('XLEN', KEYS[i])
    ready = len
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[i])) do
      local info = {}
      for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
      if info['name'] == ARGV[1] then
        pending = info['pending']
        consumers = info['consumers']
        if info['lag'] then
          ready = info['lag']
        else
          ready = math.max(len - pending, 0)
        end
      end
    end
  end
  out[#out + 1] = {ready, pending, redis.call('ZCARD', KEYS[i + 1]), consumers}
end
return out

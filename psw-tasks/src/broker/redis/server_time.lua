-- The server's clock in µs since the epoch: one clock for every worker, whatever theirs say.
local function server_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- One GCRA decision (generic cell rate algorithm; the same steps as `limit::acquire`): starts
-- are spaced an interval apart, and may come up to the tolerance early. `tat` is when the next
-- start would be on time. A caller that would wait no longer than its patience reserves its
-- turn (it is counted now, and the caller starts after the wait without asking again); one
-- that would wait longer gets a place in the line of such callers, `line` being its end, each
-- place one interval after the last, to ask again then. Times are microseconds since the
-- epoch, stored as integers written out whole ('%.0f': tostring would write a double of 16
-- digits in exponent form).
-- KEYS: the limit's hash. ARGV: the interval (µs), the tolerance (µs), the caller's patience
-- (µs), and the time now (µs), or '' for the server's own clock. Returns 0 to start now (the
-- start is counted), else the wait in µs: a reserved turn if at most the patience, else a
-- place in line.
local now
if ARGV[4] == '' then now = server_us() else now = tonumber(ARGV[4]) end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local patience = tonumber(ARGV[3])
local stored = redis.call('HMGET', KEYS[1], 'tat', 'line')
local tat = math.max(tonumber(stored[1]) or now, now)
local line = tonumber(stored[2]) or 0
local wait = 0
local allowed_at = tat - tolerance
if allowed_at <= now then
  tat = tat + interval
elseif allowed_at - now <= patience then
  tat = tat + interval
  wait = allowed_at - now
else
  local place = math.max(line, allowed_at)
  line = place + interval
  wait = place - now
end
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat), 'line', string.format('%.0f', line))
-- Gone once both times are past: an idle limit's state is the same as none.
redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(tat, line) - now) / 1000) + 1000)
return wait

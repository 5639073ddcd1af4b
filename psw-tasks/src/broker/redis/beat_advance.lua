-- One pass of a schedule (`BeatAdvance`): only if the last slot handled is still the expected
-- one, set it, count, store the fields, add the jobs and keep the last entry id. Atomic, so
-- any number of beats can race on a slot and one job comes out.
-- KEYS: schedule hash, queue stream. ARGV: last field, expected, through, entry field, job
-- field, counter field or '', number of field pairs, the pairs, then the envelopes.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[6] ~= '' then
  redis.call('HINCRBY', KEYS[1], ARGV[6], 1)
end
local last_pair = 7 + 2 * tonumber(ARGV[7])
for i = 8, last_pair, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
for i = last_pair + 1, #ARGV do
  local id = redis.call('XADD', KEYS[2], '*', ARGV[5], ARGV[i])
  redis.call('HSET', KEYS[1], ARGV[4], id)
end
return 1

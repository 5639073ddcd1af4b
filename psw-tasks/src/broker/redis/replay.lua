-- Puts a dead letter back on its queue, once: only if this call removed it. The job's old
-- FAILURE record goes too: the job is pending again.
-- KEYS: the dead-letter stream, the queue's stream, the job's record, the dead letters' byte
-- count, the failure group index. ARGV: the dead letter's entry id, the job field, the envelope. Returns 1 when
-- replayed.
local letter = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1], 'COUNT', 1)[1]
if letter and redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[2], '*', ARGV[2], ARGV[3])
  redis.call('DEL', KEYS[3])
  group_removed(KEYS[5], letter[2])
  local left = redis.call('DECRBY', KEYS[4], letter_bytes(letter[2]))
  if left < 0 then redis.call('SET', KEYS[4], 0) end
  return 1
end
return 0

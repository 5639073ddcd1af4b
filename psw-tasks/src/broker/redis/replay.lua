-- Puts a dead letter back on its queue, once: only if this call removed it. The job's old
-- FAILURE record goes too: the job is pending again.
-- KEYS: the dead-letter stream, the job's record, the dead letters' byte count, the failure
-- group index, and the queue's stream. On a cluster the stream is on another slot: the
-- caller adds the job first and passes no stream (see dead.rs). ARGV: the dead letter's entry
-- id, the job field, the envelope. Returns 1 when this call removed the letter.
local letter = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1], 'COUNT', 1)[1]
if letter and redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
  if KEYS[5] then redis.call('XADD', KEYS[5], '*', ARGV[2], ARGV[3]) end
  redis.call('DEL', KEYS[2])
  group_removed(KEYS[4], letter[2])
  local left = redis.call('DECRBY', KEYS[3], letter_bytes(letter[2]))
  if left < 0 then redis.call('SET', KEYS[3], 0) end
  return 1
end
return 0

-- Puts a dead letter back on its queue, once: only if this call removed it. The job's old
-- FAILURE record goes too: the job is pending again.
-- KEYS: the dead-letter stream, the queue's stream, the job's record. ARGV: the dead letter's
-- entry id, the job field, the envelope. Returns 1 when replayed.
if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[2], '*', ARGV[2], ARGV[3])
  redis.call('DEL', KEYS[3])
  return 1
end
return 0

-- Shared by the scripts that add one job under a condition (push_once, push_unique,
-- push_debounced), put in front of each: the add itself. A job due now goes to the queue's
-- stream, a later one to its delayed set, and the queue's name to the set of queue names.
local function add_job(target, queues, payload, due, queue, field)
  if due == '' then
    redis.call('XADD', target, '*', field, payload)
  else
    redis.call('ZADD', target, due, payload)
  end
  redis.call('SADD', queues, queue)
end

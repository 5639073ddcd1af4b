-- Shared by the scripts that add one job under a condition (push_once, push_unique,
-- push_debounced), put in front of each: the add itself. A job due now goes to the queue's
-- stream, a later one to its delayed set. (The caller names the queue in the set of queue
-- names beforehand: that set is on the namespace's slot, the add on the queue's.)
-- Returns the stream entry id, or '' for a delayed job.
local function add_job(target, payload, due, field)
  if due == '' then
    return redis.call('XADD', target, '*', field, payload)
  end
  redis.call('ZADD', target, due, payload)
  return ''
end

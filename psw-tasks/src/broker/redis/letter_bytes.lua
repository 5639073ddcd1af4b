-- Shared by the scripts that add or remove dead letters (settle, replay, purge, dead_remove),
-- put in front of each: what a stored letter takes against the byte budget, and the failure
-- group index kept beside the stream (see `Keys::dead_groups`).
-- What a stored letter takes against the byte budget. Its `bytes` field, or (written before
-- there was one) the length of its fields.
local function letter_bytes(fields)
  local sum = 0
  for i = 1, #fields, 2 do
    if fields[i] == 'bytes' then return tonumber(fields[i + 1]) end
    sum = sum + #fields[i] + #fields[i + 1]
  end
  return sum
end

-- A field of a letter (a flat name, value list), or nil.
local function letter_field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

-- Count the letter `id` with `fields` in its group. Letters written before there were groups
-- carry none and are not indexed.
local function group_added(groups, id, fields)
  local group = letter_field(fields, 'group')
  if not group then return end
  local at = letter_field(fields, 'at_ms') or '0'
  if redis.call('HINCRBY', groups, group, 1) == 1 then
    redis.call('HSET', groups, group .. ':first', at)
  end
  redis.call('HSET', groups, group .. ':last', at, group .. ':sample', id,
    group .. ':task', letter_field(fields, 'task') or '', group .. ':reason',
    letter_field(fields, 'reason') or '', group .. ':error', letter_field(fields, 'error') or '')
end

-- Uncount a letter removed from the stream; a group with none left goes.
local function group_removed(groups, fields)
  local group = letter_field(fields, 'group')
  if not group then return end
  if redis.call('HINCRBY', groups, group, -1) <= 0 then
    redis.call('HDEL', groups, group, group .. ':first', group .. ':last', group .. ':sample',
      group .. ':task', group .. ':reason', group .. ':error')
  end
end

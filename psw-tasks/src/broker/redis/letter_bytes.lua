-- Shared by the scripts that remove dead letters (settle, replay, purge), put in front of each:
-- what a stored letter takes against the byte budget. Its `bytes` field, or (written before
-- there was one) the length of its fields.
local function letter_bytes(fields)
  local sum = 0
  for i = 1, #fields, 2 do
    if fields[i] == 'bytes' then return tonumber(fields[i + 1]) end
    sum = sum + #fields[i] + #fields[i + 1]
  end
  return sum
end

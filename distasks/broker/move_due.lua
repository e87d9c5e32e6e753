-- Move delayed run ids whose time has come to the end of the ready list.
-- KEYS[1] -> {prefix}:{q:<queue>}:delayed
-- KEYS[2] -> {prefix}:{q:<queue>}:ready
-- ARGV[1] -> now, Unix time in ms
-- ARGV[2] -> most items to move in this call
-- Returns: how many were moved (ARGV[2] means there may be more).
local delayed, ready, now_ms, limit = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])

local due = redis.call('ZRANGE', delayed, '-inf', now_ms, 'BYSCORE', 'LIMIT', 0, limit)
for _, item in ipairs(due) do
  redis.call('RPUSH', ready, item)
end
if #due > 0 then
  redis.call('ZREM', delayed, unpack(due))
end
return #due

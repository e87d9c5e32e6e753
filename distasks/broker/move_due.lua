-- Move delayed run ids whose time has come to the end of their priority's ready list
-- (see claim.lua; an id missing from `priorities` has priority 0), or to its key's list
-- if its rank names a concurrency key (see push.lua), and ring the bell.
-- KEYS[1] -> {prefix}:{q:<queue>}:delayed
-- KEYS[2] -> {prefix}:{q:<queue>}:ready
-- KEYS[3] -> {prefix}:{q:<queue>}:bands
-- KEYS[4] -> {prefix}:{q:<queue>}:bell
-- KEYS[5] -> {prefix}:{q:<queue>}:priorities
-- KEYS[6] -> {prefix}:{q:<queue>}:key-turns
-- ARGV[1] -> now, Unix time in ms
-- ARGV[2] -> most items to move in this call
-- Returns: how many were moved (ARGV[2] means there may be more).
local delayed, ready, bands, bell, priorities = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local turns = KEYS[6]
local now_ms, limit = ARGV[1], tonumber(ARGV[2])

local due = redis.call('ZRANGE', delayed, '-inf', now_ms, 'BYSCORE', 'LIMIT', 0, limit)
if #due == 0 then
  return 0
end
local ps = redis.call('HMGET', priorities, unpack(due))
for i, item in ipairs(due) do
  local p = ps[i]
  local key = p and string.match(p, '^[^/]*/(.*)$')
  if key then
    if redis.call('RPUSH', ready .. ':key:' .. key, item) == 1 then
      redis.call('RPUSH', turns, key)
    end
  elseif p then
    redis.call('ZADD', bands, p, p)
    redis.call('RPUSH', ready .. ':' .. p, item)
  else
    redis.call('RPUSH', ready, item)
  end
end
redis.call('ZREM', delayed, unpack(due))
if redis.call('EXISTS', bell) == 0 then
  redis.call('RPUSH', bell, '1')
end
return #due

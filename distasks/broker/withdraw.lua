-- Take waiting run ids out of a queue's index (their task was cancelled): from their
-- priority's ready list (see claim.lua), from the delayed set, and from `priorities`.
-- A priority whose list this empties stays in `bands` until a claim finds it empty; a
-- concurrency key whose list this empties leaves `key-turns`.
-- KEYS[1] -> {prefix}:{q:<queue>}:ready
-- KEYS[2] -> {prefix}:{q:<queue>}:delayed
-- KEYS[3] -> {prefix}:{q:<queue>}:priorities
-- KEYS[4] -> {prefix}:{q:<queue>}:key-turns
-- ARGV    -> the run ids
-- Returns: how many were found.
local ready, delayed, priorities, turns = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local found = 0
for _, run_id in ipairs(ARGV) do
  local p = redis.call('HGET', priorities, run_id)
  local key = p and string.match(p, '^[^/]*/(.*)$')
  local list = p and ready .. ':' .. p or ready
  if key then
    list = ready .. ':key:' .. key
  end
  found = found + redis.call('LREM', list, 1, run_id) + redis.call('ZREM', delayed, run_id)
  if key and redis.call('EXISTS', list) == 0 then
    redis.call('LREM', turns, 0, key)
  end
  if p then
    redis.call('HDEL', priorities, run_id)
  end
end
return found

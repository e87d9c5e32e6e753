-- Hand claimed run ids back: drop their leases and put them at the head of the ready
-- list, so they are claimed next. An id whose lease is already gone (taken over, or
-- handed back before) is not pushed again.
-- KEYS[1] -> {prefix}:{q:<queue>}:leases
-- KEYS[2] -> {prefix}:{q:<queue>}:ready
-- ARGV    -> the run ids
-- Returns: how many were handed back.
local leases, ready = KEYS[1], KEYS[2]

local moved = 0
for i = #ARGV, 1, -1 do
  if redis.call('ZREM', leases, ARGV[i]) == 1 then
    redis.call('LPUSH', ready, ARGV[i])
    moved = moved + 1
  end
end
return moved

-- Hand claimed run ids back: drop their leases and put them at the head of their
-- priority's ready list (see claim.lua), so they are claimed next, and ring the bell.
-- An id whose lease is already gone (taken over, or handed back before) is not pushed
-- again. An id missing from `priorities` has priority 0. An ended lease of a limited
-- queue rings the room signal (see claim.lua). A run with a concurrency key (rank
-- '<priority>/<key>') leaves its key's count and goes to the head of its key's list,
-- and the key to the head of the turns if it was not in them.
-- KEYS[1] -> {prefix}:{q:<queue>}:leases
-- KEYS[2] -> {prefix}:{q:<queue>}:ready
-- KEYS[3] -> {prefix}:{q:<queue>}:bands
-- KEYS[4] -> {prefix}:{q:<queue>}:bell
-- KEYS[5] -> {prefix}:{q:<queue>}:priorities
-- KEYS[6] -> {prefix}:{q:<queue>}:max-running
-- KEYS[7] -> {prefix}:{q:<queue>}:room
-- KEYS[8] -> {prefix}:{q:<queue>}:key-turns
-- KEYS[9] -> {prefix}:{q:<queue>}:key-running
-- ARGV    -> the run ids
-- Returns: how many were handed back.
local leases, ready, bands, bell, priorities = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local max_running, room, turns, key_running = KEYS[6], KEYS[7], KEYS[8], KEYS[9]

local moved = 0
for i = #ARGV, 1, -1 do
  local run_id = ARGV[i]
  if redis.call('ZREM', leases, run_id) == 1 then
    local p = redis.call('HGET', priorities, run_id)
    local key = p and string.match(p, '^[^/]*/(.*)$')
    if key then
      if redis.call('HINCRBY', key_running, key, -1) <= 0 then
        redis.call('HDEL', key_running, key)
      end
      if redis.call('LPUSH', ready .. ':key:' .. key, run_id) == 1 then
        redis.call('LPUSH', turns, key)
      end
    elseif p then
      redis.call('ZADD', bands, p, p)
      redis.call('LPUSH', ready .. ':' .. p, run_id)
    else
      redis.call('LPUSH', ready, run_id)
    end
    moved = moved + 1
  end
end
if moved > 0 and redis.call('EXISTS', bell) == 0 then
  redis.call('RPUSH', bell, '1')
end
if moved > 0 and redis.call('EXISTS', max_running) == 1 and redis.call('EXISTS', room) == 0 then
  redis.call('RPUSH', room, '1')
end
return moved

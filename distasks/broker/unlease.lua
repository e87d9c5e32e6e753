-- End leases: drop run ids from the lease set (their outcome is recorded, or they have
-- nothing to run) and, if the queue has a max-running limit and a lease went, ring the
-- room signal so that fetchers held back by the limit claim again (see claim.lua). A
-- run with a concurrency key (its rank in `priorities` is '<priority>/<key>') leaves its
-- key's count in `key-running`; if that key has runs waiting, the bell rings, since a
-- claim may have found the key at its limit and taken the bell down. Every id's rank
-- leaves `priorities` here, after it was read: were that left to a command beside this
-- script in a pipeline, a reload of the script (base.py's _execute) would run it after
-- that command, and the key would never be released.
-- KEYS[1] -> {prefix}:{q:<queue>}:leases
-- KEYS[2] -> {prefix}:{q:<queue>}:max-running
-- KEYS[3] -> {prefix}:{q:<queue>}:room
-- KEYS[4] -> {prefix}:{q:<queue>}:priorities
-- KEYS[5] -> {prefix}:{q:<queue>}:key-running
-- KEYS[6] -> {prefix}:{q:<queue>}:bell
-- KEYS[7] -> {prefix}:{q:<queue>}:ready (only to build the keys' list names)
-- ARGV    -> the run ids
-- Returns: how many leases ended.
local leases, max_running, room = KEYS[1], KEYS[2], KEYS[3]
local priorities, key_running, bell, ready = KEYS[4], KEYS[5], KEYS[6], KEYS[7]

local ended = 0
if redis.call('EXISTS', key_running) == 1 then
  -- Some run with a key is leased: each ended lease is looked at.
  local ring = false
  for _, run_id in ipairs(ARGV) do
    if redis.call('ZREM', leases, run_id) == 1 then
      ended = ended + 1
      local key = string.match(redis.call('HGET', priorities, run_id) or '', '^[^/]*/(.*)$')
      redis.call('HDEL', priorities, run_id)
      if key then
        if redis.call('HINCRBY', key_running, key, -1) <= 0 then
          redis.call('HDEL', key_running, key)
        end
        ring = ring or redis.call('EXISTS', ready .. ':key:' .. key) == 1
      end
    end
  end
  if ring and redis.call('EXISTS', bell) == 0 then
    redis.call('RPUSH', bell, '1')
  end
else
  for i = 1, #ARGV, 1000 do  -- unpack has a limit on how many values it returns
    local chunk = {unpack(ARGV, i, math.min(i + 999, #ARGV))}
    ended = ended + redis.call('ZREM', leases, unpack(chunk))
    redis.call('HDEL', priorities, unpack(chunk))
  end
end
if ended > 0 and redis.call('EXISTS', max_running) == 1 and redis.call('EXISTS', room) == 0 then
  redis.call('RPUSH', room, '1')
end
return ended

-- End leases: drop run ids from the lease set (their outcome is recorded, or they have
-- nothing to run) and, if the queue has a max-running limit and a lease went, ring the
-- room signal so that fetchers held back by the limit claim again (see claim.lua).
-- KEYS[1] -> {prefix}:{q:<queue>}:leases
-- KEYS[2] -> {prefix}:{q:<queue>}:max-running
-- KEYS[3] -> {prefix}:{q:<queue>}:room
-- ARGV    -> the run ids
-- Returns: how many leases ended.
local leases, max_running, room = KEYS[1], KEYS[2], KEYS[3]

local ended = 0
for i = 1, #ARGV, 1000 do  -- unpack has a limit on how many values it returns
  ended = ended + redis.call('ZREM', leases, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if ended > 0 and redis.call('EXISTS', max_running) == 1 and redis.call('EXISTS', room) == 0 then
  redis.call('RPUSH', room, '1')
end
return ended

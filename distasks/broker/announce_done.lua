-- Announce tasks that reached a final state, but only those a request waits for (a long
-- poll registered them with `watch`): one "done <task ids>" message on the control
-- channel for all of them, and their entries go. Waits that ended are dropped as well.
-- Daemons with no waiting request then get no message per finished task.
-- KEYS[1] -> {prefix}:waited (zset: task id -> when the last wait for it ends, ms)
-- ARGV[1] -> the control channel
-- ARGV[2] -> now, Unix time in ms
-- ARGV[3..] -> task ids that reached a final state
-- Returns: how many were announced
local waited, channel, now_ms = KEYS[1], ARGV[1], ARGV[2]

redis.call('ZREMRANGEBYSCORE', waited, '-inf', '(' .. now_ms)
local announced = {}
for i = 3, #ARGV do
  if redis.call('ZSCORE', waited, ARGV[i]) then
    announced[#announced + 1] = ARGV[i]
  end
end
if #announced > 0 then
  redis.call('ZREM', waited, unpack(announced))
  redis.call('PUBLISH', channel, 'done ' .. table.concat(announced, ' '))
end
return #announced

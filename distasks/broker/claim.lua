-- Claim up to `count` ready run ids: pop them from the ready list and record each in
-- the lease set in the same atomic step, so a crash right after loses nothing (the
-- lease expires and the run is taken over). A paused queue gives nothing.
-- KEYS[1] -> {prefix}:{q:<queue>}:ready
-- KEYS[2] -> {prefix}:{q:<queue>}:leases
-- KEYS[3] -> {prefix}:{q:<queue>}:paused
-- ARGV[1] -> most items to claim
-- ARGV[2] -> lease deadline, Unix time in ms
-- Returns: the claimed run ids, oldest first (empty when the list is empty);
--          nil when the queue is paused.
local ready, leases, paused = KEYS[1], KEYS[2], KEYS[3]
local count, deadline_ms = tonumber(ARGV[1]), ARGV[2]

if redis.call('EXISTS', paused) == 1 then
  return false
end
local items = redis.call('LPOP', ready, count)
if not items then
  return {}
end
for _, item in ipairs(items) do
  redis.call('ZADD', leases, deadline_ms, item)
end
return items

-- Release a lock only while it is still held under this token: a lock that expired and
-- was taken by another daemon meanwhile stays theirs.
-- KEYS[1] -> the lock (SET NX PX, value = token)
-- ARGV[1] -> the token it was taken with
-- Returns: 1 if released, 0 if it was not (or no longer) ours
local lock, token = KEYS[1], ARGV[1]

if redis.call('GET', lock) == token then
  return redis.call('DEL', lock)
end
return 0

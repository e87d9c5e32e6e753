-- Claim up to `count` ready run ids, highest priority first and oldest first within a
-- priority: pop them from the ready lists and record each in the lease set in the same
-- atomic step, so a crash right after loses nothing (the lease expires and the run is
-- taken over). A paused queue gives nothing. A queue with a max-running limit keeps its
-- lease set (every run of the queue leased now, by any daemon) at most that big: a claim
-- takes only the room left, and when there is none takes the room signal down, so that
-- idle fetchers wait for an ended lease (unlease.lua, requeue.lua) to ring it.
-- Each priority p has its own FIFO list: `ready` for 0, `ready:<p>` for the others,
-- which `bands` lists (score p). Those names are built here from KEYS[1]: they share its
-- hash tag, so the script stays in one cluster slot. A priority whose list is found
-- empty leaves `bands`; when every list is empty the bell is taken down, so that idle
-- fetchers block (dispatch.py's wait_ready) until a push rings it again.
-- KEYS[1] -> {prefix}:{q:<queue>}:ready
-- KEYS[2] -> {prefix}:{q:<queue>}:leases
-- KEYS[3] -> {prefix}:{q:<queue>}:paused
-- KEYS[4] -> {prefix}:{q:<queue>}:bands
-- KEYS[5] -> {prefix}:{q:<queue>}:bell
-- KEYS[6] -> {prefix}:{q:<queue>}:max-running
-- KEYS[7] -> {prefix}:{q:<queue>}:room
-- ARGV[1] -> most items to claim
-- ARGV[2] -> lease deadline, Unix time in ms
-- Returns: the claimed run ids in claim order (empty when every list is empty, or when
--          the limit leaves no room); nil when the queue is paused.
local ready, leases, paused, bands, bell = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local max_running, room = KEYS[6], KEYS[7]
local need, deadline_ms = tonumber(ARGV[1]), ARGV[2]

if redis.call('EXISTS', paused) == 1 then
  return false
end
local limit = tonumber(redis.call('GET', max_running))
if limit then
  local left = limit - redis.call('ZCARD', leases)
  if left <= 0 then
    redis.call('DEL', room)
    return {}
  end
  if left < need then
    need = left
  end
end
local claimed = {}

local function take(p)
  local list = p == '0' and ready or ready .. ':' .. p
  local items = redis.call('LPOP', list, need)
  if items then
    for _, item in ipairs(items) do
      claimed[#claimed + 1] = item
      redis.call('ZADD', leases, deadline_ms, item)
    end
    need = need - #items
  end
  if need > 0 and p ~= '0' then
    redis.call('ZREM', bands, p)  -- its list is empty now
  end
end

-- The priorities listed in `bands` between `from` and `to` (BYSCORE, high to low).
local function take_bands(from, to)
  while need > 0 do
    local ps = redis.call('ZRANGE', bands, from, to, 'BYSCORE', 'REV', 'LIMIT', 0, need)
    if #ps == 0 then
      return
    end
    for _, p in ipairs(ps) do
      take(p)
      if need == 0 then
        return
      end
    end
  end
end

local banded = redis.call('EXISTS', bands) == 1
if banded then
  take_bands('+inf', '(0')
end
if need > 0 then
  take('0')
end
if need > 0 and banded then
  take_bands('(0', '-inf')
end
if need > 0 then
  redis.call('DEL', bell)  -- nothing left anywhere
end
return claimed

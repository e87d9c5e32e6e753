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
-- A run with a concurrency key waits instead in its key's FIFO list (`ready:key:<key>`,
-- see push.lua), and the key is in `key-turns` while that list holds runs. While any key
-- has runs waiting, the claim goes round: one run of each key in turn (skipping a key
-- with max-per-key runs leased, as `key-running` counts them), then one of the other
-- runs (by priority, as above), and again, so no busy key starves the others. The turn
-- list is rotated as it is read, so the next claim starts where this one stopped.
-- A queue with a start rate (`rate`: per_s, burst) has a token bucket in that hash
-- (tokens, at_ms), refilled at per_s up to burst by Redis's own clock (TIME, the same
-- for every daemon); a claim takes at most the whole tokens there are and spends one per
-- run it claims. With none, it returns the milliseconds until the next one instead of
-- run ids, so that the fetcher sleeps that long rather than asking again at once.
-- An id popped that is in the lease set already is a duplicate of a run someone holds
-- (a rebuild after a failover adds again what the replica kept): it is dropped, so that
-- its lease, deadline and key count stay the holder's (a claim of it would fail in
-- PostgreSQL, and its release would end the holder's lease in Redis).
-- KEYS[1] -> {prefix}:{q:<queue>}:ready
-- KEYS[2] -> {prefix}:{q:<queue>}:leases
-- KEYS[3] -> {prefix}:{q:<queue>}:paused
-- KEYS[4] -> {prefix}:{q:<queue>}:bands
-- KEYS[5] -> {prefix}:{q:<queue>}:bell
-- KEYS[6] -> {prefix}:{q:<queue>}:max-running
-- KEYS[7] -> {prefix}:{q:<queue>}:room
-- KEYS[8] -> {prefix}:{q:<queue>}:key-turns
-- KEYS[9] -> {prefix}:{q:<queue>}:key-running
-- KEYS[10] -> {prefix}:{q:<queue>}:max-per-key
-- KEYS[11] -> {prefix}:{q:<queue>}:rate
-- ARGV[1] -> most items to claim
-- ARGV[2] -> lease deadline, Unix time in ms
-- Returns: the claimed run ids in claim order (empty when every list is empty, or when
--          the limit leaves no room); nil when the queue is paused; {ms} (one integer)
--          when the start rate has no token left: how long until the next.
local ready, leases, paused, bands, bell = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local max_running, room = KEYS[6], KEYS[7]
local turns, key_running, max_per_key, rate = KEYS[8], KEYS[9], KEYS[10], KEYS[11]
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
local bucket = redis.call('HMGET', rate, 'per_s', 'burst', 'tokens', 'at_ms')
local per_s, tokens, now_ms = tonumber(bucket[1]), nil, nil
if per_s then
  local burst = tonumber(bucket[2])
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  tokens = burst
  if bucket[3] then
    local elapsed_ms = math.max(0, now_ms - tonumber(bucket[4]))
    tokens = math.min(burst, tonumber(bucket[3]) + elapsed_ms * per_s / 1000)
  end
  if tokens < 1 then
    return {math.ceil((1 - tokens) * 1000 / per_s)}
  end
  if math.floor(tokens) < need then
    need = math.floor(tokens)
  end
end
local claimed = {}

-- Pops from priority p's list into the lease set until `need` is met or the list is
-- empty; returns whether it emptied the list.
local function take(p)
  local list = p == '0' and ready or ready .. ':' .. p
  while need > 0 do
    local items = redis.call('LPOP', list, need)
    local emptied = not items or #items < need
    for _, item in ipairs(items or {}) do
      if redis.call('ZADD', leases, 'NX', deadline_ms, item) == 1 then
        claimed[#claimed + 1] = item
        need = need - 1
      end  -- else a duplicate of a leased run (see above): dropped
    end
    if emptied then
      if p ~= '0' then
        redis.call('ZREM', bands, p)  -- its list is empty now
      end
      return true
    end
  end
  return false
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
local function take_unkeyed()
  if banded then
    take_bands('+inf', '(0')
  end
  if need > 0 then
    take('0')
  end
  if need > 0 and banded then
    take_bands('(0', '-inf')
  end
end

-- One round of the keys with waiting runs: one run each, if it has room. Returns how
-- many it took.
local function take_keys(cap)
  local took = 0
  for _ = 1, redis.call('LLEN', turns) do
    if need == 0 then
      break
    end
    local key = redis.call('LMOVE', turns, turns, 'LEFT', 'RIGHT')
    local list = ready .. ':key:' .. key
    if not cap or tonumber(redis.call('HGET', key_running, key) or '0') < cap then
      local item = redis.call('LPOP', list)
      if item then
        took = took + 1  -- a dropped duplicate counts: the round goes on
        if redis.call('ZADD', leases, 'NX', deadline_ms, item) == 1 then
          claimed[#claimed + 1] = item
          redis.call('HINCRBY', key_running, key, 1)
          need = need - 1
        end
      end
    end
    if redis.call('EXISTS', list) == 0 then
      redis.call('RPOP', turns)  -- nothing left of this key: it leaves the turns
    end
  end
  return took
end

if redis.call('EXISTS', turns) == 1 then
  local cap = tonumber(redis.call('GET', max_per_key))
  local unkeyed = true
  while need > 0 do
    local took = take_keys(cap)
    if need > 0 and unkeyed then
      local rest = need - 1
      need = 1
      take_unkeyed()
      unkeyed = need == 0  -- found none: the other lists are empty
      if unkeyed then
        took = took + 1
      end
      need = need + rest
    end
    if took == 0 then
      break
    end
  end
else
  take_unkeyed()
end
if need > 0 then
  redis.call('DEL', bell)  -- nothing left anywhere
end
if per_s then
  redis.call('HSET', rate, 'tokens', tostring(tokens - #claimed),
             'at_ms', string.format('%d', now_ms))
end
return claimed

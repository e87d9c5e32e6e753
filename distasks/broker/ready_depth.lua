-- How many run ids a queue's ready lists hold (see claim.lua for the layout), how many of
-- them a limit holds back now, and the head (the oldest) of each non-empty list, highest
-- priority first, then those of the concurrency keys' lists: the oldest ready run is one
-- of them. Held back: every ready run while the lease set is at max-running or the start
-- rate has no whole token (by Redis TIME, as the claim counts); else the runs of the keys
-- at max-per-key. Reads only.
-- KEYS[1] -> {prefix}:{q:<queue>}:ready
-- KEYS[2] -> {prefix}:{q:<queue>}:bands
-- KEYS[3] -> {prefix}:{q:<queue>}:key-turns
-- KEYS[4] -> {prefix}:{q:<queue>}:leases
-- KEYS[5] -> {prefix}:{q:<queue>}:max-running
-- KEYS[6] -> {prefix}:{q:<queue>}:key-running
-- KEYS[7] -> {prefix}:{q:<queue>}:max-per-key
-- KEYS[8] -> {prefix}:{q:<queue>}:rate
-- ARGV[1] -> most heads to return (the highest priorities' first)
-- Returns: {total, held back, head, head, ...}
local ready, bands, turns, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local max_running, key_running, max_per_key, rate = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local most = tonumber(ARGV[1]) + 2

local out = {0, 0}
local function count(list)
  local n = redis.call('LLEN', list)
  if n > 0 then
    out[1] = out[1] + n
    if #out < most then
      out[#out + 1] = redis.call('LINDEX', list, 0)
    end
  end
  return n
end
for _, p in ipairs(redis.call('ZRANGE', bands, '+inf', '(0', 'BYSCORE', 'REV')) do
  count(ready .. ':' .. p)
end
count(ready)
for _, p in ipairs(redis.call('ZRANGE', bands, '(0', '-inf', 'BYSCORE', 'REV')) do
  count(ready .. ':' .. p)
end
local cap = tonumber(redis.call('GET', max_per_key))
for _, key in ipairs(redis.call('LRANGE', turns, 0, -1)) do
  local n = count(ready .. ':key:' .. key)
  if cap and tonumber(redis.call('HGET', key_running, key) or '0') >= cap then
    out[2] = out[2] + n
  end
end

local limit = tonumber(redis.call('GET', max_running))
local full = limit and redis.call('ZCARD', leases) >= limit
local bucket = redis.call('HMGET', rate, 'per_s', 'burst', 'tokens', 'at_ms')
if bucket[1] and bucket[3] then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local tokens = math.min(tonumber(bucket[2]), tonumber(bucket[3])
    + math.max(0, now_ms - tonumber(bucket[4])) * tonumber(bucket[1]) / 1000)
  full = full or tokens < 1
end
if full then
  out[2] = out[1]
end
return out

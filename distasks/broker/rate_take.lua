-- Take up to `want` tokens from each of two token buckets (a principal's and its
-- tenant's) at once, on Redis's own clock, so that every daemon shares the same limits.
-- A bucket refills at `rate` tokens per ms up to `capacity`; tokens not taken stay.
-- KEYS[1] -> {prefix}:{rl:<tenant>}:p:<principal>  (hash: tokens, at_ms)
-- KEYS[2] -> {prefix}:{rl:<tenant>}:t:<tenant>
-- ARGV[1], ARGV[2] -> the principal's rate (tokens per ms) and capacity
-- ARGV[3], ARGV[4] -> the tenant's; a capacity of 0 means no limit
-- ARGV[5]          -> tokens wanted (a daemon takes a few at a time, then spends locally)
-- Returns: {granted, ms until the next token when none was granted, tokens left in the
--           principal's bucket}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local want = tonumber(ARGV[5])

local function level(key, rate, capacity)
  if capacity <= 0 then return nil end
  local b = redis.call('HMGET', key, 'tokens', 'at_ms')
  local tokens = tonumber(b[1]) or capacity
  local at = tonumber(b[2]) or now
  return math.min(capacity, tokens + math.max(0, now - at) * rate)
end

local pr, pc = tonumber(ARGV[1]), tonumber(ARGV[2])
local tr, tc = tonumber(ARGV[3]), tonumber(ARGV[4])
local p = level(KEYS[1], pr, pc)
local q = level(KEYS[2], tr, tc)
local granted = want
if p then granted = math.min(granted, math.floor(p)) end
if q then granted = math.min(granted, math.floor(q)) end

local function save(key, tokens, rate, capacity)
  redis.call('HSET', key, 'tokens', tostring(tokens), 'at_ms', now)
  redis.call('PEXPIRE', key, math.ceil(capacity / rate) + 1000)
end
if p then save(KEYS[1], p - granted, pr, pc) end
if q then save(KEYS[2], q - granted, tr, tc) end

local wait = 0
if granted == 0 then
  if p and p < 1 then wait = math.max(wait, math.ceil((1 - p) / pr)) end
  if q and q < 1 then wait = math.max(wait, math.ceil((1 - q) / tr)) end
end
return {granted, wait, p and math.floor(p - granted) or -1}

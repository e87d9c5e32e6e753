-- How many run ids a queue's ready lists hold (see claim.lua for the layout), and the
-- head (the oldest) of each non-empty one, highest priority first: the oldest ready run
-- is one of them. Reads only.
-- KEYS[1] -> {prefix}:{q:<queue>}:ready
-- KEYS[2] -> {prefix}:{q:<queue>}:bands
-- ARGV[1] -> most heads to return (the highest priorities' first)
-- Returns: {total, head, head, ...}
local ready, bands = KEYS[1], KEYS[2]
local most = tonumber(ARGV[1])

local out = {0}
local function count(list)
  local n = redis.call('LLEN', list)
  if n > 0 then
    out[1] = out[1] + n
    if #out <= most then
      out[#out + 1] = redis.call('LINDEX', list, 0)
    end
  end
end
for _, p in ipairs(redis.call('ZRANGE', bands, '+inf', '(0', 'BYSCORE', 'REV')) do
  count(ready .. ':' .. p)
end
count(ready)
for _, p in ipairs(redis.call('ZRANGE', bands, '(0', '-inf', 'BYSCORE', 'REV')) do
  count(ready .. ':' .. p)
end
return out

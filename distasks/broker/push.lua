-- Push run ids to their priority's ready list (see claim.lua for the layout): at the
-- tail (new, due, replayed) or at the head (handed back, to be claimed next), and ring
-- the bell so that idle fetchers wake. A run of a priority other than 0 is listed in
-- `bands` and its priority kept in `priorities`, where requeue.lua finds it again. A run
-- whose rank names a concurrency key ('<priority>/<key>') goes to its key's list instead,
-- the key joins `key-turns` if it was not there, and the rank is kept in `priorities`.
-- KEYS[1] -> {prefix}:{q:<queue>}:ready
-- KEYS[2] -> {prefix}:{q:<queue>}:bands
-- KEYS[3] -> {prefix}:{q:<queue>}:bell
-- KEYS[4] -> {prefix}:{q:<queue>}:priorities
-- KEYS[5] -> {prefix}:{q:<queue>}:key-turns
-- ARGV[1] -> 'tail' or 'head' (at the head the ids keep their order: the first is next)
-- ARGV[2..] -> pairs: rank (a priority, or '<priority>/<key>'), run id
-- Returns: how many were pushed.
local ready, bands, bell, priorities, turns = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local at_head = ARGV[1] == 'head'

local first, last, step = 2, #ARGV - 1, 2
if at_head then
  first, last, step = #ARGV - 1, 2, -2
end
for i = first, last, step do
  local p, run_id = ARGV[i], ARGV[i + 1]
  local list = ready
  local key = string.match(p, '^[^/]*/(.*)$')
  if key then
    list = ready .. ':key:' .. key
    redis.call('HSET', priorities, run_id, p)
  elseif p ~= '0' then
    list = ready .. ':' .. p
    redis.call('ZADD', bands, p, p)
    redis.call('HSET', priorities, run_id, p)
  end
  local n
  if at_head then
    n = redis.call('LPUSH', list, run_id)
  else
    n = redis.call('RPUSH', list, run_id)
  end
  if key and n == 1 then
    redis.call('RPUSH', turns, key)
  end
end
if #ARGV > 1 and redis.call('EXISTS', bell) == 0 then
  redis.call('RPUSH', bell, '1')
end
return (#ARGV - 1) / 2

-- Restore leased runs after Redis came back empty (rebuild.py): each into the lease set
-- with its deadline, its rank into `priorities` (all but priority 0), and a run with a
-- concurrency key (rank '<priority>/<key>') into its key's count in `key-running`, once:
-- only if this added its lease (a run claimed since Redis came back is counted already).
-- KEYS[1] -> {prefix}:{q:<queue>}:leases
-- KEYS[2] -> {prefix}:{q:<queue>}:priorities
-- KEYS[3] -> {prefix}:{q:<queue>}:key-running
-- ARGV    -> triples: run id, lease deadline in ms, rank
-- Returns: how many leases were added.
local leases, priorities, key_running = KEYS[1], KEYS[2], KEYS[3]

local added = 0
for i = 1, #ARGV, 3 do
  local run_id, deadline_ms, p = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if p ~= '0' then
    redis.call('HSET', priorities, run_id, p)
  end
  if redis.call('ZADD', leases, deadline_ms, run_id) == 1 then
    added = added + 1
    local key = string.match(p, '^[^/]*/(.*)$')
    if key then
      redis.call('HINCRBY', key_running, key, 1)
    end
  end
end
return added

-- Concurrency keys (issue 18, item 4): a task may name a key (e.g. a customer id), and a
-- queue may bound how many runs of one key are leased at once across every daemon
-- (claim.lua counts them per key in Redis); NULL: no key, no limit. PostgreSQL keeps
-- both; Redis mirrors the limit and each waiting or leased run's key, and the reconciler
-- rebuilds them after Redis comes back empty.
ALTER TABLE tasks ADD COLUMN concurrency_key text;
ALTER TABLE queues ADD COLUMN max_running_per_key integer CHECK (max_running_per_key >= 1);

-- A queue's global concurrency limit (issue 18, item 3): at most this many of its runs
-- leased at once across every daemon, enforced by the claim in Redis (claim.lua counts
-- the queue's lease set); NULL: no limit. PostgreSQL keeps it, Redis mirrors it (like
-- the pause flag), and the reconciler copies it back after Redis comes back empty.
ALTER TABLE queues ADD COLUMN max_running integer CHECK (max_running >= 1);

-- Retention (architecture, "Retention"): the cleaner removes finished tasks by state and
-- age, oldest first, and old audit rows and schedule fires. "IF NOT EXISTS": an operator
-- may build the indexes beforehand with CREATE INDEX CONCURRENTLY under these names, so
-- that applying this migration to a large, running deployment takes no long lock.

-- Finished tasks by state, oldest first: each batch reads the oldest of one state.
CREATE INDEX IF NOT EXISTS tasks_retention ON tasks (status, finished_at)
    WHERE status IN ('completed', 'failed', 'cancelled');

-- Finished workflows by state, oldest first (a workflow goes whole, with its nodes).
CREATE INDEX IF NOT EXISTS workflows_retention ON workflows (state, finished_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');

-- The slots fired longest ago (audit_log has audit_log_at already).
CREATE INDEX IF NOT EXISTS schedule_fires_fired_at ON schedule_fires (fired_at);

-- Which daemon runs a maintenance job now: a row per job, held until expires_at and
-- renewed by each batch of the holder; another daemon takes it only once it expired
-- (the holder died) or was given back (the holder stopped). PostgreSQL's clock decides.
CREATE TABLE IF NOT EXISTS maintenance_leaders (
    name        text PRIMARY KEY,
    holder      text NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- Reliability (issue 3): the daemons' registry, and which runs Redis has heard of.

-- One row per daemon process. `heartbeat_at` moves every few seconds while it lives;
-- a daemon whose heartbeat is old is dead, and the reaper takes over its runs once
-- their leases expire.
CREATE TABLE workers (
    id            text PRIMARY KEY,
    host          text NOT NULL,
    pid           integer NOT NULL,
    queues        text[] NOT NULL,
    concurrency   integer NOT NULL,
    version       text NOT NULL,
    started_at    timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL,
    stopped_at    timestamptz
);

CREATE INDEX workers_heartbeat ON workers (heartbeat_at);

-- Set once the run's id is in Redis (ready list or delayed set). A queued run still
-- NULL here some seconds after it was created was committed but never pushed (Redis
-- was down, or the daemon died in between): the reconciler pushes it.
ALTER TABLE task_runs ADD COLUMN dispatched_at timestamptz;

CREATE INDEX task_runs_undispatched ON task_runs (created_at)
    WHERE status = 'queued' AND dispatched_at IS NULL;

-- Running runs by lease deadline, for the reaper.
CREATE INDEX task_runs_running_lease ON task_runs (lease_expires_at) WHERE status = 'running';

-- Failed tasks of a queue in the order they failed: the DLQ as PostgreSQL keeps it.
CREATE INDEX tasks_dead ON tasks (queue_name, finished_at, id) WHERE status = 'failed';

-- Tasks and their runs (DESIGN §3). PostgreSQL is the source of truth: a task exists
-- once its row is committed, and Redis only indexes what these rows say.

CREATE TABLE tasks (
    id           uuid PRIMARY KEY,
    -- a free label; `handler` picks the code
    name         text NOT NULL,
    handler      text NOT NULL,
    type         text NOT NULL CHECK (type IN ('immediate', 'delayed')),
    queue_name   text NOT NULL,
    priority     integer NOT NULL DEFAULT 0,
    payload      jsonb NOT NULL DEFAULT 'null',
    -- unique: concurrent creates with one key give one task (the index does the work)
    dedup_key    text UNIQUE,
    max_retries  integer NOT NULL CHECK (max_retries >= 0),
    timeout_s    double precision CHECK (timeout_s > 0),
    status       text NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'completed', 'failed', 'cancelled')),
    -- failed attempts since creation or the last DLQ replay; decides retry or DLQ
    failures     integer NOT NULL DEFAULT 0,
    run_at       timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

CREATE INDEX tasks_queue_status_created ON tasks (queue_name, status, created_at);

CREATE TABLE task_runs (
    id                uuid PRIMARY KEY,
    task_id           uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt           integer NOT NULL CHECK (attempt >= 1),
    status            text NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'succeeded', 'retrying',
                                        'failed', 'interrupted')),
    -- the daemon holding the lease while running; outcome writes are fenced on it
    worker_id         text,
    lease_expires_at  timestamptz,
    -- when a queued run may start: now for ready ones, later for delayed tasks and retries
    available_at      timestamptz NOT NULL DEFAULT now(),
    -- set on a retrying run: when its successor is due
    next_retry_at     timestamptz,
    error             text,
    result            jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    UNIQUE (task_id, attempt)
);

-- Unfinished runs, for takeover of expired leases and rebuilding Redis.
CREATE INDEX task_runs_unfinished ON task_runs (status, lease_expires_at)
    WHERE status IN ('queued', 'running');

-- The task API (issue 4): cancellation, paused queues, DLQ deletion, audit, listing.

-- Cancelled tasks say who cancelled them and when.
ALTER TABLE tasks ADD COLUMN cancelled_at timestamptz;
ALTER TABLE tasks ADD COLUMN cancelled_by text;
ALTER TABLE tasks ADD COLUMN cancel_reason text;
-- A failed task deleted from the DLQ keeps its record; it only leaves the DLQ.
ALTER TABLE tasks ADD COLUMN dlq_deleted_at timestamptz;

ALTER TABLE task_runs DROP CONSTRAINT task_runs_status_check;
ALTER TABLE task_runs ADD CONSTRAINT task_runs_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'retrying', 'failed', 'interrupted',
                      'cancelled'));

-- Every queue a task was ever created in, and whether it is paused. The API's queue
-- list reads it instead of scanning tasks; creates add their queue here.
CREATE TABLE queues (
    name        text PRIMARY KEY,
    paused      boolean NOT NULL DEFAULT false,
    paused_at   timestamptz,
    paused_by   text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO queues (name) SELECT DISTINCT queue_name FROM tasks ON CONFLICT DO NOTHING;

-- Who did what to which tasks: DLQ replays and deletions, cancellations, pauses.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL,
    actor       text NOT NULL,
    action      text NOT NULL,
    queue_name  text,
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at);

-- Listing tasks newest first (keyset on created_at, id), optionally by status or queue.
CREATE INDEX tasks_created ON tasks (created_at DESC, id DESC);
CREATE INDEX tasks_status_created ON tasks (status, created_at DESC, id DESC);
-- Completed and failed in the last minute, per queue.
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;

-- The DLQ leaves out deleted entries.
DROP INDEX tasks_dead;
CREATE INDEX tasks_dead ON tasks (queue_name, finished_at, id)
    WHERE status = 'failed' AND dlq_deleted_at IS NULL;

-- Workflows (issue 19): durable task graphs. A workflow's nodes are ordinary tasks
-- (with their runs, retries, leases and DLQ) that carry the workflow's id and their
-- local key; an edge says a child waits for its parent's final state. A node with
-- unmet dependencies is `pending`: it has no run and never reaches Redis. The
-- transaction that records a parent's final state (the completer's outcome write, a
-- cancel, the reaper's takeover) also lowers each child's `deps_remaining`, under the
-- child's row lock, so of two parents finishing at once exactly one sees it reach zero
-- and creates the child's first run (store/workflows.py, RELEASE_CHILDREN).

CREATE TABLE workflows (
    id           uuid PRIMARY KEY,
    tenant       text NOT NULL DEFAULT 'default',
    -- a free label, as a task's name
    name         text NOT NULL,
    -- unique per tenant: the same key returns the same workflow
    dedup_key    text,
    -- running until no node is left open; then decided by the transaction that closed
    -- the last one: cancelled if cancel was asked, failed if a node ended failed or
    -- cancelled, else succeeded. A resume puts a failed one back to running.
    state        text NOT NULL DEFAULT 'running'
                 CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    -- nodes not yet final (the on_failure task aside); its row lock orders the
    -- transactions that close nodes of one workflow, so exactly one sees it reach zero
    open_nodes   integer NOT NULL CHECK (open_nodes >= 0),
    -- nodes that ended failed or cancelled since submission or the last resume
    bad_nodes    integer NOT NULL DEFAULT 0,
    -- the task that runs once when the workflow fails (pending until then)
    on_failure_task_id uuid,
    created_by   text,
    cancelled_at timestamptz,
    cancelled_by text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    CONSTRAINT workflows_tenant_dedup_key UNIQUE (tenant, dedup_key)
);

CREATE INDEX workflows_tenant_created ON workflows (tenant, created_at DESC, id DESC);

ALTER TABLE tasks ADD COLUMN workflow_id uuid REFERENCES workflows (id) ON DELETE CASCADE;
-- the node's key, unique within its workflow
ALTER TABLE tasks ADD COLUMN workflow_key text;
-- parents not yet final; at zero a pending node is released (run, skipped or cancelled)
ALTER TABLE tasks ADD COLUMN deps_remaining integer NOT NULL DEFAULT 0
    CHECK (deps_remaining >= 0);
CREATE UNIQUE INDEX tasks_workflow_key ON tasks (workflow_id, workflow_key)
    WHERE workflow_id IS NOT NULL;

-- pending: waits for its parents (no run, not in Redis); skipped: a parent's outcome
-- said not to run it (on_parent_failure = skip, or a skipped parent).
ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('pending', 'queued', 'completed', 'failed', 'cancelled', 'skipped'));

CREATE TABLE workflow_edges (
    parent_id          uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    child_id           uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    -- what the child does when this parent ends failed or cancelled
    on_parent_failure  text NOT NULL DEFAULT 'cancel'
                       CHECK (on_parent_failure IN ('cancel', 'continue', 'skip')),
    PRIMARY KEY (parent_id, child_id)
);

-- A child's parents, for its fate at release and its handler's ctx.parents.
CREATE INDEX workflow_edges_child ON workflow_edges (child_id);

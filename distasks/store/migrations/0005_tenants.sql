-- Tenants (issue 10, architecture §8). A task belongs to a tenant; its queue_name is
-- already qualified (`<tenant>/<queue>`, the tenant `default` unqualified), so queues,
-- runs, the DLQ and Redis keys are kept apart by the name alone. The column lets lists,
-- reads and dedup keys stay within a tenant without parsing names.
ALTER TABLE tasks ADD COLUMN tenant text NOT NULL DEFAULT 'default';

-- A dedup key is a tenant's own: two tenants may use the same one.
ALTER TABLE tasks DROP CONSTRAINT tasks_dedup_key_key;
ALTER TABLE tasks ADD CONSTRAINT tasks_tenant_dedup_key UNIQUE (tenant, dedup_key);

-- Lists read one tenant's tasks (the same number of indexes as before, led by tenant);
-- the second also counts a tenant's queued tasks for its quota.
DROP INDEX tasks_created;
DROP INDEX tasks_status_created;
CREATE INDEX tasks_tenant_created ON tasks (tenant, created_at DESC, id DESC);
CREATE INDEX tasks_tenant_status_created ON tasks (tenant, status, created_at DESC, id DESC);

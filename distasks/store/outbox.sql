-- The outbox schema in an application's database (architecture §10, docs/outbox.md),
-- created by `distasks outbox install`. Safe to run again: every statement creates what
-- is missing or replaces a function or trigger, and nothing that holds rows is dropped.
-- Needs PostgreSQL 13 or later (gen_random_uuid).

create schema if not exists distasks;

-- One row per hand-over, inserted in the application's own transaction: a rollback takes
-- it away, a commit keeps it until a daemon's relay has created its task and deleted it.
create table if not exists distasks.outbox (
    -- the hand-over's identity: distasks creates one task per (source, id)
    id uuid primary key default gen_random_uuid(),
    -- the order rows are relayed in
    seq bigint generated always as identity,
    -- what the row asks for: 'task' or 'workflow'. Named, so that an install over an
    -- older schema can replace it (below).
    kind text not null default 'task'
        constraint outbox_kind check (kind in ('task', 'workflow')),
    -- the request, exactly as the body of POST /api/v1/tasks (kind 'task') or of
    -- POST /api/v1/workflows (kind 'workflow')
    request jsonb not null,
    created_at timestamptz not null default clock_timestamp()
);
create index if not exists outbox_seq on distasks.outbox (seq);

-- An outbox installed before workflows came allows kind 'task' only: its constraint is
-- replaced, rows kept. Only when it lacks 'workflow', so that a re-run takes no
-- ACCESS EXCLUSIVE lock on the table (the ALTER's, which waits for open inserts).
do $$
begin
    if not exists (select from pg_constraint
                   where conrelid = 'distasks.outbox'::regclass and conname = 'outbox_kind'
                     and pg_get_constraintdef(oid) like '%''workflow''%') then
        alter table distasks.outbox
            drop constraint if exists outbox_kind,
            add constraint outbox_kind check (kind in ('task', 'workflow'));
    end if;
end
$$;

-- Rows distasks refused (an unknown handler, an invalid request, a dedup_key already
-- used by a different request), with the reason. The relay never reads them back: a
-- human fixes the request and enqueues it again.
create table if not exists distasks.outbox_rejected (
    id uuid primary key,
    kind text not null,
    request jsonb not null,
    created_at timestamptz not null,
    rejected_at timestamptz not null default clock_timestamp(),
    reason text not null
);

-- enqueue --
-- Hand a task over in the caller's transaction; returns the outbox row's id. The
-- arguments are the create body's fields; a delayed task is one given run_at or
-- delay_seconds. Nulls are left out of the request, except inside the payload.
create or replace function distasks.enqueue(
    name text,
    handler text default null,
    payload jsonb default '{}',
    queue_name text default 'default',
    priority integer default 0,
    dedup_key text default null,
    max_retries integer default null,
    timeout_seconds double precision default null,
    run_at timestamptz default null,
    delay_seconds double precision default null,
    secret_fields text[] default null,
    concurrency_key text default null
) returns uuid
language sql volatile
as $$
    insert into distasks.outbox (kind, request)
    values ('task', jsonb_strip_nulls(jsonb_build_object(
        'name', enqueue.name,
        'handler', enqueue.handler,
        'type', case when enqueue.run_at is not null or enqueue.delay_seconds is not null
                     then 'delayed' end,
        'queue_name', enqueue.queue_name,
        'priority', enqueue.priority,
        'dedup_key', enqueue.dedup_key,
        'max_retries', enqueue.max_retries,
        'timeout_seconds', enqueue.timeout_seconds,
        'run_at', enqueue.run_at,
        'delay_seconds', enqueue.delay_seconds,
        'secret_fields', enqueue.secret_fields,
        'concurrency_key', enqueue.concurrency_key))
        -- added after the strip, so that a null inside the payload stays
        || jsonb_build_object('payload', coalesce(enqueue.payload, 'null'::jsonb)))
    returning id
$$;

-- enqueue_workflow --
-- Hand a workflow over in the caller's transaction; returns the outbox row's id. The
-- arguments are the fields of POST /api/v1/workflows: `tasks` its JSON array of tasks
-- (key, depends_on and a create body's fields each), `on_failure` its object. Kept as
-- given: a null inside a task's payload stays.
create or replace function distasks.enqueue_workflow(
    name text,
    tasks jsonb,
    dedup_key text default null,
    on_failure jsonb default null
) returns uuid
language sql volatile
as $$
    insert into distasks.outbox (kind, request)
    values ('workflow', jsonb_strip_nulls(jsonb_build_object(
        'name', enqueue_workflow.name,
        'dedup_key', enqueue_workflow.dedup_key))
        -- added after the strip, which would reach into the tasks' payloads
        || jsonb_build_object('tasks', enqueue_workflow.tasks)
        || case when enqueue_workflow.on_failure is null then '{}'::jsonb
                else jsonb_build_object('on_failure', enqueue_workflow.on_failure) end)
    returning id
$$;

-- outbox_notify --
-- Wake the relays listening on channel distasks_outbox; once per statement, and
-- PostgreSQL delivers it only at the commit (a rolled-back insert wakes no one).
create or replace function distasks.outbox_notify() returns trigger
language plpgsql
as $$
begin
    perform pg_notify('distasks_outbox', '');
    return null;
end
$$;

drop trigger if exists outbox_notify on distasks.outbox;
create trigger outbox_notify after insert on distasks.outbox
    for each statement execute function distasks.outbox_notify();

-- Schedules (issue 11): cron definitions that create tasks, once per slot across every
-- daemon (architecture §9). A slot is claimed by the daemon that locks the schedule's row
-- (FOR UPDATE SKIP LOCKED) while its `next_fire_at` is due; the fire row's primary key
-- (schedule, slot) makes a second task for one slot impossible, whatever the clocks do.

CREATE TABLE schedules (
    id               uuid PRIMARY KEY,
    -- whose schedule it is (distasks.tenancy); names are unique per tenant
    tenant           text NOT NULL DEFAULT 'default',
    name             text NOT NULL,
    -- 5 fields (minute hour day month weekday) or 6 (seconds first), as cronsim reads them
    cron             text NOT NULL,
    -- IANA name; slots are wall-clock times there (DST as cronsim handles it)
    timezone         text NOT NULL DEFAULT 'UTC',
    -- the task template; queue_name as the tenant names it (qualified at each fire)
    task_name        text NOT NULL,
    handler          text,
    queue_name       text NOT NULL DEFAULT 'default',
    priority         integer NOT NULL DEFAULT 0,
    payload          jsonb NOT NULL DEFAULT '{}',
    max_retries      integer,
    timeout_s        float8,
    enabled          boolean NOT NULL DEFAULT true,
    -- after downtime: skip the missed slots, fire the latest one, or all of them (at most
    -- catch_up_max, the most recent)
    catch_up         text NOT NULL DEFAULT 'skip' CHECK (catch_up IN ('skip', 'latest', 'all')),
    catch_up_max     integer NOT NULL DEFAULT 10 CHECK (catch_up_max BETWEEN 1 AND 1000),
    -- each slot's task is delayed by a random 0..jitter_s seconds
    jitter_s         float8 NOT NULL DEFAULT 0 CHECK (jitter_s >= 0),
    starts_at        timestamptz,
    ends_at          timestamptz,
    -- a slot whose previous task is not finished yet is skipped (recorded, no task)
    skip_if_running  boolean NOT NULL DEFAULT false,
    -- 'api': made through the API; 'config': by the config file, upserted at each start
    owner            text NOT NULL DEFAULT 'api' CHECK (owner IN ('api', 'config')),
    -- the next slot not yet fired (UTC); NULL once past ends_at. Moved only forward, by
    -- the daemon holding the row's lock, or recomputed by a change of the definition.
    next_fire_at     timestamptz,
    last_fire_at     timestamptz,
    last_task_id     uuid,
    created_at       timestamptz NOT NULL,
    created_by       text NOT NULL,
    updated_at       timestamptz NOT NULL,
    UNIQUE (tenant, name)
);
-- The scheduler's claim: enabled schedules by due time.
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE enabled;

-- One row per slot the scheduler dealt with: the task made for it, or why none was.
CREATE TABLE schedule_fires (
    schedule_id  uuid NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    -- the slot (UTC)
    fire_at      timestamptz NOT NULL,
    -- when the scheduler made it
    fired_at     timestamptz NOT NULL,
    -- 'created': task_id is the slot's task; 'skipped_running': the previous task was not
    -- finished; 'refused': the template no longer passes (an unknown handler), see error
    outcome      text NOT NULL CHECK (outcome IN ('created', 'skipped_running', 'refused')),
    task_id      uuid,
    error        text,
    PRIMARY KEY (schedule_id, fire_at)
);

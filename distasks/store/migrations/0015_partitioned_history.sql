-- History that stays fast (architecture, "Partitioned history"): the tables that grow
-- with every attempt become partitioned by day, so that retention drops a day's table
-- instead of deleting its rows one by one, and every lookup reads one day's indexes.
--
--   task_runs       by `bucket`: the UTC day its task was created, read from the task's
--                   time-ordered id (UUIDv7, distasks.domain.ids). A run's own id is
--                   made with its task's time prefix, so the bucket of a run id is its
--                   task's too: a lookup by run id or by task id names its partition.
--                   All attempts of a task share a partition, so (task_id, attempt)
--                   stays unique across the table.
--   audit_log       by `at`.
--   schedule_fires  by `fire_at` (its primary key already holds it).
--
-- What was there before becomes each table's first partition ("legacy"): task_runs'
-- holds bucket 0 (ids made before this migration are random, version 4, and read as
-- day 0); audit_log's and schedule_fires' hold everything before tomorrow (UTC).
-- Partitions of the coming days are created ahead by every daemon
-- (distasks_ensure_partitions, called at start and hourly); the cleaner drops old ones.
--
-- Applying this to a running deployment: the renames and attaches are catalog changes,
-- but three steps read the old tables under the migration's lock: the unique indexes
-- the new keys need, and the checks that prove the old rows fit their partition. On a
-- large deployment, run beforehand, outside a transaction, and the migration skips them:
--   ALTER TABLE task_runs ADD COLUMN IF NOT EXISTS bucket integer NOT NULL DEFAULT 0;
--   CREATE UNIQUE INDEX CONCURRENTLY task_runs_legacy_id_bucket ON task_runs (id, bucket);
--   CREATE UNIQUE INDEX CONCURRENTLY task_runs_legacy_attempt_bucket
--       ON task_runs (task_id, attempt, bucket);
--   ALTER TABLE task_runs ADD CONSTRAINT task_runs_legacy_bucket CHECK (bucket < 1) NOT VALID;
--   ALTER TABLE task_runs VALIDATE CONSTRAINT task_runs_legacy_bucket;
-- and, once this release's functions exist (the first statements below, which can be
-- run alone beforehand), the same for task_runs_bucket_check as it is defined below.
--   CREATE UNIQUE INDEX CONCURRENTLY audit_log_legacy_id_at ON audit_log (id, at);
-- (docs/operations.md, "Upgrading to partitioned history", says the same.)

-- The day of a time-ordered id: its first 48 bits are milliseconds since 1970 (RFC 9562,
-- version 7). Any other id (version 4, from before) is day 0. IMMUTABLE: a condition
-- `bucket = distasks_bucket($1)` is worked out before the plan runs, so it prunes. Not
-- STRICT, so that PostgreSQL inlines it (a CASE is not strict): called as a function,
-- it cost a statement about 80 µs more than a plain parameter (bench/README.md).
CREATE OR REPLACE FUNCTION distasks_bucket(id uuid) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN get_byte(uuid_send(id), 6) >> 4 = 7
                THEN (('x' || substr(id::text, 1, 8) || substr(id::text, 10, 4))::bit(48)::bigint
                      / 86400000)::integer
                ELSE 0 END
$$;

-- The days of several ids, each once: `bucket = ANY(distasks_buckets($1))`.
CREATE OR REPLACE FUNCTION distasks_buckets(ids uuid[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(DISTINCT distasks_bucket(i)), '{}') FROM unnest(ids) AS i
$$;

-- A new run id for a task: its task's 48-bit time and version 7, then fresh random bits
-- (so its bucket is its task's); a random version 4 id for a task from before.
CREATE OR REPLACE FUNCTION distasks_run_id(task_id uuid) RETURNS uuid
LANGUAGE sql VOLATILE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN get_byte(uuid_send(task_id), 6) >> 4 = 7
                THEN encode(substring(uuid_send(task_id) FROM 1 FOR 6)
                            || set_byte(substring(r.b FROM 7), 0, (get_byte(r.b, 6) & 15) | 112),
                            'hex')::uuid
                ELSE gen_random_uuid() END
    FROM (SELECT uuid_send(gen_random_uuid()) AS b) AS r
$$;

-- A fresh time-ordered id for a task made at `at` (for scripts that write history, such
-- as tests and benchmarks; the daemon makes its ids itself: distasks.domain.ids).
CREATE OR REPLACE FUNCTION distasks_task_id(at timestamptz) RETURNS uuid
LANGUAGE sql VOLATILE STRICT PARALLEL SAFE AS $$
    SELECT encode(substring(int8send(floor(extract(epoch FROM at) * 1000)::bigint) FROM 3)
                  || set_byte(substring(r.b FROM 7), 0, (get_byte(r.b, 6) & 15) | 112),
                  'hex')::uuid
    FROM (SELECT uuid_send(gen_random_uuid()) AS b) AS r
$$;

-- Where each partitioned table's dated partitions start (the legacy partition holds
-- what is before), for distasks_ensure_partitions and the cleaner.
CREATE TABLE history_partitioning (
    parent     text PRIMARY KEY,
    -- the first day (UTC) a dated partition may cover
    first_day  date NOT NULL
);

-- The three tables at once, in one order, and never waiting long behind a reader: a
-- daemon whose start finds them busy gives up this try (the whole migration rolls back)
-- and tries again after a pause, while the fleet goes on.
SET LOCAL lock_timeout = '5s';
LOCK TABLE task_runs, audit_log, schedule_fires IN ACCESS EXCLUSIVE MODE;

-- ---------------------------------------------------------------- task_runs
ALTER TABLE task_runs ADD COLUMN IF NOT EXISTS bucket integer NOT NULL DEFAULT 0;
ALTER TABLE task_runs RENAME TO task_runs_legacy;
ALTER TABLE task_runs_legacy RENAME CONSTRAINT task_runs_pkey TO task_runs_legacy_pkey_v4;
ALTER TABLE task_runs_legacy RENAME CONSTRAINT task_runs_task_id_attempt_key
    TO task_runs_legacy_attempt_v4;
ALTER TABLE task_runs_legacy RENAME CONSTRAINT task_runs_task_id_fkey TO task_runs_legacy_task;
ALTER INDEX task_runs_running_lease RENAME TO task_runs_legacy_running_lease;
ALTER INDEX task_runs_undispatched RENAME TO task_runs_legacy_undispatched;
ALTER INDEX task_runs_unfinished RENAME TO task_runs_legacy_unfinished;
CREATE UNIQUE INDEX IF NOT EXISTS task_runs_legacy_id_bucket ON task_runs_legacy (id, bucket);
CREATE UNIQUE INDEX IF NOT EXISTS task_runs_legacy_attempt_bucket
    ON task_runs_legacy (task_id, attempt, bucket);
-- The partition's keys must be constraints, on the indexes just made (no rebuild).
ALTER TABLE task_runs_legacy DROP CONSTRAINT task_runs_legacy_pkey_v4;
ALTER TABLE task_runs_legacy DROP CONSTRAINT task_runs_legacy_attempt_v4;
ALTER TABLE task_runs_legacy ADD CONSTRAINT task_runs_legacy_id_bucket
    PRIMARY KEY USING INDEX task_runs_legacy_id_bucket;
ALTER TABLE task_runs_legacy ADD CONSTRAINT task_runs_legacy_attempt_bucket
    UNIQUE USING INDEX task_runs_legacy_attempt_bucket;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'task_runs_legacy_bucket') THEN
        ALTER TABLE task_runs_legacy ADD CONSTRAINT task_runs_legacy_bucket CHECK (bucket < 1);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'task_runs_bucket_check'
                   AND conrelid = 'task_runs_legacy'::regclass) THEN
        ALTER TABLE task_runs_legacy ADD CONSTRAINT task_runs_bucket_check
            CHECK (bucket = distasks_bucket(task_id) AND bucket = distasks_bucket(id));
    END IF;
END $$;

CREATE TABLE task_runs (
    id                uuid NOT NULL,
    task_id           uuid NOT NULL,
    attempt           integer NOT NULL CONSTRAINT task_runs_attempt_check CHECK (attempt >= 1),
    status            text NOT NULL DEFAULT 'queued' CONSTRAINT task_runs_status_check
                      CHECK (status IN ('queued', 'running', 'succeeded', 'retrying',
                                        'failed', 'interrupted', 'cancelled')),
    worker_id         text,
    lease_expires_at  timestamptz,
    available_at      timestamptz NOT NULL DEFAULT now(),
    next_retry_at     timestamptz,
    error             text,
    result            jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    dispatched_at     timestamptz,
    -- distasks_bucket(task_id), written by every insert. The default keeps a daemon of
    -- the release before working on its own tasks while this is applied: its ids are
    -- random, day 0, the legacy partition. An insert of a time-ordered id that forgets
    -- the bucket (an old daemon retrying a new task, too) fails on the check instead
    -- of landing in the wrong day.
    bucket            integer NOT NULL DEFAULT 0 CONSTRAINT task_runs_bucket_check
                      CHECK (bucket = distasks_bucket(task_id) AND bucket = distasks_bucket(id)),
    PRIMARY KEY (id, bucket),
    UNIQUE (task_id, attempt, bucket)
    -- No foreign key to tasks: a day's runs leave with their partition, after the
    -- cleaner removed the day's tasks (the legacy partition keeps its cascading key).
) PARTITION BY RANGE (bucket);
CREATE INDEX task_runs_running_lease ON task_runs (lease_expires_at) WHERE status = 'running';
CREATE INDEX task_runs_undispatched ON task_runs (created_at)
    WHERE status = 'queued' AND dispatched_at IS NULL;
CREATE INDEX task_runs_unfinished ON task_runs (status, lease_expires_at)
    WHERE status IN ('queued', 'running');
ALTER TABLE task_runs ATTACH PARTITION task_runs_legacy FOR VALUES FROM (MINVALUE) TO (1);
-- Any day but 0 may have its partition (a history written by hand, in tests, too).
INSERT INTO history_partitioning VALUES ('task_runs', date '1970-01-02');

-- ---------------------------------------------------------------- audit_log
ALTER TABLE audit_log RENAME TO audit_log_legacy;
ALTER TABLE audit_log_legacy RENAME CONSTRAINT audit_log_pkey TO audit_log_legacy_pkey_id;
ALTER INDEX audit_log_at RENAME TO audit_log_legacy_at;
ALTER INDEX audit_log_id_desc RENAME TO audit_log_legacy_id_desc;
CREATE UNIQUE INDEX IF NOT EXISTS audit_log_legacy_id_at ON audit_log_legacy (id, at);
ALTER TABLE audit_log_legacy DROP CONSTRAINT audit_log_legacy_pkey_id;
ALTER TABLE audit_log_legacy ADD CONSTRAINT audit_log_legacy_id_at
    PRIMARY KEY USING INDEX audit_log_legacy_id_at;

CREATE TABLE audit_log (
    id          bigint NOT NULL DEFAULT nextval('audit_log_id_seq'),
    at          timestamptz NOT NULL,
    actor       text NOT NULL,
    action      text NOT NULL,
    queue_name  text,
    detail      jsonb NOT NULL DEFAULT '{}',
    tenant      text NOT NULL DEFAULT 'default',
    address     text,
    request_id  text,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
ALTER SEQUENCE audit_log_id_seq OWNED BY audit_log.id;
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_id_desc ON audit_log (id DESC);

-- ---------------------------------------------------------------- schedule_fires
ALTER TABLE schedule_fires RENAME TO schedule_fires_legacy;
ALTER TABLE schedule_fires_legacy RENAME CONSTRAINT schedule_fires_pkey
    TO schedule_fires_legacy_pkey;
ALTER TABLE schedule_fires_legacy RENAME CONSTRAINT schedule_fires_schedule_id_fkey
    TO schedule_fires_legacy_schedule;
ALTER INDEX schedule_fires_fired_at RENAME TO schedule_fires_legacy_fired_at;

CREATE TABLE schedule_fires (
    schedule_id  uuid NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    -- the slot (UTC)
    fire_at      timestamptz NOT NULL,
    -- when the scheduler made it
    fired_at     timestamptz NOT NULL,
    outcome      text NOT NULL CONSTRAINT schedule_fires_outcome_check CHECK (outcome IN ('created', 'skipped_running', 'refused')),
    task_id      uuid,
    error        text,
    PRIMARY KEY (schedule_id, fire_at)
) PARTITION BY RANGE (fire_at);
CREATE INDEX schedule_fires_fired_at ON schedule_fires (fired_at);

-- Both legacy partitions end where the dated ones start: tomorrow, 00:00 UTC.
DO $$
DECLARE
    first_day date := (now() AT TIME ZONE 'UTC')::date + 1;
    upper_at  timestamptz := first_day::timestamp AT TIME ZONE 'UTC';
BEGIN
    EXECUTE format('ALTER TABLE audit_log_legacy ADD CONSTRAINT audit_log_legacy_at_check'
                   ' CHECK (at < %L)', upper_at);
    EXECUTE format('ALTER TABLE audit_log ATTACH PARTITION audit_log_legacy'
                   ' FOR VALUES FROM (MINVALUE) TO (%L)', upper_at);
    EXECUTE format('ALTER TABLE schedule_fires_legacy ADD CONSTRAINT'
                   ' schedule_fires_legacy_fire_at_check CHECK (fire_at < %L)', upper_at);
    EXECUTE format('ALTER TABLE schedule_fires ATTACH PARTITION schedule_fires_legacy'
                   ' FOR VALUES FROM (MINVALUE) TO (%L)', upper_at);
    INSERT INTO history_partitioning VALUES ('audit_log', first_day),
                                            ('schedule_fires', first_day);
END $$;

-- Each table's default partition takes a row whose day has no partition: a slot fired
-- for a day before the partitions made ahead (a fleet down for long), a clock far off.
-- Nothing is refused for want of a partition; the cleaner removes old rows there one
-- by one, and making a day's partition moves that day's rows out of it first.
CREATE TABLE task_runs_default PARTITION OF task_runs DEFAULT;
CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;
CREATE TABLE schedule_fires_default PARTITION OF schedule_fires DEFAULT;

-- Creates the missing dated partitions of each table for the UTC days from `from_day`
-- to `to_day` (those from its first_day on); returns how many it created. Each is made
-- as a plain table, given the rows of its day that the default partition holds, and
-- attached. One that cannot be (a row of its day written to the default partition
-- meanwhile) is left for the next call, with a warning; the others are made.
-- Callers serialise on an advisory lock (distasks.store.partitions).
CREATE OR REPLACE FUNCTION distasks_ensure_partitions(from_day date, to_day date,
                                                      OUT made integer, OUT failed integer)
LANGUAGE plpgsql AS $$
DECLARE
    p      record;
    d      date;
    name   text;
    key    text;
    lo     text;
    hi     text;
BEGIN
    made := 0;
    failed := 0;
    FOR p IN SELECT parent, first_day FROM history_partitioning ORDER BY parent LOOP
        key := CASE p.parent WHEN 'task_runs' THEN 'bucket' WHEN 'audit_log' THEN 'at'
                             ELSE 'fire_at' END;
        d := greatest(from_day, p.first_day);
        WHILE d <= to_day LOOP
            name := p.parent || '_d' || to_char(d, 'YYYYMMDD');
            IF to_regclass(name) IS NULL THEN
                IF p.parent = 'task_runs' THEN
                    lo := (d - date '1970-01-01')::text;
                    hi := (d + 1 - date '1970-01-01')::text;
                ELSE
                    lo := quote_literal(d::timestamp AT TIME ZONE 'UTC');
                    hi := quote_literal((d + 1)::timestamp AT TIME ZONE 'UTC');
                END IF;
                BEGIN
                    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                                   name, p.parent);
                    EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= %s AND %I < %s'
                                   ' RETURNING *) INSERT INTO %I SELECT * FROM moved',
                                   p.parent || '_default', key, lo, key, hi, name);
                    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                                   p.parent, name, lo, hi);
                    made := made + 1;
                EXCEPTION WHEN others THEN
                    RAISE WARNING 'partition % not made: %', name, SQLERRM;
                    failed := failed + 1;
                END;
            END IF;
            d := d + 1;
        END LOOP;
    END LOOP;
END $$;

SELECT * FROM distasks_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1,
                                         (now() AT TIME ZONE 'UTC')::date + 7);

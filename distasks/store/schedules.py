"""Schedules: their definitions (API and config file), and the fire transaction that
turns a due slot into a task exactly once (architecture §9)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Json

from distasks.domain.model import Actor, NewTask
from distasks.store.base import StoreBase, dumps, query, record_audit

# The one statement that inserts tasks with their first runs, shared with API creates so
# that a scheduled task is the same as any other (store/tasks.py).
from distasks.store.tasks import CREATE_TASKS, create_tasks_input


@dataclass(frozen=True, slots=True)
class Schedule:
    """A schedule as stored: its definition, then the scheduler's state."""

    id: uuid.UUID
    tenant: str
    name: str
    cron: str
    timezone: str
    task_name: str
    handler: str | None
    #: as the tenant names it; qualified (distasks.domain.tenancy) when a task is made
    queue_name: str
    priority: int
    payload: Any
    max_retries: int | None
    timeout_s: float | None
    enabled: bool
    catch_up: str
    catch_up_max: int
    jitter_s: float
    starts_at: datetime | None
    ends_at: datetime | None
    skip_if_running: bool
    #: "api" or "config"
    owner: str
    next_fire_at: datetime | None
    last_fire_at: datetime | None = None
    last_task_id: uuid.UUID | None = None
    created_at: datetime | None = None
    created_by: str = ""
    updated_at: datetime | None = None
    #: payload keys shown as "[secret]" in the schedule and its tasks
    secret_fields: tuple[str, ...] = ()

    def definition(self) -> dict[str, Any]:
        """What a client defines (no state, no ids): for audit rows and comparisons."""
        return {f: getattr(self, f) for f in DEFINITION_FIELDS}

    def timing(self) -> tuple[Any, ...]:
        """What decides the slots: a change of it recomputes next_fire_at."""
        return (self.cron, self.timezone, self.starts_at, self.ends_at)


DEFINITION_FIELDS = ("cron", "timezone", "task_name", "handler", "queue_name", "priority",
                     "payload", "max_retries", "timeout_s", "enabled", "catch_up",
                     "catch_up_max", "jitter_s", "starts_at", "ends_at", "skip_if_running",
                     "secret_fields")
_COLUMNS = tuple(f.name for f in dataclasses.fields(Schedule))


@dataclass(frozen=True, slots=True)
class Slot:
    """One slot a pass deals with: the task to make for it, or why there is none."""

    fire_at: datetime
    task: NewTask | None
    #: "created", "skipped_running" or "refused"
    outcome: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Firing:
    """What the scheduler decided for one due schedule."""

    slots: list[Slot]
    missed: int
    next_fire_at: datetime | None


@dataclass(frozen=True, slots=True)
class Fired:
    """What a pass did for one schedule (slots already fired by someone else left out)."""

    schedule: Schedule
    slots: list[Slot]
    missed: int


@dataclass(frozen=True, slots=True)
class Fire:
    fire_at: datetime
    fired_at: datetime
    outcome: str
    task_id: uuid.UUID | None
    error: str | None


# Due schedules, oldest slot first. SKIP LOCKED: a schedule another daemon is firing is
# passed over, never waited for; that daemon moves its next_fire_at past the slots. A
# template without a handler runs the firing daemon's default handler.
CLAIM_DUE = f"""
SELECT {", ".join(_COLUMNS)} FROM schedules
WHERE enabled AND next_fire_at <= %(now)s
  AND coalesce(handler, %(default_handler)s) = ANY(%(handlers)s)
ORDER BY next_fire_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

# One row per slot; a slot already on record (fired before a clock step back, say) is
# not inserted again, and its task is not made.
INSERT_FIRES = """
INSERT INTO schedule_fires (schedule_id, fire_at, fired_at, outcome, task_id, error)
SELECT %(schedule_id)s, f.fire_at, %(now)s, f.outcome, f.task_id, f.error
FROM unnest(%(fire_at)s::timestamptz[], %(outcome)s::text[], %(task_id)s::uuid[],
            %(error)s::text[]) AS f(fire_at, outcome, task_id, error)
ON CONFLICT (schedule_id, fire_at) DO NOTHING
RETURNING fire_at
"""

ADVANCE = """
UPDATE schedules SET next_fire_at = %(next)s,
    last_fire_at = coalesce(%(last_fire_at)s, last_fire_at),
    last_task_id = coalesce(%(last_task_id)s, last_task_id)
WHERE id = %(id)s
"""

INSERT_SCHEDULE = f"""
INSERT INTO schedules ({", ".join(_COLUMNS)})
VALUES ({", ".join(f"%({c})s" for c in _COLUMNS)})
ON CONFLICT (tenant, name) DO NOTHING
RETURNING {", ".join(_COLUMNS)}
"""

SAVE_SCHEDULE = f"""
UPDATE schedules SET {", ".join(f"{c} = %({c})s" for c in _COLUMNS if c != "id")}
WHERE id = %(id)s
RETURNING {", ".join(_COLUMNS)}
"""

# Serializes config upserts of daemons starting together (any constant key will do).
# The lock's key is a name every daemon version shares, not a module path: keep it.
CONFIG_LOCK = "SELECT pg_advisory_xact_lock(hashtext('distasks.schedules.config'))"


def _params(s: Schedule) -> dict[str, Any]:
    params = {c: getattr(s, c) for c in _COLUMNS}
    params["payload"] = Json(s.payload, dumps)
    params["secret_fields"] = list(s.secret_fields)
    return params


def _schedule(row: dict[str, Any]) -> Schedule:
    return Schedule(**{**row, "secret_fields": tuple(row.get("secret_fields") or ())})


class ScheduleQueries(StoreBase):
    @query
    async def create_schedule(self, s: Schedule, *, actor: Actor, now: datetime) -> Schedule | None:
        """Insert `s`; None if its tenant already has a schedule of that name."""
        async with self._pool.transaction() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(INSERT_SCHEDULE, _params(s))
            row = await cur.fetchone()
            if row is not None:
                await _audit(conn, "schedule_create", s, actor=actor, now=now)
        return _schedule(row) if row else None

    @query
    async def get_schedule(self, tenant: str, name: str) -> Schedule | None:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"SELECT {', '.join(_COLUMNS)} FROM schedules"
                              " WHERE tenant = %s AND name = %s", (tenant, name))
            row = await cur.fetchone()
        return _schedule(row) if row else None

    @query
    async def schedule_count(self, tenant: str) -> int:
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM schedules WHERE tenant = %s",
                                     (tenant,))
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    @query
    async def late_schedules(self, tenant: str, *, due_before: datetime,
                             limit: int) -> list[tuple[str, datetime]]:
        """(name, next_fire_at) of `tenant`'s enabled schedules whose next slot was due
        before `due_before` and has not fired: a scheduler that is not running, or a
        handler no daemon has. Oldest first, by the partial index schedules_due."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT name, next_fire_at FROM schedules WHERE enabled"
                " AND next_fire_at < %(before)s AND tenant = %(tenant)s"
                " ORDER BY next_fire_at LIMIT %(limit)s",
                {"before": due_before, "tenant": tenant, "limit": limit})
            return [(name, at) for name, at in await cur.fetchall()]

    @query
    async def list_schedules(self, tenant: str | None = None, *, after: str | None = None,
                             limit: int | None = None,
                             with_payload: bool = True) -> list[Schedule]:
        """A tenant's schedules (None: every tenant's), by name, after the name `after`,
        at most `limit`; without their payloads (None) unless `with_payload`."""
        columns = [c if c != "payload" or with_payload else "NULL::json AS payload"
                   for c in _COLUMNS]
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"SELECT {', '.join(columns)} FROM schedules"
                              " WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s)"
                              " AND (%(after)s::text IS NULL OR name > %(after)s)"
                              " ORDER BY tenant, name LIMIT %(limit)s",
                              {"tenant": tenant, "after": after, "limit": limit})
            return [_schedule(r) for r in await cur.fetchall()]

    @query
    async def update_schedule(self, tenant: str, name: str, change: Callable[[Schedule], Schedule],
                              *, actor: Actor, now: datetime) -> Schedule | None:
        """Apply `change` to the schedule under its row lock (so that no pass fires it
        meanwhile); None if there is no such schedule. An exception from `change` leaves
        it as it was."""
        async with self._pool.transaction() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"SELECT {', '.join(_COLUMNS)} FROM schedules"
                              " WHERE tenant = %s AND name = %s FOR UPDATE", (tenant, name))
            row = await cur.fetchone()
            if row is None:
                return None
            new = change(_schedule(row))
            await cur.execute(SAVE_SCHEDULE, _params(dataclasses.replace(new, updated_at=now)))
            saved = await cur.fetchone()
            assert saved is not None
            await _audit(conn, "schedule_update", new, actor=actor, now=now)
        return _schedule(saved)

    @query
    async def delete_schedule(self, tenant: str, name: str, *, owner: str | None = None,
                              actor: Actor, now: datetime) -> Schedule | None:
        """Delete it and its fire records (its tasks stay); None if there is no such
        schedule (or, with `owner`, none owned so)."""
        async with self._pool.transaction() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"DELETE FROM schedules WHERE tenant = %s AND name = %s"
                              f" AND (%s::text IS NULL OR owner = %s)"
                              f" RETURNING {', '.join(_COLUMNS)}", (tenant, name, owner, owner))
            row = await cur.fetchone()
            if row is None:
                return None
            s = _schedule(row)
            await _audit(conn, "schedule_delete", s, actor=actor, now=now)
        return s

    @query
    async def schedule_times(self) -> list[tuple[str, str, datetime]]:
        """(tenant, name, next_fire_at) of every enabled schedule that has a next slot,
        by tenant and name (for the gauges)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT tenant, name, next_fire_at FROM schedules"
                " WHERE enabled AND next_fire_at IS NOT NULL ORDER BY tenant, name")
            return [(r[0], r[1], r[2]) for r in await cur.fetchall()]

    @query
    async def recent_fires(self, schedule_id: uuid.UUID, *, limit: int) -> list[Fire]:
        """The schedule's latest fire records, newest first."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT fire_at, fired_at, outcome, task_id, error FROM schedule_fires"
                " WHERE schedule_id = %s ORDER BY fire_at DESC LIMIT %s", (schedule_id, limit))
            return [Fire(*r) for r in await cur.fetchall()]

    @query
    async def upsert_configured(self, wanted: Sequence[Schedule],
                                rearm: Callable[[Schedule], Schedule], *, actor: Actor,
                                now: datetime) -> tuple[int, int, int]:
        """Make the config-owned schedules what the config file says: insert the new ones,
        update the changed ones (their `enabled` stays as the API left it; `rearm`
        recomputes next_fire_at when their timing changed), delete those the file no
        longer names. A schedule of the same name made through the API is taken over.
        Returns (created, updated, deleted)."""
        created = updated = deleted = 0
        async with self._pool.transaction() as conn:
            await conn.execute(CONFIG_LOCK)
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"SELECT {', '.join(_COLUMNS)} FROM schedules"
                              " WHERE owner = 'config' OR (tenant, name) IN"
                              " (SELECT * FROM unnest(%s::text[], %s::text[])) FOR UPDATE",
                              ([s.tenant for s in wanted], [s.name for s in wanted]))
            existing = {(r["tenant"], r["name"]): _schedule(r) for r in await cur.fetchall()}
            for s in wanted:
                old = existing.pop((s.tenant, s.name), None)
                if old is None:
                    await cur.execute(INSERT_SCHEDULE, _params(s))
                    await _audit(conn, "schedule_create", s, actor=actor, now=now)
                    created += 1
                    continue
                new = dataclasses.replace(s, id=old.id, enabled=old.enabled,
                                          next_fire_at=old.next_fire_at,
                                          last_fire_at=old.last_fire_at,
                                          last_task_id=old.last_task_id,
                                          created_at=old.created_at, created_by=old.created_by)
                if new.definition() == old.definition() and old.owner == "config":
                    continue
                if new.timing() != old.timing():
                    new = rearm(new)
                await cur.execute(SAVE_SCHEDULE, _params(new))
                await _audit(conn, "schedule_update", new, actor=actor, now=now)
                updated += 1
            for old in existing.values():
                await cur.execute("DELETE FROM schedules WHERE id = %s", (old.id,))
                await _audit(conn, "schedule_delete", old, actor=actor, now=now)
                deleted += 1
        return created, updated, deleted

    @query
    async def due_schedule_tenants(self, *, now: datetime) -> list[str]:
        """The tenants that have a schedule due at `now` (for their quotas)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT DISTINCT tenant FROM schedules"
                                     " WHERE enabled AND next_fire_at <= %s", (now,))
            return [r[0] for r in await cur.fetchall()]

    @query
    async def fire_due(self, *, now: datetime, limit: int, handlers: Sequence[str],
                       default_handler: str,
                       decide: Callable[[Schedule, bool], Firing]) -> list[Fired]:
        """One transaction: lock up to `limit` due schedules whose handler (or
        `default_handler`, for a template without one) is one of `handlers` (skipping
        those another daemon holds), ask `decide(schedule, previous_task_unfinished)` what to fire,
        record each slot once, insert its task and first run (queued, not yet in Redis),
        and move next_fire_at on. Either all of it commits or none: a slot is never
        recorded without its task, nor a task made twice for one slot."""
        out = []
        async with self._pool.transaction() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(CLAIM_DUE, {"now": now, "limit": limit,
                                          "handlers": list(handlers),
                                          "default_handler": default_handler})
            schedules = [_schedule(r) for r in await cur.fetchall()]
            if not schedules:
                return []
            last_ids = [s.last_task_id for s in schedules if s.last_task_id is not None]
            unfinished: set[uuid.UUID] = set()
            if last_ids:
                await cur.execute("SELECT id FROM tasks WHERE id = ANY(%s) AND status = 'queued'",
                                  (last_ids,))
                unfinished = {r["id"] for r in await cur.fetchall()}
            for s in schedules:
                firing = decide(s, s.last_task_id in unfinished)
                fired = await _record(conn, s, firing, now=now)
                out.append(Fired(s, fired, firing.missed))
        return out


async def _record(conn: Any, s: Schedule, firing: Firing, *, now: datetime) -> list[Slot]:
    """Record `firing`'s slots that are not on record yet, insert their tasks, advance."""
    fired: list[Slot] = []
    if firing.slots:
        cur = await conn.execute(INSERT_FIRES, {
            "schedule_id": s.id, "now": now,
            "fire_at": [f.fire_at for f in firing.slots],
            "outcome": [f.outcome for f in firing.slots],
            "task_id": [f.task.id if f.task else None for f in firing.slots],
            "error": [f.error for f in firing.slots]})
        new = {r[0] for r in await cur.fetchall()}
        fired = [f for f in firing.slots if f.fire_at in new]
        tasks = [f.task for f in fired if f.task is not None]
        if tasks:
            await conn.execute(CREATE_TASKS, {"input": create_tasks_input(tasks, ()), "worker_id": "",
                                              "lease_until": None})
    made = [f for f in fired if f.task is not None]
    await conn.execute(ADVANCE, {
        "id": s.id, "next": firing.next_fire_at,
        "last_fire_at": fired[-1].fire_at if fired else None,
        "last_task_id": made[-1].task.id if made and made[-1].task else None})
    return fired


async def _audit(conn: Any, action: str, s: Schedule, *, actor: Actor, now: datetime) -> None:
    # Never the payload: audit rows hold no payloads (architecture §7).
    detail = {"schedule": s.name, "tenant": s.tenant, "owner": s.owner,
              **{k: (v.isoformat() if isinstance(v, datetime) else v)
                 for k, v in s.definition().items() if k != "payload"}}
    await record_audit(conn, at=now, actor=actor, action=action, detail=detail)

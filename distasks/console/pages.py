"""The console's pages that read: overview, tasks, a task, queues, DLQ, schedules, a
schedule, workers, audit. Each is a bounded number of queries (the ones the API's routes
make), and every list a keyset page."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from quart import current_app, render_template, request

from distasks.api import cursor
from distasks.api.parse import queue_name, schedule_name
from distasks.api.services import Services, services, tenant, tenant_queue
from distasks.console import charts
from distasks.console.blueprint import page
from distasks.console.day import (
    DAY_CACHE,
    DAY_HOURS,
    FILL_HOURS_PER_VIEW,
    LATENCY_SAMPLE_PER_HOUR,
    DayCache,
)
from distasks.daemon.queue_state import QueueState, queue_states
from distasks.domain import cron, times
from distasks.domain.errors import InvalidInput, NotFound
from distasks.domain.model import TERMINAL_TASK_STATUSES, JsonText, TaskStatus
from distasks.domain.secret_fields import redacted
from distasks.domain.tenancy import shown, tenant_of
from distasks.store import DlqFilter, TaskFilter
from distasks.store.queues import QueueRecord

# Rows on one page of a list.
PAGE_ROWS = 50
# Past this many matching tasks the Tasks page says "more than" instead of counting on.
COUNT_CAP = 10_000
# Longest the Tasks page spends counting (a filter no index serves reads the whole
# table); past it the page says it did not count.
COUNT_BUDGET_MS = 50
# Characters of a payload, result or error shown before the rest is cut (said so).
SHOWN_CHARS = 64 * 1024
# The wait-to-start chart reads the runs of this many of the latest finished tasks.
LATENCY_SAMPLE_TASKS = 2_000
# A schedule whose slot is this late without a fire is named on the overview.
LATE_SCHEDULE_S = 120
# Most late schedules named there.
LATE_SCHEDULES_SHOWN = 5
# Seconds between a live page's refreshes (console.js; paused while the tab is hidden).
REFRESH_S = 5
# Longest text filter taken from a form.
MAX_FILTER_CHARS = 256
# Longest payload search (JSON) taken from a form.
MAX_SEARCH_CHARS = 4096
# A payload search looks at this many of the newest tasks matching the other filters.
PAYLOAD_WINDOW = 25_000
# The filters a page carries over to its next page's link (no other query argument).
KEPT_ARGS = frozenset({"status", "queue", "name", "handler", "dedup_key", "created_after",
                       "payload", "state",
                       "created_before", "error", "failed_since", "actor", "action", "since"})


@dataclass(frozen=True, slots=True)
class QueueRow:
    name: str
    record: QueueRecord | None
    state: QueueState


async def queue_rows(s: Services, now: datetime) -> list[QueueRow]:
    """The tenant's queues with their state, as GET /api/v1/queues reads them."""
    mine = tenant()
    records = {r.name: r for r in await s.store.queues(now=now) if tenant_of(r.name) == mine}
    served = [q for q in (s.tunables.queues if s.tunables else s.config.worker.queues)
              if tenant_of(q) == mine]
    states = await queue_states(s.store, s.broker, sorted(set(records) | set(served)), now=now)
    return [QueueRow(shown(name), records.get(name), st) for name, st in states.items()]


async def workers(s: Services, now: datetime) -> list[dict[str, Any]]:
    """Daemons live and recently dead, each with the tenant's runs on it."""
    listed = await s.store.list_workers(
        since=now - timedelta(seconds=s.config.recovery.workers_listed_s))
    alive_after = now - timedelta(seconds=2 * s.config.worker.lease_s)
    mine = tenant()
    return [{**w, "alive": w["stopped_at"] is None and w["heartbeat_at"] >= alive_after,
             "heartbeat_age_s": (now - w["heartbeat_at"]).total_seconds(),
             "queues": [shown(q) for q in w["queues"] if tenant_of(q) == mine],
             "running": [{**r, "queue_name": shown(r["queue_name"])} for r in runs
                         if tenant_of(r["queue_name"]) == mine]}
            for w, runs in listed]


@page("/", "queues:read")
async def overview() -> str:
    s = services()
    now = times.utc(s.clock())
    rows = await queue_rows(s, now)
    fleet = await workers(s, now)
    finished = await s.store.finished_by_minute(tenant(), since=now - timedelta(hours=1))
    chart = charts.finished_bars(finished, now=now, slots=60)
    waits = await s.store.start_latency_by_minute(tenant(), since=now - timedelta(hours=1),
                                                  tasks=LATENCY_SAMPLE_TASKS)
    latency = charts.latency_bars(waits, now=now, slots=60)
    cache: DayCache = current_app.extensions[DAY_CACHE]
    day = await cache.day(s.store, tenant(), now=now)
    day_chart = charts.finished_bars(day.finished, now=now, slots=DAY_HOURS, step=charts.HOUR)
    day_latency = charts.latency_bars(day.waits, now=now, slots=DAY_HOURS, step=charts.HOUR)
    attention = [f"queue {r.name} has {r.state.dlq} dead-lettered tasks" for r in rows
                 if r.state.dlq] + [
        f"queue {r.name}: its oldest ready task waits {r.state.oldest_ready_age_s:.0f}s"
        for r in rows if (r.state.oldest_ready_age_s or 0) > 60 and not r.state.paused]
    late = await s.store.late_schedules(tenant(), limit=LATE_SCHEDULES_SHOWN,
                                        due_before=now - timedelta(seconds=LATE_SCHEDULE_S))
    attention += [f"schedule {name} has not fired the slot due at {at:%Y-%m-%d %H:%M} UTC"
                  for name, at in late]
    return await render_template("console/overview.html", rows=rows, chart=chart,
                                 latency=latency, seconds=charts.seconds,
                                 day_chart=day_chart, day_latency=day_latency,
                                 day_uncounted=day.uncounted, day_fill=FILL_HOURS_PER_VIEW,
                                 day_sample=LATENCY_SAMPLE_PER_HOUR,
                                 latency_sample=LATENCY_SAMPLE_TASKS,
                                 alive=sum(1 for w in fleet if w["alive"]), fleet=len(fleet),
                                 attention=attention, refresh_s=REFRESH_S)


def _kept() -> dict[str, str]:
    return {k: v for k, v in request.args.items() if k in KEPT_ARGS and v}


def _text(name: str) -> str | None:
    value = (request.args.get(name) or "").strip()
    if len(value) > MAX_FILTER_CHARS:
        raise InvalidInput(f"{name}: at most {MAX_FILTER_CHARS} characters", field=name)
    return value or None


def _instant(name: str) -> datetime | None:
    """A time from a form (datetime-local, read as UTC, or RFC 3339)."""
    value = _text(name)
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{name}: {value!r} is no time (2026-01-31T12:00)",
                           field=name) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def task_filter() -> TaskFilter:
    status = _text("status")
    if status is not None and status not in {x.value for x in TaskStatus}:
        raise InvalidInput(f"status {status!r} is not a task status", field="status")
    queue = _text("queue")
    contains = None
    search = (request.args.get("payload") or "").strip()
    if search:
        if len(search) > MAX_SEARCH_CHARS:
            raise InvalidInput(f"payload: at most {MAX_SEARCH_CHARS} characters",
                               field="payload")
        try:
            wanted = json.loads(search)
        except ValueError:
            raise InvalidInput('payload: a JSON object, such as {"customer": "c42"}',
                               field="payload") from None
        if not isinstance(wanted, dict):
            raise InvalidInput('payload: a JSON object, such as {"customer": "c42"}',
                               field="payload")
        contains = json.dumps(wanted)
    return TaskFilter(tenant=tenant(), status=status, payload_contains=contains,
                      recent_window=PAYLOAD_WINDOW,
                      queue_name=tenant_queue(queue_name(queue)) if queue else None,
                      name=_text("name"), handler=_text("handler"),
                      dedup_key=_text("dedup_key"), created_after=_instant("created_after"),
                      created_before=_instant("created_before"))


@page("/tasks", "tasks:read")
async def tasks() -> str:
    s = services()
    f = task_filter()
    after = cursor.decode(_text("cursor"))
    found = await s.store.list_tasks(f, limit=PAGE_ROWS, after=after, with_payload=False)
    counted = after is None and f.payload_contains is None
    count = (await s.store.count_tasks(f, cap=COUNT_CAP, budget_ms=COUNT_BUDGET_MS)
             if counted else None)
    next_cursor = (cursor.encode(found[-1].created_at, found[-1].id)
                   if len(found) == PAGE_ROWS else None)
    kept = _kept()
    return await render_template("console/tasks.html", tasks=found, count=count,
                                 count_cap=COUNT_CAP, next_cursor=next_cursor, args=kept,
                                 statuses=[x.value for x in TaskStatus], shown=shown,
                                 searching=f.payload_contains is not None,
                                 count_skipped=counted and count is None,
                                 count_budget_ms=COUNT_BUDGET_MS,
                                 payload_window=PAYLOAD_WINDOW)


def shown_json(value: Any) -> str:
    """Indented JSON of `value`, cut at SHOWN_CHARS (and said so)."""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > SHOWN_CHARS:
        return text[:SHOWN_CHARS] + f"\n… cut: {len(text) - SHOWN_CHARS} more characters"
    return text


@page("/tasks/<uuid:task_id>", "tasks:read")
async def task(task_id: uuid.UUID) -> str:
    s = services()
    with_payload = request.args.get("payload") == "1"
    found = await s.store.get_task(task_id, payload_text=with_payload)
    if found is None or found[0].tenant != tenant():
        raise NotFound(f"no task with id {task_id}")
    t, runs = found
    payload = None
    if with_payload:
        value = json.loads(t.payload) if isinstance(t.payload, JsonText) else t.payload
        if t.secret_fields and isinstance(value, dict):
            value = redacted(value, t.secret_fields)
        payload = shown_json(value)
    final = t.status in TERMINAL_TASK_STATUSES
    return await render_template(
        "console/task.html", task=t, runs=runs, payload=payload, final=final,
        queue=shown(t.queue_name), shown_json=shown_json,
        refresh_s=None if final or with_payload else REFRESH_S)


@page("/queues", "queues:read")
async def queues() -> str:
    s = services()
    rows = await queue_rows(s, times.utc(s.clock()))
    return await render_template("console/queues.html", rows=rows, refresh_s=REFRESH_S)


def dlq_filter() -> DlqFilter:
    return DlqFilter(handler=_text("handler"), error=_text("error"),
                     failed_since=_instant("failed_since"))


@page("/dlq", "tasks:read")
async def dlq() -> str:
    s = services()
    now = times.utc(s.clock())
    names = [r.name for r in await queue_rows(s, now)]
    chosen = _text("queue") or (names[0] if names else None)
    dead = None
    next_cursor = None
    if chosen is not None:
        queue = tenant_queue(queue_name(chosen))
        dead = await s.store.dead_tasks(queue, dlq_filter(), limit=PAGE_ROWS,
                                        after=cursor.decode(_text("cursor")),
                                        with_payload=False)
        last = dead[-1] if dead else None
        if last is not None and last.failed_at and len(dead) == PAGE_ROWS:
            next_cursor = cursor.encode(last.failed_at, last.task.id)
    kept = _kept()
    return await render_template("console/dlq.html", queues=names, queue=chosen, dead=dead,
                                 next_cursor=next_cursor, args=kept, preview=None)


@page("/schedules", "schedules:read")
async def schedule_list() -> str:
    s = services()
    after = _text("cursor")
    found = await s.store.list_schedules(tenant(), after=after, limit=PAGE_ROWS,
                                         with_payload=False)
    next_cursor = found[-1].name if len(found) == PAGE_ROWS else None
    return await render_template("console/schedules.html", schedules=found,
                                 next_cursor=next_cursor)


@page("/schedules/<name>", "schedules:read")
async def schedule(name: str) -> str:
    name = schedule_name(name)
    s = services()
    found = await s.store.get_schedule(tenant(), name)
    if found is None:
        raise NotFound(f"no schedule named {name!r}")
    upcoming: list[datetime] = []
    if found.enabled and found.next_fire_at is not None:
        upcoming = [found.next_fire_at, *cron.upcoming(
            found.cron, found.timezone, after=found.next_fire_at, count=4,
            ends_at=found.ends_at)]
    fires = await s.store.recent_fires(found.id, limit=PAGE_ROWS)
    return await render_template("console/schedule.html", schedule=found, upcoming=upcoming,
                                 fires=fires)


@page("/workers", "queues:read")
async def worker_list() -> str:
    s = services()
    fleet = await workers(s, times.utc(s.clock()))
    return await render_template("console/workers.html", workers=fleet, refresh_s=REFRESH_S)


@page("/audit", "audit:read")
async def audit() -> str:
    s = services()
    before = _text("cursor")
    if before is not None and not before.isdigit():
        raise InvalidInput("cursor is not one this page gave out", field="cursor")
    queue = _text("queue")
    entries = await s.store.audit_entries(
        tenant=tenant(), actor=_text("actor"), action=_text("action"),
        queue_name=tenant_queue(queue_name(queue)) if queue else None,
        since=_instant("since"), before_id=int(before) if before else None, limit=PAGE_ROWS)
    next_cursor = str(entries[-1].id) if len(entries) == PAGE_ROWS else None
    kept = _kept()
    return await render_template("console/audit.html", entries=entries,
                                 next_cursor=next_cursor, args=kept, shown=shown,
                                 detail=lambda d: json.dumps(d, ensure_ascii=False,
                                                             default=str)[:2000])

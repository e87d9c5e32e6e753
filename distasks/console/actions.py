"""The console's changes: cancel a task, pause and resume a queue, replay the DLQ (a dry
run first), enable and disable a schedule. Each goes through the same operation as its
API route, which writes the audit row with the visitor's principal (services.actor)."""

from __future__ import annotations

import uuid
from typing import Any

from quart import redirect, render_template, request, url_for

from distasks.api.parse import queue_name, schedule_name
from distasks.api.services import actor, services, tenant, tenant_queue
from distasks.console.blueprint import page
from distasks.console.pages import PAGE_ROWS
from distasks.daemon import schedules
from distasks.domain import times
from distasks.domain.errors import InvalidInput, NotFound
from distasks.domain.schedule_definitions import UpdateSchedule
from distasks.domain.tenancy import shown
from distasks.store import DlqFilter
from distasks.store.schedules import Schedule

# Most DLQ entries one replay from the console touches.
MAX_REPLAY = 10_000
# DLQ entries replayed per transaction: a large replay is many short ones, each audited.
REPLAY_BATCH = 500


@page("/tasks/<uuid:task_id>/cancel", "tasks:cancel", methods=("POST",))
async def cancel(task_id: uuid.UUID) -> Any:
    s = services()
    done = await s.operations.cancel_task(task_id, tenant=tenant(), actor=actor(),
                                          reason="cancelled from the console",
                                          now=times.utc(s.clock()))
    if done is None:
        raise NotFound(f"no task with id {task_id}")
    return redirect(url_for("console.task", task_id=task_id), 303)


@page("/queues/<queue>/pause", "queues:admin", methods=("POST",))
async def pause(queue: str) -> Any:
    return await _set_paused(queue, True)


@page("/queues/<queue>/resume", "queues:admin", methods=("POST",))
async def resume(queue: str) -> Any:
    return await _set_paused(queue, False)


async def _set_paused(queue: str, paused: bool) -> Any:
    s = services()
    await s.operations.set_paused(tenant_queue(queue_name(queue)), paused, actor=actor(),
                                  now=times.utc(s.clock()),
                                  max_queues=s.config.limits.max_queues)
    return redirect(url_for("console.queues"), 303)


@page("/dlq/<queue>/replay", "dlq:admin", methods=("POST",))
async def replay(queue: str) -> Any:
    """`step=preview`: how many entries the filter matches (a dry run, nothing changes);
    `step=replay`: replay them, oldest failure first, in batches of REPLAY_BATCH."""
    s = services()
    form = await request.form
    qualified = tenant_queue(queue_name(queue))
    try:
        count = int(form.get("count") or 100)
    except ValueError:
        raise InvalidInput("count must be a whole number", field="count") from None
    if not 1 <= count <= MAX_REPLAY:
        raise InvalidInput(f"count must be 1 to {MAX_REPLAY}", field="count")
    f = DlqFilter(handler=(form.get("handler") or "").strip() or None,
                  error=(form.get("error") or "").strip() or None)
    now = times.utc(s.clock())
    if form.get("step") != "replay":
        matched = await s.operations.replay_dlq(qualified, f, limit=count,
                                                override_priority=None, actor=actor(),
                                                now=now, dry_run=True)
        dead = await s.store.dead_tasks(qualified, f, limit=PAGE_ROWS, after=None,
                                        with_payload=False)
        return await render_template(
            "console/dlq.html", queues=[shown(qualified)], queue=shown(qualified), dead=dead,
            next_cursor=None, args={"handler": f.handler or "", "error": f.error or ""},
            preview={"matched": len(matched), "count": count, "handler": f.handler or "",
                     "error": f.error or ""})
    replayed = 0
    while replayed < count:
        batch = await s.operations.replay_dlq(
            qualified, f, limit=min(REPLAY_BATCH, count - replayed), override_priority=None,
            actor=actor(), now=times.utc(s.clock()), dry_run=False)
        replayed += len(batch)
        if len(batch) < REPLAY_BATCH:
            break
    return redirect(url_for("console.dlq", queue=shown(qualified), replayed=replayed), 303)


@page("/schedules/<name>/enable", "schedules:write", methods=("POST",))
async def enable(name: str) -> Any:
    return await _set_enabled(name, True)


@page("/schedules/<name>/disable", "schedules:write", methods=("POST",))
async def disable(name: str) -> Any:
    return await _set_enabled(name, False)


async def _set_enabled(name: str, enabled: bool) -> Any:
    """As PATCH /api/v1/schedules/<name> with {"enabled": …}."""
    name = schedule_name(name)
    s = services()
    now = times.utc(s.clock())
    req = UpdateSchedule.model_validate({"enabled": enabled})
    rules = s.creation_rules(tenant())

    def change(old: Schedule) -> Schedule:
        new = schedules.apply_update(old, req, now=now)
        schedules.check_definition(new, rules, now=now, changed=req.model_fields_set)
        return new

    updated = await s.store.update_schedule(tenant(), name, change, actor=actor(), now=now)
    if updated is None:
        raise NotFound(f"no schedule named {name!r}")
    return redirect(url_for("console.schedule", name=name), 303)

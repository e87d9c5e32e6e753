"""The console's changes: cancel a task, pause, resume and delete a queue, replay or
delete DLQ entries by filter (a dry run first), enable, disable and fire a schedule. Each
goes through the same operation as its API route, which writes the audit row with the
visitor's principal (services.actor)."""

from __future__ import annotations

import uuid
from typing import Any

from quart import g, redirect, render_template, request, url_for

from distasks.api import access
from distasks.api.parse import queue_name, schedule_name
from distasks.api.services import actor, services, tenant, tenant_queue
from distasks.console.blueprint import page
from distasks.console.pages import PAGE_ROWS
from distasks.daemon import schedules
from distasks.domain import times
from distasks.domain.errors import InvalidInput, NotFound, Refused
from distasks.domain.schedule_definitions import UpdateSchedule
from distasks.domain.tenancy import shown
from distasks.store import DlqFilter
from distasks.store.audit import AuditEvent
from distasks.store.schedules import Schedule

# Most DLQ entries one replay or delete from the console touches.
MAX_BULK = 10_000
# DLQ entries replayed or deleted per transaction: a large one is many short ones, each
# audited.
BATCH = 500


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


@page("/dlq/<queue>/bulk", "dlq:admin", methods=("POST",))
async def bulk(queue: str) -> Any:
    """Replay or delete the DLQ entries a filter matches. `step=preview`: how many it
    matches (a dry run: nothing changes); `step=run`: do it, oldest failure first, in
    transactions of BATCH entries, each audited, at most MAX_BULK in all."""
    s = services()
    form = await request.form
    qualified = tenant_queue(queue_name(queue))
    action = form.get("action")
    if action not in ("replay", "delete"):
        raise InvalidInput("action must be replay or delete", field="action")
    try:
        count = int(form.get("count") or 100)
    except ValueError:
        raise InvalidInput("count must be a whole number", field="count") from None
    if not 1 <= count <= MAX_BULK:
        raise InvalidInput(f"count must be 1 to {MAX_BULK}", field="count")
    f = DlqFilter(handler=(form.get("handler") or "").strip() or None,
                  error=(form.get("error") or "").strip() or None)
    if form.get("step") != "run":
        matched = await _touch(qualified, f, action, limit=count, dry_run=True)
        dead = await s.store.dead_tasks(qualified, f, limit=PAGE_ROWS, after=None,
                                        with_payload=False)
        return await render_template(
            "console/dlq.html", queues=[shown(qualified)], queue=shown(qualified), dead=dead,
            next_cursor=None, args={"handler": f.handler or "", "error": f.error or ""},
            preview={"action": action, "matched": matched, "count": count,
                     "handler": f.handler or "", "error": f.error or ""})
    done = 0
    while done < count:
        batch = await _touch(qualified, f, action, limit=min(BATCH, count - done),
                             dry_run=False)
        done += batch
        if batch < BATCH:
            break
    done_arg: dict[str, Any] = {"replayed" if action == "replay" else "deleted": done}
    return redirect(url_for("console.dlq", queue=shown(qualified), **done_arg), 303)


async def _touch(queue: str, f: DlqFilter, action: str, *, limit: int, dry_run: bool) -> int:
    """One replay or delete of at most `limit` entries (the same operations as the API's,
    which audit them); how many it touched, or would."""
    s = services()
    now = times.utc(s.clock())
    if action == "replay":
        return len(await s.operations.replay_dlq(queue, f, limit=limit,
                                                 override_priority=None, actor=actor(),
                                                 now=now, dry_run=dry_run))
    return len(await s.operations.delete_dlq(queue, f, limit=limit, actor=actor(), now=now,
                                             dry_run=dry_run))


@page("/queues/<queue>/delete", "queues:admin", methods=("POST",))
async def delete_queue(queue: str) -> Any:
    """Delete a queue that holds nothing (409 otherwise, as the API)."""
    s = services()
    await s.operations.delete_queue(tenant_queue(queue_name(queue)), actor=actor(),
                                    now=times.utc(s.clock()))
    return redirect(url_for("console.queues"), 303)


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


@page("/schedules/<name>/fire", "schedules:write", methods=("POST",))
async def fire_now(name: str) -> Any:
    """Make the schedule's task now, outside its slots (its history of slots is unchanged;
    the audit log records the fire with the task it made). Needs tasks:write too: it is a
    create."""
    name = schedule_name(name)
    s = services()
    await access.require(s, g.principal, "tasks:write")
    found = await s.store.get_schedule(tenant(), name)
    if found is None:
        raise NotFound(f"no schedule named {name!r}")
    now = times.utc(s.clock())
    new = schedules.template_task(found, s.creation_rules(found.tenant), fire_at=now,
                                  jitter_s=0)
    await s.admit(new.tenant, 1)
    made = await s.intake.create(new)
    await s.store.record_events([AuditEvent(
        at=now, actor=actor(), action="schedule_fire_now",
        detail={"schedule": name, "task_id": str(made.task_id)},
        queue_name=new.queue_name)])
    return redirect(url_for("console.task", task_id=made.task_id), 303)


@page("/tasks/<uuid:task_id>/replay", "dlq:admin", methods=("POST",))
async def replay_task(task_id: uuid.UUID) -> Any:
    """Replay one dead-lettered task (as the DLQ replay of its id): a new attempt."""
    s = services()
    found = await s.store.get_task(task_id)
    if found is None or found[0].tenant != tenant():
        raise NotFound(f"no task with id {task_id}")
    replayed = await s.operations.replay_dlq(
        found[0].queue_name, DlqFilter(task_ids=(task_id,)), limit=1, override_priority=None,
        actor=actor(), now=times.utc(s.clock()), dry_run=False)
    if not replayed:
        raise Refused(409, "not_dead_lettered", "only a task in the DLQ can be replayed")
    return redirect(url_for("console.task", task_id=task_id), 303)

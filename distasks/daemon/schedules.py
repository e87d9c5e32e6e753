"""Schedule definitions: how a request (API or config file) becomes a stored schedule, how
a change applies, and what task a slot makes (architecture §9). Shared by the API, the
config upsert at start and the scheduler, so that all three obey the same rules. Pure:
`now` and the creation rules come in as arguments.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from distasks.daemon import creation
from distasks.daemon.creation import CreationRules, TaskRequest
from distasks.domain import cron
from distasks.domain.errors import InvalidInput
from distasks.domain.model import Actor, NewTask, TaskType
from distasks.domain.schedule_definitions import WINDOW_BACKWARDS, CreateSchedule, UpdateSchedule
from distasks.store import Schedule


def check_definition(s: Schedule, rules: CreationRules, *, now: datetime,
                     prefix: str = "", changed: Collection[str] = ()) -> None:
    """InvalidInput naming the field (`cron`, `timezone`, `task.handler`, …, after
    `prefix`) unless `s` can fire: its expression, time zone and template pass, and its
    window runs forwards. `changed`: the fields a change gave, so that a window turned
    backwards names the one that did it (`start_at` given alone), `end_at` otherwise."""
    try:
        cron.check(s.cron, s.timezone, now=now)
    except cron.CronError as e:
        raise InvalidInput(e.problem, field=f"{prefix}{e.field}") from None
    if s.starts_at is not None and s.ends_at is not None and s.ends_at <= s.starts_at:
        if "start_at" in changed and "end_at" not in changed:
            raise InvalidInput(f"start_at: must be before end_at ({s.ends_at.isoformat()}); "
                               "a schedule that ends before it starts never fires",
                               field=f"{prefix}start_at")
        raise InvalidInput(f"end_at: {WINDOW_BACKWARDS}", field=f"{prefix}end_at")
    try:
        template_task(s, rules, fire_at=now, jitter_s=0.0)
    except InvalidInput as e:
        e.field = f"{prefix}task.{e.field}" if e.field else f"{prefix}task"
        raise


def from_request(req: CreateSchedule, *, tenant: str, owner: str, actor: Actor,
                 now: datetime) -> Schedule:
    """A new schedule as `req` defines it, armed for its first slot after `now`."""
    t = req.task
    s = Schedule(
        id=uuid.uuid4(), tenant=tenant, name=req.name, cron=req.cron.strip(),
        timezone=req.timezone, task_name=t.name or req.name, handler=t.handler,
        queue_name=t.queue_name, priority=t.priority, payload=t.payload,
        max_retries=t.max_retries, timeout_s=t.timeout_seconds, enabled=req.enabled,
        catch_up=req.catch_up, catch_up_max=req.catch_up_max, jitter_s=req.jitter_seconds,
        starts_at=req.start_at, ends_at=req.end_at, skip_if_running=req.skip_if_running,
        owner=owner, next_fire_at=None, created_at=now, created_by=actor.id, updated_at=now,
        secret_fields=tuple(sorted(set(t.secret_fields))))
    return rearm(s, now=now)


def rearm(s: Schedule, *, now: datetime) -> Schedule:
    """`s` waiting for its first slot after `now` (a new, changed or resumed schedule:
    slots before now are not caught up)."""
    try:
        slot = cron.first_slot(s.cron, s.timezone, now=now, starts_at=s.starts_at,
                               ends_at=s.ends_at)
    except cron.CronError:
        slot = None  # refused by check_definition before it is stored
    return dataclasses.replace(s, next_fire_at=slot)


def apply_update(s: Schedule, req: UpdateSchedule, *, now: datetime) -> Schedule:
    """`s` with the fields `req` gives; re-armed from `now` if its timing changed or it
    was resumed. InvalidInput naming `task.secret_fields` if it would unmark a secret key
    while the stored payload stays."""
    given = req.model_fields_set
    changes: dict[str, Any] = {}
    for field, column in (("cron", "cron"), ("timezone", "timezone"), ("enabled", "enabled"),
                          ("catch_up", "catch_up"), ("catch_up_max", "catch_up_max"),
                          ("jitter_seconds", "jitter_s"), ("skip_if_running", "skip_if_running")):
        value = getattr(req, field)
        if field in given and value is not None:  # null: unchanged
            changes[column] = value.strip() if field == "cron" else value
    for field, column in (("start_at", "starts_at"), ("end_at", "ends_at")):
        if field in given:  # null: none
            changes[column] = getattr(req, field)
    if req.task is not None:
        t, t_given = req.task, req.task.model_fields_set
        for field, column in (("handler", "handler"), ("max_retries", "max_retries"),
                              ("timeout_seconds", "timeout_s"), ("payload", "payload")):
            if field in t_given:
                changes[column] = getattr(t, field)
        if "name" in t_given:
            changes["task_name"] = t.name or s.name
        if "secret_fields" in t_given:
            marked = tuple(sorted(set(t.secret_fields or ())))
            # A secret, once marked, stays secret: unmarking a key would show the stored
            # value. Marks may grow; they may shrink only with a new payload, which
            # replaces the stored values.
            unmarked = sorted(set(s.secret_fields) - set(marked))
            if unmarked and "payload" not in t_given:
                raise InvalidInput(
                    f"task.secret_fields: {', '.join(map(repr, unmarked))} stay secret; "
                    "a key is unmarked only together with a new task.payload",
                    field="task.secret_fields")
            changes["secret_fields"] = marked
        for field in ("queue_name", "priority"):
            if field in t_given and getattr(t, field) is not None:
                changes[field] = getattr(t, field)
    new = dataclasses.replace(s, **changes)
    if new.timing() != s.timing() or (new.enabled and not s.enabled):
        new = rearm(new, now=now)
    return new


def template_task(s: Schedule, rules: CreationRules, *, fire_at: datetime,
                  jitter_s: float) -> NewTask:
    """The task of the slot `fire_at`, the schedule's tenant's (its queue qualified),
    delayed by `jitter_s` when that is above zero. InvalidInput when the template no
    longer passes the creation rules (a handler that was unregistered since)."""
    delayed = jitter_s > 0
    return creation.new_task(TaskRequest(
        name=s.task_name, tenant=s.tenant, handler=s.handler,
        type=TaskType.DELAYED if delayed else TaskType.IMMEDIATE,
        queue_name=s.queue_name, priority=s.priority,
        payload=s.payload, max_retries=s.max_retries, timeout_s=s.timeout_s,
        secret_fields=s.secret_fields,
        delay_s=jitter_s if delayed else None), rules, now=fire_at)

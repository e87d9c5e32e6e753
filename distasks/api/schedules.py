"""Schedule resources: create, list, show (next fire times, last fires), change, delete
(architecture §9). A principal sees only its tenant's schedules: another tenant's is a
404, as if it did not exist."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from quart import Blueprint, Response, jsonify

from distasks.api import schemas
from distasks.api.openapi import operation
from distasks.api.parse import parse_body, parse_query, read_body, schedule_name
from distasks.api.render import iso
from distasks.api.services import Services, actor, services, tenant
from distasks.daemon import schedules
from distasks.domain import cron, tenancy, times
from distasks.domain.errors import NotFound, Refused, TooManyQueues
from distasks.domain.schedule_definitions import CreateSchedule, UpdateSchedule
from distasks.domain.secret_fields import redacted
from distasks.store import Fire, Schedule

bp = Blueprint("schedules", __name__)


@operation(bp, "POST", "/api/v1/schedules", scope="schedules:write", tag="schedules",
           summary="Create a schedule", body=CreateSchedule,
           responses={201: schemas.ScheduleOut},
           errors={409: "The tenant has a schedule of that name, or limits.max_schedules "
                        "schedules, or the template names a new queue beyond "
                        "limits.max_queues",
                   422: "Invalid input, a cron expression or time zone that cannot be used, "
                        "or a task template that would be refused: the body names the field"})
async def create_schedule() -> tuple[Response, int]:
    req = parse_body(CreateSchedule, await read_body())
    s = services()
    now = times.utc(s.clock())
    who = actor()
    new = schedules.from_request(req, tenant=tenant(), owner="api", actor=who, now=now)
    await _check(s, new, now=now)
    limit = s.config.limits.max_schedules
    # Concurrent creates may pass the cap by a few: a bound on growth, not an exact count.
    if await s.store.schedule_count(new.tenant) >= limit:
        raise Refused(409, "too_many_schedules", f"tenant {new.tenant!r} has {limit} "
                      "schedules, the most limits.max_schedules allows", field="name")
    created = await s.store.create_schedule(new, actor=who, now=now)
    if created is None:
        raise Refused(409, "schedule_exists", f"a schedule named {req.name!r} exists; "
                      "change it with PATCH, or choose another name")
    return jsonify(schedule_json(created)), 201


@operation(bp, "GET", "/api/v1/schedules", scope="schedules:read", tag="schedules",
           summary="The tenant's schedules, by name, in pages; payloads only when asked",
           query=schemas.ScheduleListQuery, responses={200: schemas.ScheduleList})
async def list_schedules() -> Response:
    q = parse_query(schemas.ScheduleListQuery)
    found = await services().store.list_schedules(tenant(), after=q.cursor, limit=q.limit,
                                                  with_payload=q.include_payload)
    out = [schedule_json(x) for x in found]
    if not q.include_payload:
        for x in out:
            del x["task"]["payload"]
    return jsonify({"schedules": out,
                    "next_cursor": found[-1].name if len(found) == q.limit else None})


@operation(bp, "GET", "/api/v1/schedules/<name>", scope="schedules:read", tag="schedules",
           summary="A schedule with its next fire times and its last fires",
           query=schemas.ScheduleQuery, responses={200: schemas.ScheduleDetail},
           errors={404: "No such schedule in the tenant"})
async def get_schedule(name: str) -> Response:
    name = schedule_name(name)
    q = parse_query(schemas.ScheduleQuery)
    s = services()
    found = await s.store.get_schedule(tenant(), name)
    if found is None:
        raise NotFound(f"no schedule named {name!r}")
    upcoming: list[str] = []
    if found.enabled and found.next_fire_at is not None and q.upcoming:
        # next_fire_at itself, then the slots after it
        later = cron.upcoming(found.cron, found.timezone, after=found.next_fire_at,
                              count=q.upcoming - 1, ends_at=found.ends_at)
        upcoming = [iso(t) or "" for t in [found.next_fire_at, *later]]
    fires = await s.store.recent_fires(found.id, limit=q.fires) if q.fires else []
    return jsonify({"schedule": schedule_json(found), "upcoming": upcoming,
                    "fires": [fire_json(f) for f in fires]})


@operation(bp, "PATCH", "/api/v1/schedules/<name>", scope="schedules:write",
           tag="schedules", summary="Change, pause (enabled false) or resume a schedule",
           body=UpdateSchedule, body_required=False,
           responses={200: schemas.ScheduleOut},
           errors={404: "No such schedule in the tenant",
                   409: "A schedule of the config file: only enabled may change",
                   422: "Invalid input, a cron expression or time zone that cannot be used, "
                        "or a task template that would be refused: the body names the field"})
async def update_schedule(name: str) -> Response:
    name = schedule_name(name)
    req = parse_body(UpdateSchedule, await read_body() or b"{}")
    s = services()
    now = times.utc(s.clock())
    rules = s.creation_rules(tenant())

    def change(old: Schedule) -> Schedule:
        if old.owner == "config" and req.model_fields_set - {"enabled"}:
            raise Refused(409, "owned_by_config",
                          f"schedule {name!r} is defined in the config file; only enabled "
                          "may change here (change the file and restart to change the rest)")
        new = schedules.apply_update(old, req, now=now)
        schedules.check_definition(new, rules, now=now, changed=req.model_fields_set)
        return new

    if "task" in req.model_fields_set and req.task and "queue_name" in (
            req.task.model_fields_set):
        await _admit_queue(s, tenant(), req.task.queue_name)
    updated = await s.store.update_schedule(tenant(), name, change, actor=actor(), now=now)
    if updated is None:
        raise NotFound(f"no schedule named {name!r}")
    return jsonify(schedule_json(updated))


@operation(bp, "DELETE", "/api/v1/schedules/<name>", scope="schedules:write",
           tag="schedules", summary="Delete a schedule (the tasks it made stay)",
           responses={204: None},
           errors={404: "No such schedule in the tenant",
                   409: "A schedule of the config file: remove it from the file"})
async def delete_schedule(name: str) -> tuple[str, int]:
    name = schedule_name(name)
    s = services()
    now = times.utc(s.clock())
    mine = tenant()
    deleted = await s.store.delete_schedule(mine, name, owner="api", actor=actor(), now=now)
    if deleted is None:
        if await s.store.get_schedule(mine, name) is not None:
            raise Refused(409, "owned_by_config", f"schedule {name!r} is defined in the "
                          "config file; remove it there (or pause it here)")
        raise NotFound(f"no schedule named {name!r}")
    return "", 204


async def _check(s: Services, new: Schedule, *, now: datetime) -> None:
    """A new schedule's template obeys its tenant's creation rules, and its queue fits
    under the tenant's limits.max_queues (its tasks will make the queue)."""
    schedules.check_definition(new, s.creation_rules(new.tenant), now=now)
    await _admit_queue(s, new.tenant, new.queue_name)


async def _admit_queue(s: Services, tenant: str, queue: str | None) -> None:
    if s.census is None or queue is None:
        return
    try:
        await s.census.admit([tenancy.qualify(tenant, queue)])
    except TooManyQueues as e:
        e.field = "task.queue_name"
        raise


def schedule_json(x: Schedule) -> dict[str, Any]:
    return {
        "name": x.name, "cron": x.cron, "timezone": x.timezone,
        "task": {"name": x.task_name, "handler": x.handler, "queue_name": x.queue_name,
                 "priority": x.priority,
                 "payload": (redacted(x.payload, x.secret_fields)
                             if x.secret_fields and isinstance(x.payload, dict) else x.payload),
                 "max_retries": x.max_retries, "timeout_seconds": x.timeout_s,
                 "secret_fields": list(x.secret_fields)},
        "enabled": x.enabled, "catch_up": x.catch_up, "catch_up_max": x.catch_up_max,
        "jitter_seconds": x.jitter_s, "start_at": iso(x.starts_at), "end_at": iso(x.ends_at),
        "skip_if_running": x.skip_if_running, "owner": x.owner,
        "next_fire_at": iso(x.next_fire_at), "last_fire_at": iso(x.last_fire_at),
        "last_task_id": str(x.last_task_id) if x.last_task_id else None,
        "created_at": iso(x.created_at), "created_by": x.created_by,
        "updated_at": iso(x.updated_at),
    }


def fire_json(f: Fire) -> dict[str, Any]:
    return {"fire_at": iso(f.fire_at), "fired_at": iso(f.fired_at), "outcome": f.outcome,
            "task_id": str(f.task_id) if f.task_id else None, "error": f.error}

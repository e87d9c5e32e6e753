"""Task resources: create one, read one with its runs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic
from quart import Blueprint, Response, jsonify, request

from distasks.api import schemas
from distasks.api.errors import from_validation_error
from distasks.api.services import services
from distasks.errors import InvalidInput, NotFound, PayloadTooLarge, UnknownHandler
from distasks.model import NewTask, RunStatus, Task, TaskRun, TaskType
from distasks.store import dumps

bp = Blueprint("tasks", __name__)


@bp.post("/api/v1/tasks")
async def create_task() -> tuple[Response, int]:
    new = parse_create(await request.get_data(as_text=False, parse_form_data=False))
    result = await services().intake.create(new)
    return jsonify({"task_id": str(result.task_id), "status": result.status.value}), (
        201 if result.created else 200)


def parse_create(body: bytes | str) -> NewTask:
    """Validate a create body into a NewTask; raises InvalidInput naming the field."""
    s = services()
    try:
        req = schemas.CreateTask.model_validate_json(body or b"null")
    except pydantic.ValidationError as e:
        raise from_validation_error(e) from None
    handler = req.handler or s.config.worker.default_handler
    if handler not in s.registry:
        raise UnknownHandler(handler)
    try:
        payload_json = dumps(req.payload)
    except ValueError:
        raise InvalidInput("payload must not contain NaN or Infinity", field="payload") from None
    limit = s.config.http.max_payload_bytes
    if len(payload_json.encode()) > limit:
        raise PayloadTooLarge(len(payload_json.encode()), limit)
    run_at = None
    task_type = TaskType(req.type)
    if task_type is TaskType.DELAYED:
        if (req.run_at is None) == (req.delay_seconds is None):
            raise InvalidInput("a delayed task needs exactly one of run_at and delay_seconds",
                               field="run_at")
        now = datetime.fromtimestamp(s.clock(), UTC)
        run_at = req.run_at or now + timedelta(seconds=req.delay_seconds or 0)
    elif req.run_at is not None or req.delay_seconds is not None:
        field = "run_at" if req.run_at is not None else "delay_seconds"
        raise InvalidInput(f"{field} needs type \"delayed\"", field=field)
    return NewTask(
        id=uuid.uuid4(), run_id=uuid.uuid4(), name=req.name, handler=handler, type=task_type,
        queue_name=req.queue_name, priority=req.priority, payload=req.payload,
        payload_json=payload_json, dedup_key=req.dedup_key,
        max_retries=req.max_retries if req.max_retries is not None
        else s.config.retry.max_retries,
        timeout_s=req.timeout_seconds, run_at=run_at,
    )


@bp.get("/api/v1/tasks/<task_id>")
async def get_task(task_id: str) -> Response:
    found = await services().store.get_task(parse_uuid(task_id, "task_id"))
    if found is None:
        raise NotFound(f"no task with id {task_id}")
    task, runs = found
    return jsonify({"task": task_json(task), "latest_run": latest_run_json(runs),
                    "runs": [run_json(r) for r in runs]})


def parse_uuid(text: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise InvalidInput(f"{field} is not a UUID: {text!r}", field=field,
                           code="invalid_id") from None


def latest_run_json(runs: list[TaskRun]) -> dict[str, Any] | None:
    """The latest attempt that has started; the next attempt waiting for its time is
    listed in `runs` but is not "latest" until it starts, so that right after a failure
    the latest run says `retrying` and when the retry is due."""
    started = [r for r in runs if r.status is not RunStatus.QUEUED]
    pick = started[-1] if started else (runs[-1] if runs else None)
    return run_json(pick) if pick else None


def task_json(t: Task) -> dict[str, Any]:
    return {
        "id": str(t.id), "name": t.name, "handler": t.handler, "type": t.type.value,
        "queue_name": t.queue_name, "priority": t.priority, "payload": t.payload,
        "dedup_key": t.dedup_key, "max_retries": t.max_retries, "timeout_seconds": t.timeout_s,
        "status": t.status.value, "failures": t.failures, "run_at": _iso(t.run_at),
        "created_at": _iso(t.created_at), "updated_at": _iso(t.updated_at),
        "finished_at": _iso(t.finished_at),
    }


def run_json(r: TaskRun) -> dict[str, Any]:
    return {
        "id": str(r.id), "task_id": str(r.task_id), "attempt": r.attempt, "status": r.status.value,
        "worker_id": r.worker_id, "lease_expires_at": _iso(r.lease_expires_at),
        "available_at": _iso(r.available_at), "next_retry_at": _iso(r.next_retry_at),
        "error": r.error, "result": r.result, "created_at": _iso(r.created_at),
        "started_at": _iso(r.started_at), "finished_at": _iso(r.finished_at),
    }


def _iso(d: datetime | None) -> str | None:
    return d.isoformat().replace("+00:00", "Z") if d else None

"""Task resources: create one or a batch, read, list, runs, cancel, long-poll."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pydantic
import trio
from quart import Blueprint, Response, jsonify, request

from distasks import mirror
from distasks.api import cursor, schemas
from distasks.api.errors import from_validation_error
from distasks.api.openapi import operation
from distasks.api.services import Services, actor, services
from distasks.errors import (
    BrokerUnavailable,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    UnknownHandler,
)
from distasks.http_handler import HttpHandler
from distasks.model import (
    TERMINAL_TASK_STATUSES,
    NewTask,
    RunStatus,
    Task,
    TaskRun,
    TaskType,
)
from distasks.store import TaskFilter, dumps

bp = Blueprint("tasks", __name__)

# A long poll re-reads PostgreSQL at least this often, in case a "done" message was lost.
WAIT_POLL_S = 1.0


@operation(bp, "POST", "/api/v1/tasks", tag="tasks", summary="Create a task",
           body=schemas.CreateTask, responses={201: schemas.Created, 200: schemas.Created},
           errors={413: "Payload over http.max_payload_bytes"})
async def create_task() -> tuple[Response, int]:
    # Served by api/fast.py in the daemon; this route serves the test client and
    # documents the operation.
    s = services()
    result = await s.intake.create(parse_create(await _body(), s))
    return jsonify({"task_id": str(result.task_id), "status": result.status.value}), (
        201 if result.created else 200)


@operation(bp, "POST", "/api/v1/tasks/batch", tag="tasks",
           summary="Create many tasks at once: all valid or none written, one transaction",
           body=schemas.CreateTasks, responses={200: schemas.BatchCreated})
async def create_tasks() -> Response:
    req = parse_body(schemas.CreateTasks, await _body())
    s = services()
    limit = s.config.http.max_batch
    if len(req.tasks) > limit:
        raise InvalidInput(f"at most {limit} tasks per batch, got {len(req.tasks)}",
                           field="tasks")
    news = []
    for i, item in enumerate(req.tasks):
        try:
            news.append(new_task(item, s))
        except InvalidInput as e:
            e.field = f"tasks.{i}.{e.field}" if e.field else f"tasks.{i}"
            e.message = f"tasks[{i}]: {e.message}"
            raise
    results = await s.intake.create_many(news)
    return jsonify({"tasks": [{"task_id": str(r.task_id), "status": r.status.value,
                               "created": r.created} for r in results]})


async def _body() -> bytes:
    data = await request.get_data(as_text=False, parse_form_data=False)
    return data if isinstance(data, bytes) else data.encode()


M = TypeVar("M", bound=pydantic.BaseModel)


def parse_body(model: type[M], body: bytes) -> M:
    try:
        parsed = model.model_validate_json(body or b"null")
    except pydantic.ValidationError as e:
        raise from_validation_error(e) from None
    # JSON can carry a NUL only as the escape \u0000: walk the values only then.
    if b"\\u0000" in body:
        _refuse_nul(parsed.model_dump(mode="python"))
    return parsed


def parse_query(model: type[M]) -> M:
    args = request.args.to_dict()
    _refuse_nul(args)
    try:
        return model.model_validate(args)
    except pydantic.ValidationError as e:
        raise from_validation_error(e) from None


def _refuse_nul(value: Any, path: str = "") -> None:
    """PostgreSQL text and jsonb cannot hold NUL characters: refuse them up front,
    naming where, instead of failing in the database."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput(f"{path or 'value'} contains a NUL character", field=path or None)
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_nul(key, path)
            _refuse_nul(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _refuse_nul(item, f"{path}.{i}" if path else str(i))


def parse_create(body: bytes | str, s: Services) -> NewTask:
    """Validate a create body into a NewTask; raises InvalidInput naming the field."""
    return new_task(parse_body(schemas.CreateTask, body if isinstance(body, bytes)
                               else body.encode()), s)


def new_task(req: schemas.CreateTask, s: Services) -> NewTask:
    """Check what the schema cannot (handler, payload size, timing) and build the task."""
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
    registered = s.registry.get(handler)
    if registered is not None and isinstance(registered.fn, HttpHandler):
        registered.fn.check(req.payload)  # refuse a call that could never be made
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
        else (s.tunables.default_max_retries if s.tunables else s.config.retry.max_retries),
        timeout_s=req.timeout_seconds, run_at=run_at,
    )


@operation(bp, "GET", "/api/v1/tasks", tag="tasks",
           summary="List tasks, newest first, with filters and keyset pagination",
           query=schemas.TaskQuery, responses={200: schemas.TaskPage})
async def list_tasks() -> Response:
    q = parse_query(schemas.TaskQuery)
    f = TaskFilter(status=q.status, queue_name=q.queue, name=q.name, handler=q.handler,
                   dedup_key=q.dedup_key, created_after=q.created_after,
                   created_before=q.created_before)
    tasks = await services().store.list_tasks(f, limit=q.limit, after=cursor.decode(q.cursor))
    next_cursor = (cursor.encode(tasks[-1].created_at, tasks[-1].id)
                   if len(tasks) == q.limit else None)
    return jsonify({"tasks": [task_json(t) for t in tasks], "next_cursor": next_cursor})


@operation(bp, "GET", "/api/v1/tasks/<uuid:task_id>", tag="tasks",
           summary="A task with its runs; ?wait=N long-polls until it is final",
           query=schemas.GetTaskQuery, responses={200: schemas.TaskDetail},
           errors={404: "No such task"})
async def get_task(task_id: uuid.UUID) -> Response:
    tid = task_id
    q = parse_query(schemas.GetTaskQuery)
    s = services()
    deadline = trio.current_time() + q.wait
    if q.wait > 0:
        # Without Redis the wait still ends: the task is re-read every WAIT_POLL_S.
        with contextlib.suppress(BrokerUnavailable):
            await s.broker.watch(str(tid), until_ms=int((s.clock() + q.wait) * 1000))
    while True:
        found = await s.store.get_task(tid)
        if found is None:
            raise NotFound(f"no task with id {task_id}")
        task, runs = found
        if task.status in TERMINAL_TASK_STATUSES or trio.current_time() >= deadline:
            break
        with trio.move_on_at(min(deadline, trio.current_time() + WAIT_POLL_S)):
            await s.waiters.wait(tid)
    return jsonify({"task": task_json(task), "latest_run": latest_run_json(runs),
                    "runs": [run_json(r) for r in runs]})


@operation(bp, "GET", "/api/v1/tasks/<uuid:task_id>/runs", tag="tasks",
           summary="Every attempt of a task, oldest first", responses={200: schemas.RunList},
           errors={404: "No such task"})
async def get_runs(task_id: uuid.UUID) -> Response:
    found = await services().store.get_task(task_id)
    if found is None:
        raise NotFound(f"no task with id {task_id}")
    return jsonify({"runs": [run_json(r) for r in found[1]]})


@operation(bp, "POST", "/api/v1/tasks/<uuid:task_id>/cancel", tag="tasks",
           summary="Cancel a task: at once if waiting, within a second if running",
           body_required=False, body=schemas.CancelTask, responses={200: schemas.Cancelled},
           errors={404: "No such task"})
async def cancel_task(task_id: uuid.UUID) -> Response:
    tid = task_id
    req = parse_body(schemas.CancelTask, await _body() or b"{}")
    s = services()
    now = datetime.fromtimestamp(s.clock(), UTC)
    done = await s.store.cancel_task(tid, actor=actor(), reason=req.reason, now=now)
    if done is None:
        raise NotFound(f"no task with id {task_id}")
    if done.cancelled:
        s.metrics.cancelled.labels(done.queue_name, done.handler).inc()
        # If Redis does not answer: waiting ids are dropped when claimed, the running
        # attempt learns of the cancel from its next heartbeat, waiters from their poll.
        await mirror.copy("cancel", lambda: s.broker.cancelled(
            waiting=[(q, str(r)) for q, r in done.waiting],
            running=str(done.running) if done.running else None,
            task_id=str(tid), now_ms=int(now.timestamp() * 1000)))
    return jsonify({"task_id": str(tid), "status": done.status.value,
                    "cancelled": done.cancelled})


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
        "status": t.status.value, "failures": t.failures, "run_at": iso(t.run_at),
        "created_at": iso(t.created_at), "updated_at": iso(t.updated_at),
        "finished_at": iso(t.finished_at), "cancelled_at": iso(t.cancelled_at),
        "cancelled_by": t.cancelled_by, "cancel_reason": t.cancel_reason,
    }


def run_json(r: TaskRun) -> dict[str, Any]:
    return {
        "id": str(r.id), "task_id": str(r.task_id), "attempt": r.attempt, "status": r.status.value,
        "worker_id": r.worker_id, "lease_expires_at": iso(r.lease_expires_at),
        "available_at": iso(r.available_at), "next_retry_at": iso(r.next_retry_at),
        "error": r.error, "result": r.result, "created_at": iso(r.created_at),
        "started_at": iso(r.started_at), "finished_at": iso(r.finished_at),
    }


def iso(d: datetime | None) -> str | None:
    return d.isoformat().replace("+00:00", "Z") if d else None



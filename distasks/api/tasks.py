"""Task resources: create one or a batch, read, list, runs, cancel, long-poll."""

from __future__ import annotations

import contextlib
import uuid

import trio
from quart import Blueprint, Response, jsonify

from distasks.api import cursor, pages, schemas
from distasks.api.openapi import operation
from distasks.api.parse import new_task, parse_body, parse_create, parse_query, read_body
from distasks.api.render import latest_run_json, run_json, task_json
from distasks.api.services import Services, actor, services, tenant, tenant_queue
from distasks.domain import times
from distasks.domain.errors import (
    BrokerUnavailable,
    DedupConflict,
    InvalidInput,
    NotFound,
    TooManyQueues,
)
from distasks.domain.model import (
    TERMINAL_TASK_STATUSES,
    CreateResult,
    JsonText,
    NewTask,
    Task,
    TaskRun,
)
from distasks.store import TaskFilter

bp = Blueprint("tasks", __name__)

# A long poll re-reads its task at least this often, a last resort: "done" messages and
# the daemon's shared poll of every waited task (distasks.daemon.waiters.poll, each second)
# wake it first.
WAIT_POLL_S = 10.0
# Longest a long poll waits for Redis to note that it waits ("done" is announced only for
# noted tasks); past it, the shared poll is what wakes it.
WATCH_TIMEOUT_S = 0.5

QUOTA_OR_RATE = ("Over the rate limit of the key or its tenant, or over a quota of the "
                 "tenant (quota_exceeded); see Retry-After")


@operation(bp, "POST", "/api/v1/tasks", scope="tasks:write", tag="tasks", summary="Create a task",
           body=schemas.CreateTask, responses={201: schemas.Created, 200: schemas.Created},
           errors={413: "Payload over http.max_payload_bytes or the tenant's max_payload_bytes",
                   409: "The dedup_key names a task made from a different request, or "
                        "queue_name a new queue beyond limits.max_queues",
                   429: QUOTA_OR_RATE})
async def create_task() -> tuple[Response, int]:
    # In the daemon, api/fast.py answers first with the same create_one; this route
    # documents the operation and serves Quart's test client.
    document, status = await create_one(services(), tenant(), await read_body())
    return jsonify(document), status


async def create_one(s: Services, tenant: str, body: bytes) -> tuple[dict[str, str], int]:
    """Create the task `body` asks for, for `tenant`: the answer and its status (201 new,
    200 for a dedup_key already used by the same request); raises what maps to a 4xx."""
    new = parse_create(body, s, tenant)
    await s.admit(new.tenant, 1)
    result = refuse_conflict(new, await s.intake.create(new))
    return ({"task_id": str(result.task_id), "status": result.status.value},
            201 if result.created else 200)


@operation(bp, "POST", "/api/v1/tasks/batch", scope="tasks:write", tag="tasks",
           summary="Create many tasks at once: all valid or none written, one transaction",
           body=schemas.CreateTasks, responses={200: schemas.BatchCreated},
           errors={409: "A queue_name names a new queue beyond limits.max_queues",
                   429: QUOTA_OR_RATE})
async def create_tasks() -> Response:
    req = parse_body(schemas.CreateTasks, await read_body())
    s = services()
    limit = s.config.http.max_batch
    if len(req.tasks) > limit:
        raise InvalidInput(f"at most {limit} tasks per batch, got {len(req.tasks)}",
                           field="tasks")
    news = []
    for i, item in enumerate(req.tasks):
        try:
            news.append(new_task(item, s, tenant()))
        except InvalidInput as e:
            e.field = f"tasks.{i}.{e.field}" if e.field else f"tasks.{i}"
            e.message = f"tasks[{i}]: {e.message}"
            raise
    await s.admit(tenant(), len(news))
    try:
        results = await s.intake.create_many(news)
    except TooManyQueues as e:
        e.field = f"tasks.{e.index}.queue_name"
        raise
    return jsonify({"tasks": [{"task_id": str(r.task_id), "status": r.status.value,
                               "created": r.created, "conflict": r.conflict}
                              for r in results]})


def refuse_conflict(new: NewTask, result: CreateResult) -> CreateResult:
    """`result`, unless its dedup_key named a task made from a different request: 409."""
    if result.conflict:
        raise DedupConflict(new.dedup_key or "", str(result.task_id))
    return result


@operation(bp, "GET", "/api/v1/tasks", scope="tasks:read", tag="tasks",
           summary="List tasks, newest first, with filters and keyset pagination",
           query=schemas.TaskQuery, responses={200: schemas.TaskPage})
async def list_tasks() -> Response:
    q = parse_query(schemas.TaskQuery)
    f = TaskFilter(tenant=tenant(), status=q.status,
                   queue_name=tenant_queue(q.queue) if q.queue is not None else None,
                   name=q.name, handler=q.handler,
                   dedup_key=q.dedup_key, created_after=q.created_after,
                   created_before=q.created_before)
    budget = services().config.http.max_response_bytes
    async with pages.heavy_read(q.include_payload):
        tasks = await services().store.list_tasks(f, limit=q.limit, after=cursor.decode(q.cursor),
                                                  with_payload=q.include_payload,
                                                  max_payload_bytes=budget, payload_text=True)
        items = await pages.fit((task_json(t, with_payload=q.include_payload) for t in tasks),
                                budget)
    tasks = tasks.first(len(items))
    next_cursor = (cursor.encode(tasks[-1].created_at, tasks[-1].id)
                   if len(tasks) == q.limit or tasks.cut else None)
    return jsonify({"tasks": items, "next_cursor": next_cursor})


@operation(bp, "GET", "/api/v1/tasks/<uuid:task_id>", scope="tasks:read", tag="tasks",
           summary="A task with its runs; ?wait=N long-polls until it is final",
           query=schemas.GetTaskQuery, responses={200: schemas.TaskDetail},
           errors={404: "No such task"})
async def get_task(task_id: uuid.UUID) -> Response:
    tid = task_id
    q = parse_query(schemas.GetTaskQuery)
    s = services()
    deadline = trio.current_time() + q.wait
    if q.wait > 0:
        # Without Redis the wait still ends: distasks.daemon.waiters.poll wakes it. A Redis that
        # hangs delays the poll by WATCH_TIMEOUT_S at most.
        with contextlib.suppress(BrokerUnavailable), trio.move_on_after(WATCH_TIMEOUT_S):
            await s.broker.watch(str(tid), until_ms=times.ms(s.clock() + q.wait))
    while True:
        task, runs = await _own_task(tid, payload_text=True)
        if task.status in TERMINAL_TASK_STATUSES or trio.current_time() >= deadline:
            break
        with trio.move_on_at(min(deadline, trio.current_time() + WAIT_POLL_S)):
            await s.waiters.wait(tid)
    # The payload goes out as PostgreSQL returned it: a payload of the size limit decoded
    # and encoded again held the event loop for a tenth of a second (architecture §7).
    return jsonify({"task": JsonText(pages.dumps(task_json(task))),
                    "latest_run": latest_run_json(runs), "runs": [run_json(r) for r in runs]})


@operation(bp, "GET", "/api/v1/tasks/<uuid:task_id>/runs", scope="tasks:read", tag="tasks",
           summary="Every attempt of a task, oldest first", responses={200: schemas.RunList},
           errors={404: "No such task"})
async def get_runs(task_id: uuid.UUID) -> Response:
    _task, runs = await _own_task(task_id)
    return jsonify({"runs": [run_json(r) for r in runs]})


async def _own_task(task_id: uuid.UUID, *, payload_text: bool = False,
                    ) -> tuple[Task, list[TaskRun]]:
    """The task and its runs, if it is this principal's tenant's; another tenant's task
    is as absent as one that never was (404, not 403: its existence is not told)."""
    found = await services().store.get_task(task_id, payload_text=payload_text)
    if found is None or found[0].tenant != tenant():
        raise NotFound(f"no task with id {task_id}")
    return found


@operation(bp, "POST", "/api/v1/tasks/<uuid:task_id>/cancel", scope="tasks:cancel", tag="tasks",
           summary="Cancel a task: at once if waiting, within a second if running",
           body_required=False, body=schemas.CancelTask, responses={200: schemas.Cancelled},
           errors={404: "No such task"})
async def cancel_task(task_id: uuid.UUID) -> Response:
    tid = task_id
    req = parse_body(schemas.CancelTask, await read_body() or b"{}")
    s = services()
    done = await s.operations.cancel_task(tid, tenant=tenant(), actor=actor(),
                                          reason=req.reason, now=times.utc(s.clock()))
    if done is None:
        raise NotFound(f"no task with id {task_id}")
    return jsonify({"task_id": str(tid), "status": done.status.value,
                    "cancelled": done.cancelled})

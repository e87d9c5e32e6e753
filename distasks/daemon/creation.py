"""Creation: the rules every new task and workflow obeys, whoever asks for it (the API,
schedules, the outbox relay). Pure functions: what they need comes in as arguments, `now`
included, so they are tested without an app, a database or a clock."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from distasks.domain import ids
from distasks.domain.errors import InvalidInput, PayloadTooLarge, UnknownHandler
from distasks.domain.graph import Dependency, NewNode, NewWorkflow, OnParentFailure, check_graph
from distasks.domain.model import Json, NewTask, TaskType
from distasks.domain.task_definitions import CreateTask
from distasks.domain.tenancy import DEFAULT_TENANT, qualify
from distasks.domain.workflow_definitions import CreateWorkflow
from distasks.handlers import Registry
from distasks.handlers.http import HttpHandler
from distasks.store import dumps


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """What a client asks for, its types already checked (the API's schemas do that)."""

    name: str
    #: whose task (architecture §8); `queue_name` is as the tenant names it
    tenant: str = DEFAULT_TENANT
    handler: str | None = None
    type: TaskType = TaskType.IMMEDIATE
    queue_name: str = "default"
    priority: int = 0
    payload: Json = None
    dedup_key: str | None = None
    max_retries: int | None = None
    timeout_s: float | None = None
    run_at: datetime | None = None
    delay_s: float | None = None
    #: top-level payload keys to show redacted (architecture §7)
    secret_fields: tuple[str, ...] = ()
    #: runs sharing it count against the queue's max_running_per_key
    concurrency_key: str | None = None

@dataclass(frozen=True, slots=True)
class CreationRules:
    """The deployment's side: which handlers exist, and the defaults and limits."""

    registry: Registry
    default_handler: str
    default_max_retries: int
    max_payload_bytes: int
    #: tasks in one workflow, its on_failure task aside (limits.max_workflow_tasks)
    max_workflow_tasks: int = 10_000

def task_request(req: CreateTask, tenant: str) -> TaskRequest:
    """What a validated definition (an API create body, an outbox row) asks of `tenant`."""
    return TaskRequest(
        tenant=tenant, name=req.name, handler=req.handler, type=TaskType(req.type),
        queue_name=req.queue_name, priority=req.priority, payload=req.payload,
        dedup_key=req.dedup_key, max_retries=req.max_retries, timeout_s=req.timeout_seconds,
        run_at=req.run_at, delay_s=req.delay_seconds, secret_fields=tuple(req.secret_fields),
        concurrency_key=req.concurrency_key)

def new_task(req: TaskRequest, rules: CreationRules, *, now: datetime,
             day_of: uuid.UUID | None = None) -> NewTask:
    """The task `req` describes, with fresh ids (of `day_of`'s time, when given: a
    workflow's nodes share its day); InvalidInput naming the field when a rule refuses it
    (handler unknown, payload too large or not for its handler, timing not for its
    type)."""
    handler = req.handler or rules.default_handler
    registered = rules.registry.get(handler)
    if registered is None:
        raise UnknownHandler(handler)
    try:
        payload_json = dumps(req.payload)
    except ValueError:
        raise InvalidInput("payload must not contain NaN or Infinity", field="payload") from None
    size = len(payload_json.encode())
    if size > rules.max_payload_bytes:
        raise PayloadTooLarge(size, rules.max_payload_bytes)
    if req.secret_fields and not isinstance(req.payload, dict):
        raise InvalidInput("secret_fields names top-level keys of the payload, which must "
                           "then be a JSON object", field="payload")
    if isinstance(registered.fn, HttpHandler):
        try:
            registered.fn.check(req.payload)  # refuse a call that could never be made
        except InvalidInput as e:
            raise _without_secrets(e, req.secret_fields) from None
    task_id = ids.new_task_id() if day_of is None else ids.new_id_like(day_of)
    return NewTask(
        id=task_id, run_id=ids.new_run_id(task_id), name=req.name, handler=handler, type=req.type,
        tenant=req.tenant, queue_name=qualify(req.tenant, req.queue_name), priority=req.priority, payload=req.payload,
        payload_json=payload_json, dedup_key=req.dedup_key,
        max_retries=(req.max_retries if req.max_retries is not None
                     else rules.default_max_retries),
        timeout_s=req.timeout_s, run_at=_run_at(req, now),
        # Sorted, once each: the same marks in any order compare equal on a dedup_key.
        secret_fields=tuple(sorted(set(req.secret_fields))),
        concurrency_key=req.concurrency_key)

def new_workflow(req: CreateWorkflow, rules: CreationRules, *, tenant: str, now: datetime,
                 ) -> NewWorkflow:
    """The workflow a validated definition asks of `tenant`, every task under `rules`;
    InvalidInput naming the field of a bad task (`tasks.3.priority`), a cycle, an unknown
    or duplicate key, or a graph over `rules.max_workflow_tasks`."""
    limit = rules.max_workflow_tasks
    if len(req.tasks) > limit:  # before building thousands of tasks for nothing
        raise InvalidInput(f"{len(req.tasks)} tasks, over limits.max_workflow_tasks ({limit})",
                           field="tasks", code="workflow_too_large")
    # Every node's id has the workflow's time: all of a workflow's runs are in its day's
    # partition, which a read of the whole graph names (store/workflows.py).
    workflow_id = ids.new_task_id()
    nodes = []
    for i, item in enumerate(req.tasks):
        nodes.append(NewNode(item.key, _node_task(item, rules, tenant, f"tasks.{i}", now,
                                                  workflow_id), tuple(
            Dependency(d) if isinstance(d, str)
            else Dependency(d.key, OnParentFailure(d.on_parent_failure))
            for d in item.depends_on)))
    check_graph(nodes, max_tasks=limit)
    on_failure = None
    if req.on_failure is not None:
        if any(n.key == req.on_failure.key for n in nodes):
            raise InvalidInput(f"on_failure key {req.on_failure.key!r} is a task's key too",
                               field="on_failure.key", code="duplicate_key")
        on_failure = NewNode(req.on_failure.key,
                             _node_task(req.on_failure, rules, tenant, "on_failure", now,
                                        workflow_id))
    return NewWorkflow(id=workflow_id, name=req.name, tenant=tenant, nodes=tuple(nodes),
                       dedup_key=req.dedup_key, on_failure=on_failure)

def _node_task(item: CreateTask, rules: CreationRules, tenant: str, where: str,
               now: datetime, workflow_id: uuid.UUID) -> NewTask:
    """A node's task; its errors name where in the workflow (`tasks.3.priority`)."""
    if item.dedup_key is not None:
        raise InvalidInput("a workflow's task takes no dedup_key (give the workflow one)",
                           field=f"{where}.dedup_key")
    try:
        return new_task(task_request(item, tenant), rules, now=now, day_of=workflow_id)
    except InvalidInput as e:
        e.field = f"{where}.{e.field}" if e.field else where
        e.message = f"{where}: {e.message}"
        raise

def _without_secrets(e: InvalidInput, secret_fields: tuple[str, ...]) -> InvalidInput:
    """`e`, unless it is about a secret field: its message may quote the value (a URL's
    host, its port), so then one that only names the field."""
    secret = next((k for k in secret_fields if e.field is not None
                   and (e.field == f"payload.{k}" or e.field.startswith(f"payload.{k}."))), None)
    if secret is None:
        return e
    return InvalidInput(f"payload.{secret} (secret) is not valid for this handler",
                        field=e.field, code=e.code)

def _run_at(req: TaskRequest, now: datetime) -> datetime | None:
    if req.type is TaskType.DELAYED:
        if (req.run_at is None) == (req.delay_s is None):
            raise InvalidInput("a delayed task needs exactly one of run_at and delay_seconds",
                               field="run_at")
        return req.run_at or now + timedelta(seconds=req.delay_s or 0)
    if req.run_at is not None or req.delay_s is not None:
        field = "run_at" if req.run_at is not None else "delay_seconds"
        raise InvalidInput(f"{field} needs type \"delayed\"", field=field)
    return None

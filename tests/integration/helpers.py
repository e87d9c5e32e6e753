"""Builders shared by the integration tests."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from distasks.broker import Broker
from distasks.broker.base import cross
from distasks.domain import ids
from distasks.domain.graph import NewNode, NewWorkflow
from distasks.domain.model import NewTask, TaskType


def new_task(*, name: str = "t", handler: str = "demo", queue: str = "q", priority: int = 0,
             payload: Any = None, dedup_key: str | None = None, max_retries: int = 3,
             run_at: datetime | None = None, timeout_s: float | None = None,
             concurrency_key: str | None = None, day_of: uuid.UUID | None = None) -> NewTask:
    payload = {} if payload is None else payload
    task_id = ids.new_task_id() if day_of is None else ids.new_id_like(day_of)
    return NewTask(
        id=task_id, run_id=ids.new_run_id(task_id), name=name, handler=handler,
        type=TaskType.DELAYED if run_at else TaskType.IMMEDIATE, queue_name=queue,
        priority=priority, payload=payload, payload_json=json.dumps(payload),
        dedup_key=dedup_key, max_retries=max_retries, timeout_s=timeout_s, run_at=run_at,
        concurrency_key=concurrency_key)


def now() -> datetime:
    return datetime.now(UTC)


async def wait_until(check, *, interval_s: float = 0.02):
    """Re-evaluate the async `check` until it returns something truthy; the caller's
    fail_after bounds the wait. For state that lives in PostgreSQL or Redis."""
    import trio

    while not (result := await check()):  # noqa: ASYNC110 (no event to wait on in a database)
        await trio.sleep(interval_s)
    return result


async def forget_everything(broker: Broker) -> None:
    """Delete every key of the broker's prefix, on every master of a cluster: Redis as
    after a restart without persistence."""
    pattern = f"{broker._prefix}:*"
    if broker.is_cluster:
        keys = await cross(broker._redis.keys, pattern, target_nodes="primaries")
    else:
        keys = await broker.raw("keys", pattern)
    for key in keys:
        await broker.raw("delete", key)


def new_workflow(name: str, nodes: tuple[NewNode, ...], **kw: Any) -> NewWorkflow:
    """A workflow of `nodes` whose tasks get ids of its day, as creation.new_workflow
    makes them (the store refuses a graph that spans days)."""
    wf = ids.new_task_id()

    def of_its_day(node: NewNode) -> NewNode:
        task_id = ids.new_id_like(wf)
        return dataclasses.replace(node, task=dataclasses.replace(
            node.task, id=task_id, run_id=ids.new_run_id(task_id)))

    return NewWorkflow(id=wf, name=name, tenant="default",
                       nodes=tuple(of_its_day(n) for n in nodes), **kw)

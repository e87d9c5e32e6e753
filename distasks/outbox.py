"""Transactional enqueue for applications on psycopg 3 (architecture §10, docs/outbox.md).

`enqueue(conn, ...)` hands a task over in the caller's transaction: it inserts a row
into the application database's outbox (`distasks outbox install` creates it) through
`distasks.enqueue(...)`, so the row commits or rolls back with the application's own
writes. A daemon's relay then creates the task, exactly once, and deletes the row. The
arguments are the fields of `POST /api/v1/tasks`; nothing is checked here: a row
distasks refuses is moved to `distasks.outbox_rejected` with the reason.
`enqueue_workflow(conn, ...)` does the same for a workflow (`distasks.enqueue_workflow`,
the fields of `POST /api/v1/workflows`). Each has an `_async` twin for an
`AsyncConnection`; both build the same call.

    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("INSERT INTO orders ...")
        enqueue(conn, "ship order 42", handler="ship", payload={"order": 42})
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

# The call; each argument cast so that a None is typed (the function has one signature).
ENQUEUE = """
SELECT distasks.enqueue(
    name => %(name)s::text, handler => %(handler)s::text, payload => %(payload)s::jsonb,
    queue_name => %(queue_name)s::text, priority => %(priority)s::integer,
    dedup_key => %(dedup_key)s::text, max_retries => %(max_retries)s::integer,
    timeout_seconds => %(timeout_seconds)s::float8, run_at => %(run_at)s::timestamptz,
    delay_seconds => %(delay_seconds)s::float8, secret_fields => %(secret_fields)s::text[],
    concurrency_key => %(concurrency_key)s::text)
"""

# The call; a None argument is a typed null, as for ENQUEUE.
ENQUEUE_WORKFLOW = """
SELECT distasks.enqueue_workflow(
    name => %(name)s::text, tasks => %(tasks)s::jsonb, dedup_key => %(dedup_key)s::text,
    on_failure => %(on_failure)s::jsonb)
"""

#: the payload when none is given: an empty object, as in the API
EMPTY: Any = {}


def _params(name: str, handler: str | None, payload: Any, queue_name: str, priority: int,
            dedup_key: str | None, max_retries: int | None, timeout_seconds: float | None,
            run_at: datetime | None, delay_seconds: float | None,
            secret_fields: Sequence[str], concurrency_key: str | None) -> dict[str, Any]:
    return {"name": name, "handler": handler, "payload": Jsonb(payload),
            "queue_name": queue_name, "priority": priority, "dedup_key": dedup_key,
            "max_retries": max_retries, "timeout_seconds": timeout_seconds, "run_at": run_at,
            "delay_seconds": delay_seconds,
            "secret_fields": list(secret_fields) if secret_fields else None,
            "concurrency_key": concurrency_key}


def enqueue(conn: psycopg.Connection[Any], name: str, *, handler: str | None = None,
            payload: Any = EMPTY, queue_name: str = "default", priority: int = 0,
            dedup_key: str | None = None, max_retries: int | None = None,
            timeout_seconds: float | None = None, run_at: datetime | None = None,
            delay_seconds: float | None = None, secret_fields: Sequence[str] = (),
            concurrency_key: str | None = None) -> uuid.UUID:
    """Hand a task over in `conn`'s current transaction; returns the outbox row's id.
    A delayed task is one given `run_at` or `delay_seconds`. Raises psycopg's errors
    (the outbox schema missing: psycopg.errors.UndefinedFunction)."""
    row = conn.execute(ENQUEUE, _params(
        name, handler, payload, queue_name, priority, dedup_key, max_retries,
        timeout_seconds, run_at, delay_seconds, secret_fields, concurrency_key)).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


async def enqueue_async(conn: psycopg.AsyncConnection[Any], name: str, *,
                        handler: str | None = None, payload: Any = EMPTY,
                        queue_name: str = "default", priority: int = 0,
                        dedup_key: str | None = None, max_retries: int | None = None,
                        timeout_seconds: float | None = None, run_at: datetime | None = None,
                        delay_seconds: float | None = None, secret_fields: Sequence[str] = (),
                        concurrency_key: str | None = None) -> uuid.UUID:
    """`enqueue` on an asyncio connection."""
    cur = await conn.execute(ENQUEUE, _params(
        name, handler, payload, queue_name, priority, dedup_key, max_retries,
        timeout_seconds, run_at, delay_seconds, secret_fields, concurrency_key))
    row = await cur.fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def _workflow_params(name: str, tasks: Sequence[Mapping[str, Any]], dedup_key: str | None,
                     on_failure: Mapping[str, Any] | None) -> dict[str, Any]:
    return {"name": name, "tasks": Jsonb([dict(t) for t in tasks]), "dedup_key": dedup_key,
            "on_failure": Jsonb(dict(on_failure)) if on_failure is not None else None}


def enqueue_workflow(conn: psycopg.Connection[Any], name: str,
                     tasks: Sequence[Mapping[str, Any]], *, dedup_key: str | None = None,
                     on_failure: Mapping[str, Any] | None = None) -> uuid.UUID:
    """Hand a workflow over in `conn`'s current transaction; returns the outbox row's id.
    `tasks` are the items of `POST /api/v1/workflows`'s `tasks` (`key`, `depends_on` and
    a create body's fields), `on_failure` its task run if the workflow fails. Raises
    psycopg's errors (the schema missing or older than workflows:
    psycopg.errors.UndefinedFunction; run `distasks outbox install` again)."""
    row = conn.execute(ENQUEUE_WORKFLOW, _workflow_params(
        name, tasks, dedup_key, on_failure)).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


async def enqueue_workflow_async(conn: psycopg.AsyncConnection[Any], name: str,
                                 tasks: Sequence[Mapping[str, Any]], *,
                                 dedup_key: str | None = None,
                                 on_failure: Mapping[str, Any] | None = None) -> uuid.UUID:
    """`enqueue_workflow` on an asyncio connection."""
    cur = await conn.execute(ENQUEUE_WORKFLOW, _workflow_params(
        name, tasks, dedup_key, on_failure))
    row = await cur.fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))

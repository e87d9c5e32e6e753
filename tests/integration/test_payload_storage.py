"""Payloads are stored as they were measured (architecture §3, "Payloads are stored as
text"): the size limit bounds what PostgreSQL holds and returns, and numbers come back as
sent, floats as floats."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import psycopg
import pydantic
import trio

from distasks.daemon.creation import CreationRules, TaskRequest, new_task
from distasks.domain.model import NewTask
from distasks.handlers import builtin_registry

LIMIT = 64 * 1024

RULES = CreationRules(registry=builtin_registry(), default_handler="demo",
                      default_max_retries=3, max_payload_bytes=LIMIT)


def created(body: str) -> NewTask:
    """The task a create body's payload makes, parsed as the API parses it (pydantic)."""
    payload = pydantic.TypeAdapter(object).validate_json(body)
    return new_task(TaskRequest(name="numbers", payload=payload), RULES,
                    now=datetime.now(UTC))


async def stored_text(pg_dsn: str, task_id: object) -> str:
    """The payload's text as PostgreSQL returns it."""
    def read() -> str:
        with psycopg.connect(pg_dsn) as conn:
            row = conn.execute("SELECT payload::text FROM tasks WHERE id = %s",
                               (task_id,)).fetchone()
            assert row is not None
            return str(row[0])
    return await trio.to_thread.run_sync(read)


async def test_numbers_that_jsonb_would_expand_are_stored_at_their_measured_size(
        store, pg_dsn):
    """51 KB of 1e308 under a 64 KB limit: jsonb printed each as 309 digits (2.6 MB)."""
    body = json.dumps({"a": [1e308] * 7300})
    assert len(body) < LIMIT
    with trio.fail_after(10):
        t = created(body)
        await store.create_tasks([t])
        text = await stored_text(pg_dsn, t.id)
    assert len(text.encode()) == len(t.payload_json.encode()) <= LIMIT


async def test_numbers_come_back_as_sent(store):
    body = ('{"half": 1.5, "two": 2.0, "big": 1e308, "tiny": 1e-300, "e16": 1e16,'
            ' "int": 12345678901234567890123456789, "neg": -0.5, "zero": 0}')
    with trio.fail_after(10):
        t = created(body)
        await store.create_tasks([t])
        task, _ = await store.get_task(t.id)
    assert task.payload == t.payload
    # Equal is not enough (2.0 == 2): each number keeps its type, floats stay floats.
    assert {k: type(v) for k, v in task.payload.items()} == {
        "half": float, "two": float, "big": float, "tiny": float, "e16": float,
        "int": int, "neg": float, "zero": int}
    assert json.dumps(task.payload) == json.dumps(t.payload)

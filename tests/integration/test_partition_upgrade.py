"""Migration 0015 applied to a deployment that is running: history written before it
stays readable (the legacy partitions), writers of the release before (random ids, no
bucket) go on through the upgrade without an error, and this release's reads find both."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import psycopg
import trio

from distasks.store import Store, migrate

from .helpers import new_task

BEFORE = 14  # the last migration of the release before partitioning


def old_schema(dsn: str) -> None:
    async def apply() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await migrate.apply(conn, until=BEFORE)

    asyncio.run(apply())


def upgrade(dsn: str) -> list[int]:
    async def apply() -> list[int]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await migrate.apply(conn, until=15)

    return asyncio.run(apply())


def write_as_the_release_before(conn: psycopg.Connection) -> uuid.UUID:
    """What a daemon of the release before writes for a create and its audit row."""
    task_id = uuid.uuid4()
    with conn.transaction():
        conn.execute("INSERT INTO tasks (id, name, handler, type, queue_name, payload,"
                     " max_retries) VALUES (%s, 'old', 'demo', 'immediate', 'q', '{}', 3)",
                     (task_id,))
        conn.execute("INSERT INTO task_runs (id, task_id, attempt) VALUES (%s, %s, 1)",
                     (uuid.uuid4(), task_id))
        conn.execute("INSERT INTO audit_log (at, actor, action) VALUES (now(), 'old', 'create')")
    return task_id


async def test_the_upgrade_keeps_history_and_old_writers_going(app_dsn, aio_loop):
    dsn = app_dsn
    await trio.to_thread.run_sync(old_schema, dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = [write_as_the_release_before(conn) for _ in range(50)]

    written: list[uuid.UUID] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                try:
                    written.append(write_as_the_release_before(conn))
                except psycopg.Error as e:  # pragma: no cover - what the test is about
                    errors.append(e)
                time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        await trio.sleep(0.3)
        applied = await trio.to_thread.run_sync(upgrade, dsn)
        during = len(written)
        await trio.sleep(0.3)
    finally:
        stop.set()
        await trio.to_thread.run_sync(thread.join)
    assert applied == [15]
    assert errors == []
    assert len(written) > during > 0  # writes before, and after, the migration

    async with Store.open(dsn, min_size=1, max_size=2) as store:
        # The history from before, and the old writers' rows, read through the new
        # statements (bucket 0: the legacy partition, or the default one).
        for task_id in before[:5] + written[-5:]:
            _, runs = await store.get_task(task_id)
            assert [r.attempt for r in runs] == [1]
        # This release's creates go to today's partition.
        [created] = await store.create_tasks([new_task(queue="q")])
    with psycopg.connect(dsn, autocommit=True) as conn:
        where = conn.execute("SELECT tableoid::regclass::text FROM task_runs WHERE task_id = %s",
                             (created.task_id,)).fetchone()
        counts = conn.execute("SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM task_runs),"
                              " (SELECT count(*) FROM audit_log)").fetchone()
    assert where is not None and where[0].startswith("task_runs_d")
    assert counts is not None and counts == (len(before) + len(written) + 1,) * 2 + (
        len(before) + len(written),)

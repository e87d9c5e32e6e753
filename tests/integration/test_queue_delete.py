"""Queue delete against PostgreSQL: refused while anything is left in the queue, and a
create that races it keeps its queue row (the reconciler rebuilds only the queues of
that table)."""

from __future__ import annotations

import psycopg
import pytest
import trio

from distasks.broker import Broker, QueueEntries
from distasks.domain.errors import NotFound, QueueNotEmpty, TooManyQueues
from distasks.domain.model import Actor
from distasks.store import Store

from .helpers import new_task, now, wait_until

ADMIN = Actor("test")


async def test_delete_is_refused_while_a_task_is_unfinished_and_audited_once_done(
        store: Store):
    with trio.fail_after(10):
        with pytest.raises(NotFound):
            await store.delete_queue("q", actor=ADMIN, now=now())
        [created] = await store.create_tasks([new_task(queue="q")])
        with pytest.raises(QueueNotEmpty) as refused:
            await store.delete_queue("q", actor=ADMIN, now=now())
        assert "1 unfinished and 0 dead-lettered" in refused.value.message
        await store.cancel_task(created.task_id, tenant="default", actor=ADMIN, reason=None,
                                now=now())
        await store.delete_queue("q", actor=ADMIN, now=now())
        assert await store.queue_names() == []
        [entry] = await store.audit_entries(tenant="default", action="queue_delete", limit=10)
        assert (entry.actor, entry.queue_name) == ("test", "q")


async def test_a_pause_of_a_new_queue_beyond_the_cap_is_refused_exactly(store: Store):
    with trio.fail_after(10):
        await store.set_paused("a", True, actor=ADMIN, now=now(), max_queues=2)
        await store.set_paused("acme/a", True, actor=ADMIN, now=now(), max_queues=1)
        await store.set_paused("b", True, actor=ADMIN, now=now(), max_queues=2)
        await store.set_paused("b", False, actor=ADMIN, now=now(), max_queues=2)
        with pytest.raises(TooManyQueues):
            await store.set_paused("c", True, actor=ADMIN, now=now(), max_queues=2)
        with pytest.raises(TooManyQueues):
            await store.set_paused("acme/b", True, actor=ADMIN, now=now(), max_queues=1)
        assert sorted(await store.queue_names()) == ["a", "acme/a", "b"]


async def test_a_create_racing_a_delete_writes_the_queue_row_back(store: Store, pg_dsn: str):
    await store.set_paused("r", False, actor=ADMIN, now=now())
    deleter = await trio.to_thread.run_sync(psycopg.connect, pg_dsn)
    watcher = await trio.to_thread.run_sync(lambda: psycopg.connect(pg_dsn, autocommit=True))
    try:
        with trio.fail_after(10):
            # The delete's transaction, past its check: the row locked and deleted.
            await trio.to_thread.run_sync(lambda: (
                deleter.execute("SELECT name FROM queues WHERE name = 'r' FOR UPDATE"),
                deleter.execute("DELETE FROM queues WHERE name = 'r'")))

            async def lock_waiters() -> int:
                row = await trio.to_thread.run_sync(lambda: watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'").fetchone())
                return row[0] if row else 0

            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.create_tasks, [new_task(queue="r")])
                await wait_until(lock_waiters)  # the create waits for the delete
                await trio.to_thread.run_sync(deleter.commit)
            assert await store.queue_names() == ["r"]
    finally:
        await trio.to_thread.run_sync(deleter.close)
        await trio.to_thread.run_sync(watcher.close)


async def test_forgetting_a_queue_in_redis_keeps_the_ids_postgresql_still_needs(
        store: Store, broker: Broker):
    with trio.fail_after(10):
        # A create that raced the delete: its run is queued and was pushed.
        new = new_task(queue="r")
        await store.create_tasks([new])
        await broker.dispatch(ready=[("r", str(new.run_id), 0)])
        await broker.dispatch(ready=[("r", "not-a-run-id", 0)])
        await broker.set_paused("r", True)
        entries = await broker.queue_entries("r")
        live_runs, live_dead = await store.live_entries(entries.runs, entries.dead)
        assert (live_runs, live_dead) == ({str(new.run_id)}, set())
        await broker.forget_queue("r", QueueEntries(runs=entries.runs - live_runs))
        assert await broker.queue_entries("r") == QueueEntries(runs=frozenset({str(new.run_id)}))
        assert (await broker.queue_depths(["r"]))["r"]["paused"] is False

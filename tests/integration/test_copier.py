"""The copy of committed creates into Redis after their answer (daemon/copier.py): in
commit order, batched, marked dispatched, finished before the intake exits, and left to
the reconciler when Redis is away."""

from __future__ import annotations

from datetime import timedelta

import trio

from distasks.broker import Broker
from distasks.daemon.copier import Copier
from distasks.daemon.intake import Intake

from .helpers import new_task, now


async def undispatched(store) -> list[str]:
    return [str(p.run_id) for p in await store.undispatched_runs(
        created_before=now() + timedelta(hours=1), limit=1000)]


async def test_creates_answered_just_before_shutdown_are_in_redis_once_the_intake_exits(
        store, broker):
    tasks = [new_task() for _ in range(20)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker)
            await nursery.start(intake.run)
            async with trio.open_nursery() as callers:
                for t in tasks:
                    callers.start_soon(intake.create, t)
            nursery.cancel_scope.cancel()  # at once: the copies may not have happened yet
        ready = await broker.raw("lrange", broker.keys("q").ready, 0, -1)
    assert sorted(ready) == sorted(str(t.run_id) for t in tasks)
    assert await undispatched(store) == []


async def test_one_flush_pushes_everything_waiting_in_commit_order_and_marks_it(
        store, broker):
    first, second = [new_task() for _ in range(3)], [new_task(queue="other")]
    delayed = new_task(run_at=now() + timedelta(hours=1))
    await store.create_tasks([*first, *second, delayed])
    copier = Copier(store, broker)
    copier.add([("q", str(t.run_id), 0) for t in first], [], [t.run_id for t in first])
    copier.add([("other", str(t.run_id), 0) for t in second],
               [("q", str(delayed.run_id), 1, 0)], [second[0].run_id, delayed.run_id])
    assert copier.waiting == 5
    with trio.fail_after(10):
        await copier.flush()
        ready = await broker.raw("lrange", broker.keys("q").ready, 0, -1)
        other = await broker.raw("lrange", broker.keys("other").ready, 0, -1)
        due = await broker.raw("zrange", broker.keys("q").delayed, 0, -1)
        left = await undispatched(store)
    assert ready == [str(t.run_id) for t in first]
    assert other == [str(second[0].run_id)] and due == [str(delayed.run_id)]
    assert copier.waiting == 0 and left == []


async def test_a_copy_redis_refuses_is_left_undispatched_for_the_reconciler(store, config):
    t = new_task()
    await store.create_tasks([t])
    with trio.fail_after(20):
        # Port 1 on loopback: nothing listens, every command fails at once.
        async with Broker.open("redis://127.0.0.1:1/0", prefix=config.redis.prefix) as away:
            copier = Copier(store, away)
            copier.add([("q", str(t.run_id), 0)], [], [t.run_id])
            await copier.flush()  # logged and deferred, never raised
        left = await undispatched(store)
    assert left == [str(t.run_id)]

"""The DLQ's depth as the queue list shows it agrees with the DLQ listing, PostgreSQL being
the truth, and the reconciler repairs a Redis DLQ index that lost or gained an entry
(issue 15, item 7: "11 vs 9" after a Redis entry was dropped)."""

from __future__ import annotations

import time
from datetime import timedelta

import trio

from distasks.daemon import reaper, reconciler
from distasks.daemon.queue_state import queue_states
from distasks.domain.retry import RetryPolicy

from .helpers import new_task, now

POLICY = RetryPolicy(base_s=0.05, cap_s=0.1, jitter=0.0)
# Tasks dead-lettered in the test queue.
DEAD = 3


async def dead_letter(store, broker, queue: str, count: int) -> list[str]:
    """`count` tasks of `queue` failed for good (their lease expired with no retries
    left), indexed in Redis as the reaper does it; their ids, oldest first."""
    tasks = [new_task(queue=queue, max_retries=0) for _ in range(count)]
    await store.create_tasks(tasks)
    await store.start_runs([t.run_id for t in tasks], worker_id="dead", now=now(),
                           lease_until=now() - timedelta(seconds=1))
    await reaper.reap_once(store, broker, [queue], now_s=time.time(), policy=POLICY)
    return [str(i) for i in await store.dead_task_ids(queue)]


async def test_the_queue_lists_dlq_depth_is_postgresqls_after_redis_dropped_an_entry(
        store, broker):
    with trio.fail_after(10):
        ids = await dead_letter(store, broker, "q", DEAD)
        assert sorted(await broker.raw("lrange", broker.keys("q").dlq, 0, -1)) == sorted(ids)
        await broker.raw("lrem", broker.keys("q").dlq, 1, ids[1])  # Redis loses one

        states = await queue_states(store, broker, ["q"], now=now())
        listed = await store.dead_task_ids("q")

    assert states["q"].dlq == len(listed) == DEAD


async def test_the_reconciler_repairs_a_dlq_index_that_lost_or_gained_entries(store, broker):
    with trio.fail_after(10):
        ids = await dead_letter(store, broker, "q", DEAD)
        others = await dead_letter(store, broker, "r", 1)
        dlq = broker.keys("q").dlq
        await broker.raw("lrem", dlq, 1, ids[0])
        await reconciler.reconcile_once(store, broker, now_s=time.time(), grace_s=60)
        repaired = await broker.raw("lrange", dlq, 0, -1)

        await broker.raw("rpush", dlq, ids[2])  # a duplicate, as a racing mirror may leave
        await store.create_tasks([new_task(queue="empty")])  # a queue with no dead task
        await broker.raw("rpush", broker.keys("empty").dlq, "stale")
        await reconciler.reconcile_once(store, broker, now_s=time.time(), grace_s=60)
        deduplicated = await broker.raw("lrange", dlq, 0, -1)
        empty = await broker.raw("llen", broker.keys("empty").dlq)
        untouched = await broker.raw("lrange", broker.keys("r").dlq, 0, -1)

    assert repaired == ids and deduplicated == ids
    assert empty == 0 and untouched == others


async def test_the_running_reconciler_repairs_only_drift_seen_on_two_checks(store, broker):
    """A dead-lettering between its commit and its copy into Redis looks like drift for
    a moment: the loop's checks rebuild a list only when it differed the time before."""
    with trio.fail_after(10):
        ids = await dead_letter(store, broker, "q", DEAD)
        dlq = broker.keys("q").dlq
        await broker.raw("lrem", dlq, 1, ids[0])
        suspects: set[str] = set()
        first = await reconciler.repair_dlq_index(store, broker, suspects)
        after_first = await broker.raw("llen", dlq)
        second = await reconciler.repair_dlq_index(store, broker, suspects)
        repaired = await broker.raw("lrange", dlq, 0, -1)
        third = await reconciler.repair_dlq_index(store, broker, suspects)

    assert (first, after_first) == (0, DEAD - 1)
    assert (second, repaired) == (1, ids)
    assert third == 0 and suspects == set()

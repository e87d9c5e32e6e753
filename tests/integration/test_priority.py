"""Priority orders dispatch: within a queue a higher priority is claimed first and equal
priorities stay FIFO, on every way a run reaches the ready lists (push, due, retry,
hand-back, DLQ replay, rebuild) and past start-at-create."""

from __future__ import annotations

import random
import uuid

import pytest
import trio

from distasks.broker import Broker, Settlement
from distasks.daemon import reconciler
from distasks.daemon.intake import Intake
from distasks.daemon.metrics import Metrics
from distasks.daemon.operations import Operations
from distasks.domain.model import SYSTEM, RunStatus, TaskStatus
from distasks.handlers import builtin_registry
from distasks.store import DlqFilter, Failed, Fence, Outcomes

from .helpers import new_task, now, wait_until
from .test_worker import final, make_pool


async def claim_all(broker: Broker, queue: str = "q", *, batch: int = 3) -> list[str]:
    """Every ready id of `queue`, claimed `batch` at a time, in claim order."""
    claimed: list[str] = []
    while items := await broker.claim(queue, count=batch, lease_until_ms=9000, block=False):
        claimed.extend(items)
    return claimed


def in_claim_order(pushed: list[tuple[str, int]]) -> list[str]:
    """Highest priority first, then the order pushed (a stable sort)."""
    return [run_id for run_id, _ in sorted(pushed, key=lambda x: -x[1])]


@pytest.mark.parametrize(
    ("pushed", "batch"),
    [
        ([("a", 0), ("b", 0), ("c", 0)], 2),
        ([("low", -1), ("mid", 0), ("high", 5)], 1),
        ([("a", 2), ("b", 7), ("c", 2), ("d", -3), ("e", 7), ("f", 0), ("g", -3)], 3),
        ([("max", 2**31 - 1), ("min", -(2**31)), ("zero", 0)], 10),
    ],
)
async def test_claim_takes_the_highest_priority_first_and_equals_in_order(
        broker, pushed, batch):
    with trio.fail_after(5):
        await broker.dispatch(ready=[("q", run_id, p) for run_id, p in pushed])
        claimed = await claim_all(broker, batch=batch)
        leased = await broker.raw("zrange", broker.keys("q").leases, 0, -1)
        left = await broker.raw("exists", broker.keys("q").bands, broker.keys("q").bell)
    assert claimed == in_claim_order(pushed)
    assert sorted(leased) == sorted(run_id for run_id, _ in pushed)
    assert left == 0  # every band emptied, the bell taken down


async def test_a_thousand_runs_of_random_priorities_claim_in_order(broker):
    rnd = random.Random(18)
    pushed = [(f"r{i:04d}", rnd.randrange(-5, 6)) for i in range(1000)]
    with trio.fail_after(10):
        for i in range(0, 1000, 100):
            await broker.dispatch(ready=[("q", run_id, p) for run_id, p in pushed[i:i + 100]])
        depths = await broker.depths("q")
        claimed = await claim_all(broker, batch=37)
    assert depths["ready"] == 1000
    assert claimed == in_claim_order(pushed)


async def test_a_higher_priority_pushed_later_is_claimed_before_older_ones(broker):
    with trio.fail_after(5):
        await broker.dispatch(ready=[("q", "old1", 0), ("q", "old2", 0)])
        first = await broker.claim("q", count=1, lease_until_ms=1, block=False)
        await broker.dispatch(ready=[("q", "urgent", 9)])
        rest = await claim_all(broker, batch=5)
    assert first == ["old1"]
    assert rest == ["urgent", "old2"]


async def test_a_handed_back_run_goes_to_the_head_of_its_own_priority(broker):
    with trio.fail_after(5):
        await broker.dispatch(ready=[("q", "h1", 5), ("q", "h2", 5), ("q", "z", 0)])
        taken = await broker.claim("q", count=1, lease_until_ms=1, block=False)
        await broker.dispatch(ready=[("q", "h3", 5), ("q", "top", 6)])
        handed_back = await broker.requeue("q", taken)
        claimed = await claim_all(broker, batch=2)
    assert taken == ["h1"] and handed_back == 1
    assert claimed == ["top", "h1", "h2", "h3", "z"]


async def test_due_delayed_runs_keep_their_priority(broker):
    with trio.fail_after(5):
        await broker.dispatch(ready=[("q", "ready0", 0)], delayed=[
            ("q", "d-low", 10, -2), ("q", "d-high", 20, 4), ("q", "d-zero", 30, 0),
            ("q", "d-later", 10_000, 4)])
        moved = await broker.move_due("q", now_ms=100, limit=10, lock_ms=1000)
        claimed = await claim_all(broker)
        priorities = await broker.raw("hgetall", broker.keys("q").priorities)
    assert moved == 3
    assert claimed == ["d-high", "ready0", "d-zero", "d-low"]
    # Claimed runs keep their entry while leased (a hand-back needs it); the one still
    # delayed keeps its own.
    assert priorities == {"d-high": "4", "d-low": "-2", "d-later": "4"}


async def test_settled_retries_and_hand_backs_keep_their_priority(broker):
    with trio.fail_after(5):
        await broker.dispatch(ready=[("q", "a", 3), ("q", "b", 0)])
        claimed = await claim_all(broker)
        await broker.dispatch(ready=[("q", "waiting0", 0), ("q", "waiting3", 3)])
        await broker.settle(Settlement(
            unleased={"q": ["a", "b"]},
            delayed={"q": [(50, "a-retry", 3)]}, urgent={"q": [("b-again", 0)]}, now_ms=10))
        moved = await broker.move_due("q", now_ms=100, limit=10, lock_ms=1000)
        order = await claim_all(broker)
        priorities = await broker.raw("hgetall", broker.keys("q").priorities)
    assert claimed == ["a", "b"] and moved == 1
    assert order == ["waiting3", "a-retry", "b-again", "waiting0"]
    assert priorities == {"waiting3": "3", "a-retry": "3"}  # "a" went with its lease


async def test_cancel_withdraws_a_waiting_run_of_any_priority(broker):
    with trio.fail_after(5):
        await broker.dispatch(ready=[("q", "x", 2), ("q", "y", 2), ("q", "z", 0)],
                              delayed=[("q", "later", 500, -1)])
        await broker.cancelled(waiting=[("q", "x"), ("q", "later"), ("q", "z")],
                               running=None, task_id="t", now_ms=1)
        depths = await broker.depths("q")
        claimed = await claim_all(broker)
        priorities = await broker.raw("hgetall", broker.keys("q").priorities)
    assert depths["ready"] == 1 and depths["delayed"] == 0
    assert claimed == ["y"] and priorities == {"y": "2"}


async def test_entries_of_the_layout_before_priorities_are_claimed_as_priority_0(broker):
    """A Redis upgraded in place holds plain `ready` lists and no bell: nothing is lost,
    and they take their place among the priorities as 0."""
    keys = broker.keys("q")
    with trio.fail_after(5):
        await broker.raw("rpush", keys.ready, "old1", "old2")
        await broker.dispatch(ready=[("q", "new-high", 1), ("q", "new-low", -1)])
        claimed = await claim_all(broker, batch=10)
    assert claimed == ["new-high", "old1", "old2", "new-low"]


async def test_queue_depths_count_every_priority_and_give_each_head(broker):
    with trio.fail_after(5):
        await broker.dispatch(ready=[("q", "a", 0), ("q", "b", 4), ("q", "c", 4),
                                     ("q", "d", -7)])
        depths = await broker.queue_depths(["q", "empty"])
    assert depths["q"]["ready"] == 4 and depths["q"]["heads"] == ["b", "a", "d"]
    assert depths["empty"]["ready"] == 0 and depths["empty"]["heads"] == []


async def test_a_rebuild_restores_each_run_at_its_priority(store, broker):
    tasks = [new_task(priority=p) for p in (0, 3, 3, -1, 8, 0)]
    with trio.fail_after(10):
        await store.create_tasks(tasks)
        added = await reconciler.rebuild(store, broker, now_s=now().timestamp() + 1)
        claimed = await claim_all(broker)
    assert added == len(tasks)
    want = [str(t.run_id) for t in sorted(tasks, key=lambda t: -t.priority)]
    # Equal priorities come back in their order of availability (created in one
    # statement here: then by run id), so compare the priority sequence and the set.
    by_run = {str(t.run_id): t.priority for t in tasks}
    assert [by_run[r] for r in claimed] == [by_run[r] for r in want]
    assert sorted(claimed) == sorted(want)


async def test_runs_pushed_by_the_reconciler_keep_their_priority(store, broker):
    tasks = [new_task(priority=p) for p in (1, 9, 5)]
    with trio.fail_after(10):
        await store.create_tasks(tasks)  # committed, never pushed
        pushed = await reconciler.dispatch_pending(store, broker, now_s=now().timestamp(),
                                                   grace_s=-60)
        claimed = await claim_all(broker)
    assert pushed == 3
    assert claimed == [str(tasks[1].run_id), str(tasks[2].run_id), str(tasks[0].run_id)]


async def test_dlq_replay_pushes_at_the_override_priority(store, broker):
    ops = Operations(store=store, broker=broker, metrics=Metrics())
    dead, waiting = new_task(max_retries=0, priority=0), new_task(priority=5)
    with trio.fail_after(10):
        await store.create_tasks([dead])
        await store.start_runs([dead.run_id], worker_id="w", now=now(), lease_until=now())
        await store.record_outcomes(Outcomes(failed=[Failed(dead.run_id, Fence("w"), "x", now())]))
        await store.create_tasks([waiting])
        await broker.dispatch(ready=[("q", str(waiting.run_id), 5)])
        [(task_id, run_id)] = await ops.replay_dlq(
            "q", DlqFilter(), limit=10, override_priority=7, actor=SYSTEM, now=now(),
            dry_run=False)
        claimed = await claim_all(broker)
        task, _ = await store.get_task(dead.id)
    assert task_id == dead.id and task.priority == 7
    assert claimed == [str(run_id), str(waiting.run_id)]


async def test_a_pool_with_one_executor_runs_a_backlog_in_priority_order(
        config, store, broker):
    registry = builtin_registry()
    seen: list[uuid.UUID] = []

    async def record(ctx):
        seen.append(ctx.task.id)

    registry.add("record", record)
    rnd = random.Random(3)
    tasks = [new_task(handler="record", priority=rnd.randrange(4)) for _ in range(60)]
    with trio.fail_after(20):
        await store.create_tasks(tasks)
        await broker.dispatch(ready=[("q", str(t.run_id), t.priority) for t in tasks])
        pool = make_pool(config, store, broker, registry, concurrency=1, claim_batch=1)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            for t in tasks:
                await wait_until(lambda t=t: final(store, t.id))
            nursery.cancel_scope.cancel()
    assert seen == [t.id for t in sorted(tasks, key=lambda t: -t.priority)]


async def test_start_at_create_does_not_overtake_a_backlog_in_redis(config, store, broker):
    """A create finding an idle executor starts its run at once only when the queue's
    last claim found nothing more waiting; behind a backlog it goes through Redis and
    takes its place by priority."""
    registry = builtin_registry()
    gate = trio.Event()
    seen: list[str] = []

    async def record(ctx):
        seen.append(ctx.task.name)
        await gate.wait()

    registry.add("record", record)
    backlog = [new_task(name=f"high{i}", handler="record", priority=5) for i in range(3)]
    with trio.fail_after(20):
        await store.create_tasks(backlog)
        await broker.dispatch(ready=[("q", str(t.run_id), 5) for t in backlog])
        pool = make_pool(config, store, broker, registry, concurrency=1, claim_batch=1)
        intake = Intake(store, broker, pool=pool)
        async with trio.open_nursery() as nursery:
            await nursery.start(intake.run)
            await nursery.start(pool.run)
            await wait_until(lambda: trio.to_thread.run_sync(lambda: bool(seen)))
            # high0 runs; its executor frees once the gate opens, and the create races it.
            gate.set()
            low = await intake.create(new_task(name="low", handler="record", priority=1))
            await wait_until(lambda: final(store, low.task_id))
            for t in backlog:
                await wait_until(lambda t=t: final(store, t.id))
            nursery.cancel_scope.cancel()
        task, runs = await store.get_task(low.task_id)
    assert not low.started
    assert seen == ["high0", "high1", "high2", "low"]
    assert task.status is TaskStatus.COMPLETED and [r.status for r in runs] == [RunStatus.SUCCEEDED]


async def test_pushes_survive_redis_losing_its_script_cache(broker):
    """push.lua runs by SHA inside pipelines (and a DLQ replay's transaction): a Redis
    that lost its scripts runs them again on their own."""
    with trio.fail_after(5):
        await broker.raw("script_flush")
        await broker.dispatch(ready=[("q", "a", 1)])
        await broker.raw("script_flush")
        await broker.leave_dlq("q", removed=["dead-task"], ready=[("b", 2)])
        await broker.raw("script_flush")
        claimed = await claim_all(broker)
    assert claimed == ["b", "a"]

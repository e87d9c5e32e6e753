"""Global concurrency per queue (max_running): never more runs of a queue leased at once,
counted in Redis across every daemon, released when a lease ends, rebuilt from
PostgreSQL, and no side door through start-at-create."""

from __future__ import annotations

import dataclasses
import random

import trio

from distasks.broker import Settlement
from distasks.daemon import reconciler
from distasks.daemon.intake import Intake
from distasks.daemon.metrics import Metrics
from distasks.daemon.operations import Operations
from distasks.daemon.worker import WorkerPool
from distasks.domain.model import SYSTEM, TaskStatus
from distasks.handlers import builtin_registry

from .helpers import forget_everything, new_task, now, wait_until
from .test_broker_scripts import blocked_in_blmove
from .test_worker import final, tunables_for


async def test_a_claim_takes_only_the_room_the_limit_leaves(broker):
    keys = broker.keys("q")
    with trio.fail_after(5):
        await broker.set_limits({"q": 2})
        await broker.dispatch(ready=[("q", f"r{i}", 0) for i in range(5)])
        first = await broker.claim("q", count=10, lease_until_ms=9000, block=False)
        full = await broker.claim("q", count=10, lease_until_ms=9000, block=False)
        room_when_full = await broker.raw("exists", keys.room)
        await broker.settle(Settlement(unleased={"q": ["r0"]}, now_ms=1))
        room_after_end = await broker.raw("exists", keys.room)
        after_end = await broker.claim("q", count=10, lease_until_ms=9000, block=False)
        handed_back = await broker.requeue("q", ["r1"])
        after_hand_back = await broker.claim("q", count=10, lease_until_ms=9000, block=False)
        await broker.set_limits({"q": None})
        unlimited = await broker.claim("q", count=10, lease_until_ms=9000, block=False)
    assert first == ["r0", "r1"] and full == [] and room_when_full == 0
    assert room_after_end == 1 and after_end == ["r2"]
    assert handed_back == 1 and after_hand_back == ["r1"]
    assert unlimited == ["r3", "r4"]


async def test_a_fetcher_held_back_by_the_limit_wakes_when_a_lease_ends(broker):
    with trio.fail_after(5):
        await broker.set_limits({"q": 1})
        await broker.dispatch(ready=[("q", "a", 0), ("q", "b", 0)])
        assert await broker.claim("q", count=5, lease_until_ms=9000, block=False) == ["a"]
        assert await broker.claim("q", count=5, lease_until_ms=9000, block=False) == []
        before = await blocked_in_blmove(broker)
        async with trio.open_nursery() as nursery:
            claimed: list[str] = []

            async def blocking_claim():
                claimed.extend(await broker.claim("q", count=5, lease_until_ms=9000,
                                                  block=True))

            nursery.start_soon(blocking_claim)
            await wait_until(lambda: _more_blocked(broker, before))
            await broker.release("q", ["a"])
    assert claimed == ["b"]


async def test_limits_are_copied_from_postgresql_and_leases_rebuilt_after_redis_loss(
        store, broker):
    ops = Operations(store=store, broker=broker, metrics=Metrics())
    tasks = [new_task() for _ in range(4)]
    with trio.fail_after(10):
        await ops.set_max_running("q", 2, actor=SYSTEM, now=now(), max_queues=None)
        await store.create_tasks(tasks)
        await broker.dispatch(ready=[("q", str(t.run_id), 0) for t in tasks])
        claimed = await broker.claim("q", count=10, lease_until_ms=10**13, block=False)
        await store.start_runs([t.run_id for t in tasks[:2]], worker_id="w", now=now(),
                               lease_until=now().replace(year=2100))
        # Redis restarted empty: every key of ours is gone.
        await forget_everything(broker)
        await reconciler.reconcile_once(store, broker, now_s=now().timestamp(), grace_s=0)
        leased = await broker.raw("zcard", broker.keys("q").leases)
        after = await broker.claim("q", count=10, lease_until_ms=10**13, block=False)
        [record] = [r for r in await store.queues(now=now()) if r.name == "q"]
    assert len(claimed) == 2
    assert leased == 2 and after == []  # the two running hold the limit
    assert record.max_running == 2


async def _more_blocked(broker, before: int) -> bool:
    return await blocked_in_blmove(broker) > before


def pool_for(config, store, broker, registry, worker_id: str, concurrency: int) -> WorkerPool:
    wc = dataclasses.replace(config.worker, queues=("q",), concurrency=concurrency)
    return WorkerPool(store=store, broker=broker, registry=registry, config=wc,
                      tunables=tunables_for(config, concurrency=concurrency),
                      worker_id=worker_id)


async def drain_on_daemons(config, store, broker, registry, tasks, *, daemons: int,
                           concurrency: int) -> list:
    """Create `tasks` through one intake and let `daemons` worker pools (ids w0, w1, …)
    run them all to a final state; returns the intake's create results."""
    pools = [pool_for(config, store, broker, registry, f"w{i}", concurrency=concurrency)
             for i in range(daemons)]
    intake = Intake(store, broker, pool=pools[0])
    async with trio.open_nursery() as nursery:
        await nursery.start(intake.run)
        for pool in pools:
            await nursery.start(pool.run)
        results = await intake.create_many(tasks)
        for t in tasks:
            await wait_until(lambda t=t: final(store, t.id))
        nursery.cancel_scope.cancel()
    return results


def max_overlap(runs) -> int:
    """Most runs whose [started_at, finished_at] overlap at one instant."""
    edges = sorted([(r.started_at, 1) for r in runs] + [(r.finished_at, -1) for r in runs])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


async def test_two_daemons_never_run_more_than_the_limit_together(config, store, broker):
    registry = builtin_registry()

    async def short(ctx):
        await trio.sleep(0.01)

    registry.add("short", short)
    ops = Operations(store=store, broker=broker, metrics=Metrics())
    tasks = [new_task(handler="short") for _ in range(60)]
    with trio.fail_after(60):
        await ops.set_max_running("q", 3, actor=SYSTEM, now=now(), max_queues=None)
        results = await drain_on_daemons(config, store, broker, registry, tasks,
                                         daemons=2, concurrency=4)
        runs = [(await store.get_task(t.id))[1][0] for t in tasks]
        statuses = {(await store.get_task(t.id))[0].status for t in tasks}
    assert not any(r.started for r in results)  # no start at create on a limited queue
    assert statuses == {TaskStatus.COMPLETED}
    assert {r.worker_id for r in runs} == {"w0", "w1"}
    assert max_overlap(runs) <= 3


async def test_three_daemons_limited_to_one_run_start_a_backlog_in_priority_order(
        config, store, broker):
    """max_running = 1 makes three daemons one executor: the runs start in priority
    order, FIFO within a priority, whichever daemon claims each."""
    registry = builtin_registry()

    async def noop(ctx):
        pass

    registry.add("noop2", noop)
    rnd = random.Random(18)
    tasks = [new_task(handler="noop2", priority=rnd.randrange(-3, 4)) for _ in range(150)]
    ops = Operations(store=store, broker=broker, metrics=Metrics())
    with trio.fail_after(60):
        await ops.set_max_running("q", 1, actor=SYSTEM, now=now(), max_queues=None)
        await store.create_tasks(tasks)
        await broker.dispatch(ready=[("q", str(t.run_id), t.priority) for t in tasks])
        pools = [pool_for(config, store, broker, registry, f"w{i}", concurrency=2)
                 for i in range(3)]
        async with trio.open_nursery() as nursery:
            for pool in pools:
                await nursery.start(pool.run)
            for t in tasks:
                await wait_until(lambda t=t: final(store, t.id))
            nursery.cancel_scope.cancel()
        runs = {t.id: (await store.get_task(t.id))[1][0] for t in tasks}
    started = sorted(tasks, key=lambda t: runs[t.id].started_at)
    assert [t.id for t in started] == [t.id for t in sorted(tasks, key=lambda t: -t.priority)]
    assert len({r.worker_id for r in runs.values()}) > 1
    assert max_overlap(list(runs.values())) == 1

"""No side doors (issue 18, item 6): a DLQ replay, a retry, a scheduled fire and a start
at create all reach a run through the claim, so the queue's limits hold for them too."""

from __future__ import annotations

from datetime import timedelta

import trio

from distasks.broker import Settlement, rank
from distasks.daemon.intake import Intake
from distasks.daemon.metrics import Metrics
from distasks.daemon.operations import Operations
from distasks.daemon.workflows import Workflows
from distasks.domain.graph import NewNode, WorkflowState
from distasks.domain.model import SYSTEM
from distasks.store import DlqFilter, Failed, Fence, Outcomes

from .helpers import new_task, new_workflow, now, wait_until
from .test_queue_limits import pool_for
from .test_scheduler import T0, add, fire


async def test_a_dlq_replay_waits_for_its_keys_room(store, broker):
    ops = Operations(store=store, broker=broker, metrics=Metrics())
    busy, dead = new_task(concurrency_key="a"), new_task(concurrency_key="a", max_retries=0)
    with trio.fail_after(10):
        await ops.set_queue_limits("q", {"max_running_per_key": 1}, actor=SYSTEM, now=now(),
                                   max_queues=None)
        await store.create_tasks([busy, dead])
        await store.start_runs([dead.run_id], worker_id="w", now=now(), lease_until=now())
        await store.record_outcomes(Outcomes(failed=[Failed(dead.run_id, Fence("w"), "x",
                                                            now())]))
        await broker.dispatch(ready=[("q", str(busy.run_id), rank(0, "a"))])
        assert await broker.claim("q", count=5, lease_until_ms=10**13, block=False) == [
            str(busy.run_id)]
        [(_, replayed)] = await ops.replay_dlq("q", DlqFilter(), limit=10,
                                               override_priority=None, actor=SYSTEM,
                                               now=now(), dry_run=False)
        held = await broker.claim("q", count=5, lease_until_ms=10**13, block=False)
        await broker.release("q", [str(busy.run_id)])
        after = await broker.claim("q", count=5, lease_until_ms=10**13, block=False)
    assert held == [] and after == [str(replayed)]


async def test_a_retry_waits_for_room_under_max_running(broker):
    with trio.fail_after(5):
        await broker.set_limits({"q": 1})
        await broker.dispatch(ready=[("q", "a", 0), ("q", "b", 0)])
        assert await broker.claim("q", count=5, lease_until_ms=9000, block=False) == ["a"]
        # a failed and its retry is due at once: it goes to the head, still behind the limit.
        await broker.settle(Settlement(unleased={"q": ["a"]}, urgent={"q": [("a2", 0)]},
                                       now_ms=1))
        first = await broker.claim("q", count=5, lease_until_ms=9000, block=False)
        full = await broker.claim("q", count=5, lease_until_ms=9000, block=False)
    assert first == ["a2"] and full == []


async def test_scheduled_fires_obey_the_start_rate(store, broker):
    ops = Operations(store=store, broker=broker, metrics=Metrics())
    with trio.fail_after(10):
        await ops.set_queue_limits("sched", {"max_starts_per_second": 0.5, "burst": 1},
                                   actor=SYSTEM, now=now(), max_queues=None)
        await add(store, "one", "* * * * * *")
        await add(store, "two", "* * * * * *")
        fired = await fire(store, broker, T0 + timedelta(seconds=1))
        first = await broker.claim("sched", count=10, lease_until_ms=10**13, block=False)
        second = await broker.claim("sched", count=10, lease_until_ms=10**13, block=False)
    assert fired >= 2 and len(first) == 1 and second == []


async def test_no_start_at_create_for_a_key_or_a_rate(config, store, broker):
    from distasks.handlers import builtin_registry

    ops = Operations(store=store, broker=broker, metrics=Metrics())
    pool = pool_for(config, store, broker, builtin_registry(), "w0", concurrency=4)
    plain, keyed = new_task(handler="noop"), new_task(handler="noop", concurrency_key="a")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker, pool=pool)
            await nursery.start(intake.run)
            await nursery.start(pool.run)
            [plain_result, keyed_result] = await intake.create_many([plain, keyed])
            await ops.set_queue_limits("q", {"max_starts_per_second": 100.0}, actor=SYSTEM,
                                       now=now(), max_queues=None)
            [rated_result] = await intake.create_many([new_task(handler="noop")])
            nursery.cancel_scope.cancel()
    assert plain_result.started and not keyed_result.started and not rated_result.started


async def test_workflow_roots_obey_max_running(config, store, broker):
    """Roots are started at create only where a task would be: not in a queue with a
    max_running, whose limit the claim counts. Two roots, max_running 1, four idle
    executors: they run one after the other."""
    from distasks.handlers import builtin_registry

    registry = builtin_registry()
    running, most = set(), []

    async def held(ctx):
        running.add(ctx.run_id)
        most.append(len(running))
        await trio.sleep(0.05)
        running.discard(ctx.run_id)

    registry.add("held", held)
    ops = Operations(store=store, broker=broker, metrics=Metrics())
    pool = pool_for(config, store, broker, registry, "w0", concurrency=4)
    wf = new_workflow("w", (NewNode("a", new_task(handler="held")),
                            NewNode("b", new_task(handler="held"))))
    with trio.fail_after(20):
        await ops.set_max_running("q", 1, actor=SYSTEM, now=now(), max_queues=None)
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker, pool=pool)
            await nursery.start(intake.run)
            await nursery.start(pool.run)
            created = await Workflows(store, broker, intake).submit(wf, actor=SYSTEM,
                                                                     now=now())
            await wait_until(lambda: _succeeded(store, wf.id))
            nursery.cancel_scope.cancel()
        runs = [(await store.get_task(created.task_ids[k]))[1] for k in "ab"]
    # Neither started at create (a run started there starts at its creation's instant):
    # both were claimed, one at a time.
    assert all(len(r) == 1 and r[0].started_at > r[0].created_at for r in runs)
    assert sorted(most) == [1, 1]


async def _succeeded(store, workflow_id):
    wf = await store.get_workflow(workflow_id, tenant="default")
    return wf.state is WorkflowState.SUCCEEDED

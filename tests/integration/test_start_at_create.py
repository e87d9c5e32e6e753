"""Starting a run in the create statement, on the creating daemon, when it has an idle
executor for the queue: no Redis push and no claim, and every fallback to the Redis path
(no idle executor, a paused queue, a delayed task, a pool that stopped meanwhile)."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from datetime import timedelta

import trio

from distasks.daemon.intake import Intake, claimed_at_create
from distasks.daemon.metrics import Metrics
from distasks.daemon.workflows import Workflows
from distasks.domain.graph import Dependency, NewNode, WorkflowState
from distasks.domain.model import SYSTEM, Actor, RunStatus, TaskStatus
from distasks.handlers import builtin_registry

from .helpers import new_task, new_workflow, now, wait_until
from .test_worker import final, make_pool


@asynccontextmanager
async def serving(config, store, broker, registry=None, **worker_overrides):
    """A pool and an intake that starts runs on it, in a nursery; cancelled on exit."""
    pool = make_pool(config, store, broker, registry or builtin_registry(), **worker_overrides)
    intake = Intake(store, broker, pool=pool)
    async with trio.open_nursery() as nursery:
        await nursery.start(intake.run)
        await nursery.start(pool.run)
        yield pool, intake
        nursery.cancel_scope.cancel()


async def redis_traffic(broker, queue="q"):
    keys = broker.keys(queue)
    return [await broker.raw("llen", keys.ready), await broker.raw("zcard", keys.leases),
            await broker.raw("zcard", keys.delayed)]


async def test_a_create_with_an_idle_executor_starts_its_run_without_redis(
        config, store, broker):
    registry = builtin_registry()
    gate = trio.Event()
    seen = []

    async def held(ctx):
        seen.append(ctx.run_id)
        await gate.wait()

    registry.add("held", held)
    with trio.fail_after(10):
        async with serving(config, store, broker, registry) as (pool, intake):
            result = await intake.create(new_task(handler="held"))
            task, [run] = await store.get_task(result.task_id)
            index = await redis_traffic(broker)
            await wait_until(lambda: trio.to_thread.run_sync(lambda: bool(seen)))
            gate.set()
            status, runs = await wait_until(lambda: final(store, result.task_id))
    assert result.started and run.status is RunStatus.RUNNING
    assert run.worker_id == pool.worker_id and run.lease_expires_at > now()
    assert index == [0, 0, 0]  # never pushed, never claimed
    assert (status, runs) == (TaskStatus.COMPLETED, [RunStatus.SUCCEEDED])


async def test_creates_beyond_the_idle_executors_go_through_redis(config, store, broker):
    registry = builtin_registry()
    gate = trio.Event()

    async def held(ctx):
        await gate.wait()

    registry.add("held", held)
    with trio.fail_after(10):
        async with serving(config, store, broker, registry, concurrency=2) as (_, intake):
            results = await intake.create_many([new_task(handler="held") for _ in range(5)])
            gate.set()
            for r in results:
                await wait_until(lambda r=r: final(store, r.task_id))
    assert [r.started for r in results] == [True, True, False, False, False]


async def test_a_paused_queue_starts_nothing_at_create(config, store, broker):
    with trio.fail_after(10):
        await store.set_paused("q", True, actor=Actor("test"), now=now())
        await broker.set_paused("q", True)
        async with serving(config, store, broker) as (_, intake):
            result = await intake.create(new_task(payload={"skip_fail": True}))
            _, [run] = await store.get_task(result.task_id)
            # Copied into Redis after the create's answer (daemon/copier.py).
            ready = await wait_until(lambda: broker.raw("lrange", broker.keys("q").ready, 0, -1))
    assert not result.started and run.status is RunStatus.QUEUED
    assert ready == [str(run.id)]


async def test_delayed_tasks_and_other_queues_are_not_started_at_create(config, store, broker):
    with trio.fail_after(10):
        async with serving(config, store, broker) as (_, intake):
            later = await intake.create(new_task(run_at=now() + timedelta(hours=1)))
            elsewhere = await intake.create(new_task(queue="other"))
    assert not later.started and not elsewhere.started


async def test_runs_started_after_the_pool_stopped_are_handed_back(config, store, broker):
    with trio.fail_after(10):
        pool = make_pool(config, store, broker, builtin_registry())
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            t = new_task(payload={"skip_fail": True})
            assert pool.reserve("q", 1) == 1
            [result] = await store.create_tasks(
                [t], start={t.run_id}, worker_id=pool.worker_id,
                lease_until=now() + timedelta(seconds=30))
            pool.stop(grace_s=1.0)
            pool.start_created([claimed_at_create(t, worker_id=pool.worker_id, now=now())],
                              committed_s=time.time())
        task, runs = await store.get_task(t.id)
        ready = await broker.raw("lrange", broker.keys("q").ready, 0, -1)
    assert result.started
    assert [r.status for r in runs] == [RunStatus.INTERRUPTED, RunStatus.QUEUED]
    assert task.status is TaskStatus.QUEUED and ready == [str(runs[1].id)]


async def test_a_start_at_create_takes_the_executor_a_blocked_fetcher_set_aside(
        config, store, broker):
    # Concurrency 1: the fetcher blocks on the empty queue holding the only executor; a
    # create starts its run on it, so what the fetcher claims next goes back to Redis
    # and waits there, never marked running while the executor is busy.
    registry = builtin_registry()
    gate = trio.Event()

    async def held(ctx):
        await gate.wait()

    registry.add("held", held)
    ready_key = broker.keys("q").ready
    with trio.fail_after(15):
        async with serving(config, store, broker, registry, concurrency=1) as (_, intake):
            first = await intake.create(new_task(handler="held"))
            second = await intake.create(new_task(handler="held"))
            # The fetcher wakes for it, finds its executor taken, and hands it back.
            await wait_until(lambda: broker.raw("llen", ready_key))
            await wait_until(lambda: _leases_empty(broker))
            _, [waiting] = await store.get_task(second.task_id)
            gate.set()
            for r in (first, second):
                await wait_until(lambda r=r: final(store, r.task_id))
        _, [run1] = await store.get_task(first.task_id)
        _, [run2] = await store.get_task(second.task_id)
    assert first.started and not second.started
    assert waiting.status is RunStatus.QUEUED and waiting.worker_id is None
    assert run2.status is RunStatus.SUCCEEDED
    assert run2.started_at >= run1.finished_at  # one executor: never both running


async def _leases_empty(broker):
    return await broker.raw("zcard", broker.keys("q").leases) == 0


async def test_a_run_started_at_create_reports_its_delay_from_the_commit(
        config, store, broker):
    """enqueue_to_start for a start-at-create run is measured from the create's commit to
    the moment an executor begins its handler: a real figure, never a constant 0."""
    metrics = Metrics()
    registry = builtin_registry()
    began = trio.Event()

    async def noted(ctx):
        began.set()

    registry.add("noted", noted)
    pool = make_pool(config, store, broker, registry, metrics=metrics)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker, pool=pool)
            await nursery.start(intake.run)
            await nursery.start(pool.run)
            result = await intake.create(new_task(handler="noted"))
            await began.wait()
            nursery.cancel_scope.cancel()
    sample = metrics.registry.get_sample_value
    labels = {"queue": "q"}
    assert result.started
    assert sample("distasks_enqueue_to_start_seconds_count", labels) == 1
    assert 0 < sample("distasks_enqueue_to_start_seconds_sum", labels) < 5


async def test_a_workflow_root_starts_at_create_without_redis(config, store, broker):
    """A root is a create like any other: with an idle executor for its queue it starts in
    the statement that writes the graph, and its dependents are released as usual."""
    registry = builtin_registry()
    gate = trio.Event()
    seen = {}

    async def step(ctx):
        seen[ctx.task.workflow_key] = ctx.parents
        if ctx.task.workflow_key == "root":
            await gate.wait()
        return ctx.task.workflow_key

    registry.add("step", step)
    wf = new_workflow("w", (
        NewNode("root", new_task(handler="step")),
        NewNode("child", new_task(handler="step"), (Dependency("root"),))))
    with trio.fail_after(15):
        async with serving(config, store, broker, registry) as (pool, intake):
            created = await Workflows(store, broker, intake).submit(wf, actor=SYSTEM,
                                                                     now=now())
            _, [run] = await store.get_task(created.task_ids["root"])
            index = await redis_traffic(broker)
            gate.set()
            done = await wait_until(lambda: _finished(store, wf.id))
    assert run.status is RunStatus.RUNNING and run.worker_id == pool.worker_id
    assert index == [0, 0, 0]  # never pushed, never claimed
    assert done.state is WorkflowState.SUCCEEDED
    assert seen == {"root": {}, "child": {"root": {
        "status": "completed", "result": "root", "error": None, "truncated": False}}}


async def _finished(store, workflow_id):
    wf = await store.get_workflow(workflow_id, tenant="default")
    return wf if wf.state is not WorkflowState.RUNNING else None

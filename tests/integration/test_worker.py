"""Worker pool against real PostgreSQL and Redis: runs, retries, DLQ, timeouts,
shutdown with a grace period, poison messages, cancellation while claiming."""

from __future__ import annotations

import dataclasses
import uuid
from contextlib import asynccontextmanager

import trio
import trio.testing

from distasks.daemon import mover
from distasks.daemon.health import Health
from distasks.daemon.intake import Intake
from distasks.daemon.tunables import Tunables
from distasks.daemon.worker import WorkerPool
from distasks.domain.model import RunStatus, TaskStatus
from distasks.domain.retry import RetryPolicy
from distasks.handlers import Registry, builtin_registry

from .helpers import new_task, wait_until


def tunables_for(config, **worker_overrides) -> Tunables:
    wc = dataclasses.replace(config.worker, queues=("q",), **worker_overrides)
    return Tunables(queues=wc.queues, concurrency=wc.concurrency,
                    retry=RetryPolicy(config.retry.base_s, config.retry.cap_s, 0.0),
                    log_level="INFO")


def make_pool(config, store, broker, registry, *, metrics=None,
              **worker_overrides) -> WorkerPool:
    wc = dataclasses.replace(config.worker, queues=("q",), **worker_overrides)
    return WorkerPool(store=store, broker=broker, registry=registry, config=wc,
                      tunables=tunables_for(config, **worker_overrides),
                      worker_id="test-worker", metrics=metrics)


@asynccontextmanager
async def running(config, store, broker, registry, *, with_mover=True, **worker_overrides):
    """An intake, a pool and (optionally) a mover in a nursery; cancelled on exit."""
    pool = make_pool(config, store, broker, registry, **worker_overrides)
    intake = Intake(store, broker)
    async with trio.open_nursery() as nursery:
        await nursery.start(intake.run)
        if with_mover:
            await nursery.start(lambda task_status: mover.run(
                broker, tunables_for(config), interval_s=0.02, batch=100, health=Health(),
                task_status=task_status))
        await nursery.start(pool.run)
        yield pool, intake
        nursery.cancel_scope.cancel()


async def task_status(store, task_id):
    task, runs = await store.get_task(task_id)
    return task.status, [r.status for r in runs]


async def final(store, task_id):
    status, runs = await task_status(store, task_id)
    return (status, runs) if status is not TaskStatus.QUEUED else None


async def test_tasks_run_with_payload_and_attempt_and_complete(config, store, broker):
    seen = []
    registry = builtin_registry()

    async def record(ctx):
        seen.append((ctx.payload, ctx.attempt, ctx.task.name))
        return {"echo": ctx.payload}

    registry.add("record", record)
    with trio.fail_after(10):
        async with running(config, store, broker, registry) as (_, intake):
            results = await intake.create_many(
                [new_task(handler="record", payload={"i": i}, name=f"n{i}") for i in range(20)])
            for r in results:
                await wait_until(lambda r=r: final(store, r.task_id))
        task, runs = await store.get_task(results[0].task_id)
        depths = await broker.depths("q")
    assert sorted(s[0]["i"] for s in seen) == list(range(20))
    assert {s[1] for s in seen} == {1}
    assert task.status is TaskStatus.COMPLETED and runs[0].result == {"echo": {"i": 0}}
    assert depths == {"ready": 0, "delayed": 0, "leased": 0, "dlq": 0}


async def test_failing_task_is_retried_then_dead_lettered(config, store, broker):
    with trio.fail_after(10):
        async with running(config, store, broker, builtin_registry()) as (_, intake):
            r = await intake.create(new_task(payload={"always_fail": True}, max_retries=2))
            status, runs = await wait_until(lambda: final(store, r.task_id))
        dlq = await broker.raw("lrange", broker.keys("q").dlq, 0, -1)
    assert status is TaskStatus.FAILED
    assert runs == [RunStatus.RETRYING, RunStatus.RETRYING, RunStatus.FAILED]
    assert dlq == [str(r.task_id)]


async def test_demo_odd_priority_fails_once_then_succeeds(config, store, broker):
    with trio.fail_after(10):
        async with running(config, store, broker, builtin_registry()) as (_, intake):
            r = await intake.create(new_task(priority=1))
            status, runs = await wait_until(lambda: final(store, r.task_id))
    assert status is TaskStatus.COMPLETED
    assert runs == [RunStatus.RETRYING, RunStatus.SUCCEEDED]


async def test_handler_over_its_timeout_fails_the_attempt(config, store, broker):
    registry = Registry()

    async def hang(ctx):
        await trio.sleep_forever()

    registry.add("hang", hang)
    with trio.fail_after(10):
        async with running(config, store, broker, registry) as (_, intake):
            r = await intake.create(new_task(handler="hang", timeout_s=0.1, max_retries=0))
            await wait_until(lambda: final(store, r.task_id))
        _, runs = await store.get_task(r.task_id)
    assert runs[0].status is RunStatus.FAILED and "timed out after 0.1s" in runs[0].error


async def test_sync_handler_runs_in_a_thread(config, store, broker):
    registry = Registry()

    def blocking(ctx):
        import threading
        import time
        time.sleep(0.05)
        return threading.current_thread().name

    registry.add("blocking", blocking)
    with trio.fail_after(10):
        async with running(config, store, broker, registry) as (_, intake):
            r = await intake.create(new_task(handler="blocking"))
            await wait_until(lambda: final(store, r.task_id))
        _, runs = await store.get_task(r.task_id)
    assert runs[0].status is RunStatus.SUCCEEDED and runs[0].result != "MainThread"


async def test_stop_lets_short_handlers_finish_and_hands_long_ones_back(config, store, broker):
    registry = Registry()
    started = trio.Semaphore(0)

    async def sleeper(ctx):
        started.release()
        await trio.sleep(ctx.payload["s"])
        return "done"

    registry.add("sleeper", sleeper)
    with trio.fail_after(10):
        pool = make_pool(config, store, broker, registry, concurrency=2)
        intake = Intake(store, broker)
        async with trio.open_nursery() as nursery:
            await nursery.start(intake.run)
            async with trio.open_nursery() as pool_nursery:
                await pool_nursery.start(pool.run)
                short = await intake.create(new_task(handler="sleeper", payload={"s": 0.2}))
                long = await intake.create(new_task(handler="sleeper", payload={"s": 60}))
                await started.acquire()
                await started.acquire()
                pool.stop(grace_s=0.5)
            # pool.run returned by itself: drained, outcomes recorded
            nursery.cancel_scope.cancel()
        short_status = await task_status(store, short.task_id)
        long_status = await task_status(store, long.task_id)
        ready = await broker.raw("lrange", broker.keys("q").ready, 0, -1)
        leased = await broker.raw("zcard", broker.keys("q").leases)
    assert short_status == (TaskStatus.COMPLETED, [RunStatus.SUCCEEDED])
    assert long_status == (TaskStatus.QUEUED, [RunStatus.INTERRUPTED, RunStatus.QUEUED])
    _, runs = await store.get_task(long.task_id)
    assert ready == [str(runs[1].id)] and leased == 0


async def test_undecodable_and_unknown_messages_are_dropped_and_work_goes_on(config, store, broker):
    with trio.fail_after(10):
        await broker.dispatch(ready=[("q", "not-a-uuid", 0), ("q", str(uuid.uuid4()), 0)])
        async with running(config, store, broker, builtin_registry()) as (_, intake):
            r = await intake.create(new_task())
            await wait_until(lambda: final(store, r.task_id))
            await wait_until(lambda: _no_leases(broker))
        depths = await broker.depths("q")
    assert depths == {"ready": 0, "delayed": 0, "leased": 0, "dlq": 0}


async def _no_leases(broker):
    return (await broker.depths("q"))["leased"] == 0


async def test_cancelling_the_pool_while_it_blocks_on_claim_loses_nothing(config, store, broker):
    """architecture §5.1: a task cancelled while its claim blocks on Redis. Cancel pools again and again while work
    arrives, half of them once every task is blocked (the fetcher waiting on Redis), half
    at once (the claim not started or in flight); every run must end up ready, leased or
    started: none vanishes."""
    registry = Registry()
    registry.add("noop", lambda ctx: None)
    tasks = [new_task(handler="noop") for _ in range(60)]
    with trio.fail_after(30):
        await store.create_tasks(tasks)
        for i, t in enumerate(tasks):
            pool = make_pool(config, store, broker, registry, concurrency=1)
            async with trio.open_nursery() as nursery:
                await nursery.start(pool.run)
                if i % 2:
                    await trio.testing.wait_all_tasks_blocked()  # blocked in the claim
                await broker.dispatch(ready=[("q", str(t.run_id), t.priority)])
                nursery.cancel_scope.cancel()
        accounted = set(await broker.raw("lrange", broker.keys("q").ready, 0, -1))
        accounted |= set(await broker.raw("zrange", broker.keys("q").leases, 0, -1))
        for t in tasks:
            _, runs = await store.get_task(t.id)
            if runs[0].status is not RunStatus.QUEUED:
                accounted.add(str(t.run_id))
    assert accounted >= {str(t.run_id) for t in tasks}


async def test_a_queue_dropped_by_a_reload_stops_every_one_of_its_fetchers(config, store, broker):
    """worker.fetchers_per_queue: each queue has several fetchers; a retune that drops a
    queue while it has work cancels them all: what was running finishes, nothing more of
    that queue is claimed."""
    gate = trio.Event()

    async def held(ctx):
        await gate.wait()

    registry = Registry()
    registry.add("held", held)
    registry.add("noop", lambda ctx: None)
    with trio.fail_after(15):
        wc = dataclasses.replace(config.worker, queues=("q", "r"), fetchers_per_queue=3,
                                 concurrency=4)
        tunables = dataclasses.replace(tunables_for(config, concurrency=4), queues=("q", "r"))
        pool = WorkerPool(store=store, broker=broker, registry=registry, config=wc,
                          tunables=tunables, worker_id="test-worker")
        intake = Intake(store, broker)
        async with trio.open_nursery() as nursery:
            await nursery.start(intake.run)
            await nursery.start(pool.run)
            dropped = await intake.create_many(
                [new_task(handler="held", queue="r") for _ in range(12)])
            await wait_until(lambda: _busy(pool, 4))
            tunables.queues = ("q",)
            pool.retune()
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
            kept = await intake.create_many([new_task(handler="noop", queue="q")
                                             for _ in range(8)])
            for r in kept:
                await wait_until(lambda r=r: final(store, r.task_id))
            nursery.cancel_scope.cancel()
        states = [await task_status(store, r.task_id) for r in dropped]
    done = states.count((TaskStatus.COMPLETED, [RunStatus.SUCCEEDED]))
    assert done == 4 and states.count((TaskStatus.QUEUED, [RunStatus.QUEUED])) == 8


async def _busy(pool, count):
    return pool.busy() == count

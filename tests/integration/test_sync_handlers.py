"""Sync (plain `def`) handlers in the worker pool, against real PostgreSQL and Redis:
the same timeout, cancel, failure, shutdown and thread-count semantics as async ones,
on the pool's handler threads (distasks/daemon/sync_executor.py)."""

from __future__ import annotations

import dataclasses
import threading

import trio

from distasks.daemon.intake import Intake
from distasks.domain.model import RunStatus, TaskStatus
from distasks.handlers import Registry

from .helpers import new_task, wait_until
from .test_worker import final, make_pool, running, task_status

# Longest a test lets a blocked handler thread wait for its release (so that no test
# leaves a thread behind for long, whatever goes wrong).
RELEASE_TIMEOUT_S = 10.0


class Gate:
    """Handlers block in `wait()` until the test `open()`s it; `entered` counts them."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.entered = 0
        self.running = 0
        self.most_running = 0

    def wait(self) -> None:
        with self._lock:
            self.entered += 1
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            self._event.wait(RELEASE_TIMEOUT_S)
        finally:
            with self._lock:
                self.running -= 1

    def open(self) -> None:
        self._event.set()


async def wait_entered(gate: Gate, count: int) -> None:
    while gate.entered < count:  # noqa: ASYNC110 (a thread's progress: no Trio event to wait on)
        await trio.sleep(0.005)


async def run_status(store, task_id) -> RunStatus:
    _, runs = await store.get_task(task_id)
    return runs[0].status


async def test_a_sync_handler_over_its_timeout_fails_and_its_thread_is_abandoned(
        config, store, broker):
    gate, finished = Gate(), threading.Event()

    def stuck(ctx):
        gate.wait()
        finished.set()
        return "too late"

    registry = Registry()
    registry.add("stuck", stuck)
    registry.add("quick", lambda ctx: "quick")
    try:
        with trio.fail_after(15):
            async with running(config, store, broker, registry, sync_threads=2) as (_, intake):
                r = await intake.create(new_task(handler="stuck", timeout_s=0.1, max_retries=0))
                await wait_until(lambda: final(store, r.task_id))
                # The other thread still serves; the stuck one runs on, abandoned.
                q = await intake.create(new_task(handler="quick"))
                await wait_until(lambda: final(store, q.task_id))
                assert not finished.is_set()
                gate.open()
                await trio.to_thread.run_sync(finished.wait, RELEASE_TIMEOUT_S)
            _, runs = await store.get_task(r.task_id)
            _, quick_runs = await store.get_task(q.task_id)
    finally:
        gate.open()
    assert runs[0].status is RunStatus.FAILED and runs[0].error == "timed out after 0.1s"
    assert runs[0].result is None
    assert quick_runs[0].status is RunStatus.SUCCEEDED and quick_runs[0].result == "quick"


async def test_cancelling_a_running_sync_handler_records_it_cancelled_and_drops_its_result(
        config, store, broker):
    gate = Gate()

    def blocked(ctx):
        gate.wait()
        return "after the cancel"

    registry = Registry()
    registry.add("blocked", blocked)
    try:
        with trio.fail_after(15):
            async with running(config, store, broker, registry,
                               sync_threads=1) as (pool, intake):
                t = new_task(handler="blocked", max_retries=0)
                await intake.create(t)
                await wait_entered(gate, 1)
                # The next one waits for the only thread, which the first still holds.
                queued = new_task(handler="blocked", max_retries=0)
                await intake.create(queued)
                await wait_until(lambda: _leased(pool, queued.run_id))
                pool.cancel_runs({t.run_id, queued.run_id})
                await wait_until(lambda: _is(store, t.id, RunStatus.CANCELLED))
                await wait_until(lambda: _is(store, queued.id, RunStatus.CANCELLED))
                gate.open()
                # A third one runs once the abandoned handler has given its thread back.
                after = await intake.create(new_task(handler="blocked"))
                await wait_until(lambda: final(store, after.task_id))
            _, runs = await store.get_task(t.id)
    finally:
        gate.open()
    assert [r.status for r in runs] == [RunStatus.CANCELLED] and runs[0].result is None
    assert gate.entered == 2  # the queued call never ran
    assert await task_status(store, after.task_id) == (TaskStatus.COMPLETED, [RunStatus.SUCCEEDED])


async def _leased(pool, run_id) -> bool:
    return run_id in pool.leased_runs()


async def _is(store, task_id, status: RunStatus) -> bool:
    return await run_status(store, task_id) is status


async def test_a_sync_handler_exception_fails_the_attempt_with_its_message_scrubbed(
        config, store, broker):
    def broken(ctx):
        raise ValueError(f"bad token {ctx.payload['token']}")

    registry = Registry()
    registry.add("broken", broken)
    task = dataclasses.replace(new_task(handler="broken", payload={"token": "s3cret-value"},
                                        max_retries=0), secret_fields=("token",))
    with trio.fail_after(10):
        async with running(config, store, broker, registry) as (_, intake):
            r = await intake.create(task)
            await wait_until(lambda: final(store, r.task_id))
        _, runs = await store.get_task(r.task_id)
    assert runs[0].status is RunStatus.FAILED
    assert runs[0].error.startswith("ValueError: bad token ")
    assert "s3cret-value" not in runs[0].error


async def test_stop_lets_a_short_sync_handler_finish_and_hands_a_long_one_back(
        config, store, broker):
    gate = Gate()

    def sleeper(ctx):
        if ctx.payload["long"]:
            gate.wait()
        return "done"

    registry = Registry()
    registry.add("sleeper", sleeper)
    try:
        with trio.fail_after(15):
            pool = make_pool(config, store, broker, registry, concurrency=2)
            intake = Intake(store, broker)
            async with trio.open_nursery() as nursery:
                await nursery.start(intake.run)
                async with trio.open_nursery() as pool_nursery:
                    await pool_nursery.start(pool.run)
                    short = await intake.create(new_task(handler="sleeper",
                                                         payload={"long": False}))
                    long = await intake.create(new_task(handler="sleeper",
                                                        payload={"long": True}))
                    await wait_until(lambda: final(store, short.task_id))
                    await wait_entered(gate, 1)
                    pool.stop(grace_s=0.2)
                # pool.run returned by itself although the long handler still blocks
                nursery.cancel_scope.cancel()
            long_status = await task_status(store, long.task_id)
    finally:
        gate.open()
    assert await task_status(store, short.task_id) == (TaskStatus.COMPLETED,
                                                       [RunStatus.SUCCEEDED])
    assert long_status == (TaskStatus.QUEUED, [RunStatus.INTERRUPTED, RunStatus.QUEUED])


async def test_at_most_sync_threads_sync_handlers_run_at_once(config, store, broker):
    gate = Gate()

    def held(ctx):
        gate.wait()
        return ctx.payload

    registry = Registry()
    registry.add("held", held)
    try:
        with trio.fail_after(15):
            async with running(config, store, broker, registry, concurrency=6,
                               sync_threads=2) as (pool, intake):
                results = await intake.create_many(
                    [new_task(handler="held", payload=i) for i in range(6)])
                await wait_entered(gate, 2)
                await wait_until(lambda: _in_flight(pool, 6))
                assert gate.entered == 2  # four executors wait for a thread
                gate.open()
                for r in results:
                    await wait_until(lambda r=r: final(store, r.task_id))
            outcomes = [await store.get_task(r.task_id) for r in results]
    finally:
        gate.open()
    assert gate.most_running == 2 and gate.entered == 6
    assert [runs[0].result for _, runs in outcomes] == list(range(6))


async def _in_flight(pool, count: int) -> bool:
    return pool.busy() == count

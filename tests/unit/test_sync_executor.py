"""distasks.daemon.sync_executor: results and exceptions come back to their own caller,
batched or not; a cancelled call returns at once and is dropped if no thread took it;
the threads end with `run()`. (The pool's use of it, with real servers:
tests/integration/test_sync_handlers.py.)"""

from __future__ import annotations

import threading

import pytest
import trio

from distasks.daemon.sync_executor import SyncExecutor

# Longest a blocked thread waits for the test to release it.
RELEASE_TIMEOUT_S = 10.0


def threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"{name}-")]


async def test_each_caller_gets_its_own_result_or_exception():
    def work(i: int) -> int:
        if i % 7 == 0:
            raise ValueError(f"boom {i}")
        return i * i

    got: dict[int, object] = {}

    async def one(executor: SyncExecutor, i: int) -> None:
        try:
            got[i] = await executor.call(work, i)
        except ValueError as e:
            got[i] = str(e)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            executor = SyncExecutor(4, name="t-results")
            await nursery.start(executor.run)
            async with trio.open_nursery() as callers:
                for i in range(1000):
                    callers.start_soon(one, executor, i)
            nursery.cancel_scope.cancel()
    assert got == {i: f"boom {i}" if i % 7 == 0 else i * i for i in range(1000)}


async def test_a_call_cancelled_while_it_waits_for_a_thread_never_runs():
    entered, release, ran = threading.Event(), threading.Event(), []

    def block(_: None) -> None:
        entered.set()
        release.wait(RELEASE_TIMEOUT_S)

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                executor = SyncExecutor(1, name="t-cancel")
                await nursery.start(executor.run)
                nursery.start_soon(executor.call, block, None)
                await trio.to_thread.run_sync(entered.wait, RELEASE_TIMEOUT_S)
                with trio.move_on_after(0.05) as waited:
                    await executor.call(ran.append, "queued")  # the one thread is busy
                assert waited.cancelled_caught
                release.set()
                # The thread is free again, skips the cancelled call and serves the next.
                assert await executor.call(lambda x: x + 1, 1) == 2
                nursery.cancel_scope.cancel()
    finally:
        release.set()
    assert ran == []


async def test_a_cancelled_running_call_returns_at_once_and_its_result_is_dropped():
    release, finished = threading.Event(), threading.Event()

    def slow(_: None) -> str:
        release.wait(RELEASE_TIMEOUT_S)
        finished.set()
        return "late"

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                executor = SyncExecutor(2, name="t-abandon")
                await nursery.start(executor.run)
                with trio.move_on_after(0.05) as waited:
                    await executor.call(slow, None)
                assert waited.cancelled_caught and not finished.is_set()
                release.set()
                await trio.to_thread.run_sync(finished.wait, RELEASE_TIMEOUT_S)
                assert await executor.call(str.upper, "next") == "NEXT"
                nursery.cancel_scope.cancel()
    finally:
        release.set()


async def test_idle_threads_end_with_run():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            executor = SyncExecutor(3, name="t-stop")
            await nursery.start(executor.run)
            assert len(threads_named("t-stop")) == 3
            nursery.cancel_scope.cancel()
        for thread in threads_named("t-stop"):
            await trio.to_thread.run_sync(thread.join, RELEASE_TIMEOUT_S)
        assert threads_named("t-stop") == []


async def test_a_call_before_run_is_refused():
    with pytest.raises(RuntimeError, match="before run"):
        await SyncExecutor(1).call(str, 1)

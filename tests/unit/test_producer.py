"""AsyncClient.producer() without a daemon, through httpx.MockTransport: what its callers
are told when the producer is cancelled with a batch in flight, and when one of them is
cancelled before its batch leaves."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
import trio.testing

from distasks.client import AsyncClient, CreateResult, Unavailable

TASK_ID = "6f0c5e1a-1b2c-4d3e-8f90-123456789abc"


async def test_cancelled_with_a_batch_in_flight_every_caller_is_told():
    in_flight = trio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        in_flight.set()
        await trio.sleep_forever()
        raise AssertionError("not reached")

    outcomes: list[BaseException] = []

    async def one(p, i: int) -> None:
        try:
            await p.enqueue("t", payload={"i": i})
        except Unavailable as e:
            outcomes.append(e)

    with trio.fail_after(5):
        async with AsyncClient("http://api", transport=httpx.MockTransport(hang)) as c:
            async with trio.open_nursery() as callers:
                with trio.CancelScope() as scope:
                    async with c.producer(max_batch=3, max_delay_s=3600) as p:
                        for i in range(3):
                            callers.start_soon(one, p, i)
                        await in_flight.wait()
                        scope.cancel()
    assert [(e.code, "may or may not exist" in str(e)) for e in outcomes] == [
        ("cancelled", True)] * 3


async def test_an_enqueue_cancelled_before_its_batch_leaves_is_withdrawn():
    sent: list[list[dict[str, object]]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        tasks = json.loads(request.content)["tasks"]
        sent.append(tasks)
        return httpx.Response(200, json={"tasks": [
            {"task_id": TASK_ID, "status": "queued", "created": True, "conflict": False}
            for _ in tasks]})

    kept: list[CreateResult] = []

    async def keep(p) -> None:
        kept.append(await p.enqueue("kept"))

    with trio.fail_after(5):
        async with AsyncClient("http://api", transport=httpx.MockTransport(answer)) as c:
            async with trio.open_nursery() as callers:
                async with c.producer(max_batch=10, max_delay_s=3600) as p:
                    with trio.CancelScope() as withdrawn:
                        callers.start_soon(keep, p)
                        withdrawn.cancel()
                        await p.enqueue("withdrawn")
                    await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(RuntimeError):
                await p.enqueue("late")
    assert [[t["name"] for t in batch] for batch in sent] == [["kept"]]
    assert [r.task_id for r in kept] == [TASK_ID]


async def test_left_by_an_exception_the_callers_of_unsent_tasks_are_told():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing is sent")

    outcomes: list[Unavailable] = []

    async def one(p) -> None:
        try:
            await p.enqueue("never")
        except Unavailable as e:
            outcomes.append(e)

    with trio.fail_after(5):
        async with AsyncClient("http://api", transport=httpx.MockTransport(refuse)) as c:
            async with trio.open_nursery() as callers:
                # Raised in the producer's task group, it comes out in a group.
                with pytest.raises(ExceptionGroup) as failed:
                    async with c.producer(max_batch=10, max_delay_s=3600) as p:
                        callers.start_soon(one, p)
                        callers.start_soon(one, p)
                        await trio.testing.wait_all_tasks_blocked()
                        raise KeyError("the producing code failed")
                assert failed.group_contains(KeyError)
    assert [(e.code, "not created" in str(e)) for e in outcomes] == [("cancelled", True)] * 2

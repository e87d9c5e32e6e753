"""AsyncClient.producer() against `distasks serve`: concurrent enqueues share batch
requests, and each caller still gets its own answer: its task, its refusal, its dedup
conflict, or the error that stopped its batch."""

from __future__ import annotations

import re
import sys
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from distasks.client import (
    AsyncClient,
    Client,
    Conflict,
    CreateResult,
    InvalidRequest,
    Unavailable,
)

from .conftest import REPO, free_port


class CountingTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, counting the requests per path."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await super().handle_async_request(request)


async def enqueue_all(p: Any, calls: list[dict[str, Any]]) -> list[CreateResult | Exception]:
    """Every call as a concurrent `enqueue`; each one's result or exception, in order."""
    outcomes: list[CreateResult | Exception] = [RuntimeError("no answer")] * len(calls)

    async def one(i: int) -> None:
        try:
            outcomes[i] = await p.enqueue(**calls[i])
        except Exception as e:  # the test looks at each caller's own error
            outcomes[i] = e

    async with trio.open_nursery() as nursery:
        for i in range(len(calls)):
            nursery.start_soon(one, i)
    return outcomes


async def test_many_concurrent_enqueues_share_batches_and_all_exist(start_daemon, daemon_env):
    transport = CountingTransport()
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, AsyncClient(d.url, transport=transport) as c:
            async with c.producer(max_batch=50, max_delay_s=0.05) as p:
                outcomes = await enqueue_all(p, [
                    {"name": "many", "payload": {"i": i}, "queue": "idle"} for i in range(300)])
            sent = list(transport.paths)
            assert all(isinstance(o, CreateResult) and o.created for o in outcomes), outcomes
            ids = [o.task_id for o in outcomes if isinstance(o, CreateResult)]
            assert len(set(ids)) == 300
            stored = {t.id: t.payload async for t in c.iter_tasks(
                name="many", limit=500, include_payload=True)}
            assert {i: stored[task_id] for i, task_id in enumerate(ids)} == {
                i: {"i": i} for i in range(300)}
            assert set(sent) == {"/api/v1/tasks/batch"} and 6 <= len(sent) < 300


async def test_a_refused_task_fails_alone(start_daemon, daemon_env):
    good = [{"name": "good", "payload": {"i": i}, "queue": "idle"} for i in range(6)]
    bad_handler = {"name": "bad", "handler": "no-such-handler"}
    bad_priority = {"name": "bad", "priority": "high"}
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, AsyncClient(d.url) as c:
            async with c.producer(max_batch=100, max_delay_s=0.2) as p:
                outcomes = await enqueue_all(p, [*good[:2], bad_handler, *good[2:4],
                                                 bad_priority, *good[4:]])
            refused = [outcomes.pop(5), outcomes.pop(2)]
            assert [(type(e), e.field) for e in refused] == [  # type: ignore[union-attr]
                (InvalidRequest, "priority"), (InvalidRequest, "handler")]
            assert "tasks" not in str(refused[1])
            assert all(isinstance(o, CreateResult) and o.created for o in outcomes), outcomes
            for o in outcomes:
                assert isinstance(o, CreateResult)
                assert (await c.get(o.task_id)).task.name == "good"
            assert [t.name async for t in c.iter_tasks(name="bad")] == []


async def test_dedup_keys_answer_each_caller(start_daemon, daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, AsyncClient(d.url) as c:
            before = await c.create("charge", dedup_key="before", queue="idle")
            async with c.producer(max_batch=100, max_delay_s=0.2) as p:
                outcomes = await enqueue_all(p, [
                    {"name": "charge", "dedup_key": "k1", "queue": "idle"},
                    {"name": "charge", "dedup_key": "k1", "queue": "idle"},
                    {"name": "charge", "dedup_key": "before", "queue": "idle"},
                    {"name": "other", "dedup_key": "before", "queue": "idle"},
                    {"name": "charge", "dedup_key": "k2", "queue": "idle"},
                ])
            first, same, existing, conflicting, other = outcomes
            assert isinstance(first, CreateResult) and isinstance(same, CreateResult)
            assert (same.task_id, sorted([first.created, same.created])) == (
                first.task_id, [False, True])
            assert isinstance(existing, CreateResult)
            assert (existing.task_id, existing.created) == (before.task_id, False)
            assert isinstance(conflicting, Conflict)
            assert (conflicting.code, conflicting.field) == ("dedup_conflict", "dedup_key")
            assert before.task_id in str(conflicting)
            assert isinstance(other, CreateResult) and other.created
            assert other.task_id not in (first.task_id, before.task_id)


async def test_leaving_the_block_sends_what_waits(start_daemon, daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, AsyncClient(d.url) as c:
            outcomes: list[CreateResult] = []

            async def one(p: Any, i: int) -> None:
                outcomes.append(await p.enqueue("flushed", payload={"i": i}, queue="idle"))

            async with trio.open_nursery() as nursery:
                # Neither bound is reached: only leaving the block sends the batch.
                async with c.producer(max_batch=1000, max_delay_s=3600) as p:
                    for i in range(10):
                        nursery.start_soon(one, p, i)
                    await trio.testing.wait_all_tasks_blocked()
                    assert outcomes == []
            assert len({o.task_id for o in outcomes}) == 10
            assert len([t async for t in c.iter_tasks(name="flushed")]) == 10
            with pytest.raises(RuntimeError):
                await p.enqueue("late")


async def test_an_unreachable_daemon_fails_every_caller():
    with trio.fail_after(10):
        async with AsyncClient(f"http://127.0.0.1:{free_port()}") as c:
            async with c.producer(max_batch=3, max_delay_s=0.01) as p:
                outcomes = await enqueue_all(p, [{"name": "lost"} for _ in range(5)])
    assert [(type(o), getattr(o, "code", None)) for o in outcomes] == [
        (Unavailable, "unreachable")] * 5
    assert len({id(o) for o in outcomes}) == 5


async def test_a_batch_refused_as_a_whole_is_sent_task_by_task(start_daemon, daemon_env):
    # Each task fits the limits on its own; ten together are over the body limit (413).
    env = {**daemon_env, "DISTASKS_HTTP_MAX_PAYLOAD_BYTES": "10000",
           "DISTASKS_HTTP_MAX_BODY_BYTES": "10000"}
    transport = CountingTransport()
    with trio.fail_after(30):
        async with start_daemon(env) as d, AsyncClient(d.url, transport=transport) as c:
            async with c.producer(max_batch=10, max_delay_s=0.5) as p:
                outcomes = await enqueue_all(p, [
                    {"name": "big", "payload": "x" * 9000, "queue": "idle"} for _ in range(10)])
            assert all(isinstance(o, CreateResult) and o.created for o in outcomes), outcomes
            assert transport.paths == ["/api/v1/tasks/batch"] + ["/api/v1/tasks"] * 10
            assert len([t async for t in c.iter_tasks(name="big")]) == 10


def producer_example() -> str:
    """The producer example of docs/client.md (the block that defines `main(orders)`)."""
    [block] = re.findall(r"```python\n(import trio\n.*?)```",
                         (REPO / "docs" / "client.md").read_text(), re.DOTALL)
    return block


async def test_the_documented_example_works(start_daemon, daemon_env):
    script = producer_example() + (
        "\ntrio.run(main, [{'id': 1}, {'id': 2}, {'id': 1, 'again': True}])\n")
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d:
            done = await trio.run_process(
                [sys.executable, "-c", script], cwd=REPO, check=False, capture_stdout=True,
                capture_stderr=True, env={**daemon_env, "DISTASKS_URL": d.url})
    assert done.returncode == 0, done.stderr.decode()
    lines = sorted(done.stdout.decode().splitlines())
    assert len(lines) == 3 and lines[2].startswith("2 ") and lines[2].endswith(" True")
    assert "dedup_conflict" in lines[0] + lines[1]  # order 1 sent again, changed


async def test_the_blocking_producer_batches_and_answers_each_future(start_daemon, daemon_env):
    def produce(url: str) -> tuple[list[Any], list[str]]:
        counting = CountingSync()
        with Client(url, transport=counting) as c:
            # No delay bound is reached: batches leave full (10), the last one on exit.
            with c.producer(max_batch=10, max_delay_s=3600) as p:
                futures = [p.submit("sync", payload={"i": i}, queue="idle") for i in range(24)]
                futures.insert(7, p.submit("bad", handler="no-such-handler"))
            with pytest.raises(RuntimeError):
                p.submit("late")
            outcomes: list[Any] = []
            for f in futures:
                try:
                    outcomes.append(f.result(timeout=0))
                except Exception as e:  # each future's own error
                    outcomes.append(e)
            return outcomes, counting.paths

    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, AsyncClient(d.url) as c:
            outcomes, paths = await trio.to_thread.run_sync(produce, d.url)
            refused = outcomes.pop(7)
            assert isinstance(refused, InvalidRequest) and refused.field == "handler"
            assert all(isinstance(o, CreateResult) and o.created for o in outcomes), outcomes
            assert len({o.task_id for o in outcomes}) == 24
            assert paths.count("/api/v1/tasks/batch") >= 3
            stored = {t.id: t.payload async for t in c.iter_tasks(
                name="sync", limit=500, include_payload=True)}
            assert {i: stored[o.task_id] for i, o in enumerate(outcomes)} == {
                i: {"i": i} for i in range(24)}


class CountingSync(httpx.HTTPTransport):
    """httpx's own blocking transport, counting the requests per path."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return super().handle_request(request)

"""distasks.client against `distasks serve`: every method of both clients, and the
errors they raise (422 naming the field, 404, a daemon that is not there)."""

from __future__ import annotations

import uuid

import pytest
import trio

from distasks.client import (
    AsyncClient,
    Client,
    InvalidRequest,
    NotFound,
    TaskSpec,
    Unavailable,
    WaitTimeout,
)

from .conftest import free_port

DOOMED = {"always_fail": True}


async def test_async_client_covers_the_api(start_daemon, daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, AsyncClient(d.url) as c:
            readiness = await c.ready()
            assert readiness.ready and readiness.checks == {"postgres": "ok", "redis": "ok"}

            created = await c.create("email", payload={"to": "a@example.com"}, priority=2)
            assert created.created and created.status == "queued"
            done = await c.wait(created.task_id, timeout=10)
            assert done.task.status == "completed" and done.task.payload == {"to": "a@example.com"}
            assert done.latest_run is not None and done.latest_run.status == "succeeded"
            runs = await c.runs(created.task_id)
            assert [(r.attempt, r.status) for r in runs] == [(1, "succeeded")]
            assert (await c.get(created.task_id, wait=5)).task.finished_at is not None

            # The same dedup_key gives the same task, created False.
            first = await c.create("charge", dedup_key="order-1", priority=2)
            again = await c.create("charge", dedup_key="order-1", priority=2)
            assert (again.task_id, first.created, again.created) == (first.task_id, True, False)

            # A batch, then one page of it and every page of it.
            batch = await c.create_many([{"name": "page", "priority": 2},
                                         TaskSpec(name="page", priority=4, queue="other")])
            assert [r.created for r in batch] == [True, True]
            page = await c.list(name="page", limit=1)
            assert len(page.tasks) == 1 and page.next_cursor is not None
            listed = [t.id async for t in c.iter_tasks(name="page", limit=1)]
            assert sorted(listed) == sorted(r.task_id for r in batch)
            assert [t.id for t in (await c.list(queue="other")).tasks] == [batch[1].task_id]

            # Cancel a delayed task: recorded with the actor and reason; twice is a no-op.
            later = await c.create("later", delay_seconds=3600)
            cancelled = await c.cancel(later.task_id, reason="not needed")
            assert (cancelled.cancelled, cancelled.status) == (True, "cancelled")
            task = (await c.get(later.task_id)).task
            assert (task.type, task.cancelled_by, task.cancel_reason) == (
                "delayed", "anonymous@127.0.0.1", "not needed")
            assert (await c.cancel(later.task_id)).cancelled is False

            # wait() gives up with the last state it saw.
            waiting = await c.create("waiting", delay_seconds=3600)
            with pytest.raises(WaitTimeout) as timed_out:
                await c.wait(waiting.task_id, timeout=0.2)
            assert timed_out.value.last is not None
            assert timed_out.value.last.task.status == "queued"

            state = await c.pause("default")
            assert (state.name, state.paused) == ("default", True)
            queues = {q.name: q for q in await c.queues()}
            assert queues["default"].paused and queues["default"].paused_by == (
                "anonymous@127.0.0.1")
            assert (await c.resume("default")).paused is False

            # Two tasks out of retries: list, replay (dry run, then one), delete the other.
            doomed = await c.create_many([
                {"name": "doomed", "payload": DOOMED, "max_retries": 0}] * 2)
            a, b = (r.task_id for r in doomed)
            for task_id in (a, b):
                assert (await c.wait(task_id, timeout=10)).task.status == "failed"
            dead = await c.dlq("default", error="ALWAYS_FAIL")
            assert sorted(t.id for t in dead.tasks) == sorted([a, b])
            assert all(t.attempts == 1 and "always_fail" in (t.last_error or "")
                       for t in dead.tasks)
            dry = await c.replay("default", dry_run=True)
            assert (dry.replayed, dry.dry_run, sorted(dry.task_ids)) == (2, True, sorted([a, b]))
            replayed = await c.replay("default", task_ids=[a], override_priority=7)
            assert (replayed.replayed, replayed.task_ids) == (1, [a])
            again_failed = await c.wait(a, timeout=10)
            assert (again_failed.task.status, again_failed.task.priority) == ("failed", 7)
            assert [r.status for r in again_failed.runs] == ["failed", "failed"]
            deleted = await c.delete_dlq("default", task_ids=[b])
            assert (deleted.deleted, deleted.task_ids) == (1, [b])
            assert [t.id for t in (await c.dlq("default")).tasks] == [a]

            workers = await c.workers()
            assert len(workers) == 1 and workers[0].alive and workers[0].queues == ["default"]

            with pytest.raises(InvalidRequest) as invalid:
                await c.create("x", priority=2**40)
            assert (invalid.value.status, invalid.value.code, invalid.value.field) == (
                422, "invalid_input", "priority")
            with pytest.raises(InvalidRequest) as unknown:
                await c.create("x", handler="nope")
            assert (unknown.value.code, unknown.value.field) == ("unknown_handler", "handler")
            missing = str(uuid.uuid4())
            for call in (c.get(missing), c.runs(missing), c.cancel(missing)):
                with pytest.raises(NotFound) as not_found:
                    await call
                assert (not_found.value.status, not_found.value.code) == (404, "not_found")


def sync_scenario(url: str) -> None:
    """The same surface through the blocking client (run in a thread)."""
    with Client(url) as c:
        assert c.ready().ready
        created = c.create("email", priority=2)
        assert c.wait(created.task_id, timeout=10).task.status == "completed"
        assert [r.status for r in c.runs(created.task_id)] == ["succeeded"]
        assert c.get(created.task_id).task.id == created.task_id

        batch = c.create_many([TaskSpec(name="page", priority=2)] * 3)
        page = c.list(name="page", limit=2)
        assert len(page.tasks) == 2 and page.next_cursor
        assert sorted(t.id for t in c.iter_tasks(name="page", limit=2)) == sorted(
            r.task_id for r in batch)

        later = c.create("later", delay_seconds=3600)
        assert c.cancel(later.task_id, reason="r").cancelled
        assert c.get(later.task_id).task.cancelled_by == "anonymous@127.0.0.1"
        with pytest.raises(WaitTimeout):
            c.wait(c.create("waiting", delay_seconds=3600).task_id, timeout=0.1)

        assert c.pause("default").paused
        assert [q.paused for q in c.queues() if q.name == "default"] == [True]
        assert not c.resume("default").paused

        a, b = (r.task_id for r in c.create_many(
            [{"name": "doomed", "payload": DOOMED, "max_retries": 0}] * 2))
        for task_id in (a, b):
            assert c.wait(task_id, timeout=10).task.status == "failed"
        assert sorted(t.id for t in c.dlq("default").tasks) == sorted([a, b])
        assert c.replay("default", count=1, dry_run=True).replayed == 1
        assert c.replay("default", task_ids=[a]).task_ids == [a]
        assert c.delete_dlq("default", task_ids=[b]).deleted == 1
        assert c.wait(a, timeout=10).task.status == "failed"
        assert [t.id for t in c.dlq("default").tasks] == [a]

        assert [w.alive for w in c.workers()] == [True]
        with pytest.raises(InvalidRequest) as invalid:
            c.create("x", max_retries=-1)
        assert (invalid.value.status, invalid.value.field) == (422, "max_retries")
        with pytest.raises(NotFound):
            c.get(str(uuid.uuid4()))


async def test_sync_client_covers_the_api(start_daemon, daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d:
            await trio.to_thread.run_sync(sync_scenario, d.url, abandon_on_cancel=True)


def refused_sync(url: str) -> Unavailable:
    with Client(url) as c, pytest.raises(Unavailable) as caught:
        c.ready()
    return caught.value


async def test_no_daemon_listening_is_unavailable_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with trio.fail_after(10):
        async with AsyncClient(url) as c:
            with pytest.raises(Unavailable) as caught:
                await c.create("x")
        sync_error = await trio.to_thread.run_sync(refused_sync, url, abandon_on_cancel=True)
    for e in (caught.value, sync_error):
        assert (e.status, e.code, e.retry_after_s) == (None, "unreachable", None)
        assert str(e) == f"cannot reach the distasks API at {url}: connection refused"

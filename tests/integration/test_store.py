"""Store: creates, claims and fenced outcome writes against a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta

import trio

from distasks.domain import ids
from distasks.domain.model import RunStatus, TaskStatus
from distasks.store import Failed, Fence, Interrupted, Outcomes, Retrying, Succeeded

from .helpers import new_task, now


async def test_create_writes_task_and_first_run(store):
    with trio.fail_after(5):
        t = new_task(payload={"k": [1, 2]})
        [result] = await store.create_tasks([t])
        task, runs = await store.get_task(t.id)
    assert result.created and result.task_id == t.id
    assert task.status is TaskStatus.QUEUED and task.payload == {"k": [1, 2]}
    assert [(r.id, r.attempt, r.status) for r in runs] == [(t.run_id, 1, RunStatus.QUEUED)]


async def test_dedup_key_in_one_batch_and_across_batches_gives_one_task(store):
    with trio.fail_after(5):
        a, b = new_task(dedup_key="k"), new_task(dedup_key="k")
        results = await store.create_tasks([a, b])
        [later] = await store.create_tasks([new_task(dedup_key="k")])
    assert [r.created for r in results] == [True, False]
    assert {r.task_id for r in results} == {a.id} == {later.task_id}
    assert later.created is False


async def test_concurrent_creates_with_one_dedup_key_give_one_task(store):
    results = []

    async def create():
        results.extend(await store.create_tasks([new_task(dedup_key="same")]))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(create)
    assert len({r.task_id for r in results}) == 1
    assert sum(r.created for r in results) == 1


async def test_start_runs_starts_a_queued_run_once(store):
    with trio.fail_after(5):
        t = new_task()
        await store.create_tasks([t])
        first = await store.start_runs([t.run_id], worker_id="w1", now=now(),
                                       lease_until=now() + timedelta(seconds=5))
        second = await store.start_runs([t.run_id], worker_id="w2", now=now(),
                                        lease_until=now() + timedelta(seconds=5))
        unknown = await store.start_runs([uuid.uuid4()], worker_id="w1", now=now(),
                                         lease_until=now())
    assert [c.run_id for c in first] == [t.run_id]
    assert first[0].task.id == t.id and first[0].attempt == 1
    assert second == [] and unknown == []


async def test_outcome_of_a_worker_that_lost_the_lease_is_not_written(store):
    with trio.fail_after(5):
        t = new_task()
        await store.create_tasks([t])
        await store.start_runs([t.run_id], worker_id="w1", now=now(), lease_until=now())
        def result(worker_id):
            return Outcomes(succeeded=[Succeeded(t.run_id, Fence(worker_id), '"late"', now())])

        written_by_other = await store.record_outcomes(result("w2"))
        written = await store.record_outcomes(result("w1"))
        again = await store.record_outcomes(result("w1"))
        task, runs = await store.get_task(t.id)
    assert written_by_other.runs == set() and again.runs == set()
    assert written.runs == written.advanced == {t.run_id}
    assert task.status is TaskStatus.COMPLETED
    assert runs[0].status is RunStatus.SUCCEEDED and runs[0].result == "late"


async def test_retry_records_the_failure_and_queues_the_next_attempt(store):
    with trio.fail_after(5):
        t = new_task()
        await store.create_tasks([t])
        await store.start_runs([t.run_id], worker_id="w", now=now(), lease_until=now())
        due, next_run = now() + timedelta(seconds=2), ids.new_run_id(t.id)
        await store.record_outcomes(
            Outcomes(retrying=[Retrying(t.run_id, Fence("w"), "boom", now(), due, next_run)]))
        task, runs = await store.get_task(t.id)
    assert task.status is TaskStatus.QUEUED and task.failures == 1
    assert [(r.attempt, r.status) for r in runs] == [(1, RunStatus.RETRYING), (2, RunStatus.QUEUED)]
    assert runs[0].error == "boom" and runs[0].next_retry_at == due
    assert runs[1].id == next_run and runs[1].available_at == due


async def test_interrupted_run_is_not_counted_as_a_failure(store):
    with trio.fail_after(5):
        t = new_task()
        await store.create_tasks([t])
        await store.start_runs([t.run_id], worker_id="w", now=now(), lease_until=now())
        await store.record_outcomes(
            Outcomes(interrupted=[Interrupted(t.run_id, Fence("w"), "shutdown", now(),
                                                  ids.new_run_id(t.id))]))
        task, runs = await store.get_task(t.id)
    assert task.failures == 0 and task.status is TaskStatus.QUEUED
    assert [r.status for r in runs] == [RunStatus.INTERRUPTED, RunStatus.QUEUED]


async def test_final_failure_then_replay_gives_a_fresh_attempt_and_priority(store):
    with trio.fail_after(5):
        t = new_task(max_retries=0, priority=1)
        await store.create_tasks([t])
        await store.start_runs([t.run_id], worker_id="w", now=now(), lease_until=now())
        await store.record_outcomes(Outcomes(failed=[Failed(t.run_id, Fence("w"), "dead", now())]))
        [dead] = await store.dead_tasks("q", limit=10)
        replayed = await store.replay("q", limit=10, override_priority=None, now=now())
        twice = await store.replay("q", limit=10, override_priority=None, now=now())
        task, runs = await store.get_task(t.id)
    assert dead.task.status is TaskStatus.FAILED and dead.last_error == "dead"
    assert [(task_id, priority) for task_id, _, priority, _ in replayed] == [(t.id, 1)]
    assert twice == []
    assert task.status is TaskStatus.QUEUED and task.failures == 0 and task.priority == 1
    assert [(r.attempt, r.status) for r in runs] == [(1, RunStatus.FAILED), (2, RunStatus.QUEUED)]


async def test_takeover_applies_only_while_the_lease_is_still_expired(store):
    with trio.fail_after(5):
        t = new_task()
        await store.create_tasks([t])
        lease_end = now()
        await store.start_runs([t.run_id], worker_id="w", now=lease_end, lease_until=lease_end)
        # The worker's heartbeat extends the lease before the reaper's write lands.
        later = lease_end + timedelta(seconds=30)
        held = await store.heartbeat("w", now=now(), run_ids=[t.run_id], lease_until=later)
        takeover = Outcomes(failed=[Failed(
            t.run_id, Fence("w", expired_before=lease_end + timedelta(seconds=1)),
            "lease_expired", now())])
        written = await store.record_outcomes(takeover)
        [expired] = await store.expired_runs(now=later + timedelta(seconds=1), limit=10)
        written_late = await store.record_outcomes(Outcomes(failed=[Failed(
            t.run_id, Fence("w", expired_before=later + timedelta(seconds=1)), "lease_expired",
            now())]))
        held_after = await store.heartbeat("w", now=now(), run_ids=[t.run_id], lease_until=later)
    assert held.extended == {t.run_id} and held.cancelled == set()
    assert written.runs == set()
    assert expired.run_id == t.run_id and expired.worker_id == "w"
    assert written_late.runs == {t.run_id}
    assert held_after.extended == set()


async def test_undispatched_runs_are_found_until_marked(store):
    with trio.fail_after(5):
        t = new_task()
        await store.create_tasks([t])
        later = now() + timedelta(seconds=10)
        [pending] = await store.undispatched_runs(created_before=later, limit=10)
        none_yet = await store.undispatched_runs(created_before=now() - timedelta(seconds=60),
                                                 limit=10)
        await store.mark_dispatched([t.run_id], now=now())
        after = await store.undispatched_runs(created_before=later, limit=10)
    assert (pending.queue_name, pending.run_id, pending.status) == ("q", t.run_id, "queued")
    assert none_yet == [] and after == []


async def test_a_null_payload_is_stored_as_json_null(store):
    with trio.fail_after(5):
        t = new_task(payload=None)
        t = dataclasses.replace(t, payload=None, payload_json="null")
        await store.create_tasks([t])
        task, _ = await store.get_task(t.id)
    assert task.payload is None

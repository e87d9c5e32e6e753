"""Outcomes at the edges: data PostgreSQL refuses must not take a batch (or the daemon)
down, and a cancel racing an outcome write must not leave an attempt behind."""

from __future__ import annotations

import trio

from distasks.daemon import completer
from distasks.domain import ids
from distasks.domain.model import Actor, RunStatus, TaskStatus
from distasks.domain.outcome import Outcome, OutcomeKind
from distasks.store import Fence, Outcomes, Retrying

from .helpers import new_task, now


async def test_a_refused_outcome_does_not_sink_the_batch(store, broker):
    with trio.fail_after(10):
        good, bad = new_task(queue="q"), new_task(queue="q", max_retries=0)
        await store.create_tasks([good, bad])
        claimed = await store.start_runs([good.run_id, bad.run_id], worker_id="w", now=now(),
                                         lease_until=now())
        by_id = {c.run_id: c for c in claimed}
        batch = [
            Outcome(by_id[good.run_id], OutcomeKind.SUCCEEDED, now(), result_json='"fine"'),
            # A result PostgreSQL's jsonb refuses (a NUL escape), as a buggy path might send.
            Outcome(by_id[bad.run_id], OutcomeKind.SUCCEEDED, now(),
                    result_json='"nul \\u0000 here"'),
        ]
        written = await completer.record_once(batch, store=store, broker=broker)
        good_task, good_runs = await store.get_task(good.id)
        bad_task, bad_runs = await store.get_task(bad.id)
    assert written == 2
    assert good_task.status is TaskStatus.COMPLETED and good_runs[0].result == "fine"
    assert bad_task.status is TaskStatus.FAILED
    assert bad_runs[0].error.startswith("outcome could not be stored")


async def test_cancel_after_a_retry_was_written_cancels_the_next_attempt(store):
    with trio.fail_after(10):
        t = new_task(queue="q")
        await store.create_tasks([t])
        await store.start_runs([t.run_id], worker_id="w", now=now(), lease_until=now())
        await store.record_outcomes(Outcomes(retrying=[
            Retrying(t.run_id, Fence("w"), "boom", now(), now(), ids.new_run_id(t.id))]))
        done = await store.cancel_task(t.id, tenant="default", actor=Actor("me"), reason=None,
                                       now=now())
        task, runs = await store.get_task(t.id)
    assert done is not None and done.cancelled and done.running is None
    assert task.status is TaskStatus.CANCELLED
    assert [r.status for r in runs] == [RunStatus.RETRYING, RunStatus.CANCELLED]



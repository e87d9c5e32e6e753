"""Releasing a workflow's dependents in the outcome transaction (store/workflows.py):
two parents finishing at the same instant release their child exactly once, whatever
their outcomes, and a release's runs reach Redis through the completer's push."""

from __future__ import annotations

import uuid

import pytest
import trio

from distasks.daemon import completer
from distasks.domain import ids
from distasks.domain.graph import Dependency, NewNode, NewWorkflow, OnParentFailure
from distasks.domain.model import SYSTEM, TaskStatus
from distasks.domain.outcome import Outcome, OutcomeKind
from distasks.store import Failed, Fence, Outcomes, Succeeded

from .helpers import new_task, now

# Rounds of the race: each one a fresh workflow whose two parents finish at once.
ROUNDS = 40


def diamond(policy: OnParentFailure = OnParentFailure.CANCEL) -> NewWorkflow:
    wf = ids.new_task_id()
    nodes = (NewNode("p1", new_task(name="p1", max_retries=0, day_of=wf)),
             NewNode("p2", new_task(name="p2", max_retries=0, day_of=wf)),
             NewNode("child", new_task(name="child", day_of=wf),
                     (Dependency("p1", policy), Dependency("p2", policy))))
    return NewWorkflow(id=wf, name="race", tenant="default", nodes=nodes)


async def finish(store, run_id: uuid.UUID, ok: bool, go: trio.Event):
    fence = Fence("w")
    o = (Outcomes(succeeded=[Succeeded(run_id, fence, '"r"', now())], workflow=True) if ok
         else Outcomes(failed=[Failed(run_id, fence, "boom", now())], workflow=True))
    await go.wait()
    return await store.record_outcomes(o)


@pytest.mark.parametrize(("outcomes", "policy", "child_status"), [
    ((True, True), OnParentFailure.CANCEL, TaskStatus.QUEUED),
    ((True, False), OnParentFailure.CONTINUE, TaskStatus.QUEUED),
    ((False, False), OnParentFailure.SKIP, TaskStatus.SKIPPED),
    ((False, True), OnParentFailure.CANCEL, TaskStatus.CANCELLED),
])
async def test_two_parents_finishing_at_once_release_the_child_exactly_once(
        store, outcomes, policy, child_status):
    with trio.fail_after(60):
        for _ in range(ROUNDS):
            wf = diamond(policy)
            created, roots = await store.create_workflow(wf, actor=SYSTEM, now=now())
            assert len(roots) == 2
            await store.start_runs([r.run_id for r in roots], worker_id="w", now=now(),
                                   lease_until=now())
            by_task = {r.task_id: r.run_id for r in roots}
            written = []
            go = trio.Event()

            async def one(task_id, ok, written=written, by_task=by_task, go=go):
                written.append(await finish(store, by_task[task_id], ok, go))

            async with trio.open_nursery() as n:
                for key, ok in zip(("p1", "p2"), outcomes, strict=True):
                    n.start_soon(one, created.task_ids[key], ok)
                await trio.sleep(0.01)
                go.set()
            child = created.task_ids["child"]
            task, runs = await store.get_task(child)
            released = [r for w in written for r in w.released.runs]
            assert task.status is child_status
            if child_status is TaskStatus.QUEUED:
                assert len(runs) == 1 and [r.task_id for r in released] == [child]
            else:
                assert runs == [] and released == []
            wfr = await store.get_workflow(wf.id, tenant="default")
            assert wfr.open_nodes == (1 if child_status is TaskStatus.QUEUED else 0)


async def test_released_children_are_pushed_to_ready_by_the_completer(store, broker):
    with trio.fail_after(20):
        wf = diamond()
        created, roots = await store.create_workflow(wf, actor=SYSTEM, now=now())
        claimed = await store.start_runs([r.run_id for r in roots], worker_id="w", now=now(),
                                         lease_until=now())
        batch = [Outcome(c, OutcomeKind.SUCCEEDED, now(), result_json=f'"{c.task.workflow_key}"')
                 for c in claimed]
        assert await completer.record_once(batch, store=store, broker=broker) == 2
        _task, runs = await store.get_task(created.task_ids["child"])
        assert len(runs) == 1 and runs[0].status.value == "queued"
        leased = await broker.claim("q", count=10, lease_until_ms=10**13, block=False)
        assert leased == [str(runs[0].id)]
        [child] = await store.start_runs([runs[0].id], worker_id="w", now=now(),
                                         lease_until=now())
        assert child.parents == {
            "p1": {"status": "completed", "result": "p1", "error": None, "truncated": False},
            "p2": {"status": "completed", "result": "p2", "error": None, "truncated": False}}


async def test_parents_results_beyond_the_budget_are_left_out_and_marked(store, broker):
    with trio.fail_after(20):
        created, roots = await store.create_workflow(diamond(), actor=SYSTEM, now=now())
        claimed = await store.start_runs([r.run_id for r in roots], worker_id="w", now=now(),
                                         lease_until=now())
        # p1's result is 5 bytes of JSON text ("abc" with its quotes), p2's 7.
        results = {"p1": '"abc"', "p2": '"abcde"'}
        batch = [Outcome(c, OutcomeKind.SUCCEEDED, now(), result_json=results[c.task.workflow_key])
                 for c in claimed]
        await completer.record_once(batch, store=store, broker=broker)
        _task, runs = await store.get_task(created.task_ids["child"])
        [child] = await store.start_runs([runs[0].id], worker_id="w", now=now(),
                                         lease_until=now(), max_parent_output_bytes=6)
    assert child.parents == {
        "p1": {"status": "completed", "result": "abc", "error": None, "truncated": False},
        "p2": {"status": "completed", "result": None, "error": None, "truncated": True}}

"""Releasing a workflow's dependents in the outcome transaction (store/workflows.py):
two parents finishing at the same instant release their child exactly once, whatever
their outcomes, and a release's runs reach Redis through the completer's push."""

from __future__ import annotations

import uuid

import pytest
import trio

from distasks.daemon import completer
from distasks.domain import ids
from distasks.domain.graph import (
    Dependency,
    NewNode,
    NewWorkflow,
    OnParentFailure,
    WorkflowState,
)
from distasks.domain.model import SYSTEM, TaskStatus
from distasks.domain.outcome import Outcome, OutcomeKind
from distasks.store import Failed, Fence, Outcomes, Succeeded

from .helpers import new_task, new_workflow, now

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


def fan_in(parents: int) -> NewWorkflow:
    nodes = tuple(NewNode(f"p{i}", new_task(name=f"p{i}", max_retries=0)) for i in range(parents))
    child = NewNode("child", new_task(name="child"), tuple(Dependency(n.key) for n in nodes))
    return new_workflow("fan-in", (*nodes, child))


async def node(store, wf: NewWorkflow, key: str):
    [n] = [n for n in (await store.get_workflow(wf.id, tenant="default")).nodes if n.key == key]
    return n


def succeeded(run_ids) -> Outcomes:
    return Outcomes(succeeded=[Succeeded(r, Fence("w"), '"r"', now()) for r in run_ids],
                    workflow=True)


async def test_a_release_that_only_lowers_counters_is_folded_into_the_outcomes(store):
    """Given a fan-in of four, a batch of successes that leaves the child waiting is written
    with its release in one statement; the one that would release the child writes nothing
    there and goes the long way, which releases it once."""
    with trio.fail_after(20):
        wf = fan_in(4)
        created, roots = await store.create_workflow(wf, actor=SYSTEM, now=now())
        await store.start_runs([r.run_id for r in roots], worker_id="w", now=now(),
                               lease_until=now())
        runs = [r.run_id for r in roots]
        folded = await store._record_folded(succeeded(runs[:3]).succeeded)
        waiting = await node(store, wf, "child")
        open_after_three = (await store.get_workflow(wf.id, tenant="default")).open_nodes
        refused = await store._record_folded(succeeded(runs[3:]).succeeded)
        last, [still_running] = await store.get_task(created.task_ids["p3"])
        written = await store.record_outcomes(succeeded(runs[3:]))
        child = await node(store, wf, "child")
        _, child_runs = await store.get_task(created.task_ids["child"])
        after = await store.get_workflow(wf.id, tenant="default")
    assert folded is not None and folded.runs == set(runs[:3]) == folded.advanced
    assert folded.released.runs == [] and folded.released.finished == {}
    assert (waiting.status, waiting.deps_remaining, open_after_three) == (
        TaskStatus.PENDING, 1, 2)
    assert refused is None  # nothing written: p3 is still running, the child still waits
    assert last.status is TaskStatus.QUEUED and still_running.status.value == "running"
    assert written.runs == {runs[3]}
    assert [r.task_id for r in written.released.runs] == [child.task_id]
    assert (child.status, child.deps_remaining, len(child_runs)) == (TaskStatus.QUEUED, 0, 1)
    assert after.open_nodes == 1


async def test_a_batch_that_finishes_its_workflow_is_not_folded(store):
    with trio.fail_after(20):
        wf = new_workflow("one", (NewNode("only", new_task(name="only")),))
        _, [root] = await store.create_workflow(wf, actor=SYSTEM, now=now())
        await store.start_runs([root.run_id], worker_id="w", now=now(), lease_until=now())
        refused = await store._record_folded(succeeded([root.run_id]).succeeded)
        written = await store.record_outcomes(succeeded([root.run_id]))
        after = await store.get_workflow(wf.id, tenant="default")
    assert refused is None
    assert written.released.finished == {wf.id: WorkflowState.SUCCEEDED}
    assert (after.state, after.open_nodes) == (WorkflowState.SUCCEEDED, 0)


async def test_many_parents_finishing_at_once_release_the_child_exactly_once(store):
    """Six parents each finish in a transaction of their own, at the same instant: the
    folded writes and the one that finds the counter reaching zero (it goes the long way)
    see each other's decrements; the child gets exactly one run, every time."""
    with trio.fail_after(90):
        for _ in range(ROUNDS // 2):
            wf = fan_in(6)
            created, roots = await store.create_workflow(wf, actor=SYSTEM, now=now())
            await store.start_runs([r.run_id for r in roots], worker_id="w", now=now(),
                                   lease_until=now())
            go = trio.Event()
            written = []

            async def one(run_id, go=go, written=written):
                await go.wait()
                written.append(await store.record_outcomes(succeeded([run_id])))

            async with trio.open_nursery() as n:
                for r in roots:
                    n.start_soon(one, r.run_id)
                await trio.sleep(0.01)
                go.set()
            child = await node(store, wf, "child")
            _, runs = await store.get_task(created.task_ids["child"])
            released = [r for w in written for r in w.released.runs]
            wfr = await store.get_workflow(wf.id, tenant="default")
            assert (child.status, child.deps_remaining, len(runs)) == (TaskStatus.QUEUED, 0, 1)
            assert [r.task_id for r in released] == [child.task_id]
            assert wfr.open_nodes == 1 and wfr.state is WorkflowState.RUNNING


async def test_folded_outcomes_and_a_workflow_cancel_never_deadlock(store):
    """Outcomes (folded or not) and a workflow cancel at the same instant: both lock the
    workflow before its nodes, so both finish, and the workflow ends cancelled with no
    node left waiting."""
    with trio.fail_after(60):
        for _ in range(ROUNDS // 4):
            wf = fan_in(6)
            created, roots = await store.create_workflow(wf, actor=SYSTEM, now=now())
            await store.start_runs([r.run_id for r in roots], worker_id="w", now=now(),
                                   lease_until=now())
            go = trio.Event()

            async def finish_some(run_ids, go=go):
                await go.wait()
                await store.record_outcomes(succeeded(run_ids))

            async def cancel(go=go, wf=wf):
                await go.wait()
                await store.cancel_workflow(wf.id, tenant="default", actor=SYSTEM,
                                            reason="test", now=now())

            async with trio.open_nursery() as n:
                for r in roots[:4]:
                    n.start_soon(finish_some, [r.run_id])
                n.start_soon(cancel)
                await trio.sleep(0.01)
                go.set()
            wfr = await store.get_workflow(wf.id, tenant="default")
            statuses = {node.status for node in wfr.nodes}
            assert wfr.state is WorkflowState.CANCELLED and wfr.open_nodes == 0
            assert statuses <= {"completed", "cancelled"}

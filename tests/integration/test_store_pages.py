"""Store: pages with payloads cut at a byte budget by PostgreSQL
(store.base.within_payload_budget), against a real PostgreSQL."""

from __future__ import annotations

import pytest
import trio

from distasks.store import Failed, Fence, Outcomes, TaskFilter

from .helpers import new_task, now

# (payload blob sizes, oldest first; budget; how many of the newest a page keeps; cut)
CASES = [
    ([100] * 5, 10_000, 5, False),
    ([3_000] * 5, 7_000, 2, True),
    ([10, 10, 20_000], 1_000, 1, True),     # the newest is over the budget: alone
    ([10, 20_000, 10], 1_000, 1, True),     # the second would pass it: stop before
    ([10] * 3, 10, 1, True),
]


@pytest.mark.parametrize(("sizes", "budget", "kept", "cut"), CASES)
async def test_a_page_keeps_the_newest_rows_within_the_budget(store, sizes, budget, kept, cut):
    with trio.fail_after(10):
        for size in sizes:  # one batch each: created_at orders them
            await store.create_tasks([new_task(payload={"blob": "x" * size})])
        everything = await store.list_tasks(TaskFilter(), limit=len(sizes), after=None)
        page = await store.list_tasks(TaskFilter(), limit=len(sizes), after=None,
                                      max_payload_bytes=budget)
    assert [t.id for t in page] == [t.id for t in everything][:kept]
    assert [t.payload for t in page] == [t.payload for t in everything][:kept]
    assert page.cut is cut


async def test_without_payloads_the_budget_does_not_apply(store):
    with trio.fail_after(10):
        for _ in range(3):
            await store.create_tasks([new_task(payload={"blob": "x" * 5_000})])
        page = await store.list_tasks(TaskFilter(), limit=10, after=None, with_payload=False,
                                      max_payload_bytes=1_000)
    assert len(page) == 3 and not page.cut
    assert all(t.payload is None for t in page)


async def test_a_page_of_dead_tasks_is_cut_the_same_way(store):
    """dead_tasks: oldest failure first, the oldest over the budget alone."""
    sizes = [20_000, 10, 10]
    with trio.fail_after(10):
        for size in sizes:
            t = new_task(max_retries=0, payload={"blob": "x" * size})
            await store.create_tasks([t])
            await store.start_runs([t.run_id], worker_id="w", now=now(), lease_until=now())
            await store.record_outcomes(Outcomes(failed=[Failed(t.run_id, Fence("w"), "dead",
                                                                now())]))
        everything = await store.dead_tasks("q", limit=10)
        page = await store.dead_tasks("q", limit=10, max_payload_bytes=1_000)
        rest = await store.dead_tasks("q", limit=10, max_payload_bytes=1_000,
                                      after=(page[-1].failed_at, page[-1].task.id))
    assert [d.task.payload["blob"] for d in everything] == ["x" * size for size in sizes]
    assert [d.task.id for d in page] == [everything[0].task.id] and page.cut
    assert [d.task.id for d in rest] == [d.task.id for d in everything[1:]] and not rest.cut

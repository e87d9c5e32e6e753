"""Queues served in a chosen order (worker.queue_order): with one executor and a backlog
in three queues, strict runs them in the configured order and weighted by its weights,
without starving the lightest; a retune changes the order at once."""

from __future__ import annotations

import dataclasses
from collections import Counter

import trio

from distasks.config import QueueWeights
from distasks.daemon.tunables import Tunables
from distasks.daemon.worker import WorkerPool
from distasks.domain.retry import RetryPolicy
from distasks.handlers import builtin_registry

from .helpers import new_task, wait_until

QUEUES = ("critical", "default", "low")


def make_pool(config, store, broker, registry, *, order: str,
              weights: dict[str, int] | None = None) -> WorkerPool:
    wc = dataclasses.replace(config.worker, queues=QUEUES, concurrency=1, claim_batch=10)
    tunables = Tunables(queues=QUEUES, concurrency=1,
                        retry=RetryPolicy(config.retry.base_s, config.retry.cap_s, 0.0),
                        log_level="INFO", queue_order=order,
                        queue_weights=QueueWeights(sorted((weights or {}).items())))
    return WorkerPool(store=store, broker=broker, registry=registry, config=wc,
                      tunables=tunables, worker_id="test-worker")


async def run_backlog(config, store, broker, *, order: str, per_queue: int,
                      weights: dict[str, int] | None = None, retune=None) -> list[str]:
    """Occupy the one executor, push `per_queue` tasks into each queue, wait until every
    fetcher wants the executor, free it, and return the queues in the order their tasks
    ran."""
    registry = builtin_registry()
    gate = trio.Event()
    ran: list[str] = []

    async def record(ctx):
        if ctx.task.name == "blocker":
            await gate.wait()
        else:
            ran.append(ctx.task.queue_name)

    registry.add("record", record)
    blocker = new_task(name="blocker", handler="record", queue="critical")
    backlog = [new_task(handler="record", queue=q) for q in QUEUES for _ in range(per_queue)]
    pool = make_pool(config, store, broker, registry, order=order, weights=weights)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        await store.create_tasks([blocker])
        await broker.dispatch(ready=[("critical", str(blocker.run_id), 0)])
        await wait_until(lambda: trio.to_thread.run_sync(lambda: pool.busy() == 1))
        await store.create_tasks(backlog)
        await broker.dispatch(ready=[(t.queue_name, str(t.run_id), 0) for t in backlog])
        # Every queue's fetcher now waits for the one executor (or, for the queue whose
        # claim came back full, wants it).
        await wait_until(lambda: trio.to_thread.run_sync(
            lambda: set(pool._slots.statistics()["parked"]) == set(QUEUES)))
        if retune is not None:
            retune(pool)
        gate.set()
        await wait_until(lambda: trio.to_thread.run_sync(lambda: len(ran) == len(backlog)))
        nursery.cancel_scope.cancel()
    return ran


async def test_strict_runs_the_queues_in_their_configured_order(config, store, broker):
    with trio.fail_after(30):
        ran = await run_backlog(config, store, broker, order="strict", per_queue=5)
    assert ran == ["critical"] * 5 + ["default"] * 5 + ["low"] * 5


async def test_weighted_shares_the_executor_by_weight_and_starves_no_queue(
        config, store, broker):
    with trio.fail_after(30):
        ran = await run_backlog(config, store, broker, order="weighted", per_queue=12,
                                weights={"critical": 6, "default": 3, "low": 1})
    # While all three have work, every ten runs follow the weights.
    assert Counter(ran[:10]) == {"critical": 6, "default": 3, "low": 1}
    assert Counter(ran) == {"critical": 12, "default": 12, "low": 12}


async def test_equal_weights_take_turns(config, store, broker):
    with trio.fail_after(30):
        ran = await run_backlog(config, store, broker, order="weighted", per_queue=4)
    for start in range(0, 12, 3):
        assert sorted(ran[start:start + 3]) == sorted(QUEUES)


async def test_a_retune_changes_the_order_at_once(config, store, broker):
    def strict_low_first(pool):
        pool._tunables.queue_order = "strict"
        pool._tunables.queues = ("low", "default", "critical")
        pool.retune()

    with trio.fail_after(30):
        ran = await run_backlog(config, store, broker, order="weighted", per_queue=3,
                                retune=strict_low_first)
    assert ran == ["low"] * 3 + ["default"] * 3 + ["critical"] * 3

"""Reaper, heartbeat and reconciler against real PostgreSQL and Redis: takeover of
expired leases, fencing of a zombie, hand-back of claims that never started, Redis
rebuilt after it lost everything, and runs committed but never pushed."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import timedelta

import pytest
import trio

from distasks.broker.keys import global_keys
from distasks.daemon import heartbeat, reaper, reconciler
from distasks.daemon.tunables import Tunables
from distasks.daemon.worker import WorkerPool
from distasks.domain.errors import StoreUnavailable
from distasks.domain.model import RunStatus, TaskStatus
from distasks.domain.retry import RetryPolicy
from distasks.handlers import Registry
from distasks.store import Failed, Fence, Outcomes, Store

from .helpers import new_task, now, wait_until

POLICY = RetryPolicy(base_s=0.05, cap_s=0.1, jitter=0.0)


async def statuses(store, task_id):
    task, runs = await store.get_task(task_id)
    return task.status, [r.status for r in runs]


async def test_reaper_takes_over_an_expired_run_and_retries_it_at_once(store, broker):
    with trio.fail_after(5):
        t = new_task(queue="q", max_retries=1)
        await store.create_tasks([t])
        await broker.claim("q", count=1, lease_until_ms=0, block=False)  # nothing there yet
        await store.start_runs([t.run_id], worker_id="dead", now=now(),
                               lease_until=now() - timedelta(seconds=1))
        await broker.raw("zadd", broker.keys("q").leases, {str(t.run_id): 1})
        taken = await reaper.reap_once(store, broker, ["q"], now_s=time.time(), policy=POLICY)
        task, runs = await store.get_task(t.id)
        ready = await broker.raw("lrange", broker.keys("q").ready, 0, -1)
        leased = await broker.raw("zcard", broker.keys("q").leases)
        again = await reaper.reap_once(store, broker, ["q"], now_s=time.time(), policy=POLICY)
    assert taken == 1 and again == 0
    assert [r.status for r in runs] == [RunStatus.RETRYING, RunStatus.QUEUED]
    assert runs[0].error.startswith("lease_expired") and task.failures == 1
    assert ready == [str(runs[1].id)] and leased == 0


async def test_reaper_dead_letters_an_expired_run_without_retries(store, broker):
    with trio.fail_after(5):
        t = new_task(queue="q", max_retries=0)
        await store.create_tasks([t])
        await store.start_runs([t.run_id], worker_id="dead", now=now(),
                               lease_until=now() - timedelta(seconds=1))
        await reaper.reap_once(store, broker, ["q"], now_s=time.time(), policy=POLICY)
        status = await statuses(store, t.id)
        dlq = await broker.raw("lrange", broker.keys("q").dlq, 0, -1)
    assert status == (TaskStatus.FAILED, [RunStatus.FAILED])
    assert dlq == [str(t.id)]


async def test_reaper_hands_back_a_claim_that_never_started(store, broker):
    """The daemon died between the Redis claim and the PostgreSQL update."""
    with trio.fail_after(5):
        t = new_task(queue="q")
        await store.create_tasks([t])
        await broker.dispatch(ready=[("q", str(t.run_id), t.priority)])
        await broker.claim("q", count=1, lease_until_ms=1000, block=False)
        await broker.raw("zadd", broker.keys("q").leases, {"junk": 1, str(uuid.uuid4()): 1})
        handed = await reaper.reap_once(store, broker, ["q"], now_s=time.time(), policy=POLICY)
        depths = await broker.depths("q")
        ready = await broker.raw("lrange", broker.keys("q").ready, 0, -1)
    assert handed == 1
    assert ready == [str(t.run_id)] and depths["leased"] == 0


async def test_zombie_worker_cannot_commit_after_takeover_and_abandons_its_handler(
        config, store, broker):
    """A worker whose lease expired (it stalled) is taken over: its late result is fenced
    off, and its next heartbeat cancels the handler."""
    registry = Registry()
    started, release = trio.Event(), trio.Event()
    cancelled = []

    async def stall(ctx):
        if ctx.attempt > 1:
            return "retried"
        started.set()
        try:
            await release.wait()
        except trio.Cancelled:
            cancelled.append(ctx.run_id)
            raise
        return "late"

    registry.add("stall", stall)
    wc = dataclasses.replace(config.worker, queues=("q",), lease_s=60)
    pool = WorkerPool(store=store, broker=broker, registry=registry, config=wc,
                      tunables=Tunables(queues=("q",), concurrency=wc.concurrency, retry=POLICY,
                                        log_level="INFO"),
                      worker_id="zombie")
    t = new_task(queue="q", handler="stall", max_retries=1)
    with trio.fail_after(10):
        await store.create_tasks([t])
        await broker.dispatch(ready=[("q", str(t.run_id), t.priority)])
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await started.wait()
            # The reaper runs "in the future", after the lease would have expired.
            taken = await reaper.reap_once(store, broker, ["q"], now_s=time.time() + 120,
                                           policy=POLICY)
            lost = await heartbeat.beat_once(store, broker, pool, worker_id="zombie",
                                             now_s=time.time(), lease_s=60)
            await wait_until(lambda: _completed(store, t.id))
            pool.stop(0)
        task, runs = await store.get_task(t.id)
    assert taken >= 1 and lost == 1 and cancelled == [t.run_id]
    assert [r.status for r in runs] == [RunStatus.RETRYING, RunStatus.SUCCEEDED]
    assert runs[0].error.startswith("lease_expired") and runs[0].result is None
    assert runs[1].result == "retried"


async def _completed(store, task_id):
    status, _ = await statuses(store, task_id)
    return status is TaskStatus.COMPLETED


async def _true(value):
    return value


async def test_heartbeat_extends_the_leases_of_running_handlers(config, store, broker):
    registry = Registry()
    started, release = trio.Event(), trio.Event()

    async def hold(ctx):
        started.set()
        await release.wait()
        return "ok"

    registry.add("hold", hold)
    wc = dataclasses.replace(config.worker, queues=("q",), lease_s=5)
    pool = WorkerPool(store=store, broker=broker, registry=registry, config=wc,
                      tunables=Tunables(queues=("q",), concurrency=wc.concurrency, retry=POLICY,
                                        log_level="INFO"),
                      worker_id="w")
    t = new_task(queue="q", handler="hold")
    with trio.fail_after(10):
        await store.create_tasks([t])
        await broker.dispatch(ready=[("q", str(t.run_id), t.priority)])
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await started.wait()
            await heartbeat.beat_once(store, broker, pool, worker_id="w",
                                      now_s=time.time() + 100, lease_s=5)
            _, runs = await store.get_task(t.id)
            score = await broker.raw("zscore", broker.keys("q").leases, str(t.run_id))
            release.set()
            await wait_until(lambda: _true(not pool.busy()))
            pool.stop(0)
    assert runs[0].lease_expires_at.timestamp() > time.time() + 100
    assert score > (time.time() + 100) * 1000


async def test_a_rebuild_that_fails_midway_lets_the_next_pass_rebuild_at_once(store, broker):
    # PostgreSQL refusing connections (a port nothing listens on) fails the rebuild
    # after it took the lock; the lock must not keep every daemon from retrying.
    t = new_task(queue="q")
    with trio.fail_after(20):
        await store.create_tasks([t])
        async with Store.open("host=127.0.0.1 port=1 user=postgres dbname=none",
                              min_size=0) as unreachable:
            with pytest.raises(StoreUnavailable):
                await reconciler.reconcile_once(unreachable, broker, now_s=time.time(),
                                                grace_s=3600)
        lock = await broker.raw("exists", global_keys(broker._prefix).rebuild_lock)
        await reconciler.reconcile_once(store, broker, now_s=time.time(), grace_s=3600)
        ready = await broker.raw("lrange", broker.keys("q").ready, 0, -1)
    assert lock == 0
    assert ready == [str(t.run_id)] and await broker.has_epoch()


async def test_reconciler_rebuilds_redis_after_it_lost_everything(store, broker):
    with trio.fail_after(10):
        ready_task, delayed_task, running_task, dead_task = (
            new_task(queue="q"), new_task(queue="q", run_at=now() + timedelta(hours=1)),
            new_task(queue="q"), new_task(queue="q", max_retries=0))
        await store.create_tasks([ready_task, delayed_task, running_task, dead_task])
        lease_until = now() + timedelta(seconds=30)
        await store.start_runs([running_task.run_id, dead_task.run_id], worker_id="w",
                               now=now(), lease_until=lease_until)
        await store.record_outcomes(Outcomes(failed=[Failed(dead_task.run_id, Fence("w"), "x", now())]))
        # Redis holds nothing of this prefix (as after a restart without persistence).
        pushed = await reconciler.reconcile_once(store, broker, now_s=time.time(), grace_s=3600)
        k = broker.keys("q")
        ready = await broker.raw("lrange", k.ready, 0, -1)
        delayed = await broker.raw("zrange", k.delayed, 0, -1)
        leased = await broker.raw("zrange", k.leases, 0, -1, False, True)
        dlq = await broker.raw("lrange", k.dlq, 0, -1)
        has_epoch = await broker.has_epoch()
    assert pushed == 0  # the rebuild did it all; nothing was older than the grace period
    assert ready == [str(ready_task.run_id)]
    assert delayed == [str(delayed_task.run_id)]
    assert leased == [(str(running_task.run_id), int(lease_until.timestamp() * 1000))]
    assert dlq == [str(dead_task.id)]
    assert has_epoch is True


async def test_reconciler_pushes_a_committed_run_that_never_reached_redis(store, broker):
    with trio.fail_after(5):
        await reconciler.reconcile_once(store, broker, now_s=time.time(), grace_s=0)  # epoch
        t = new_task(queue="q")
        await store.create_tasks([t])  # committed, never pushed (as if the daemon died)
        early = await reconciler.reconcile_once(store, broker, now_s=time.time(), grace_s=60)
        pushed = await reconciler.reconcile_once(store, broker, now_s=time.time() + 120,
                                                 grace_s=60)
        again = await reconciler.reconcile_once(store, broker, now_s=time.time() + 120,
                                                grace_s=60)
        ready = await broker.raw("lrange", broker.keys("q").ready, 0, -1)
    assert (early, pushed, again) == (0, 1, 0)
    assert ready == [str(t.run_id)]

"""The broker on a real Redis Cluster (three masters, three replicas: the session's
`redis_cluster`), whatever DISTASKS_TEST_REDIS says: queues and tenants spread over the
masters, pipelines across them, the epoch per master, the control channel from any node,
and a master killed and replaced by its replica, after which the rebuild restores what
the replica had not received. The Lua scripts one by one: DISTASKS_TEST_REDIS=cluster
(`make test-cluster`) runs test_broker_scripts.py and the others here."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from distasks.broker import Broker
from distasks.broker.keys import queue_keys, rate_keys
from distasks.daemon import reconciler
from distasks.domain.errors import BrokerUnavailable
from distasks.testing.servers import PrivateRedisCluster

from .helpers import new_task, now

# Queues enough that each of three masters serves some (by their hash tags' slots).
QUEUES = [f"q{i}" for i in range(12)]


@pytest.fixture
async def cluster_broker(aio_loop: None, redis_cluster: PrivateRedisCluster,
                         redis_prefix: str) -> AsyncIterator[Broker]:
    await trio.to_thread.run_sync(redis_cluster.ensure_running)
    async with Broker.open(redis_cluster.url, prefix=redis_prefix) as b:
        yield b
    await trio.to_thread.run_sync(redis_cluster.delete_prefix, redis_prefix)


def masters_of(cluster: PrivateRedisCluster, keys: list[str]) -> set[int]:
    return {cluster.master_of(k) for k in keys}


async def test_a_cluster_url_or_flag_opens_the_cluster_client(aio_loop, redis_cluster,
                                                              redis_prefix):
    plain = redis_cluster.url.replace("redis+cluster://", "redis://")
    with trio.fail_after(10):
        async with Broker.open(plain, prefix=redis_prefix, cluster=True) as by_flag:
            await by_flag.ping()
        async with Broker.open(redis_cluster.url, prefix=redis_prefix) as by_url:
            await by_url.ping()
    assert by_flag.is_cluster and by_url.is_cluster


async def test_queues_spread_over_the_masters_and_one_pipeline_serves_them_all(
        cluster_broker, redis_cluster):
    b = cluster_broker
    with trio.fail_after(10):
        await b.dispatch(ready=[(q, f"run-{q}", 0) for q in QUEUES],
                         delayed=[(q, f"later-{q}", 10**13, 2) for q in QUEUES])
        claimed = {q: await b.claim(q, count=5, lease_until_ms=10**13, block=False)
                   for q in QUEUES}
        depths = await b.queue_depths(QUEUES)
    assert masters_of(redis_cluster, [queue_keys("p", q).ready for q in QUEUES]) == set(
        redis_cluster.masters())
    assert claimed == {q: [f"run-{q}"] for q in QUEUES}
    assert all(depths[q]["delayed"] == 1 and depths[q]["leased"] == 1 for q in QUEUES)


async def test_rate_buckets_spread_over_the_masters_by_tenant(cluster_broker, redis_cluster):
    tenants = [f"t{i}" for i in range(12)]
    with trio.fail_after(10):
        granted = [await cluster_broker.take_tokens(
            "alice", t, per_ms=0.001, capacity=5, tenant_per_ms=0.001, tenant_capacity=3,
            want=10) for t in tenants]
    assert granted == [(3, 0)] * len(tenants)  # the tenant's smaller bucket decides
    slots = masters_of(redis_cluster, [k for t in tenants for k in rate_keys("p", "alice", t)])
    assert slots == set(redis_cluster.masters())


async def test_the_epoch_is_kept_per_master(cluster_broker, redis_cluster):
    b = cluster_broker
    with trio.fail_after(10):
        fresh = await b.lost_epochs()
        token = await b.begin_rebuild(lock_ms=10_000)
        assert token is not None
        await b.end_rebuild(fresh)
        whole = await b.lost_epochs()
        gone = sorted(fresh)[0]
        await b.raw("delete", gone)
        one_lost = await b.lost_epochs()
    assert len(fresh) == len(redis_cluster.masters()) == 3
    assert sorted(int(owner.rsplit(":", 1)[1]) for owner in fresh.values()) == (
        redis_cluster.masters())
    assert whole == {} and await b.has_epoch() is False
    assert one_lost == {gone: fresh[gone]}
    # Only the queues on that master are rebuilt.
    on = [q for q in QUEUES if b.on_lost(one_lost, q)]
    port = int(fresh[gone].rsplit(":", 1)[1])
    assert on and all(redis_cluster.master_of(b.keys(q).ready) == port for q in on)
    assert all(redis_cluster.master_of(b.keys(q).ready) != port for q in QUEUES if q not in on)


async def test_a_cancel_published_on_one_master_reaches_a_subscription_on_another(
        cluster_broker):
    b = cluster_broker
    with trio.fail_after(10):
        async with b.control_messages() as messages:
            for q in QUEUES[:4]:  # pipelines touching other masters publish the cancel
                await b.cancelled(waiting=[(q, "r")], running=f"run-{q}", task_id="t",
                                  now_ms=1)
                # None for the subscription's confirmation, ignored
                while (got := await messages.next(wait_s=1)) is None:  # noqa: ASYNC110
                    pass
                assert got == ("cancel", [f"run-{q}"])


async def test_a_master_killed_mid_work_is_rebuilt_from_postgresql_on_its_replica(
        cluster_broker, redis_cluster, store):
    """The master of the queue dies with writes its replica never got (here: the whole
    queue, deleted on the replica's side after the kill, as if never copied); its
    replica takes over, the marker names the old master, and the reconciler restores
    the queue from PostgreSQL, leaving the other masters' queues as they were."""
    b = cluster_broker
    tasks = [new_task(queue="q0") for _ in range(5)]
    other = next(q for q in QUEUES
                 if redis_cluster.master_of(b.keys(q).ready)
                 != redis_cluster.master_of(b.keys("q0").ready))
    try:
        with trio.fail_after(60):
            await reconciler.reconcile_once(store, b, now_s=now().timestamp(), grace_s=0)
            await store.create_tasks(tasks)
            await b.dispatch(ready=[("q0", str(t.run_id), 0) for t in tasks]
                             + [(other, "elsewhere", 0)])
            await store.mark_dispatched([t.run_id for t in tasks], now=now())
            port = await trio.to_thread.run_sync(redis_cluster.master_of, b.keys("q0").ready)
            await trio.to_thread.run_sync(redis_cluster.kill_master, port)
            new = await trio.to_thread.run_sync(redis_cluster.wait_failover, port)
            # What the replica lacked: the queue's ready list.
            while True:
                try:
                    await b.raw("delete", b.keys("q0").ready)
                    break
                except BrokerUnavailable:  # the client is still learning the new slot map
                    await trio.sleep(0.2)
            lost = await b.lost_epochs()
            await reconciler.reconcile_once(store, b, now_s=now().timestamp(), grace_s=0)
            ready = await b.raw("lrange", b.keys("q0").ready, 0, -1)
            untouched = await b.raw("lrange", b.keys(other).ready, 0, -1)
            again = await b.lost_epochs()
    finally:
        await trio.to_thread.run_sync(redis_cluster.ensure_running)
    assert list(lost.values()) == [f"127.0.0.1:{new}"]
    assert sorted(ready) == sorted(str(t.run_id) for t in tasks)
    assert untouched == ["elsewhere"] and again == {}

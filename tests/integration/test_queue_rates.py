"""A queue's start rate (max_starts_per_second, burst): a token bucket in the claim on
Redis's clock, so that every daemon together starts no more than that; a fetcher held
back sleeps until the next token, and nothing starts at create on a rated queue."""

from __future__ import annotations

import time

import trio

from distasks.daemon import reconciler
from distasks.daemon.metrics import Metrics
from distasks.daemon.operations import Operations
from distasks.domain.model import SYSTEM, TaskStatus
from distasks.handlers import builtin_registry

from .helpers import forget_everything, new_task, now
from .test_queue_limits import drain_on_daemons


async def test_a_claim_takes_the_tokens_there_are_and_a_blocking_one_waits_for_the_next(
        broker):
    with trio.fail_after(5):
        await broker.set_limits({}, rates={"q": (10.0, 3)})
        await broker.dispatch(ready=[("q", f"r{i}", 0) for i in range(10)])
        burst = await broker.claim("q", count=10, lease_until_ms=9000, block=False)
        empty = await broker.claim("q", count=10, lease_until_ms=9000, block=False)
        bell = await broker.raw("exists", broker.keys("q").bell)
        started = time.monotonic()
        waited = await broker.claim("q", count=10, lease_until_ms=9000, block=True)
        waited_s = time.monotonic() - started
        await broker.set_limits({}, rates={"q": None})
        lifted = await broker.claim("q", count=10, lease_until_ms=9000, block=False)
    assert burst == ["r0", "r1", "r2"] and empty == [] and bell == 1  # work still waits
    assert waited == ["r3"] and 0.03 < waited_s < 0.5  # one token comes every 100 ms
    assert lifted == [f"r{i}" for i in range(4, 10)]


async def test_the_rate_is_copied_from_postgresql_after_redis_loss(store, broker):
    ops = Operations(store=store, broker=broker, metrics=Metrics())
    with trio.fail_after(10):
        limits = await ops.set_queue_limits("q", {"max_starts_per_second": 2.5}, actor=SYSTEM,
                                            now=now(), max_queues=None)
        await forget_everything(broker)
        await reconciler.reconcile_once(store, broker, now_s=now().timestamp(), grace_s=0)
        mirrored = await broker.raw("hgetall", broker.keys("q").rate)
        limits_after = await ops.set_queue_limits("q", {"burst": 7}, actor=SYSTEM, now=now(),
                                                  max_queues=None)
        rebursted = await broker.raw("hgetall", broker.keys("q").rate)
    assert limits["max_starts_per_second"] == 2.5 and limits["burst"] is None
    assert mirrored == {"per_s": "2.5", "burst": "3"}  # one second's worth, rounded up
    assert limits_after["burst"] == 7 and rebursted["burst"] == "7"


async def test_three_daemons_start_no_more_than_the_rate_allows(config, store, broker):
    """max_starts_per_second = 50 with a burst of 5 across three daemons: in any span of
    the runs' own started_at, no more starts than the burst plus 50 a second (and a
    little for the time between a claim and its start being recorded)."""
    registry = builtin_registry()

    async def noop(ctx):
        pass

    registry.add("noop3", noop)
    rate, burst = 50.0, 5
    tasks = [new_task(handler="noop3") for _ in range(150)]
    ops = Operations(store=store, broker=broker, metrics=Metrics())
    with trio.fail_after(60):
        await ops.set_queue_limits("q", {"max_starts_per_second": rate, "burst": burst},
                                   actor=SYSTEM, now=now(), max_queues=None)
        results = await drain_on_daemons(config, store, broker, registry, tasks,
                                         daemons=3, concurrency=4)
        runs = [(await store.get_task(t.id))[1][0] for t in tasks]
        statuses = {(await store.get_task(t.id))[0].status for t in tasks}
    assert not any(r.started for r in results)  # no start at create on a rated queue
    assert statuses == {TaskStatus.COMPLETED}
    assert len({r.worker_id for r in runs}) > 1
    starts = sorted(r.started_at for r in runs)
    slack = 3
    for i in range(len(starts)):
        for j in range(i, len(starts)):
            span_s = (starts[j] - starts[i]).total_seconds()
            assert j - i + 1 <= burst + rate * span_s + slack, (i, j, span_s)
    # And the drain took about as long as the rate says: (150 - burst) / 50 s.
    assert (starts[-1] - starts[0]).total_seconds() > 0.8 * (len(tasks) - burst) / rate


async def test_configured_limits_are_applied_once_and_bind_the_tenant(store, broker):
    """`[queues."acme/q"]` limits are set as a PATCH would (audited, mirrored), a second
    application with nothing changed writes nothing, and the tenant may tighten them but
    not lift or raise them."""
    import pytest

    from distasks.daemon import scheduler
    from distasks.domain.errors import OperatorLimit

    ops = Operations(store=store, broker=broker, metrics=Metrics())
    wanted = {"acme/q": {"max_running": 3, "max_starts_per_second": 10.0}}
    with trio.fail_after(10):
        first = await ops.apply_configured_limits(wanted, actor=scheduler.CONFIG_ACTOR,
                                                  now=now())
        again = await ops.apply_configured_limits(wanted, actor=scheduler.CONFIG_ACTOR,
                                                  now=now())
        mirrored = await broker.raw("get", broker.keys("acme/q").max_running)
    assert (first, again) == (1, 0) and mirrored == "3"
    ops.check_tenant_limits("acme/q", {"max_running": 2, "max_running_per_key": 1,
                                       "burst": 50})
    for change in ({"max_running": None}, {"max_running": 4},
                   {"max_starts_per_second": 11.0}):
        with pytest.raises(OperatorLimit) as e:
            ops.check_tenant_limits("acme/q", change)
        assert e.value.field == next(iter(change)) and e.value.status == 403

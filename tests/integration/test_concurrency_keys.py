"""Concurrency keys (max_running_per_key): never more runs of one key leased at once,
counted in Redis across every daemon, keys served round robin, each run's key released
on every way its lease ends, rebuilt from PostgreSQL, and no start at create."""

from __future__ import annotations

import random

import trio

from distasks.broker import Settlement, rank
from distasks.daemon import reaper, reconciler
from distasks.daemon.metrics import Metrics
from distasks.daemon.operations import Operations
from distasks.domain.model import SYSTEM, TaskStatus
from distasks.domain.retry import RetryPolicy
from distasks.handlers import builtin_registry

from .helpers import forget_everything, new_task, now
from .test_queue_limits import drain_on_daemons, max_overlap


async def test_keys_are_served_round_robin_within_their_limit(broker):
    keys = broker.keys("q")
    with trio.fail_after(5):
        await broker.set_limits({}, {"q": 1})
        # Key a is busy (four runs), b and c have one each, and two runs have no key.
        await broker.dispatch(ready=[
            *(("q", f"a{i}", "0/a") for i in range(4)), ("q", "b0", "0/b"), ("q", "c0", "0/c"),
            ("q", "p0", 0), ("q", "p1", 0)])
        first = await broker.claim("q", count=10, lease_until_ms=9000, block=False)
        blocked = await broker.claim("q", count=10, lease_until_ms=9000, block=False)
        bell_when_blocked = await broker.raw("exists", keys.bell)
        await broker.settle(Settlement(unleased={"q": ["a0"]}, now_ms=1))
        bell_after_end = await broker.raw("exists", keys.bell)
        after_end = await broker.claim("q", count=10, lease_until_ms=9000, block=False)
        counts = await broker.raw("hgetall", keys.key_running)
    # One of each key, then one without a key, and again: a is at its limit.
    assert sorted(first[:3]) == ["a0", "b0", "c0"] and first[3] == "p0"
    assert first[4:] == ["p1"]
    assert blocked == [] and bell_when_blocked == 0
    assert bell_after_end == 1 and after_end == ["a1"]
    assert counts == {"a": "1", "b": "1", "c": "1"}


async def test_without_a_limit_keys_still_take_turns(broker):
    with trio.fail_after(5):
        await broker.dispatch(ready=[*(("q", f"a{i}", "0/a") for i in range(3)),
                                     *(("q", f"b{i}", "0/b") for i in range(3))])
        claimed = await broker.claim("q", count=4, lease_until_ms=9000, block=False)
        rest = await broker.claim("q", count=4, lease_until_ms=9000, block=False)
    assert claimed == ["a0", "b0", "a1", "b1"] and rest == ["a2", "b2"]


async def test_a_key_is_released_by_hand_back_release_and_withdraw(broker):
    keys = broker.keys("q")
    with trio.fail_after(5):
        await broker.set_limits({}, {"q": 1})
        await broker.dispatch(ready=[("q", "a0", "0/a"), ("q", "a1", "0/a"),
                                     ("q", "a2", "0/a")])
        assert await broker.claim("q", count=5, lease_until_ms=9000, block=False) == ["a0"]
        assert await broker.requeue("q", ["a0"]) == 1  # handed back: claimed next
        assert await broker.claim("q", count=5, lease_until_ms=9000, block=False) == ["a0"]
        await broker.release("q", ["a0"])  # nothing to run
        assert await broker.claim("q", count=5, lease_until_ms=9000, block=False) == ["a1"]
        await broker.cancelled(task_id="t", waiting=[("q", "a2")], running=None, now_ms=1)
        await broker.release("q", ["a1"])
        left = await broker.claim("q", count=5, lease_until_ms=9000, block=False)
        state = [await broker.raw("exists", k) for k in (keys.key_turns, keys.key_running,
                                                         keys.keyed("a"), keys.priorities)]
    assert left == [] and state == [0, 0, 0, 0]


async def test_a_delayed_run_with_a_key_comes_due_into_its_key(broker):
    with trio.fail_after(5):
        await broker.set_limits({}, {"q": 1})
        await broker.dispatch(ready=[("q", "a0", "0/a")], delayed=[("q", "a1", 5, "0/a")])
        assert await broker.claim("q", count=5, lease_until_ms=9000, block=False) == ["a0"]
        assert await broker.move_due("q", now_ms=10, limit=10, lock_ms=1) == 1
        held = await broker.claim("q", count=5, lease_until_ms=9000, block=False)
        await broker.settle(Settlement(unleased={"q": ["a0"]}, now_ms=1))
        after = await broker.claim("q", count=5, lease_until_ms=9000, block=False)
    assert held == [] and after == ["a1"]


async def test_key_counts_are_rebuilt_from_postgresql_after_redis_loss(store, broker):
    ops = Operations(store=store, broker=broker, metrics=Metrics())
    tasks = [new_task(concurrency_key=k) for k in ("a", "a", "b", "b")]
    with trio.fail_after(10):
        await ops.set_queue_limits("q", {"max_running_per_key": 1}, actor=SYSTEM, now=now(),
                                   max_queues=None)
        await store.create_tasks(tasks)
        await broker.dispatch(ready=[("q", str(t.run_id), rank(0, t.concurrency_key))
                                     for t in tasks])
        claimed = await broker.claim("q", count=10, lease_until_ms=10**13, block=False)
        await store.start_runs([tasks[0].run_id], worker_id="w", now=now(),
                               lease_until=now().replace(year=2100))
        await forget_everything(broker)
        await reconciler.reconcile_once(store, broker, now_s=now().timestamp(), grace_s=0)
        counts = await broker.raw("hgetall", broker.keys("q").key_running)
        after = await broker.claim("q", count=10, lease_until_ms=10**13, block=False)
        [record] = [r for r in await store.queues(now=now()) if r.name == "q"]
    assert sorted(claimed) == sorted([str(tasks[0].run_id), str(tasks[2].run_id)])
    assert counts == {"a": "1"}  # only the running one holds its key
    # a is held by its running run; one of b's two (neither started) is claimed.
    assert len(after) == 1 and after[0] in {str(tasks[2].run_id), str(tasks[3].run_id)}
    assert record.max_running_per_key == 1


async def test_an_expired_lease_releases_its_key(store, broker):
    """A daemon that died holding a keyed run: the reaper's takeover ends the lease and
    the key's count, so the next run of the key starts."""
    ops = Operations(store=store, broker=broker, metrics=Metrics())
    tasks = [new_task(concurrency_key="a") for _ in range(2)]
    with trio.fail_after(10):
        await ops.set_queue_limits("q", {"max_running_per_key": 1}, actor=SYSTEM, now=now(),
                                   max_queues=None)
        await store.create_tasks(tasks)
        await broker.dispatch(ready=[("q", str(t.run_id), "0/a") for t in tasks])
        [first] = await broker.claim("q", count=10, lease_until_ms=1, block=False)
        await store.start_runs([tasks[0].run_id], worker_id="dead", now=now(),
                               lease_until=now())
        assert await broker.claim("q", count=10, lease_until_ms=1, block=False) == []
        await trio.sleep(0.01)
        taken = await reaper.reap_once(store, broker, ["q"], now_s=now().timestamp(),
                                       policy=RetryPolicy(base_s=0, cap_s=0, jitter=0))
        after = await broker.claim("q", count=10, lease_until_ms=10**13, block=False)
        _, runs = await store.get_task(tasks[0].id)
        counts = await broker.raw("hgetall", broker.keys("q").key_running)
    assert first == str(tasks[0].run_id) and taken >= 1
    # The retry of the first went to the head of a's list, and a has room again.
    assert after == [str(runs[1].id)] and counts == {"a": "1"}


async def test_three_daemons_run_one_of_each_key_at_a_time(config, store, broker):
    """max_running_per_key = 1 across three daemons: no two runs of a key overlap (from
    their own started_at/finished_at), while runs of other keys run beside them."""
    registry = builtin_registry()

    async def short(ctx):
        await trio.sleep(0.005)

    registry.add("short", short)
    rnd = random.Random(4)
    # One busy key (half the runs) and nine quiet ones.
    tasks = [new_task(handler="short", concurrency_key="busy" if rnd.random() < 0.5
                      else f"k{rnd.randrange(9)}") for _ in range(240)]
    ops = Operations(store=store, broker=broker, metrics=Metrics())
    with trio.fail_after(120):
        await ops.set_queue_limits("q", {"max_running_per_key": 1}, actor=SYSTEM, now=now(),
                                   max_queues=None)
        results = await drain_on_daemons(config, store, broker, registry, tasks,
                                         daemons=3, concurrency=3)
        runs = {t.id: (await store.get_task(t.id))[1][0] for t in tasks}
        statuses = {(await store.get_task(t.id))[0].status for t in tasks}
    assert not any(r.started for r in results)  # no start at create for a keyed task
    assert statuses == {TaskStatus.COMPLETED}
    by_key: dict[str, list] = {}
    for t in tasks:
        by_key.setdefault(t.concurrency_key, []).append(runs[t.id])
    assert all(max_overlap(rs) == 1 for rs in by_key.values())
    assert max_overlap(list(runs.values())) > 1  # other keys ran beside each other
    assert len({r.worker_id for r in runs.values()}) > 1
    # Round robin: the quiet keys did not wait for the busy key's backlog to drain.
    busy_last = max(r.started_at for r in by_key["busy"])
    quiet_last = max(r.started_at for k, rs in by_key.items() if k != "busy" for r in rs)
    assert quiet_last < busy_last


async def test_a_key_is_released_even_when_redis_lost_its_scripts(broker):
    """The settle pipeline reloads a script Redis forgot and runs it after the rest: the
    lease's end must still find the run's key."""
    with trio.fail_after(5):
        await broker.set_limits({}, {"q": 1})
        await broker.dispatch(ready=[("q", "a0", "0/a"), ("q", "a1", "0/a")])
        assert await broker.claim("q", count=5, lease_until_ms=9000, block=False) == ["a0"]
        await broker.raw("script_flush")
        await broker.settle(Settlement(unleased={"q": ["a0"]}, dead={"q": ["t0"]}, now_ms=1))
        after = await broker.claim("q", count=5, lease_until_ms=9000, block=False)
    assert after == ["a1"]


async def test_the_depths_count_the_runs_a_limit_holds_back(broker):
    with trio.fail_after(5):
        await broker.set_limits({}, {"q": 1})
        await broker.dispatch(ready=[*(("q", f"a{i}", "0/a") for i in range(3)),
                                     ("q", "b0", "0/b"), ("q", "p0", 0)])
        await broker.claim("q", count=1, lease_until_ms=9000, block=False)  # a0
        by_key = (await broker.queue_depths(["q"]))["q"]
        await broker.set_limits({"q": 1})
        full = (await broker.queue_depths(["q"]))["q"]
        await broker.set_limits({"q": None}, rates={"q": (0.001, 1)})
        await broker.claim("q", count=1, lease_until_ms=9000, block=False)  # the one token
        no_token = (await broker.queue_depths(["q"]))["q"]
    assert (by_key["ready"], by_key["waiting_for_limit"]) == (4, 2)  # a1, a2
    assert (full["ready"], full["waiting_for_limit"]) == (4, 4)
    assert (no_token["ready"], no_token["waiting_for_limit"]) == (3, 3)

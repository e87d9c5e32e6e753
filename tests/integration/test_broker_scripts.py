"""Each Lua script, table style: seed Redis, call once with an explicit time, assert the
whole resulting state of the queue (asynq's TestDequeue shape)."""

from __future__ import annotations

import pytest
import trio

from distasks.broker import Broker, Settlement
from distasks.broker.base import cross
from distasks.broker.keys import global_keys


async def seed(broker: Broker, *, ready=(), delayed=(), leases=()) -> None:
    k = broker.keys("q")
    if ready:
        await broker.raw("rpush", k.ready, *ready)
    if delayed:
        await broker.raw("zadd", k.delayed, dict(delayed))
    if leases:
        await broker.raw("zadd", k.leases, dict(leases))


async def state(broker: Broker) -> dict:
    k = broker.keys("q")
    return {
        "ready": await broker.raw("lrange", k.ready, 0, -1),
        "delayed": await broker.raw("zrange", k.delayed, 0, -1, False, True),
        "leases": await broker.raw("zrange", k.leases, 0, -1, False, True),
    }


@pytest.mark.parametrize(
    ("ready", "count", "want_claimed", "want_ready", "want_leases"),
    [
        ([], 5, [], [], []),
        (["a"], 5, ["a"], [], [("a", 9000.0)]),
        (["a", "b", "c"], 2, ["a", "b"], ["c"], [("a", 9000.0), ("b", 9000.0)]),
        (["a", "b"], 2, ["a", "b"], [], [("a", 9000.0), ("b", 9000.0)]),
    ],
)
async def test_claim_moves_the_oldest_ready_items_into_the_lease_set(
        broker, ready, count, want_claimed, want_ready, want_leases):
    with trio.fail_after(5):
        await seed(broker, ready=ready)
        claimed = await broker.claim("q", count=count, lease_until_ms=9000, block=False)
        s = await state(broker)
    assert claimed == want_claimed
    assert s["ready"] == want_ready
    assert [(m, score) for m, score in s["leases"]] == want_leases


async def test_claim_drops_a_ready_duplicate_of_a_leased_run(broker):
    """A rebuild after a failover adds ids again that the replica kept: a copy of a run
    someone holds is dropped, its lease (and deadline) stays the holder's."""
    with trio.fail_after(5):
        await seed(broker, ready=["held", "b", "c"], leases=[("held", 5)])
        claimed = await broker.claim("q", count=2, lease_until_ms=9000, block=False)
        s = await state(broker)
    assert claimed == ["b", "c"]  # the duplicate dropped, two claimed all the same
    assert s["ready"] == []
    assert s["leases"] == [("held", 5.0), ("b", 9000.0), ("c", 9000.0)]


async def test_claim_drops_a_keyed_duplicate_of_a_leased_run_without_counting_it(broker):
    k = broker.keys("q")
    with trio.fail_after(5):
        await broker.dispatch(ready=[("q", "held", "0/a"), ("q", "other", "0/a")])
        await broker.raw("zadd", k.leases, {"held": 5})
        claimed = await broker.claim("q", count=5, lease_until_ms=9000, block=False)
        counts = await broker.raw("hgetall", k.key_running)
    assert claimed == ["other"]
    assert counts == {"a": "1"}


async def test_blocking_claim_on_an_empty_queue_returns_empty_after_the_block(broker):
    with trio.fail_after(5):
        assert await broker.claim("q", count=3, lease_until_ms=1, block=True) == []


async def blocked_in_blmove(broker: Broker) -> int:
    """Clients the Redis server holds blocked in BLMOVE now."""
    if broker.is_cluster:  # one list per master, by node
        by_node = await cross(broker._redis.client_list, target_nodes="primaries")
        clients = [c for listed in by_node.values() for c in listed]
    else:
        clients = await broker.raw("client_list")
    return sum(1 for c in clients if c.get("cmd") == "blmove" and "b" in c.get("flags", ""))


async def test_blocking_claim_wakes_when_an_item_arrives(broker):
    with trio.fail_after(5):
        before = await blocked_in_blmove(broker)
        async with trio.open_nursery() as nursery:
            async def push_once_the_claim_blocks():
                while await blocked_in_blmove(broker) <= before:  # noqa: ASYNC110 (Redis state)
                    await trio.sleep(0.01)
                await broker.dispatch(ready=[("q", "late", 0)])
            nursery.start_soon(push_once_the_claim_blocks)
            claimed = await broker.claim("q", count=3, lease_until_ms=7, block=True)
    assert claimed == ["late"]
    assert (await state(broker))["leases"] == [("late", 7.0)]


async def test_wait_ready_takes_nothing(broker):
    with trio.fail_after(5):
        await broker.dispatch(ready=[("q", "a", 0), ("q", "b", 0)])
        assert await broker.wait_ready("q") is True
        assert (await state(broker))["ready"] == ["a", "b"]


@pytest.mark.parametrize(
    ("delayed", "now_ms", "limit", "want_moved", "want_ready", "want_delayed"),
    [
        ([], 100, 10, 0, [], []),
        ([("a", 50), ("b", 100), ("c", 101)], 100, 10, 2, ["a", "b"], [("c", 101.0)]),
        ([("a", 1), ("b", 2), ("c", 3)], 100, 2, 2, ["a", "b"], [("c", 3.0)]),
        ([("late", 500)], 100, 10, 0, [], [("late", 500.0)]),
    ],
)
async def test_move_due_moves_due_items_in_due_order(
        broker, delayed, now_ms, limit, want_moved, want_ready, want_delayed):
    with trio.fail_after(5):
        await seed(broker, delayed=delayed)
        keys = broker.keys("q")
        script = broker._scripts["move_due"]
        moved = await _run_script(
            broker, script, [keys.delayed, keys.ready, keys.bands, keys.bell, keys.priorities],
            [now_ms, limit])
        s = await state(broker)
    assert moved == want_moved
    assert s["ready"] == want_ready
    assert s["delayed"] == want_delayed


async def _run_script(broker: Broker, script, keys, args):
    from distasks import aio

    return await aio.call(script, keys=keys, args=args)


async def test_move_due_takes_the_lock_so_one_daemon_moves_per_tick(broker):
    with trio.fail_after(5):
        await seed(broker, delayed=[("a", 1), ("b", 2)])
        first = await broker.move_due("q", now_ms=10, limit=1, lock_ms=10_000)
        second = await broker.move_due("q", now_ms=10, limit=1, lock_ms=10_000)
        s = await state(broker)
    # limit 1, but it repeats while batches are full: both move under one lock
    assert first == 2
    assert second is None
    assert s["ready"] == ["a", "b"]


@pytest.mark.parametrize(
    ("ready", "leases", "requeue", "want_count", "want_ready", "want_leases"),
    [
        (["x"], [("a", 1), ("b", 1)], ["a", "b"], 2, ["a", "b", "x"], []),
        ([], [("a", 1)], ["a", "gone"], 1, ["a"], []),
        (["x"], [], ["gone"], 0, ["x"], []),
    ],
)
async def test_requeue_hands_leased_items_back_to_the_head_once(
        broker, ready, leases, requeue, want_count, want_ready, want_leases):
    with trio.fail_after(5):
        await seed(broker, ready=ready, leases=leases)
        count = await broker.requeue("q", requeue)
        again = await broker.requeue("q", requeue)
        s = await state(broker)
    assert count == want_count
    assert again == 0
    assert s["ready"] == want_ready
    assert s["leases"] == want_leases


@pytest.mark.parametrize(
    ("waited", "finished", "now_ms", "want_announced", "want_waited"),
    [
        # Nobody waits: nothing is published, whatever finishes.
        ([], ["t1", "t2"], 100, None, []),
        # Only the waited-for task is announced, and its entry goes.
        ([("t1", 500)], ["t1", "t2"], 100, "done t1", []),
        ([("t1", 500), ("t2", 500), ("t3", 500)], ["t1", "t3"], 100, "done t1 t3",
         [("t2", 500.0)]),
        # A wait that ended before now is dropped and not announced.
        ([("t1", 50), ("t2", 500)], ["t1"], 100, None, [("t2", 500.0)]),
    ],
)
async def test_announce_done_publishes_only_tasks_someone_waits_for(
        broker, waited, finished, now_ms, want_announced, want_waited):
    waited_key = global_keys(broker._prefix).waited
    with trio.fail_after(5):
        for task_id, until_ms in waited:
            await broker.watch(task_id, until_ms=until_ms)
        async with broker.control_messages() as messages:
            await broker.settle(Settlement(finished=finished, now_ms=now_ms))
            message = await next_message(messages, within_s=0.5)
        left = await broker.raw("zrange", waited_key, 0, -1, False, True)
    assert message == (("done", want_announced.split()[1:]) if want_announced else None)
    assert left == want_waited


async def test_watch_keeps_the_latest_end_of_overlapping_waits(broker):
    with trio.fail_after(5):
        await broker.watch("t", until_ms=900)
        await broker.watch("t", until_ms=300)
        left = await broker.raw("zrange", global_keys(broker._prefix).waited, 0, -1, False, True)
    assert left == [("t", 900.0)]


async def next_message(messages, *, within_s: float):
    """The first control message within `within_s` (the subscription's confirmation reads
    as None first), or None."""
    with trio.move_on_after(within_s):
        while (message := await messages.next(wait_s=0.1)) is None:
            pass
        return message
    return None


async def test_announce_done_survives_redis_losing_its_script_cache(broker):
    with trio.fail_after(5):
        await broker.watch("t1", until_ms=500)
        await broker.raw("script_flush")
        async with broker.control_messages() as messages:
            await broker.settle(Settlement(finished=["t1"], now_ms=100))
            message = await next_message(messages, within_s=0.5)
    assert message == ("done", ["t1"])

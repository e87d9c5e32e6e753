"""distasks.daemon.slots: a counting semaphore whose capacity changes while it is in use.

Waiters are observed parked with trio.testing.wait_all_tasks_blocked, not by sleeping.
"""

from __future__ import annotations

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from distasks.daemon.slots import Slots


async def take(slots: Slots, got: list[str], name: str) -> None:
    await slots.acquire()
    got.append(name)


async def start_waiters(nursery: trio.Nursery, slots: Slots, got: list[str],
                        names: str) -> None:
    """One waiter per letter, parked in that order."""
    for name in names:
        nursery.start_soon(take, slots, got, name)
        await wait_all_tasks_blocked()


async def test_units_are_taken_up_to_the_capacity_then_acquire_waits():
    slots = Slots(2)
    await slots.acquire()
    slots.acquire_nowait()
    assert (slots.capacity, slots.taken) == (2, 2)
    with pytest.raises(trio.WouldBlock):
        slots.acquire_nowait()

    got: list[str] = []
    async with trio.open_nursery() as nursery:
        await start_waiters(nursery, slots, got, "a")
        assert got == []

        slots.release()
        await wait_all_tasks_blocked()

        assert got == ["a"]
    assert slots.taken == 2


async def test_released_units_go_to_waiters_in_arrival_order():
    slots = Slots(1)
    await slots.acquire()
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        await start_waiters(nursery, slots, got, "abc")

        for expected in (["a"], ["a", "b"], ["a", "b", "c"]):
            slots.release()
            await wait_all_tasks_blocked()
            assert got == expected
    assert slots.taken == 1


async def test_growing_wakes_as_many_waiters_as_there_are_new_units():
    slots = Slots(1)
    await slots.acquire()
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        await start_waiters(nursery, slots, got, "abc")

        slots.resize(3)
        await wait_all_tasks_blocked()
        # Which two is up to the scheduler: resize wakes every waiter to race for the
        # new units (arrival order is kept only by release()).
        assert len(got) == 2
        assert (slots.capacity, slots.taken) == (3, 3)

        slots.resize(4)
        await wait_all_tasks_blocked()
        assert sorted(got) == ["a", "b", "c"]
    assert slots.taken == 4


async def test_shrinking_lets_holders_finish_and_hands_out_nothing_until_below_capacity():
    slots = Slots(3)
    for _ in range(3):
        await slots.acquire()
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        await start_waiters(nursery, slots, got, "a")

        slots.resize(1)
        assert slots.taken == 3  # nobody loses a unit they hold
        for taken in (2, 1):
            slots.release()
            await wait_all_tasks_blocked()
            assert (got, slots.taken) == ([], taken)
            with pytest.raises(trio.WouldBlock):
                slots.acquire_nowait()

        slots.release()
        await wait_all_tasks_blocked()
        assert got == ["a"]
    assert (slots.capacity, slots.taken) == (1, 1)


async def test_growing_after_a_shrink_counts_the_units_still_held():
    slots = Slots(4)
    for _ in range(4):
        await slots.acquire()
    slots.resize(1)
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        await start_waiters(nursery, slots, got, "ab")

        slots.resize(5)  # 4 still held: room for one more, not two
        await wait_all_tasks_blocked()
        assert len(got) == 1 and slots.taken == 5

        slots.release()
        await wait_all_tasks_blocked()
        assert sorted(got) == ["a", "b"]
    assert slots.taken == 5


async def test_a_cancelled_waiter_takes_no_unit():
    slots = Slots(1)
    await slots.acquire()
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        await start_waiters(nursery, slots, got, "a")
        nursery.cancel_scope.cancel()
    assert got == [] and slots.taken == 1

    slots.release()  # wakes nobody: the lot is empty, the unit is free
    assert slots.taken == 0
    slots.acquire_nowait()
    assert slots.taken == 1


async def test_a_waiter_cancelled_after_a_resize_woke_it_takes_no_unit():
    slots = Slots(1)
    await slots.acquire()
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        await start_waiters(nursery, slots, got, "a")
        slots.resize(1)  # woken, finds no room, parks again
        await wait_all_tasks_blocked()
        assert got == []
        nursery.cancel_scope.cancel()
    assert slots.taken == 1


async def test_acquire_in_a_cancelled_scope_raises_even_with_units_free():
    slots = Slots(2)
    with trio.CancelScope() as scope:
        scope.cancel()
        await slots.acquire()
    assert scope.cancelled_caught
    assert slots.taken == 0


def test_take_nowait_uses_a_free_unit_first_then_one_lent_by_a_holder():
    slots = Slots(3)
    slots.acquire_nowait()
    slots.acquire_nowait()
    loan = slots.lend(2)  # the holder of those two waits, lending them
    assert slots.take_nowait()  # the free third unit: the loan is untouched
    assert slots.take_nowait() and slots.take_nowait()  # then the lent ones
    assert not slots.take_nowait()
    assert slots.taken == 3
    assert slots.end_loan(loan) == 0  # the holder keeps none of its two
    assert slots.end_loan(loan) == 0  # ending twice changes nothing


def test_an_ended_loan_cannot_be_taken_from():
    slots = Slots(1)
    slots.acquire_nowait()
    loan = slots.lend(1)
    assert slots.end_loan(loan) == 1
    assert not slots.take_nowait()


async def test_a_freed_unit_goes_to_the_claimant_pick_chooses_not_the_first_to_arrive():
    slots = Slots(1, pick=lambda claimants: "b" if "b" in claimants else claimants[0])
    await slots.acquire("x")
    got: list[str] = []

    async def take_as(name: str) -> None:
        await slots.acquire(name)
        got.append(name)

    async with trio.open_nursery() as nursery:
        for name in "ab":
            nursery.start_soon(take_as, name)
            await wait_all_tasks_blocked()
        slots.release()
        await wait_all_tasks_blocked()
        assert got == ["b"]
        slots.release()
        await wait_all_tasks_blocked()
    assert got == ["b", "a"] and slots.taken == 1


async def test_a_unit_picked_for_a_wanting_claimant_is_kept_for_it_until_it_gives_up():
    slots = Slots(2, pick=lambda claimants: claimants[0])
    await slots.acquire("a")
    await slots.acquire("b")
    slots.want("a", True)  # "a" is busy claiming, not parked, but has a backlog

    slots.release()  # kept for "a": not free, so nobody else gets it
    with pytest.raises(trio.WouldBlock):
        slots.acquire_nowait("b")
    slots.acquire_nowait("a")
    slots.release()
    assert slots.taken == 2

    slots.want("a", False)  # its claim came back short: the kept unit is freed
    assert slots.taken == 1 and not slots.wants("a")
    slots.acquire_nowait("b")


async def test_growing_hands_the_new_units_to_the_claimants_in_picked_order():
    slots = Slots(0, pick=lambda claimants: max(claimants))
    got: list[str] = []

    async def take_as(name: str) -> None:
        await slots.acquire(name)
        got.append(name)

    async with trio.open_nursery() as nursery:
        for name in "abc":
            nursery.start_soon(take_as, name)
            await wait_all_tasks_blocked()
        slots.resize(2)
        await wait_all_tasks_blocked()
        assert sorted(got) == ["b", "c"]
        slots.resize(3)
    assert sorted(got) == ["a", "b", "c"] and slots.taken == 3

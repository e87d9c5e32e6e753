"""Slots: a counting semaphore whose capacity can change while it is in use."""

from __future__ import annotations

import trio


class Slots:
    """`capacity` units; acquiring waits while all are taken. Shrinking below what is
    taken lets holders finish: their units simply are not handed out again."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._taken = 0
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def taken(self) -> int:
        return self._taken

    async def acquire(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._taken >= self._capacity:
            await self._lot.park()
        self._taken += 1

    def acquire_nowait(self) -> None:
        if self._taken >= self._capacity:
            raise trio.WouldBlock
        self._taken += 1

    def release(self) -> None:
        self._taken -= 1
        self._lot.unpark()

    def resize(self, capacity: int) -> None:
        self._capacity = capacity
        self._lot.unpark_all()

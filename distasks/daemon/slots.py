"""Slots: a counting semaphore whose capacity can change while it is in use."""

from __future__ import annotations

import trio


class Loan:
    """Units a holder (a fetcher blocked on an empty queue) lends while it waits: work
    that must not wait (a run started at create) may take them over with `take_nowait`."""

    __slots__ = ("units", "taken")

    def __init__(self, units: int):
        self.units = units
        self.taken = 0


class Slots:
    """`capacity` units; acquiring waits while all are taken. Shrinking below what is
    taken lets holders finish: their units simply are not handed out again."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._taken = 0
        self._lot = trio.lowlevel.ParkingLot()
        self._loans: list[Loan] = []

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

    def take_nowait(self) -> bool:
        """A unit for work that must not wait: a free one, else one lent by a holder
        (which then owns one unit less). False if there is none."""
        if self._taken < self._capacity:
            self._taken += 1
            return True
        for loan in self._loans:
            if loan.taken < loan.units:
                loan.taken += 1
                return True
        return False

    def lend(self, units: int) -> Loan:
        """Lend `units` of those the caller holds until `end_loan`."""
        loan = Loan(units)
        self._loans.append(loan)
        return loan

    def end_loan(self, loan: Loan) -> int:
        """End `loan` (again: no effect); returns how many of its units the lender still
        holds."""
        if loan in self._loans:
            self._loans.remove(loan)
        return loan.units - loan.taken

    def release(self) -> None:
        self._taken -= 1
        self._lot.unpark()

    def resize(self, capacity: int) -> None:
        self._capacity = capacity
        self._lot.unpark_all()

"""Slots: a counting semaphore whose capacity can change while it is in use, and whose
freed units go to the claimant a chosen order picks (the worker pool's queue order)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    taken lets holders finish: their units simply are not handed out again.

    Each acquirer names a claimant (a queue). While all units are taken, a freed unit
    passes straight to one claimant, never to whoever comes next: to the one `pick`
    chooses (the first when None) among those parked in `acquire` and those that
    declared they `want` more (a fetcher whose queue has a backlog, busy claiming). A
    unit picked for a claimant that is not parked is kept for it (banked) until it
    acquires, or gives up wanting.
    """

    def __init__(self, capacity: int, *, pick: Callable[[Sequence[str]], str] | None = None):
        self._capacity = capacity
        self._taken = 0
        self._pick = pick
        # Claimants parked in acquire, by name, in order of arrival within each.
        self._lots: dict[str, trio.lowlevel.ParkingLot] = {}
        self._wanting: set[str] = set()
        self._banked: dict[str, int] = {}
        self._loans: list[Loan] = []

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def taken(self) -> int:
        return self._taken

    async def acquire(self, claimant: str = "") -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._banked.get(claimant):
            self._banked[claimant] -= 1
            return
        if self._taken < self._capacity:  # none free while anyone waits: free means no queue
            self._taken += 1
            return
        # Woken by release or resize with a unit already counted as ours.
        await self._lots.setdefault(claimant, trio.lowlevel.ParkingLot()).park()

    def acquire_nowait(self, claimant: str = "") -> None:
        """A unit kept for `claimant`, else a free one; WouldBlock if neither."""
        if self._banked.get(claimant):
            self._banked[claimant] -= 1
            return
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

    def want(self, claimant: str, wanting: bool) -> None:
        """Declare whether `claimant` wants more units even while it is not parked in
        `acquire`. Giving up wanting releases the units banked for it."""
        if wanting:
            self._wanting.add(claimant)
            return
        self._wanting.discard(claimant)
        for _ in range(self._banked.pop(claimant, 0)):
            self.release()

    def wants(self, claimant: str) -> bool:
        return claimant in self._wanting

    def statistics(self) -> dict[str, object]:
        """Units taken, the capacity, who is parked in `acquire`, who wants more and
        what is kept for whom."""
        return {"taken": self._taken, "capacity": self._capacity,
                "parked": sorted(name for name, lot in self._lots.items() if lot),
                "wanting": sorted(self._wanting),
                "banked": {k: v for k, v in self._banked.items() if v}}

    def release(self) -> None:
        if self._taken <= self._capacity and (claimant := self._next()) is not None:
            self._hand_to(claimant)  # the unit passes on: still taken
            return
        self._taken -= 1

    def resize(self, capacity: int) -> None:
        self._capacity = capacity
        while self._taken < self._capacity and (claimant := self._next()) is not None:
            self._taken += 1
            self._hand_to(claimant)

    def _next(self) -> str | None:
        """The claimant the next freed unit goes to, or None if nobody wants one."""
        claimants = sorted({name for name, lot in self._lots.items() if lot} | self._wanting)
        if not claimants:
            return None
        return claimants[0] if len(claimants) == 1 or self._pick is None else self._pick(claimants)

    def _hand_to(self, claimant: str) -> None:
        lot = self._lots.get(claimant)
        if lot:
            lot.unpark()
        else:
            self._banked[claimant] = self._banked.get(claimant, 0) + 1

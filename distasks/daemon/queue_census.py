"""Queue census: the cap on queues per tenant (limits.max_queues), checked at create.

A create naming a queue that does not exist yet adds a row to the `queues` table
(store/tasks.py CREATE_TASKS). Checking the cap in PostgreSQL on every create would cost
the hot path a query, so the census keeps every queue name in memory, re-read at most
once per REFRESH_S and only when a create names a queue it does not know: a known queue
costs a set lookup. Names are bounded by the cap itself (a tenant never has more than
`max_queues`), so memory is too.

The check is soft: daemons each admit from their own copy, so together they may pass the
cap by a few queues within REFRESH_S. A pause (store/queues.py `set_paused`) checks
exactly, under a lock. Both refuse with TooManyQueues (409).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

from distasks.domain import tenancy
from distasks.domain.errors import TooManyQueues

# How stale the census may be: at most one `SELECT name FROM queues` per this many
# seconds, however many creates name unknown queues.
REFRESH_S = 1.0


class QueueCensus:
    """Which queues exist, per tenant, as of at most REFRESH_S ago (plus those admitted
    since)."""

    def __init__(self, load: Callable[[], Awaitable[list[str]]], *, max_queues: int,
                 clock: Callable[[], float] = trio.current_time):
        self._load = load
        self._max_queues = max_queues
        self._clock = clock
        self._names: set[str] = set()
        self._per_tenant: dict[str, int] = {}
        self._loaded_at: float | None = None
        self._lock = trio.Lock()

    async def admit(self, queues: Sequence[str]) -> None:
        """Return if every queue of `queues` exists or fits under its tenant's cap (then
        it counts as existing from now on); TooManyQueues naming `queue_name` and the
        index of the first that does not. Raises StoreUnavailable if the census must be
        re-read and PostgreSQL does not answer."""
        for i, queue in enumerate(queues):
            if queue in self._names:
                continue
            await self._refresh()
            if queue in self._names:
                continue
            tenant = tenancy.tenant_of(queue)
            if self._per_tenant.get(tenant, 0) >= self._max_queues:
                raise TooManyQueues(queue, tenant, self._max_queues, field="queue_name",
                                    index=i)
            self._add(queue)

    def forget(self, queue: str) -> None:
        """`queue` was deleted here: it no longer counts (other daemons learn at their
        next refresh)."""
        if queue in self._names:
            self._names.discard(queue)
            self._per_tenant[tenancy.tenant_of(queue)] -= 1

    async def _refresh(self) -> None:
        """Re-read the names, unless they were read less than REFRESH_S ago; concurrent
        callers share one read."""
        async with self._lock:
            now = self._clock()
            if self._loaded_at is not None and now - self._loaded_at < REFRESH_S:
                return
            names = await self._load()
            self._names, self._per_tenant = set(), {}
            for name in names:
                self._add(name)
            self._loaded_at = now

    def _add(self, queue: str) -> None:
        self._names.add(queue)
        tenant = tenancy.tenant_of(queue)
        self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1

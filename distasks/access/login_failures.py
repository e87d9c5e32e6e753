"""Login failures: requests with a bad credential (an API key unknown, revoked or expired)
go to the audit log without a flood of them flooding it, or PostgreSQL (architecture §7).

Per client address, the first failure of a window is recorded at once (`login_failed`,
with why and, for a known key, which), and the ones after it in that window, if any, as
one row when the window ends (`login_failures`, with their count). At most
`max_addresses` addresses are followed per window; failures from any other address are
counted together into one row without an address. So a window writes at most
2 * max_addresses + 1 rows, and memory holds as many entries, whatever the flood.

The request path only counts (`note`, no I/O); `run` writes, in the daemon's services
nursery, in one transaction per batch. The actor of these rows is the system, with the
client's address.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import trio

from distasks.domain import backoff, times
from distasks.domain.errors import StoreUnavailable
from distasks.domain.model import SYSTEM, Actor
from distasks.domain.tenancy import DEFAULT_TENANT
from distasks.store import AuditEvent, Store

log = logging.getLogger(__name__)

# Addresses followed per window (each a first row and maybe a summary row).
MAX_ADDRESSES = 1000
# Rows kept while PostgreSQL does not answer; older ones are dropped beyond it (logged).
MAX_PENDING = 4 * MAX_ADDRESSES
# At shutdown, how long writing the rows still counted may take.
CLOSE_TIMEOUT_S = 2.0


@dataclass(slots=True)
class _Window:
    #: trio clock, seconds
    started_at: float
    tenant: str
    #: failures after the first
    more: int = 0
    reasons: set[str] = field(default_factory=set)


class LoginFailures:
    """Counts bad credentials per client address and turns them into audit rows."""

    def __init__(self, *, window_s: float, max_addresses: int = MAX_ADDRESSES,
                 clock: Callable[[], float] = trio.current_time,
                 wall_clock: Callable[[], float] = time.time):
        self.window_s = window_s
        self._max_addresses = max_addresses
        self._clock = clock
        self._wall_clock = wall_clock
        #: by (address, tenant): a tenant's revoked key cannot draw the failures that
        #: follow from its address into its tenant's log, away from the operator's
        self._windows: dict[tuple[str, str], _Window] = {}
        #: failures from addresses beyond max_addresses, in the window started then
        self._overflow: _Window | None = None
        self._pending: list[AuditEvent] = []
        self._wake = trio.Event()

    def note(self, address: str, *, reason: str, key_id: str | None = None,
             tenant: str = "default") -> None:
        """One request refused for a bad credential, from `address`: the first of a
        window is queued to be written at once, the rest only counted."""
        now = self._clock()
        w = self._windows.get((address, tenant))
        if w is not None:
            w.more += 1
            w.reasons.add(reason)
            return
        if len(self._windows) >= self._max_addresses:
            if self._overflow is None:
                self._overflow = _Window(now, "default")
                self._wake.set()  # so that run() wakes when this window ends
            self._overflow.more += 1
            self._overflow.reasons.add(reason)
            return
        self._windows[address, tenant] = _Window(now, tenant)
        detail: dict[str, object] = {"reason": reason, "window_s": self.window_s}
        if key_id is not None:
            detail["key_id"] = key_id
        self._queue(AuditEvent(at=times.utc(self._wall_clock()), action="login_failed",
                               actor=Actor(SYSTEM.id, tenant=tenant, address=address),
                               detail=detail))

    def unknown_in_window(self, address: str) -> tuple[int, float]:
        """(unknown credentials from `address` in its open window, seconds until that
        window ends); (0, 0) when none is open."""
        w = self._windows.get((address, DEFAULT_TENANT))
        if w is None:
            return 0, 0.0
        left = w.started_at + self.window_s - self._clock()
        return (1 + w.more, left) if left > 0 else (0, 0.0)

    def take_due(self, *, closing: bool = False) -> list[AuditEvent]:
        """The rows to write now: queued first failures, and a summary of each window
        that has ended (every window, when `closing`) with failures after its first
        (those windows are closed)."""
        now = math.inf if closing else self._clock()
        at = times.utc(self._wall_clock())
        for (address, tenant), w in list(self._windows.items()):
            if now - w.started_at >= self.window_s:
                del self._windows[address, tenant]
                if w.more:
                    self._queue(_summary(at, w, address))
        if self._overflow is not None and now - self._overflow.started_at >= self.window_s:
            self._queue(_summary(at, self._overflow, None))
            self._overflow = None
        due, self._pending = self._pending, []
        return due

    def next_due_in(self) -> float:
        """Seconds until the earliest open window ends (inf if none is open)."""
        starts = [w.started_at for w in self._windows.values()]
        if self._overflow is not None:
            starts.append(self._overflow.started_at)
        if not starts:
            return math.inf
        return max(0.0, min(starts) + self.window_s - self._clock())

    def requeue(self, events: list[AuditEvent]) -> None:
        """Rows that could not be written, to try again (the oldest dropped past
        MAX_PENDING)."""
        self._pending[:0] = events
        if len(self._pending) > MAX_PENDING:
            dropped = len(self._pending) - MAX_PENDING
            del self._pending[:dropped]
            log.warning("%d login failure audit rows dropped while PostgreSQL is away", dropped,
                        extra={"event": "login_failures_dropped", "count": dropped})

    def _queue(self, event: AuditEvent) -> None:
        self._pending.append(event)
        self._wake.set()

    async def run(self, store: Store, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write what is due, as soon as a first failure is queued or a window ends,
        until cancelled; retries with backoff while PostgreSQL does not answer."""
        task_status.started()
        failures = 0
        try:
            while True:
                with trio.move_on_after(self.next_due_in()):
                    await self._wake.wait()
                self._wake = trio.Event()
                due = self.take_due()
                if not due:
                    continue
                try:
                    await store.record_events(due)
                    failures = 0
                except StoreUnavailable as e:
                    failures += 1
                    self.requeue(due)
                    log.warning("login failures not audited yet: %s", e,
                                extra={"event": "login_failures_deferred", "count": len(due)})
                    await trio.sleep(backoff.delay_s(failures))
                    self._wake.set()
        finally:
            # Stopping: what was counted so far, open windows included, is written.
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                due = self.take_due(closing=True)
                if due:
                    with contextlib.suppress(StoreUnavailable):
                        await store.record_events(due)


def _summary(at: datetime, w: _Window, address: str | None) -> AuditEvent:
    """The row of a window's failures that were not recorded one by one."""
    return AuditEvent(at=at, action="login_failures",
                      actor=Actor(SYSTEM.id, tenant=w.tenant, address=address),
                      detail={"count": w.more, "reasons": sorted(w.reasons)})

"""Copier: committed creates copied into Redis a few at a time, after the callers have
their answer.

A create is accepted once PostgreSQL committed it (architecture §1, "Commit, then copy"),
so its caller need not wait for the Redis push nor for the mark that records the push.
The intake hands each committed batch here and answers at once; this loop lingers
LINGER_S for more to arrive, then pushes everything waiting in one pipeline (one
crossing of the trio-asyncio bridge) and marks it dispatched in one statement. A
sequential producer thus pays one crossing and one mark per handful of creates instead
of one each (bench/README.md, producer.py, has the figures).

What a push or a mark misses (an outage, a crash before the flush) stays undispatched in
PostgreSQL and the reconciler pushes it after `recovery.dispatch_grace_s`, as before.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from distasks.broker import Broker, Rank
from distasks.daemon import mirror
from distasks.domain import times
from distasks.store import Store

# How long the copier waits, after the first create to copy arrives, for others to share
# its push. Far below recovery.dispatch_grace_s (the reconciler would push it too) and
# below a claim's round trip, so a queue worked by another daemon hardly notices.
LINGER_S = 0.002
# Longest the final copy at shutdown may take (each crossing has its own deadline too).
FLUSH_TIMEOUT_S = 10.0


@dataclass(slots=True)
class _Waiting:
    """Committed creates not yet copied, in commit order."""

    #: (queue, run id, rank: priority and concurrency key) for ready lists
    ready: list[tuple[str, str, Rank]] = field(default_factory=list)
    #: (queue, run id, due ms, rank) for delayed sets
    delayed: list[tuple[str, str, int, Rank]] = field(default_factory=list)
    #: the run ids of both, to mark dispatched
    run_ids: list[uuid.UUID] = field(default_factory=list)


class Copier:
    """Copies committed creates into Redis in batches. `add` never waits; `run` (a loop
    owned by the intake) copies, and `flush` copies what is waiting right now."""

    def __init__(self, store: Store, broker: Broker, *, linger_s: float = LINGER_S,
                 clock: Callable[[], float] = time.time):
        self._store = store
        self._broker = broker
        self._linger_s = linger_s
        self._clock = clock
        self._waiting = _Waiting()
        self._arrived = trio.Event()

    def add(self, ready: list[tuple[str, str, Rank]], delayed: list[tuple[str, str, int, Rank]],
            run_ids: list[uuid.UUID]) -> None:
        """Queue committed creates for the next copy."""
        self._waiting.ready += ready
        self._waiting.delayed += delayed
        self._waiting.run_ids += run_ids
        self._arrived.set()

    @property
    def waiting(self) -> int:
        """How many committed runs wait for their copy."""
        return len(self._waiting.run_ids)

    async def run(self) -> None:
        """Copy what arrives, a linger after the first of each batch, until cancelled.
        A copy in progress is finished first (bounded by its crossings' deadlines)."""
        while True:
            await self._arrived.wait()
            await trio.sleep(self._linger_s)
            with trio.CancelScope(shield=True):
                await self.flush()

    async def flush(self) -> None:
        """Copy everything waiting now, in one push and one mark."""
        batch, self._waiting, self._arrived = self._waiting, _Waiting(), trio.Event()
        if not batch.run_ids:
            return
        await mirror.copy("created tasks",
                          lambda: self._broker.dispatch(ready=batch.ready, delayed=batch.delayed),
                          count=len(batch.run_ids), store=self._store, pushed=batch.run_ids,
                          now=times.utc(self._clock()))

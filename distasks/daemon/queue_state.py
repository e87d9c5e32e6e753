"""What a queue looks like now: its depths and pause flag in Redis, its DLQ depth and how
long its oldest ready run has waited from PostgreSQL. Read by the queue list of the API
and by the reporter's gauges."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from distasks.broker import Broker
from distasks.store import Store


@dataclass(frozen=True, slots=True)
class QueueState:
    ready: int
    delayed: int
    leased: int
    #: DLQ entries: as PostgreSQL counts them (the DLQ listing's truth) for the API, as
    #: Redis's index holds them (which the reconciler repairs when it drifts) for gauges
    dlq: int
    paused: bool
    #: seconds the oldest ready run (of any priority) has been available; None if empty
    oldest_ready_age_s: float | None
    #: ready runs a limit holds back now (max_running reached, their key at
    #: max_running_per_key, or no start token left)
    waiting_for_limit: int = 0


async def queue_states(store: Store, broker: Broker, queues: Sequence[str], *,
                       now: datetime, exact_dlq: bool = True) -> dict[str, QueueState]:
    """The state of each of `queues`: one Redis pipeline and, with `exact_dlq`, two
    PostgreSQL queries (else one: the DLQ's count grows with the DLQ, too much for a
    gauge read every few seconds by every daemon)."""
    depths = await broker.queue_depths(list(queues))
    dead = (await store.dlq_depths(list(queues)) if queues and exact_dlq
            else {q: d["dlq"] for q, d in depths.items()})
    heads: dict[str, list[uuid.UUID]] = {}
    for queue, d in depths.items():
        for head in d["heads"]:
            try:
                heads.setdefault(queue, []).append(uuid.UUID(head))
            except ValueError:
                pass  # not ours; the claim that meets it drops it
    every_head = [h for hs in heads.values() for h in hs]
    since = await store.available_since(every_head) if every_head else {}
    states = {}
    for queue, d in depths.items():
        # One head per priority's ready list: the oldest ready run is one of them.
        known = [since[h] for h in heads.get(queue, []) if h in since]
        age = max(0.0, (now - min(known)).total_seconds()) if known else None
        states[queue] = QueueState(ready=d["ready"], delayed=d["delayed"], leased=d["leased"],
                                   dlq=dead.get(queue, 0), paused=d["paused"], oldest_ready_age_s=age,
                                   waiting_for_limit=d["waiting_for_limit"])
    return states

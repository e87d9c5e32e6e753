"""What a queue looks like now: its depths and pause flag in Redis, and how long its
oldest ready run has waited (its `available_at` is in PostgreSQL). Read by the queue
list of the API and by the reporter's gauges."""

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
    dlq: int
    paused: bool
    #: seconds the run at the head of the ready list has been available; None if empty
    oldest_ready_age_s: float | None


async def queue_states(store: Store, broker: Broker, queues: Sequence[str], *,
                       now: datetime) -> dict[str, QueueState]:
    """The state of each of `queues`: one Redis pipeline and one PostgreSQL query."""
    depths = await broker.queue_depths(list(queues))
    heads: dict[str, uuid.UUID] = {}
    for queue, d in depths.items():
        try:
            if d["head"]:
                heads[queue] = uuid.UUID(d["head"])
        except ValueError:
            pass  # not ours; the claim that meets it drops it
    since = await store.available_since(list(heads.values())) if heads else {}
    states = {}
    for queue, d in depths.items():
        head = heads.get(queue)
        age = (max(0.0, (now - since[head]).total_seconds())
               if head is not None and head in since else None)
        states[queue] = QueueState(ready=d["ready"], delayed=d["delayed"], leased=d["leased"],
                                   dlq=d["dlq"], paused=d["paused"], oldest_ready_age_s=age)
    return states

"""Mirror: the one way to copy into Redis what PostgreSQL has committed.

Every writer commits in PostgreSQL first (the truth), then copies the change into Redis
(the index that claims read), then marks the runs it pushed as dispatched. Once the
commit is done the change is accepted, whatever happens next: a copy or a mark that
fails is logged here and repaired by the reconciler (docs/architecture.md, "Commit,
then copy"), never reported to the caller as a failure. What the reconciler does with
each kind of leftover:

- a run committed but not marked dispatched is pushed (every pass);
- a pause flag is re-copied from PostgreSQL (every pass);
- a lost Redis is rebuilt whole (leases, delayed runs and the DLQ index included);
- an id left in Redis that PostgreSQL no longer wants there (a cancelled run) is
  dropped by the claim that reads it, and a stale lease by the reaper;
- a running attempt learns of its cancel from its next heartbeat, a long-poll waiter of
  its task's end from its own poll.
The DLQ index serves only the queue counts: an entry it missed or kept is put right by
the next rebuild (DLQ listings read PostgreSQL).
The reconciler itself does not go through here: what it fails to copy, it copies on its
next pass.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from distasks.domain.errors import BrokerUnavailable, StoreUnavailable
from distasks.store import Store

log = logging.getLogger(__name__)

Deferred = BrokerUnavailable | StoreUnavailable


async def copy(what: str, to_redis: Callable[[], Awaitable[object]], *, count: int = 1,
               store: Store | None = None, pushed: Sequence[uuid.UUID] = (),
               now: datetime | None = None) -> Deferred | None:
    """Copy a committed change (`what`, `count` items) into Redis with `to_redis`, then
    mark the `pushed` runs dispatched in `store`. Returns None when both happened, or
    the error that deferred them to the reconciler; it never raises either error."""
    try:
        await to_redis()
        if pushed:
            assert store is not None and now is not None, "marking needs the store and now"
            await store.mark_dispatched(pushed, now=now)
    except (BrokerUnavailable, StoreUnavailable) as e:
        log.warning("%s committed, copy into Redis left to the reconciler: %s", what, e,
                    extra={"event": "copy_deferred", "what": what, "count": count})
        return e
    return None

"""Ids: time-ordered for tasks, and a run's id carrying its task's time.

A task id is a UUIDv7 (RFC 9562): its first 48 bits are the milliseconds since 1970 at
creation, the rest random. A run id takes its task's 48 bits and fresh random ones, so
that the UTC day of either id (its *bucket*) names the partition of `task_runs` that
holds the run (migration 0015; architecture, "Partitioned history"). Ids from before
partitioning are random (version 4): their bucket is 0, the legacy partition, and so are
the new runs of such a task.

The SQL functions distasks_bucket and distasks_run_id do the same on the server.
(Python 3.14 has uuid.uuid7; this keeps 3.11 and the run id's shared prefix.)
"""

from __future__ import annotations

import os
import time
import uuid

MS_PER_DAY = 86_400_000
_VERSION_7 = 0x7000
_VARIANT = 0x8000_0000_0000_0000


def _v7(ms: int) -> uuid.UUID:
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = (rand >> 64) & 0x0FFF  # 12 bits after the version
    rand_b = rand & 0x3FFF_FFFF_FFFF_FFFF  # 62 bits after the variant
    return uuid.UUID(int=(ms & 0xFFFF_FFFF_FFFF) << 80 | (_VERSION_7 | rand_a) << 64
                     | _VARIANT | rand_b)


def new_task_id(now_ms: int | None = None) -> uuid.UUID:
    """A fresh task (or workflow) id, ordered by its creation time."""
    return _v7(time.time_ns() // 1_000_000 if now_ms is None else now_ms)


def new_id_like(other: uuid.UUID) -> uuid.UUID:
    """A fresh id in `other`'s bucket: with its time if it is time-ordered, else random."""
    if not _time_ordered(other):
        return uuid.uuid4()
    return _v7(other.int >> 80)


def new_run_id(task_id: uuid.UUID) -> uuid.UUID:
    """A fresh id for a run of `task_id`, in its task's bucket."""
    return new_id_like(task_id)


def _time_ordered(any_id: uuid.UUID) -> bool:
    """Version 7 by its nibble alone, as the SQL functions read it (uuid.version is None
    for an id of another variant)."""
    return (any_id.int >> 76) & 0xF == 7


def bucket(any_id: uuid.UUID) -> int:
    """The day (since 1970-01-01 UTC) a task or run id was made in; 0 for a random id."""
    if not _time_ordered(any_id):
        return 0
    return (any_id.int >> 80) // MS_PER_DAY

"""The hot path writes runs to their day's partition by name, not through `task_runs`.

On PostgreSQL 15 a statement on the partitioned `task_runs` costs in proportion to the
number of its partitions even when it prunes to one: a cached (generic) plan of an
UPDATE opens and locks every partition it might reach, a fresh one plans them all
before pruning (bench/README.md, "the same drain with partitioned history"). The
daemon knows every run's day from its id (domain/ids.py), so the statements a drain
runs per batch (claim, outcomes, lease renewal, run states, dispatch mark) are written
for one day, and `on_day` points them at that day's table: they then cost what they
cost on one table, however long the history.

A day's table is named only when that is sure to be right: it is an attached partition
of `task_runs` as the catalog listed it (so every run of that day is in it: its
partition constraint), and the day is no older than yesterday by this daemon's clock
(the cleaner never drops today's or yesterday's partition, so a name read a minute ago
still exists). Every other day goes through the parent, as before: a retry of an older
task, ids from before partitioning (day 0), a day whose rows wait in the default
partition. That is correct for any day, only not as cheap.
"""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, date, datetime, timedelta

from distasks.domain.ids import MS_PER_DAY
from distasks.store.pg import TrioConnection

PARENT = "task_runs"

# The dated partitions attached to task_runs now (a detached one is being dropped).
ATTACHED = r"""
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'task_runs'::regclass AND c.relname ~ '^task_runs_d[0-9]{8}$'
"""

# How long a reading of the catalog is trusted. Partitions are made a week ahead, so a
# new day's is listed long before its first run; this only bounds how long a day made
# by hand, or after an outage of the partitioner, goes through the parent.
REFRESH_S = 300.0
# A day wanted but not listed is looked up again at most this often.
RETRY_MISSING_S = 10.0

_WORD = re.compile(r"\btask_runs\b")
_EPOCH = date(1970, 1, 1)


def table_name(day: int) -> str:
    """The name of the partition of task_runs holding `day` (days since 1970, UTC)."""
    return f"{PARENT}_d{(_EPOCH + timedelta(days=day)):%Y%m%d}"


@functools.lru_cache(maxsize=256)
def on_day(statement: str, table: str) -> str:
    """`statement`, a statement over the runs of one day, with every `task_runs` in it
    made `table`. Such a statement reads and writes no other day's runs (a next
    attempt is in its task's day; a workflow's nodes are in the workflow's)."""
    return statement if table == PARENT else _WORD.sub(table, statement)


class DayTables:
    """Which days of task_runs have a partition this daemon may name (module docstring).
    Read from the catalog on first use and every REFRESH_S after, on a connection the
    caller already holds: one small query every few minutes."""

    def __init__(self) -> None:
        self._days: frozenset[int] = frozenset()
        self._read_at: float | None = None

    async def table(self, conn: TrioConnection, day: int) -> str:
        """The table to write `day`'s runs to: its partition, or task_runs."""
        if day < _today() - 1:
            return PARENT
        age = time.monotonic() - self._read_at if self._read_at is not None else None
        if age is None or age > REFRESH_S or (day not in self._days and age > RETRY_MISSING_S):
            await self.read(conn)
        return table_name(day) if day in self._days else PARENT

    async def read(self, conn: TrioConnection) -> None:
        """List the attached day partitions again."""
        cur = await conn.execute(ATTACHED)
        names = [r[0] for r in await cur.fetchall()]
        self._days = frozenset(
            (datetime.strptime(n[-8:], "%Y%m%d").date() - _EPOCH).days for n in names)
        self._read_at = time.monotonic()


def _today() -> int:
    return int(datetime.now(UTC).timestamp() * 1000) // MS_PER_DAY

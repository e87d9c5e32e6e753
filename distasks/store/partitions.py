"""Partitioned history (migration 0015; architecture, "Partitioned history"): the day
partitions of task_runs, audit_log and schedule_fires, made ahead and dropped whole.

Every daemon makes the coming days' partitions (`ensure_partitions`, at start and then
hourly: distasks.daemon.partitioner), serialised on an advisory lock so that two never
race on one name. Only the cleaner's leader drops (`drop_partition`), each drop one
short transaction with the cleaner's lock and statement timeouts: dropping a partition
waits for a lock on its parent, and a drop that cannot have it at once gives up until
the next pass rather than hold the hot path up behind it.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from psycopg import sql

from distasks.domain.ids import MS_PER_DAY
from distasks.store.base import StoreBase, query
from distasks.store.pg import TrioConnection
from distasks.store.retention import (
    Archive,
    Gentle,
    Leadership,
    claim_lead,
    gentle_timeouts,
)

#: the partitioned tables, and what their dated partitions are ranged on
HISTORY = ("task_runs", "audit_log", "schedule_fires")

# Any constant works; the same for every daemon (migrate.py's lock is another).
PARTITIONS_LOCK_KEY = 0x64697375  # "disu"

_DATED = re.compile(r"^(task_runs|audit_log|schedule_fires)_d(\d{8})$")

# The dated tables of the three, attached or not: a partition detached by a drop that
# stopped before its end (the process died) is finished by the next pass.
PARTITIONS = """
SELECT coalesce(p.relname, substring(c.relname FROM '^(.*)_d[0-9]{8}$')) AS parent,
       c.relname AS name, p.relname IS NOT NULL AS attached
FROM pg_class c
LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
LEFT JOIN pg_class p ON p.oid = i.inhparent
WHERE c.relkind = 'r' AND c.relname ~ '^(task_runs|audit_log|schedule_fires)_d[0-9]{8}$'
  AND c.relnamespace = to_regnamespace(current_schema())::oid
ORDER BY c.relname
"""

# Whether any task was made on a day: its id is in the day's UUIDv7 range (a primary
# key range, a few index pages). A day with none left has no run anyone can read.
# (A random id of before whose bytes fall in the range is no task of that day.)
TASKS_OF_DAY = ("SELECT EXISTS (SELECT 1 FROM tasks WHERE id >= %s AND id < %s"
                " AND get_byte(uuid_send(id), 6) >> 4 = 7)")


@dataclass(frozen=True, slots=True)
class Partition:
    """A dated partition: which table, its name, the UTC day it holds."""

    parent: str
    name: str
    day: date
    #: still a partition of `parent` (a drop detaches it first)
    attached: bool = True

    @property
    def ends_at(self) -> datetime:
        """The first instant past this partition's day (UTC)."""
        return datetime(self.day.year, self.day.month, self.day.day, tzinfo=UTC) + timedelta(days=1)


def day_id_range(day: date) -> tuple[uuid.UUID, uuid.UUID]:
    """The UUIDv7 ids made on `day` (UTC): [low, high)."""
    first_ms = (day - date(1970, 1, 1)).days * MS_PER_DAY
    return (uuid.UUID(int=first_ms << 80), uuid.UUID(int=(first_ms + MS_PER_DAY) << 80))


class PartitionQueries(StoreBase):
    @query
    async def ensure_partitions(self, first: date, last: date, *,
                                lock_timeout_ms: int = 100) -> tuple[int, int]:
        """Make the missing day partitions of the history tables from `first` to `last`
        (UTC days, both included), a day per transaction; (made, not made). A day is
        not made when its lock was not to be had within `lock_timeout_ms` (attaching
        locks the default partition, which scans of every day read) or its rows in the
        default partition could not be moved; the next call tries again."""
        made = failed = 0
        day = first
        while day <= last:
            async with self._pool.transaction() as conn:
                await conn.execute("SELECT set_config('lock_timeout', %s, true)",
                                   (f"{lock_timeout_ms}ms",))
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITIONS_LOCK_KEY,))
                cur = await conn.execute("SELECT * FROM distasks_ensure_partitions(%s, %s)",
                                         (day, day))
                row = await cur.fetchone()
            if row is not None:
                made, failed = made + int(row[0]), failed + int(row[1])
            day += timedelta(days=1)
        return made, failed

    @query
    async def dated_partitions(self) -> list[Partition]:
        """Every dated partition of the history tables, oldest day first."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(PARTITIONS)
            rows = await cur.fetchall()
        found = []
        for parent, name, attached in rows:
            m = _DATED.match(name)
            if m and parent in HISTORY:
                found.append(Partition(parent, name, datetime.strptime(m.group(2), "%Y%m%d").date(),
                                       attached=bool(attached)))
        return sorted(found, key=lambda p: (p.day, p.parent))

    @query
    async def drop_partition(self, p: Partition, *, lead: Leadership, gentle: Gentle,
                             archive: Archive | None = None, archive_batch: int = 1000,
                             ) -> int | None:
        """Drop one dated partition (as the cleaner's leader), in two transactions:
        detach it (a moment's lock on the parent), then archive its rows when `archive`
        is given and drop it, with nothing else reading or writing it any more. A
        partition of task_runs goes only once no task of its day is left (its runs were
        archived with their tasks): None when one is. Returns how many rows went with
        it. NotLeader if another daemon leads; StoreUnavailable if the parent's lock was
        not to be had within the lock timeout (the next pass tries again)."""
        table = sql.Identifier(p.name)
        if p.attached and p.parent == "task_runs" and await self._tasks_of_day(p.day):
            return None  # looked first without a lock: most old days are still held
        if p.attached:
            async with self._pool.transaction() as conn:
                await gentle_timeouts(conn, gentle)
                await claim_lead(conn, lead)
                # The parent first, as every statement locks it before its partitions
                # (so no circle); then the look: a write into this day that was under
                # way has committed and is seen, or waits and then finds no partition.
                await conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                    sql.Identifier(p.parent)))
                if p.parent == "task_runs":
                    cur = await conn.execute(TASKS_OF_DAY, day_id_range(p.day))
                    row = await cur.fetchone()
                    if row is None or row[0]:
                        return None
                await conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                    sql.Identifier(p.parent), table))
        async with self._pool.transaction() as conn:
            await gentle_timeouts(conn, gentle)
            await claim_lead(conn, lead)
            cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
            count_row = await cur.fetchone()
            count = int(count_row[0]) if count_row else 0
            if archive is not None and p.parent != "task_runs" and count:
                await _archive_rows(conn, p, archive, archive_batch)
            await conn.execute(sql.SQL("DROP TABLE {}").format(table))
            return count


    async def _tasks_of_day(self, day: date) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute(TASKS_OF_DAY, day_id_range(day))
            row = await cur.fetchone()
        return row is None or bool(row[0])


async def _archive_rows(conn: TrioConnection, p: Partition, archive: Archive, batch: int) -> None:
    """Hand a partition's rows to the archive, `batch` per file, before its drop: read in
    physical order, a page after the last row's ctid (a TID range scan; no server-side
    cursor, which a pooler in transaction mode would not keep)."""
    select = sql.SQL("SELECT ctid, json_build_object('table', {}, 'row', row_to_json(x))::text"
                     " FROM {} x WHERE ctid > %s::tid ORDER BY ctid LIMIT %s").format(
                         sql.Literal(p.parent), sql.Identifier(p.name))
    after = "(0,0)"
    while True:
        cur = await conn.execute(select, (after, batch))
        rows = await cur.fetchall()
        if not rows:
            break
        await archive(p.parent, [doc for _, doc in rows])
        after = str(rows[-1][0])

"""Store: every PostgreSQL read and write, in domain terms, one module per area.

Each public method is at most one transaction on a connection driven by Trio itself
(store/pg.py: no bridge crossing), and the hot-path ones take whole batches (architecture §1). Connection
failures surface as StoreUnavailable, for the caller's loop to retry with backoff.
`store/outbox.py` is the one module that speaks to another database: an application's
outbox (architecture §10).

May import `distasks.domain` and `distasks.access.principals` (the records it stores);
never the broker: PostgreSQL and Redis code do not call each other.
"""

from __future__ import annotations

from distasks.store import migrate as _migrate
from distasks.store.audit import AuditEntry, AuditEvent, AuditQueries
from distasks.store.base import dumps, query
from distasks.store.dispatch import DispatchQueries, PendingDispatch
from distasks.store.dlq import DeadTask, DlqFilter, DlqQueries
from distasks.store.keys import KeyQueries
from distasks.store.partitions import PartitionQueries
from distasks.store.queues import QueueQueries, QueueRecord
from distasks.store.retention import RetentionQueries
from distasks.store.runs import (
    Cancelled,
    Failed,
    Fence,
    Held,
    Interrupted,
    Outcomes,
    Retrying,
    RunQueries,
    Succeeded,
    Written,
)
from distasks.store.schedules import Fire, Fired, Firing, Schedule, ScheduleQueries, Slot
from distasks.store.tasks import Cancellation, TaskFilter, TaskQueries
from distasks.store.workers import WorkerInfo, WorkerQueries
from distasks.store.workflows import (
    Released,
    ReleasedRun,
    WorkflowChange,
    WorkflowFilter,
    WorkflowQueries,
)

__all__ = [
    "AuditEntry", "AuditEvent", "Cancellation", "Cancelled", "DeadTask", "DlqFilter", "Failed", "Fence", "Held",
    "Interrupted", "Outcomes", "PendingDispatch", "QueueRecord", "Retrying", "Store",
    "Fire", "Fired", "Firing", "Schedule", "Slot",
    "Succeeded", "TaskFilter", "WorkerInfo", "Written", "dumps",
    "Released", "ReleasedRun", "WorkflowChange", "WorkflowFilter",
]


class Store(TaskQueries, RunQueries, DispatchQueries, DlqQueries, QueueQueries, WorkerQueries,
            KeyQueries, AuditQueries, ScheduleQueries, WorkflowQueries, RetentionQueries,
            PartitionQueries):
    """All queries over one connection pool; open with `Store.open(dsn)`."""

    @query
    async def migrate(self) -> list[int]:
        """Apply pending migrations; safe when several daemons start at once."""
        async with self._pool.connection() as conn:
            return await _migrate.apply(conn)

    @query
    async def statement_timeout(self) -> str:
        """The server's statement_timeout for our connections, as SHOW gives it."""
        async with self._pool.connection() as conn:
            cur = await conn.execute("SHOW statement_timeout")
            row = await cur.fetchone()
            return str(row[0]) if row else ""

    @query
    async def ping(self) -> None:
        """Raise StoreUnavailable unless PostgreSQL answers."""
        async with self._pool.connection() as conn:
            await conn.execute("SELECT 1")



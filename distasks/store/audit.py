"""The audit log: who did what, from where, in which request. Rows of a change are
written by `record_audit` in store/base.py, in the transaction of the change they
record; events that change nothing in PostgreSQL (login failures, config reloads) by
`record_events`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from distasks.domain.model import Actor
from distasks.store.base import StoreBase, query, record_audit


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    tenant: str
    address: str | None
    request_id: str | None
    action: str
    queue_name: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """An audit row to write on its own."""

    at: datetime
    actor: Actor
    action: str
    detail: dict[str, Any]
    queue_name: str | None = None


# A tenant's audit rows, newest first, filtered. With `since`, only the day partitions
# from that day on are read (audit_log is partitioned by `at`: migration 0015).
AUDIT_ENTRIES = """
SELECT id, at, actor, tenant, address, request_id, action, queue_name, detail
FROM audit_log WHERE tenant = %(tenant)s
  AND (%(actor)s::text IS NULL OR actor = %(actor)s)
  AND (%(action)s::text IS NULL OR action = %(action)s)
  AND (%(queue)s::text IS NULL OR queue_name = %(queue)s)
  AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)
  AND (%(before)s::bigint IS NULL OR id < %(before)s)
ORDER BY id DESC LIMIT %(limit)s
"""


class AuditQueries(StoreBase):
    @query
    async def record_events(self, events: list[AuditEvent]) -> None:
        """Write `events` as audit rows, in one transaction."""
        async with self._pool.transaction() as conn:
            for e in events:
                await record_audit(conn, at=e.at, actor=e.actor, action=e.action,
                                   queue_name=e.queue_name, detail=e.detail)

    @query
    async def audit_entries(self, *, tenant: str, actor: str | None = None,
                            action: str | None = None,
                            queue_name: str | None = None, since: datetime | None = None,
                            before_id: int | None = None, limit: int) -> list[AuditEntry]:
        """`tenant`'s audit log, newest first, filtered, in pages by id."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                AUDIT_ENTRIES,
                {"tenant": tenant, "actor": actor, "action": action, "queue": queue_name, "since": since,
                 "before": before_id, "limit": limit})
            return [AuditEntry(*row) for row in await cur.fetchall()]

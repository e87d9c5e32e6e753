"""The audit log, read: who did what, from where, in which request (rows are written by
`record_audit` in store/base.py, in the transaction of the change they record)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from distasks.store.base import StoreBase, query


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


class AuditQueries(StoreBase):
    @query
    async def audit_entries(self, *, tenant: str, actor: str | None = None, action: str | None = None,
                            queue_name: str | None = None, since: datetime | None = None,
                            before_id: int | None = None, limit: int) -> list[AuditEntry]:
        """`tenant`'s audit log, newest first, filtered, in pages by id."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id, at, actor, tenant, address, request_id, action, queue_name, detail"
                " FROM audit_log WHERE tenant = %(tenant)s"
                " AND (%(actor)s::text IS NULL OR actor = %(actor)s)"
                " AND (%(action)s::text IS NULL OR action = %(action)s)"
                " AND (%(queue)s::text IS NULL OR queue_name = %(queue)s)"
                " AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)"
                " AND (%(before)s::bigint IS NULL OR id < %(before)s)"
                " ORDER BY id DESC LIMIT %(limit)s",
                {"tenant": tenant, "actor": actor, "action": action, "queue": queue_name, "since": since,
                 "before": before_id, "limit": limit})
            return [AuditEntry(*row) for row in await cur.fetchall()]

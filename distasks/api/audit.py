"""The audit log: who cancelled, paused, resumed, replayed, deleted, or changed keys, from
where in which request (scope audit:read), within the caller's tenant. Control characters a value may hold are
escaped by JSON itself."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify

from distasks.api import schemas
from distasks.api.openapi import operation
from distasks.api.parse import parse_query
from distasks.api.render import iso
from distasks.api.services import services, tenant, tenant_queue
from distasks.domain.tenancy import shown

bp = Blueprint("audit", __name__)


@operation(bp, "GET", "/api/v1/audit", scope="audit:read", tag="audit",
           summary="The audit log, newest first, with filters and pages",
           query=schemas.AuditQuery, responses={200: schemas.AuditPage})
async def list_audit() -> Response:
    q = parse_query(schemas.AuditQuery)
    entries = await services().store.audit_entries(
        tenant=tenant(), actor=q.actor, action=q.action,
        queue_name=tenant_queue(q.queue) if q.queue is not None else None, since=q.since,
        before_id=int(q.cursor) if q.cursor else None, limit=q.limit)
    return jsonify({
        "entries": [{"id": e.id, "at": iso(e.at), "actor": e.actor, "tenant": e.tenant,
                     "address": e.address, "request_id": e.request_id, "action": e.action,
                     "queue_name": shown(e.queue_name) if e.queue_name else None,
                     "detail": e.detail} for e in entries],
        "next_cursor": str(entries[-1].id) if len(entries) == q.limit else None,
    })

"""Dead-letter queue resources: list, replay, delete.

PostgreSQL keeps the DLQ (failed tasks of the queue, oldest failure first); the Redis
list only indexes it, so nothing is ever trimmed or expired from it silently. Replays
and deletions are recorded in the audit log with who did them and what they touched.
"""

from __future__ import annotations

from quart import Blueprint, Response, jsonify

from distasks.api import cursor, pages, schemas
from distasks.api.openapi import operation
from distasks.api.parse import parse_body, parse_query, queue_name, read_body
from distasks.api.render import iso, task_json
from distasks.api.services import actor, services, tenant_queue
from distasks.domain import times
from distasks.domain.tenancy import shown
from distasks.store import DlqFilter

bp = Blueprint("dlq", __name__)


def _selection(sel: schemas.DlqSelection) -> DlqFilter:
    return DlqFilter(handler=sel.handler, error=sel.error, failed_since=sel.failed_since,
                     task_ids=tuple(sel.task_ids) if sel.task_ids is not None else None)


def _limit(sel: schemas.DlqSelection) -> int:
    """With task_ids and no explicit count, all the named tasks."""
    if sel.task_ids is not None and "count" not in sel.model_fields_set:
        return len(sel.task_ids)
    return sel.count


@operation(bp, "GET", "/api/v1/queues/<queue>/dlq", scope="tasks:read", tag="dlq",
           summary="Dead-lettered tasks of a queue, oldest failure first",
           query=schemas.DlqQuery, responses={200: schemas.DlqPage})
async def list_dlq(queue: str) -> Response:
    queue = tenant_queue(queue_name(queue))
    q = parse_query(schemas.DlqQuery)
    limit = q.count or q.limit
    f = DlqFilter(handler=q.handler, error=q.error, failed_since=q.failed_since)
    budget = services().config.http.max_response_bytes
    async with pages.heavy_read(q.include_payload):
        dead = await services().store.dead_tasks(queue, f, limit=limit,
                                                 after=cursor.decode(q.cursor),
                                                 with_payload=q.include_payload,
                                                 max_payload_bytes=budget, payload_text=True)
        items = await pages.fit(({**task_json(d.task, with_payload=q.include_payload),
                                  "attempts": d.attempts, "last_error": d.last_error,
                                  "failed_at": iso(d.failed_at)} for d in dead), budget)
    dead = dead.first(len(items))
    last = dead[-1] if dead else None
    next_cursor = (cursor.encode(last.failed_at, last.task.id)
                   if last and last.failed_at and (len(dead) == limit or dead.cut) else None)
    return jsonify({
        "queue": shown(queue),
        "count": len(dead),
        "tasks": items,
        "next_cursor": next_cursor,
    })


@operation(bp, "POST", "/api/v1/queues/<queue>/dlq/replay", scope="dlq:admin", tag="dlq",
           summary="Replay DLQ entries (by ids or the oldest matching filters) as new attempts",
           body_required=False, body=schemas.ReplayDlq, responses={200: schemas.Replayed})
async def replay_dlq(queue: str) -> Response:
    queue = tenant_queue(queue_name(queue))
    req = parse_body(schemas.ReplayDlq, await read_body() or b"{}")
    s = services()
    now = times.utc(s.clock())
    replayed = await s.operations.replay_dlq(
        queue, _selection(req), limit=_limit(req), override_priority=req.override_priority,
        actor=actor(), now=now, dry_run=req.dry_run)
    return jsonify({"queue": shown(queue), "replayed": len(replayed),
                    "task_ids": [str(task_id) for task_id, _ in replayed],
                    "dry_run": req.dry_run})


@operation(bp, "POST", "/api/v1/queues/<queue>/dlq/delete", scope="dlq:admin", tag="dlq",
           summary="Remove DLQ entries (the tasks stay on record)",
           body_required=False, body=schemas.DlqSelection, responses={200: schemas.Deleted})
async def delete_dlq(queue: str) -> Response:
    queue = tenant_queue(queue_name(queue))
    req = parse_body(schemas.DlqSelection, await read_body() or b"{}")
    s = services()
    now = times.utc(s.clock())
    deleted = await s.operations.delete_dlq(queue, _selection(req), limit=_limit(req),
                                            actor=actor(), now=now, dry_run=req.dry_run)
    return jsonify({"queue": shown(queue), "deleted": len(deleted),
                    "task_ids": [str(t) for t in deleted], "dry_run": req.dry_run})

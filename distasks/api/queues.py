"""Queue resources: the list with depths and recent throughput; pause and resume."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from quart import Blueprint, Response, jsonify

from distasks.api import schemas
from distasks.api.dlq import queue_name
from distasks.api.openapi import operation
from distasks.api.services import actor, services
from distasks.api.tasks import iso

bp = Blueprint("queues", __name__)


@operation(bp, "GET", "/api/v1/queues", tag="queues",
           summary="Every queue: depths, paused, completed and failed in the last minute, "
                   "age of the oldest ready run",
           responses={200: schemas.QueueList})
async def list_queues() -> Response:
    s = services()
    now = datetime.fromtimestamp(s.clock(), UTC)
    records = {r.name: r for r in await s.store.queues(now=now)}
    names = sorted(set(records) | set(s.config.worker.queues))
    depths = await s.broker.queue_depths(names)
    heads = {}
    for name in names:
        head = depths[name].get("head")
        try:
            heads[name] = uuid.UUID(head) if head else None
        except ValueError:
            heads[name] = None
    since = await s.store.available_since([h for h in heads.values() if h])
    out = []
    for name in names:
        r, d = records.get(name), depths[name]
        head = heads[name]
        oldest = (max(0.0, (now - since[head]).total_seconds())
                  if head is not None and head in since else None)
        out.append({
            "name": name, "paused": r.paused if r else False,
            "paused_at": iso(r.paused_at) if r else None, "paused_by": r.paused_by if r else None,
            "ready": d["ready"], "delayed": d["delayed"], "leased": d["leased"], "dlq": d["dlq"],
            "completed_last_minute": r.completed_last_minute if r else 0,
            "failed_last_minute": r.failed_last_minute if r else 0,
            "oldest_ready_age_seconds": oldest,
        })
    return jsonify({"queues": out})


@operation(bp, "POST", "/api/v1/queues/<queue>/pause", tag="queues",
           summary="Stop claiming from a queue (creates are still accepted)",
           responses={200: schemas.QueueState})
async def pause_queue(queue: str) -> Response:
    return await _set_paused(queue, True)


@operation(bp, "POST", "/api/v1/queues/<queue>/resume", tag="queues",
           summary="Claim from a paused queue again", responses={200: schemas.QueueState})
async def resume_queue(queue: str) -> Response:
    return await _set_paused(queue, False)


async def _set_paused(queue: str, paused: bool) -> Response:
    queue = queue_name(queue)
    s = services()
    # PostgreSQL first (the truth, rebuilt into Redis after a loss), then the flag claims see.
    await s.store.set_paused(queue, paused, actor=actor(),
                             now=datetime.fromtimestamp(s.clock(), UTC))
    await s.broker.set_paused(queue, paused)
    return jsonify({"name": queue, "paused": paused})

"""Dead-letter queue resources: list the oldest entries, replay them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pydantic
from quart import Blueprint, Response, jsonify, request

from distasks.api import schemas
from distasks.api.errors import from_validation_error
from distasks.api.services import services
from distasks.api.tasks import _iso, task_json
from distasks.config import QUEUE_NAME_RE
from distasks.errors import InvalidInput

bp = Blueprint("dlq", __name__)


def _queue(name: str) -> str:
    if not QUEUE_NAME_RE.fullmatch(name):
        raise InvalidInput(f"queue name {name!r} is not 1-64 of [A-Za-z0-9_.-]", field="queue")
    return name


def _ids(raw: list[str]) -> list[uuid.UUID]:
    ids = []
    for text in raw:
        try:
            ids.append(uuid.UUID(text))
        except ValueError:
            continue  # foreign junk in the list: not ours to show
    return ids


@bp.get("/api/v1/queues/<queue>/dlq")
async def list_dlq(queue: str) -> Response:
    queue = _queue(queue)
    try:
        q = schemas.DlqQuery.model_validate(request.args.to_dict())
    except pydantic.ValidationError as e:
        raise from_validation_error(e) from None
    s = services()
    ids = _ids(await s.broker.dlq_head(queue, q.count))
    dead = await s.store.dead_tasks(ids)
    return jsonify({
        "queue": queue,
        "count": len(dead),
        "tasks": [{**task_json(d.task), "attempts": d.attempts, "last_error": d.last_error,
                   "failed_at": _iso(d.failed_at)} for d in dead],
    })


@bp.post("/api/v1/queues/<queue>/dlq/replay")
async def replay_dlq(queue: str) -> Response:
    queue = _queue(queue)
    body = await request.get_data(as_text=False)
    try:
        req = schemas.ReplayDlq.model_validate_json(body or b"{}")
    except pydantic.ValidationError as e:
        raise from_validation_error(e) from None
    s = services()
    raw = await s.broker.dlq_head(queue, req.count)
    ids = _ids(raw)
    replayed = await s.store.replay(ids, queue_name=queue, override_priority=req.override_priority,
                                    now=datetime.fromtimestamp(s.clock(), UTC))
    # Every head entry goes: replayed ones and stale ones (no longer failed, or junk).
    await s.broker.replayed(queue, removed=raw, ready=[str(run_id) for _, run_id in replayed])
    return jsonify({"queue": queue, "replayed": len(replayed),
                    "task_ids": [str(task_id) for task_id, _ in replayed]})

"""Dead-letter queue resources: list the oldest entries, replay them.

PostgreSQL keeps the DLQ (failed tasks of the queue, oldest failure first); the Redis
list only indexes it, so nothing is ever trimmed or expired from it silently.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pydantic
from quart import Blueprint, Response, jsonify, request

from distasks.api import schemas
from distasks.api.errors import from_validation_error
from distasks.api.services import services
from distasks.api.tasks import _iso, task_json
from distasks.config import QUEUE_NAME_RE
from distasks.errors import BrokerUnavailable, InvalidInput

bp = Blueprint("dlq", __name__)


def _queue(name: str) -> str:
    if not QUEUE_NAME_RE.fullmatch(name):
        raise InvalidInput(f"queue name {name!r} is not 1-64 of [A-Za-z0-9_.-]", field="queue")
    return name


@bp.get("/api/v1/queues/<queue>/dlq")
async def list_dlq(queue: str) -> Response:
    queue = _queue(queue)
    try:
        q = schemas.DlqQuery.model_validate(request.args.to_dict())
    except pydantic.ValidationError as e:
        raise from_validation_error(e) from None
    dead = await services().store.dead_tasks(queue, limit=q.count)
    return jsonify({
        "queue": queue,
        "count": len(dead),
        "tasks": [{**task_json(d.task), "attempts": d.attempts, "last_error": d.last_error,
                   "failed_at": _iso(d.failed_at)} for d in dead],
    })


@bp.post("/api/v1/queues/<queue>/dlq/replay")
async def replay_dlq(queue: str) -> Response:
    queue = _queue(queue)
    body = await request.get_data(as_text=False, parse_form_data=False)
    try:
        req = schemas.ReplayDlq.model_validate_json(body or b"{}")
    except pydantic.ValidationError as e:
        raise from_validation_error(e) from None
    s = services()
    now = datetime.fromtimestamp(s.clock(), UTC)
    replayed = await s.store.replay(queue, limit=req.count,
                                    override_priority=req.override_priority, now=now)
    run_ids = [run_id for _, run_id in replayed]
    try:
        await s.broker.replayed(queue, removed=[str(t) for t, _ in replayed],
                                ready=[str(r) for r in run_ids])
        await s.store.mark_dispatched(run_ids, now=now)
    except BrokerUnavailable:
        pass  # committed: the reconciler pushes the new runs once Redis is back
    return jsonify({"queue": queue, "replayed": len(replayed),
                    "task_ids": [str(task_id) for task_id, _ in replayed]})

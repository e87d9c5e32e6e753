"""Queue resources: the list with depths and recent throughput; pause and resume; limits;
delete.

A pause of a name never seen adds a queue, so it is bounded by limits.max_queues per
tenant (409 beyond it), and a queue with nothing left in it can be deleted."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify

from distasks.api import schemas
from distasks.api.openapi import operation
from distasks.api.parse import parse_body, queue_name, read_body
from distasks.api.render import iso
from distasks.api.services import actor, services, tenant, tenant_queue
from distasks.daemon.queue_state import queue_states
from distasks.domain import times
from distasks.domain.errors import InvalidInput
from distasks.domain.tenancy import DEFAULT_TENANT, shown, tenant_of

bp = Blueprint("queues", __name__)


@operation(bp, "GET", "/api/v1/queues", scope="queues:read", tag="queues",
           summary="Every queue: depths, paused, completed and failed in the last minute, "
                   "age of the oldest ready run",
           responses={200: schemas.QueueList})
async def list_queues() -> Response:
    s = services()
    now = times.utc(s.clock())
    mine = tenant()
    records = {r.name: r for r in await s.store.queues(now=now) if tenant_of(r.name) == mine}
    served = [q for q in (s.tunables.queues if s.tunables else s.config.worker.queues)
              if tenant_of(q) == mine]
    states = await queue_states(s.store, s.broker, sorted(set(records) | set(served)), now=now)
    out = []
    for name, st in states.items():
        r = records.get(name)
        out.append({
            "name": shown(name), "paused": r.paused if r else st.paused,
            "paused_at": iso(r.paused_at) if r else None, "paused_by": r.paused_by if r else None,
            "ready": st.ready, "delayed": st.delayed, "leased": st.leased, "dlq": st.dlq,
            "completed_last_minute": r.completed_last_minute if r else 0,
            "failed_last_minute": r.failed_last_minute if r else 0,
            "oldest_ready_age_seconds": st.oldest_ready_age_s,
            "max_running": r.max_running if r else None,
            "waiting_for_limit": st.waiting_for_limit,
            "max_running_per_key": r.max_running_per_key if r else None,
            "max_starts_per_second": r.max_starts_per_second if r else None,
            "burst": r.burst if r else None,
        })
    return jsonify({"queues": out})


@operation(bp, "POST", "/api/v1/queues/<queue>/pause", scope="queues:admin", tag="queues",
           summary="Stop claiming from a queue (creates are still accepted)",
           responses={200: schemas.QueueState},
           errors={409: "A new queue beyond limits.max_queues of the tenant"})
async def pause_queue(queue: str) -> Response:
    return await _set_paused(queue, True)


@operation(bp, "POST", "/api/v1/queues/<queue>/resume", scope="queues:admin", tag="queues",
           summary="Claim from a paused queue again", responses={200: schemas.QueueState},
           errors={409: "A new queue beyond limits.max_queues of the tenant"})
async def resume_queue(queue: str) -> Response:
    return await _set_paused(queue, False)


@operation(bp, "PATCH", "/api/v1/queues/<queue>", scope="queues:admin", tag="queues",
           summary="Set or lift a queue's limits: max_running, the most runs leased at "
                   "once across every daemon, and max_running_per_key, the most of one "
                   "concurrency_key, and max_starts_per_second (with burst), the most runs "
                   "started per second; a field left out stays as it is",
           body=schemas.UpdateQueue,
           responses={200: schemas.QueueLimits},
           errors={403: "A tenant's change that would lift or raise a limit its operator "
                        "set in [queues.<name>] (operator_limit, naming the field)",
                   409: "A new queue beyond limits.max_queues of the tenant"})
async def update_queue(queue: str) -> Response:
    queue = tenant_queue(queue_name(queue))
    req = parse_body(schemas.UpdateQueue, await read_body())
    if not req.model_fields_set:
        raise InvalidInput("give max_running, max_running_per_key, max_starts_per_second "
                           "or burst (null lifts a limit)", field="max_running")
    s = services()
    asked = {f: getattr(req, f) for f in req.model_fields_set}
    if tenant_of(queue) != DEFAULT_TENANT:
        s.operations.check_tenant_limits(queue, asked)
    limits = await s.operations.set_queue_limits(
        queue, asked, actor=actor(),
        now=times.utc(s.clock()), max_queues=s.config.limits.max_queues)
    return jsonify({"name": shown(queue), **limits})


@operation(bp, "DELETE", "/api/v1/queues/<queue>", scope="queues:admin", tag="queues",
           summary="Delete a queue that holds no unfinished or dead-lettered task",
           responses={200: schemas.QueueDeleted},
           errors={404: "No such queue",
                   409: "The queue still holds unfinished or dead-lettered tasks"})
async def delete_queue(queue: str) -> Response:
    queue = tenant_queue(queue_name(queue))
    s = services()
    await s.operations.delete_queue(queue, actor=actor(), now=times.utc(s.clock()))
    return jsonify({"name": shown(queue), "deleted": True})


async def _set_paused(queue: str, paused: bool) -> Response:
    queue = tenant_queue(queue_name(queue))
    s = services()
    await s.operations.set_paused(queue, paused, actor=actor(), now=times.utc(s.clock()),
                                  max_queues=s.config.limits.max_queues)
    return jsonify({"name": shown(queue), "paused": paused})

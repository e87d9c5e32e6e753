"""Worker resources: the daemons that registered, live or recently dead."""

from __future__ import annotations

from datetime import timedelta

from quart import Blueprint, Response, jsonify

from distasks.api import schemas
from distasks.api.openapi import operation
from distasks.api.render import iso
from distasks.api.services import services, tenant
from distasks.domain import times
from distasks.domain.tenancy import shown, tenant_of

bp = Blueprint("workers", __name__)


@operation(bp, "GET", "/api/v1/workers", scope="queues:read", tag="workers",
           summary="Daemons, live and recently dead, with their running runs",
           responses={200: schemas.WorkerList})
async def list_workers() -> Response:
    """Each daemon with `alive` (heartbeat within two leases, not stopped) and its
    running runs; dead ones stay listed for `recovery.workers_listed_s`."""
    s = services()
    now = times.utc(s.clock())
    listed = await s.store.list_workers(
        since=now - timedelta(seconds=s.config.recovery.workers_listed_s))
    alive_after = now - timedelta(seconds=2 * s.config.worker.lease_s)
    mine = tenant()
    return jsonify({"workers": [{
        "id": w["id"], "host": w["host"], "pid": w["pid"],
        # Every tenant sees the fleet, but only its own queues and runs on it.
        "queues": [shown(q) for q in w["queues"] if tenant_of(q) == mine],
        "concurrency": w["concurrency"], "version": w["version"],
        "started_at": iso(w["started_at"]), "heartbeat_at": iso(w["heartbeat_at"]),
        "stopped_at": iso(w["stopped_at"]),
        "alive": w["stopped_at"] is None and w["heartbeat_at"] >= alive_after,
        "running": [{
            "run_id": str(r["run_id"]), "task_id": str(r["task_id"]), "attempt": r["attempt"],
            "name": r["name"], "handler": r["handler"], "queue_name": shown(r["queue_name"]),
            "started_at": iso(r["started_at"]), "lease_expires_at": iso(r["lease_expires_at"]),
        } for r in runs if tenant_of(r["queue_name"]) == mine],
    } for w, runs in listed]})

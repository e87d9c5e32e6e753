"""Liveness and readiness probes."""

from __future__ import annotations

import trio
from quart import Blueprint, Response, g, jsonify

from distasks.api import schemas
from distasks.api.openapi import operation
from distasks.api.services import services
from distasks.domain.errors import BrokerUnavailable, StoreUnavailable

bp = Blueprint("health", __name__)

# How long readiness waits for each backing service to answer.
PROBE_TIMEOUT_S = 1.0


@operation(bp, "GET", "/metrics", scope="metrics:read", tag="health",
           summary="Prometheus metrics, text format", responses={200: None})
async def metrics() -> Response:
    return Response(services().metrics.exposition(),
                    content_type="text/plain; version=0.0.4; charset=utf-8")


@operation(bp, "GET", "/healthz", tag="health", summary="Liveness: 200 while the process runs",
           responses={200: schemas.Health})
async def healthz() -> Response:
    return jsonify({"status": "ok"})


@operation(bp, "GET", "/readyz", tag="health",
           summary="Readiness: 200 when PostgreSQL and Redis answer, else 503 naming what is down",
           responses={200: schemas.Readiness, 503: schemas.Readiness})
async def readyz() -> Response:
    s = services()
    checks: dict[str, str] = {}

    async def probe(name: str, ping: object) -> None:
        with trio.move_on_after(PROBE_TIMEOUT_S) as scope:
            try:
                await ping()  # type: ignore[operator]
                checks[name] = "ok"
            except (StoreUnavailable, BrokerUnavailable) as e:
                checks[name] = f"down: {str(e).splitlines()[0][:200]}"
        if scope.cancelled_caught:
            checks[name] = f"down: no answer within {PROBE_TIMEOUT_S:g}s"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe, "postgres", s.store.ping)
        nursery.start_soon(probe, "redis", s.broker.ping)
    components = s.health.status()
    ready = all(v == "ok" for v in checks.values()) and all(components.values())
    if not _may_see_detail():
        response = jsonify({"ready": ready})
        response.status_code = 200 if ready else 503
        return response
    response = jsonify({
        "ready": ready, **dict(sorted(checks.items())),
        "components": {name: "ok" if alive else "down" for name, alive in components.items()},
        "progress": {"stalled": s.progress.stalled, "ready_runs": s.progress.ready,
                     "last_outcome_age_seconds": s.progress.last_outcome_age_s},
    })
    response.status_code = 200 if ready else 503
    return response


def _may_see_detail() -> bool:
    """What is down and why is for an authenticated caller (anonymous from loopback
    included) or the scrape networks; a probe from elsewhere learns ready or not."""
    return g.get("principal") is not None or bool(g.get("networked", False))

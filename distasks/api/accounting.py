"""Accounting: the HTTP metrics and the access log line of one answered request, written
the same way for the Quart app and for the lean create route (api/fast.py)."""

from __future__ import annotations

import logging

from distasks.api.services import Services

# Not "distasks.access": that names the access-control package, whose modules log too.
access_log = logging.getLogger("distasks.requests")


def account(s: Services, *, method: str, path: str, route: str, status: int,
            duration_s: float, request_id: str, remote: str | None) -> None:
    """Count the request (by route, method and status), time it, and log it when
    log.access is on."""
    s.metrics.http_requests.labels(route, s.metrics.method_label(method), str(status)).inc()
    s.metrics.http_duration.labels(route).observe(duration_s)
    if s.config.log.access and access_log.isEnabledFor(logging.INFO):
        access_log.info("%s %s %d %.1fms", method, path, status, duration_s * 1000, extra={
            "event": "http_request", "method": method, "path": path, "route": route,
            "status": status, "duration_ms": round(duration_s * 1000, 2),
            "request_id": request_id, "remote": remote})

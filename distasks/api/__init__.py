"""The HTTP API: a Quart app on Hypercorn's Trio worker, one blueprint per resource.

Routes parse, authorize, call and render; what they call lives below (the daemon's
components and operations, access control, the store and broker). May import everything
but the supervisor and the command line, which sit above it (tests/unit/test_layers.py).
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import hypercorn.config
import trio
import werkzeug.exceptions
from quart import Response, g, request
from quart_trio import QuartTrio

import distasks
from distasks.access import principals
from distasks.api import (
    access,
    accounting,
    audit,
    connections,
    dlq,
    errors,
    health,
    keys,
    openapi,
    pages,
    parse,
    protocol_errors,
    queues,
    schedules,
    tasks,
    workers,
    workflows,
)
from distasks.api.fast import with_lean_create
from distasks.api.services import Services, request_id_for

log = logging.getLogger(__name__)

# Room for the rest of a create body around the largest accepted payload.
BODY_OVERHEAD_BYTES = 64 * 1024
# app.extensions key: names of blueprints that check access themselves (the console, whose
# browser forms and session cookie are no API request); the API's check passes them by.
OWN_ACCESS = "distasks.own_access"


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio("distasks")
    http = services.config.http
    app.config["MAX_CONTENT_LENGTH"] = max(http.max_body_bytes,
                                           http.max_payload_bytes + BODY_OVERHEAD_BYTES)
    pages.install(app, heavy_reads=http.heavy_reads)  # JSON keys in order; list pages
    app.extensions["distasks"] = services
    app.extensions[OWN_ACCESS] = set()
    for bp in (tasks.bp, queues.bp, dlq.bp, workers.bp, keys.bp, audit.bp, schedules.bp,
               workflows.bp, health.bp):
        app.register_blueprint(bp)
    document = openapi.document(title="distasks", version=distasks.__version__,
                                handlers=services.registry.payload_schemas(),
                                anonymous_allowed=services.config.auth.anonymous == "loopback",
                                keyless_scopes=frozenset(
                                    {"metrics:read"} if services.config.auth.metrics_networks
                                    else ()),
                                jwt=services.config.auth.jwt.enabled)

    @app.get("/openapi.json")
    async def openapi_json() -> Any:
        return document

    @app.before_request
    async def start_clock() -> None:
        g.started = time.perf_counter()
        g.request_id = request_id_for(request.headers.get("X-Request-Id", ""))

    @app.before_request
    async def check_access() -> None:
        """api/access.py: transport rules, then the principal and the route's scope."""
        if request.blueprint in app.extensions[OWN_ACCESS]:
            return
        req = access.Request(request.method, {k.lower(): v for k, v in request.headers.items()},
                             request.remote_addr or "")
        access.check_transport(req, services.config)
        g.address = access.address(services, req)
        # A forward from a proxy nobody trusted is no caller on a configured network.
        g.networked = not access.forwarded_unvouched(services, req) and principals.in_networks(
            g.address, services.config.auth.metrics_networks)
        g.principal = await access.principal(services, req)
        if g.principal is not None:
            connections.note_authenticated(request.scope)
        scope = openapi.SCOPE_BY_ENDPOINT.get(request.endpoint or "")
        if scope == "metrics:read" and g.principal is None and g.networked:
            return  # a scraper on a configured network needs no key
        if scope is not None:
            await access.require(services, g.principal, scope)

    @app.after_request
    async def finish(response: Response) -> Response:
        """Request id, security headers, and the request's metrics and log line."""
        duration_s = time.perf_counter() - g.get("started", time.perf_counter())
        request_id = g.get("request_id", "")
        response.headers["X-Request-Id"] = request_id
        # A blueprint that serves pages (the console) sets its own, in g.
        response.headers.update(g.get("security_headers") or access.SECURITY_HEADERS)
        if services.stopping.is_set():
            # Shutting down: no keep-alive, so the client reconnects (elsewhere) at once.
            response.headers["Connection"] = "close"
        accounting.account(
            services, method=request.method, path=request.path,
            route=request.url_rule.rule if request.url_rule is not None else "unmatched",
            status=response.status_code, duration_s=duration_s, request_id=request_id,
            remote=request.remote_addr)
        return response

    @app.after_request
    async def drain_request_body(response: Response) -> Response:
        # Hypercorn's trio worker stalls a keep-alive connection when a response (a 405,
        # say) goes out before the request body has arrived; reading the body first
        # avoids it. A body too large to read closes the connection instead.
        if response.status_code == 413:
            response.headers["Connection"] = "close"
        else:
            try:
                await request.get_data(parse_form_data=False)
            except Exception:
                response.headers["Connection"] = "close"
        return response

    errors.install(app)

    @app.errorhandler(werkzeug.exceptions.NotFound)
    async def no_route(_e: werkzeug.exceptions.NotFound) -> Response:
        """A path with the shape of a route but a parameter that does not read (a queue
        name with a slash, a task id that is no UUID) is a 422 naming it; any other
        unknown path a 404 that names what was asked for."""
        raw = request.scope.get("raw_path") or request.path.encode()
        problem = parse.path_parameter_problem(
            [op.path for op in openapi.OPERATIONS], raw.decode("latin-1"))
        if problem is not None:
            return errors.error_response(422, problem.code, problem.message, problem.field)
        return errors.error_response(404, "not_found",
                                     f"no route for {request.method} {request.path[:200]}")

    return app


async def serve(app: QuartTrio, *, sockets: list[socket.socket], shutdown: trio.Event,
                graceful_s: float, limits: connections.Limits,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `app` (with the lean create route in front, api/fast.py) on `sockets`
    (`connections.bind`) until `shutdown` is set, then finish requests in flight for at
    most `graceful_s`; `task_status.started()` once the sockets listen. Connections are
    held to `limits` (api/connections.py)."""
    protocol_errors.install()
    config = hypercorn.config.Config()
    config.graceful_timeout = graceful_s
    config.accesslog = None
    config.errorlog = logging.getLogger("distasks.http")
    config.keep_alive_timeout = limits.keep_alive_s
    front = with_lean_create(app, app.extensions["distasks"],  # type: ignore[arg-type]
                             max_body_bytes=app.config["MAX_CONTENT_LENGTH"])
    await connections.serve(front, config, limits, sockets=sockets, shutdown=shutdown,
                            gauge=app.extensions["distasks"].metrics.http_connections,
                            task_status=task_status)

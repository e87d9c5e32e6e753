"""The lean route: `POST /api/v1/tasks` served straight from ASGI, in front of Quart.

It is the one request every producer makes, and Quart's per-request machinery (request
and app contexts, hooks, signals, response objects) cost about as much daemon CPU as
the rest of a create (measured with bench/throughput.py, phase d: docs/architecture.md).
It answers exactly as the Quart route in api/tasks.py would: the same access checks
(api/access.py), parsing and checks (`parse_create`), errors (`errors.error_for`),
request id, security headers, metrics, access log line and `Connection: close` during
shutdown. Every other request, and a create body over the size
limit, goes to Quart.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from distasks.api import access, connections, errors
from distasks.api.accounting import account
from distasks.api.services import Services, request_id_for
from distasks.api.tasks import create_one

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ROUTE = "/api/v1/tasks"
SECURITY_HEADERS = [(k.lower().encode(), v.encode()) for k, v in access.SECURITY_HEADERS.items()]


def with_lean_create(app: ASGIApp, services: Services, *, max_body_bytes: int) -> ASGIApp:
    """`app` with POST /api/v1/tasks answered in front of it."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != ROUTE:
            await app(scope, receive, send)
            return
        started_s = time.perf_counter()
        body, messages = await _read_body(receive, max_body_bytes)
        if messages[-1]["type"] == "http.disconnect":
            return  # the client went away: nobody to answer
        if body is None:
            # Over the limit: Quart answers the 413 (and closes the connection), from
            # the messages read so far and the rest.
            await app(scope, _replay(messages, receive), send)
            return
        request_id = request_id_for(_header(scope, b"x-request-id"))
        status, document, headers = await _create(services, scope, body)
        payload = json.dumps(document, separators=(",", ":")).encode()
        response_headers = [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                            (b"x-request-id", request_id.encode())]
        response_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        response_headers += SECURITY_HEADERS
        if services.stopping.is_set():
            response_headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status,
                    "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})
        client = scope.get("client")
        account(services, method="POST", path=ROUTE, route=ROUTE, status=status,
                duration_s=time.perf_counter() - started_s, request_id=request_id,
                remote=client[0] if client else None)

    return asgi


async def _create(s: Services, scope: Scope, body: bytes) -> tuple[
        int, dict[str, Any], dict[str, str]]:
    try:
        client = scope.get("client")
        req = access.Request("POST", {bytes(k).decode("latin-1"): bytes(v).decode("latin-1")
                                      for k, v in scope["headers"]},
                             client[0] if client else "")
        access.check_transport(req, s.config)
        principal = await access.principal(s, req)
        if principal is not None:
            connections.note_authenticated(scope)
        who = await access.require(s, principal, "tasks:write")
        document, status = await create_one(s, who.tenant, body)
    except Exception as e:
        mapped = errors.error_for(e)
        if mapped is not None:
            return mapped
        log.exception("unhandled error in a request", extra={"event": "http_internal_error"})
        return 500, errors.INTERNAL_BODY, {}
    return status, document, {}


async def _read_body(receive: Receive, limit: int) -> tuple[bytes | None, list[Message]]:
    """The whole request body, or None (with what was read) once it passes `limit`."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return b"".join(chunks), messages  # http.disconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None, messages
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


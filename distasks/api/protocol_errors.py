"""Errors Hypercorn answers by itself, in the API's one error shape.

A request Hypercorn cannot parse (a malformed request line, a duplicate Content-Length,
headers over its limit: 400 or 431) never reaches an application, and Hypercorn answers
it with an empty body. `install()` makes those answers carry the same
`{"error": {"code", "message", "field"}}` body and an `X-Request-Id` as every other
error. It replaces one private method of each of two Hypercorn classes; the versions it
was written for are pinned in pyproject.toml, and tests/system/test_api_contract.py
fails if an upgrade changes them.
"""

from __future__ import annotations

import json
import secrets
import time
from itertools import chain
from typing import Any

import h11
from hypercorn.protocol import h11 as hypercorn_h11
from hypercorn.protocol import http_stream
from hypercorn.protocol.events import Body, EndBody, Response

# What each status Hypercorn produces means to a client.
MEANINGS = {
    400: ("malformed_request", "the request is not valid HTTP/1.1 (request line, headers "
                               "or framing)"),
    404: ("not_found", "no such host is served here"),
    413: ("body_too_large", "the request body is too large"),
    431: ("headers_too_large", "the request headers are too large"),
    500: ("internal", "internal error; see the daemon's log"),
}


def error_body(status: int) -> bytes:
    code, message = MEANINGS.get(status, ("http_error", f"HTTP error {status}"))
    return json.dumps({"error": {"code": code, "message": message, "field": None}},
                      separators=(",", ":")).encode()


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
            (b"x-request-id", secrets.token_hex(8).encode())]


async def _h11_error(self: Any, status_code: int) -> None:
    """H11Protocol._send_error_response, with a body."""
    body = error_body(status_code)
    await self._send_h11_event(h11.Response(
        status_code=status_code,
        headers=list(chain(_headers(body), self.config.response_headers("h11")))))
    await self._send_h11_event(h11.Data(data=body))
    await self._send_h11_event(h11.EndOfMessage())


async def _stream_error(self: Any, status_code: int) -> None:
    """HTTPStream._send_error_response, with a body."""
    body = error_body(status_code)
    await self.send(Response(stream_id=self.stream_id, headers=_headers(body),
                             status_code=status_code))
    await self.send(Body(stream_id=self.stream_id, data=body))
    await self.send(EndBody(stream_id=self.stream_id))
    self.state = http_stream.ASGIHTTPState.CLOSED
    await self.config.log.access(self.scope, {"status": status_code, "headers": []},
                                 time.time() - self.start_time)


def install() -> None:
    """Idempotent; called once before serving."""
    hypercorn_h11.H11Protocol._send_error_response = _h11_error  # type: ignore[method-assign]
    http_stream.HTTPStream._send_error_response = _stream_error  # type: ignore[method-assign]

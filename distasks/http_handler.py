"""The built-in `http` handler: a task that calls a URL, so that any language can use
distasks without Python handlers.

The payload names `url`, `method` (default POST), `headers` and a JSON `body` (or a
text `body_text`). The run succeeds on a 2xx answer and stores the status, the
content type and a bounded slice of the body; any other status, or no answer within
the task's timeout, fails the attempt (and so retries). Only hosts on the configured
allow-list are called (none until configured), so the daemon cannot be turned into a
proxy into private networks; redirects are not followed.
"""

from __future__ import annotations

import fnmatch
from typing import Any
from urllib.parse import urlsplit

import httpx

from distasks.errors import InvalidInput
from distasks.handlers import TaskContext
from distasks.model import Json

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"})


class HttpTaskFailed(Exception):
    """The endpoint answered with a status outside 2xx."""


class HttpHandler:
    """`allowed_hosts` entries are host names (`api.example.com`), wildcards
    (`*.example.com`), or either with a port (`localhost:8080`)."""

    def __init__(self, allowed_hosts: tuple[str, ...], max_response_bytes: int):
        self._allowed = tuple(h.lower() for h in allowed_hosts)
        self._max_response_bytes = max_response_bytes

    def check(self, payload: Json) -> tuple[str, str, dict[str, str], dict[str, Any]]:
        """Validate a payload: (method, url, headers, body kwargs); InvalidInput naming
        the field otherwise. Used at create time and again before each call."""
        if not isinstance(payload, dict):
            raise InvalidInput("the http handler needs an object payload", field="payload")
        url = payload.get("url")
        if not isinstance(url, str):
            raise InvalidInput("payload.url is required (a string)", field="payload.url")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput("payload.url must be an http or https URL",
                               field="payload.url")
        if not self._allows(parts.hostname, parts.port):
            raise InvalidInput(f"host {parts.hostname!r} is not in http_handler.allowed_hosts",
                               field="payload.url", code="host_not_allowed")
        method = str(payload.get("method", "POST")).upper()
        if method not in METHODS:
            raise InvalidInput(f"payload.method must be one of {', '.join(sorted(METHODS))}",
                               field="payload.method")
        headers = payload.get("headers", {})
        if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise InvalidInput("payload.headers must map strings to strings",
                               field="payload.headers")
        body: dict[str, Any] = {}
        if "body" in payload and "body_text" in payload:
            raise InvalidInput("give payload.body or payload.body_text, not both",
                               field="payload.body")
        if "body" in payload:
            body["json"] = payload["body"]
        elif "body_text" in payload:
            if not isinstance(payload["body_text"], str):
                raise InvalidInput("payload.body_text must be a string",
                                   field="payload.body_text")
            body["content"] = payload["body_text"].encode()
        return method, url, headers, body

    def _allows(self, host: str, port: int | None) -> bool:
        host = host.lower()
        for entry in self._allowed:
            name, _, entry_port = entry.partition(":")
            if entry_port and (port is None or str(port) != entry_port):
                continue
            if fnmatch.fnmatchcase(host, name):
                return True
        return False

    async def __call__(self, ctx: TaskContext) -> Json:
        method, url, headers, body = self.check(ctx.payload)
        # No timeout of its own: the run's cancel scope (the task's timeout) bounds it.
        async with httpx.AsyncClient(follow_redirects=False, timeout=None) as client:
            async with client.stream(method, url, headers=headers, **body) as response:
                kept = bytearray()
                async for chunk in response.aiter_bytes():
                    kept += chunk[:self._max_response_bytes - len(kept)]
                    if len(kept) >= self._max_response_bytes:
                        break
        text = kept.decode(response.encoding or "utf-8", errors="replace")
        if not 200 <= response.status_code < 300:
            raise HttpTaskFailed(f"HTTP {response.status_code} from {url}: {text[:200]}")
        return {"status": response.status_code,
                "content_type": response.headers.get("content-type"),
                "body": text, "truncated": len(kept) >= self._max_response_bytes}

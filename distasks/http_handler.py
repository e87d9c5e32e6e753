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
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:  # a port out of range, an unclosed IPv6 bracket
            raise InvalidInput(f"payload.url is not a valid URL: {e}",
                               field="payload.url") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput("payload.url must be an http or https URL",
                               field="payload.url")
        if not self._allows(parts.hostname, port):
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

    def payload_schema(self) -> dict[str, Any] | None:
        """The JSON Schema of the payloads `check` accepts, for the OpenAPI document; None
        while no host is allowed (then no payload is)."""
        if not self._allowed:
            return None
        hosts = "|".join(_host_pattern(entry) for entry in self._allowed)
        methods = "|".join(_any_case(m) for m in sorted(METHODS))
        return {
            "type": "object", "required": ["url"],
            "properties": {
                "url": {"type": "string", "pattern": f"^{_any_case('http')}[sS]?://"
                        f"([^/?#@]*@)?({hosts})([/?#].*)?$"},
                "method": {"type": "string", "pattern": f"^({methods})$", "default": "POST"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "body_text": {"type": "string"},
            },
            "not": {"required": ["body", "body_text"]},
        }

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


# A port urlsplit accepts: 0-65535.
_PORT = r"([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"


def _host_pattern(entry: str) -> str:
    """A regular expression (ECMAScript as well as Python) for the URL host and port an
    allow-list entry admits, as `_allows` reads them: case-insensitive names, `*` and `?`
    wildcards, any port unless the entry names one."""
    name, _, port = entry.partition(":")
    out = []
    for c in name:
        if c == "*":
            out.append(r"[^/?#@:\[\]]*")
        elif c == "?":
            out.append(r"[^/?#@:\[\]]")
        elif c.isalpha():
            out.append(_any_case(c))
        elif c.isalnum() or c in "_~":
            out.append(c)
        else:
            out.append("\\" + c)
    return "".join(out) + (f":{port}" if port else f"(:{_PORT})?")


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)

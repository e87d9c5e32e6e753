"""The built-in `http` handler: a task that calls a URL, so that any language can use
distasks without Python handlers.

The payload names `url`, `method` (default POST), `headers` and a JSON `body` (or a
text `body_text`). The run succeeds on a 2xx answer and stores the status, the
content type and a bounded slice of the body; any other status, or no answer within
the task's timeout, fails the attempt (and so retries). Only hosts on the configured
allow-list are called (none until configured), so the daemon cannot be turned into a
proxy into private networks:
- an entry without a port allows ports 80 and 443 only;
- a name is resolved once, before the call, and every address it resolves to must be
  public (not loopback, private, link-local, multicast or reserved) unless an entry names
  that address or a range holding it; the call then goes to the address that was
  checked, so a second resolution cannot lead elsewhere (DNS rebinding);
- the caller cannot set `Host`; redirects are not followed.

Only a bounded slice of the body is kept, so compression is not asked for (the caller
may still ask). A gzip or deflate body is inflated in bounded steps, and one that
inflates past max_response_bytes fails the attempt: a few bytes on the wire must not
cost the daemon megabytes (a decompression bomb).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import trio

from distasks.domain.errors import InvalidInput
from distasks.domain.model import Json
from distasks.domain.secret_fields import scrub, secret_values, without_partial_tail
from distasks.handlers import TaskContext

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"})
# Content codings inflated here (zlib's "+32" window: a gzip or a zlib header, detected).
INFLATED_CODINGS = frozenset({"gzip", "x-gzip", "deflate"})


class HttpTaskFailed(Exception):
    """The endpoint answered with a status outside 2xx."""


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """One http_handler.allowed_hosts entry: a name pattern (`api.example.com`,
    `*.example.com`) or an address or range (`203.0.113.7`, `10.0.0.0/8`, `[::1]`), with a
    port (`host:8080`, `[::1]:8080`) or, without one, ports 80 and 443."""

    name: str | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    port: int | None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        t = text.strip().lower()
        host, port = t, ""
        if t.startswith("["):
            host, _, rest = t[1:].partition("]")
            port = rest.removeprefix(":")
        elif t.count(":") == 1:
            host, _, port = t.partition(":")
        try:
            number = int(port) if port else None
        except ValueError:
            raise ValueError(f"{text!r}: the port must be a number") from None
        if number is not None and not 0 < number < 65536:
            raise ValueError(f"{text!r}: the port must be 1-65535")
        if not host:
            raise ValueError(f"{text!r}: no host")
        try:
            return cls(None, ipaddress.ip_network(host, strict=False), number)
        except ValueError:
            return cls(host, None, number)

    def ports(self, port: int) -> bool:
        return port == self.port if self.port is not None else port in (80, 443)

    def names(self, host: str) -> bool:
        """Whether this entry admits `host` as written in a URL (a name or an address)."""
        if self.network is not None:
            try:
                return ipaddress.ip_address(host) in self.network
            except ValueError:
                return False
        return self.name is not None and fnmatch.fnmatchcase(host, self.name)

    def holds(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return self.network is not None and address in self.network


class HttpHandler:
    """Calls URLs of the `allowed_hosts` (AllowEntry) only; see the module's docstring."""

    def __init__(self, allowed_hosts: tuple[str, ...], max_response_bytes: int):
        self._entries = tuple(AllowEntry.parse(h) for h in allowed_hosts)
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
        if not self._allows(parts.hostname, _port(parts.scheme, port)):
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
        if any(k.strip().lower() == "host" for k in headers):
            raise InvalidInput("payload.headers must not set Host: the URL's host is called",
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
        if not self._entries:
            return None
        hosts = "|".join(_host_pattern(entry) for entry in self._entries)
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

    def _allows(self, host: str, port: int) -> bool:
        host = host.lower()
        return any(e.names(host) and e.ports(port) for e in self._entries)

    async def _address(self, host: str, port: int) -> str:
        """The address to connect to for `host`: itself when it is an address (already
        checked against the entries), else the first it resolves to, once every address
        it resolves to is public or held by an entry that allows `port`."""
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addresses:
            raise HttpTaskFailed(f"{host} resolves to no address")
        for a in addresses:
            if not a.is_global and not any(e.holds(a) and e.ports(port) for e in self._entries):
                raise HttpTaskFailed(
                    f"{host} resolves to {a}, an address that is not public and that no "
                    "http_handler.allowed_hosts entry names")
        return str(addresses[0])

    async def __call__(self, ctx: TaskContext) -> Json:
        method, url, headers, body = self.check(ctx.payload)
        parts = urlsplit(url)
        assert parts.hostname is not None  # check() made sure
        port = _port(parts.scheme, parts.port)
        address = await self._address(parts.hostname, port)
        literal = f"[{address}]" if ":" in address else address
        userinfo = parts.netloc.rpartition("@")[0]
        target = urlunsplit((parts.scheme, f"{userinfo + '@' if userinfo else ''}{literal}:{port}",
                             parts.path, parts.query, ""))
        if not any(k.strip().lower() == "accept-encoding" for k in headers):
            headers = {**headers, "Accept-Encoding": "identity"}
        headers = {**headers, "Host": parts.netloc.rpartition("@")[2]}
        extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
        # No timeout of its own: the run's cancel scope (the task's timeout) bounds it.
        async with httpx.AsyncClient(follow_redirects=False, timeout=None) as client:
            async with client.stream(method, target, headers=headers, extensions=extensions,
                                     **body) as response:
                kept = await self._read_body(response, url)
        text = kept.decode(response.encoding or "utf-8", errors="replace")
        # A reply may echo the task's secrets: scrubbed before any cut, so that no cut
        # leaves part of one (the worker scrubs what is left whole).
        secrets = secret_values(ctx.task)
        text = scrub(text, secrets)
        truncated = len(kept) >= self._max_response_bytes
        if truncated:
            text = without_partial_tail(text, secrets)
        if not 200 <= response.status_code < 300:
            raise HttpTaskFailed(f"HTTP {response.status_code} from {_origin(url)}: {text[:200]}")
        return {"status": response.status_code,
                "content_type": response.headers.get("content-type"),
                "body": text, "truncated": truncated}


    async def _read_body(self, response: httpx.Response, url: str) -> bytes:
        """The first max_response_bytes of the body, inflated if it is compressed (never
        more than that held at once); HttpTaskFailed if a compressed body inflates past
        them, or is in a coding not decoded here."""
        limit = self._max_response_bytes
        coding = response.headers.get("content-encoding", "").strip().lower()
        kept = bytearray()
        if coding in ("", "identity"):
            async for chunk in response.aiter_raw():
                kept += chunk[:limit - len(kept)]
                if len(kept) >= limit:
                    break
            return bytes(kept)
        shown = f"the response body from {_origin(url)} (HTTP {response.status_code})"
        if coding not in INFLATED_CODINGS:
            raise HttpTaskFailed(f"{shown} is {coding}-encoded, which is not decoded here")
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)
        try:
            async for chunk in response.aiter_raw():
                data = chunk
                while data and not inflater.eof:
                    # One byte past the limit at most: enough to know it is passed.
                    kept += inflater.decompress(data, limit + 1 - len(kept))
                    if len(kept) > limit:
                        raise HttpTaskFailed(
                            f"{shown} inflates past http_handler.max_response_bytes "
                            f"({limit} bytes) when {coding}-decoded; not read further "
                            "(a decompression bomb?)")
                    data = inflater.unconsumed_tail
                if inflater.eof:
                    break
        except zlib.error:
            raise HttpTaskFailed(f"{shown} is not valid {coding}") from None
        return bytes(kept)


def _host_pattern(entry: AllowEntry) -> str:
    """A regular expression (ECMAScript as well as Python) for the URL host and port an
    allow-list entry admits: case-insensitive names with `*` and `?` wildcards, one
    address as written, or (a range: approximately) any address of its family; the
    entry's port, or 80 and 443 (or none, the scheme's default) without one."""
    ports = f":{entry.port}" if entry.port is not None else "(:(80|443))?"
    if entry.network is not None:
        if entry.network.num_addresses == 1:
            address = str(entry.network.network_address)
            host = (rf"\[{_any_case(address)}\]" if entry.network.version == 6
                    else address.replace(".", r"\."))
        else:
            host = (r"\[[0-9a-fA-F:.]+\]" if entry.network.version == 6
                    else r"[0-9]{1,3}(\.[0-9]{1,3}){3}")
        return host + ports
    out = []
    for c in entry.name or "":
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
    return "".join(out) + ports


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


def _port(scheme: str, port: int | None) -> int:
    return port if port is not None else (443 if scheme == "https" else 80)


def _origin(url: str) -> str:
    """`scheme://host:port` of `url`, for errors and logs: its user info, query and path
    may each hold a token (a webhook's lives in its path)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], "", "", ""))

"""Access: what every request passes before it is served, on the Quart routes and the
lean create route alike.

1. Transport: a Host this daemon answers to (a DNS-rebinding page names its own), and for
   writes no cross-site browser origin and a JSON body (a form or text/plain post from a
   web page fails here, before any effect).
2. The principal: an API key from `Authorization: Bearer dtk_…`, any other bearer token
   as a JWT where auth.jwt is on (distasks.access.jwt_tokens), or the anonymous principal of a
   request from this machine where auth.anonymous = "loopback".
3. The scope the operation needs, and the principal's and its tenant's rate limits.
Every response also carries SECURITY_HEADERS.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from distasks.access import jwt_tokens, principals
from distasks.access.principals import Principal
from distasks.access.rate_limits import RateLimited
from distasks.api.services import Services
from distasks.config import Config
from distasks.domain import times
from distasks.domain.errors import Forbidden, Refused, Unauthenticated
from distasks.domain.tenancy import DEFAULT_TENANT

# Scopes that show the whole deployment, not one tenant: honoured for the default tenant
# (the operator's) only (architecture §8).
OPERATOR_SCOPES = frozenset({"metrics:read"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Host names every daemon answers to besides http.allowed_hosts.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class Request:
    """What access control reads of a request: method, headers (lower-case names), and
    the address of the peer that connected."""

    method: str
    headers: Mapping[str, str]
    peer: str


def check_transport(req: Request, config: Config) -> None:
    check_host(req, config)
    if req.method in SAFE_METHODS:
        return
    check_same_site(req, config)
    # A body must be declared JSON, and one with no Content-Type at all is refused too: a
    # page's fetch() with a Blob or ArrayBuffer body sends none and needs no CORS preflight,
    # so accepting it would reopen the cross-site write the JSON rule closes. Every client
    # we document (curl --json, httpx, distasks.client) sends the header.
    content_type = req.headers.get("content-type")
    has_body = req.headers.get("content-length", "0") not in ("", "0") or (
        "transfer-encoding" in req.headers)
    if content_type is not None or has_body:
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise Refused(415, "unsupported_media_type",
                          "a request body must be sent as Content-Type: application/json")


def check_host(req: Request, config: Config) -> None:
    """A Host this daemon answers to (a DNS-rebinding page names its own)."""
    host = req.headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    allowed = LOOPBACK_NAMES | set(config.http.allowed_hosts) | {config.http.host}
    # No Host (or an empty one) is HTTP/1.0, which may leave it out (the HTTP server
    # refuses HTTP/1.1 without one): a load balancer's health check or an old tool, never
    # a browser, so nothing a rebinding page could send; it is answered.
    if host and name.lower() not in allowed and "*" not in allowed:
        raise Refused(400, "bad_host", f"this daemon does not answer to the host {host!r}; "
                      "add it to http.allowed_hosts")


def check_same_site(req: Request, config: Config) -> None:
    """A write from no other web origin (the console adds its CSRF token on top)."""
    origin = req.headers.get("origin")
    if origin is not None and origin not in config.http.trusted_origins:
        raise Refused(403, "cross_origin", f"writes from the web origin {origin!r} are refused")
    if req.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        raise Refused(403, "cross_origin", "cross-site writes from a browser are refused")


def address(s: Services, req: Request) -> str:
    """The client's address: the peer's, or what a trusted proxy says it forwards."""
    return principals.client_address(req.peer, req.headers.get("x-forwarded-for"),
                               s.config.auth.trusted_proxies)


def forwarded_unvouched(s: Services, req: Request) -> bool:
    """Whether a peer that is no trusted proxy says it forwards someone (X-Forwarded-For).
    Its address counts for limits and the audit log, but it is not taken as local: it may
    be a proxy on this machine that nobody named in auth.trusted_proxies, whose clients
    would otherwise all look like loopback (anonymous access, metrics_networks)."""
    return "x-forwarded-for" in req.headers and not principals.in_networks(
        req.peer, s.config.auth.trusted_proxies)


async def principal(s: Services, req: Request) -> Principal | None:
    """The caller, or None when it gave no credentials and is not anonymous here."""
    a = s.config.auth
    client = address(s, req)
    token = principals.bearer_token(req.headers.get("authorization"))
    if token is None:
        if (a.anonymous == "loopback" and principals.is_loopback(client)
                and not forwarded_unvouched(s, req)):
            return principals.anonymous(client)
        return None
    if not token.startswith(principals.TOKEN_PREFIX):
        return await jwt_principal(s, token, client)
    key = await s.keys.key(token, before_lookup=lambda: _not_flooding(s, client))
    if key is None or not key.valid_at(times.utc(s.clock())):
        if s.login_failures is not None:
            reason = "unknown" if key is None else "revoked" if key.revoked_at else "expired"
            s.login_failures.note(client, reason=reason,
                                  key_id=str(key.id) if key else None,
                                  tenant=key.tenant if key else "default")
        raise Unauthenticated("the API key is unknown, expired or revoked")
    return key.principal()


def _not_flooding(s: Services, client: str) -> None:
    """Refuse (429) a token the key cache does not know from an address that presented
    auth.max_failures unknown keys in its window already: random tokens must not each
    cost a PostgreSQL lookup. Keys already cached (valid ones in use) still pass."""
    limit = s.config.auth.max_failures
    if not limit or s.login_failures is None:
        return
    count, left_s = s.login_failures.unknown_in_window(client)
    if count >= limit:
        retry = max(1, math.ceil(left_s))
        raise Refused(429, "too_many_failures", f"{count} unknown API keys from this address "
                      f"in {s.login_failures.window_s:g}s; retry after {retry}s",
                      {"Retry-After": str(retry)})


async def jwt_principal(s: Services, token: str, client: str) -> Principal:
    """The principal of a bearer token that is no API key: a JWT, where auth.jwt is on.
    A refusal says what was wrong in general terms, never the token."""
    if s.jwt is None:
        raise Unauthenticated("the bearer token is not an API key (dtk_…), and this server "
                              "accepts no other")
    try:
        return await s.jwt.principal(token)
    except jwt_tokens.TokenRefused as e:
        if s.login_failures is not None:
            s.login_failures.note(client, reason="jwt")  # fixed: reasons may quote claims
        refused = Unauthenticated(f"the bearer token is refused: {e.reason}")
        refused.headers["WWW-Authenticate"] = 'Bearer realm="distasks", error="invalid_token"'
        raise refused from None


async def require(s: Services, who: Principal | None, scope: str) -> Principal:
    """`who`, if it holds `scope` and is within its rate limits."""
    if who is None:
        raise Unauthenticated("this operation needs an API key: Authorization: Bearer <token>")
    if not who.allows(scope):
        raise Forbidden(scope)
    if scope in OPERATOR_SCOPES and who.tenant != DEFAULT_TENANT:
        raise Refused(403, "forbidden", f"{scope} shows the whole deployment: only the "
                      f"default tenant's keys have it, not tenant {who.tenant!r}'s")
    try:
        await s.limiter.spend(who)
    except RateLimited:
        s.metrics.tenant_refused.labels(s.metrics.tenant_label(who.tenant), "rate").inc()
        raise
    return who


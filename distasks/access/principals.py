"""Auth: who makes a request (a principal) and what it may do (scopes).

A principal is an API key (a random token, `dtk_` and 256 bits, of which PostgreSQL keeps
only a SHA-256) or, where the configuration allows it, the anonymous principal of a
request from this machine. Tokens are looked up through a short cache, so that a request
costs a hash and a dictionary lookup; a revoked key stops working within CACHE_TTL_S.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

TOKEN_PREFIX = "dtk_"
# Random bytes in a token: 256 bits.
TOKEN_BYTES = 32
# How long a looked-up token (found or not) is trusted without asking PostgreSQL again;
# also how long a revoked key may still be accepted.
CACHE_TTL_S = 5.0
# Most tokens cached; an attacker trying random tokens cannot grow the cache further.
CACHE_MAX = 10_000
# Characters of a token kept to tell keys apart in listings.
SHOWN_PREFIX_CHARS = 12

SCOPES = (
    "tasks:write",    # create, batch
    "tasks:read",     # read, list, runs, long-poll
    "tasks:cancel",   # cancel
    "queues:read",    # queue list, DLQ listing, workers
    "queues:admin",   # pause, resume
    "dlq:admin",      # replay, delete
    "keys:admin",     # create, list, rotate, revoke keys
    "audit:read",     # the audit log
    "metrics:read",   # /metrics
    "schedules:read",   # list and show schedules, their next and last fires
    "schedules:write",  # create, change, pause, resume, delete schedules
    "workflows:read",   # read and list workflows, their nodes and results
    "workflows:write",  # submit, cancel, resume workflows
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who makes a request: `id` is what the audit log records."""

    id: str
    name: str
    tenant: str
    scopes: frozenset[str]
    #: requests per minute instead of limits.per_minute (None: the configured one)
    rate_per_minute: int | None = None
    #: when its authority ends: its key's expiry, its JWT's exp (None: never); a key it
    #: mints ends no later (distasks.access.api_keys.Authority)
    expires_at: datetime | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def anonymous(address: str) -> Principal:
    """The principal of a request from this machine without credentials, where allowed:
    every scope, as before authentication existed."""
    return Principal(id=f"anonymous@{address}", name="anonymous", tenant="default",
                     scopes=frozenset(SCOPES))


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as stored (never its token)."""

    id: uuid.UUID
    name: str
    tenant: str
    scopes: tuple[str, ...]
    token_prefix: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    rate_per_minute: int | None = None

    def valid_at(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def principal(self) -> Principal:
        return Principal(id=f"key:{self.id}", name=self.name, tenant=self.tenant,
                         scopes=frozenset(self.scopes), rate_per_minute=self.rate_per_minute,
                         expires_at=self.expires_at)


def new_token() -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).decode(
        ).rstrip("=")


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """`scopes` if each is known, deduplicated and sorted; ValueError naming one otherwise."""
    out = sorted(set(scopes))
    for s in out:
        if s not in SCOPES:
            raise ValueError(f"unknown scope {s!r}; scopes: {', '.join(SCOPES)}")
    return tuple(out)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    kind, _, token = authorization.strip().partition(" ")
    return token.strip() or None if kind.lower() == "bearer" else None


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def in_networks(address: str, networks: Iterable[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def client_address(peer: str, forwarded_for: str | None, trusted_proxies: Iterable[str]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy, then the
    last address the proxies added to X-Forwarded-For that is not itself a trusted proxy
    (a client can put anything in the header; only what the proxies appended counts)."""
    trusted = tuple(trusted_proxies)
    if not forwarded_for or not in_networks(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not in_networks(hop, trusted):
            return hop
    return hops[0] if hops else peer


class KeyCache:
    """Tokens already looked up, by hash, for CACHE_TTL_S (misses too, so that a flood of
    bad tokens costs PostgreSQL one query per token per TTL)."""

    def __init__(self, lookup: Callable[[bytes], Awaitable[ApiKey | None]],
                 clock: Callable[[], float]):
        self._lookup = lookup
        self._clock = clock
        self._entries: dict[bytes, tuple[float, ApiKey | None]] = {}

    async def key(self, token: str, *,
                  before_lookup: Callable[[], None] | None = None) -> ApiKey | None:
        """The key of `token`, from the cache or PostgreSQL. `before_lookup` runs before
        PostgreSQL is asked about a token not known as a key, and may raise to refuse the
        lookup (an address flooding random tokens); a key found before is looked up again
        regardless, so that its holder is not locked out by a neighbour's flood."""
        digest = token_hash(token)
        now = self._clock()
        cached = self._entries.get(digest)
        if cached is not None and now - cached[0] < CACHE_TTL_S:
            return cached[1]
        if before_lookup is not None and (cached is None or cached[1] is None):
            before_lookup()
        found = await self._lookup(digest)
        if len(self._entries) >= CACHE_MAX:
            self._entries.clear()
        self._entries[digest] = (now, found)
        return found

"""API keys as operations: create (the token is shown once), rotate (a new token, the
old one valid for an overlap), revoke, list. Shared by `distasks keys …` (which talks to
PostgreSQL directly, so that the first key exists before the daemon first runs) and the
/api/v1/keys routes.

A key made over the API gets no more than its maker has (Authority): no scope it lacks
(api/keys.py), no higher rate limit and no later expiry. The command line is the
operator's, run on the database itself, and gives what it is told."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from distasks.access import principals
from distasks.access.principals import ApiKey, Principal
from distasks.domain.errors import Refused
from distasks.domain.model import Actor
from distasks.domain.tenancy import check_tenant
from distasks.store import Store

# How long the old token of a rotated key stays valid by default.
DEFAULT_ROTATION_OVERLAP = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Minted:
    key: ApiKey
    #: shown once, kept nowhere
    token: str
    #: what was lowered to the maker's Authority without being asked for:
    #: "rate_per_minute", "expires_at"
    capped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Authority:
    """What the principal minting a key may give it: its own rate limit and the end of
    its own authority, so that a tenant's keys:admin cannot lift its tenant's limits by
    minting an unlimited key, nor a short-lived JWT leave a key behind that outlives it."""

    #: the maker's requests per minute (0: it has no limit, so neither need its keys)
    rate_per_minute: int
    #: when the maker's authority ends (None: never)
    expires_at: datetime | None

    @classmethod
    def of(cls, maker: Principal, *, default_per_minute: int) -> Authority:
        """`maker`'s, where keys without a rate of their own get `default_per_minute`."""
        rate = maker.rate_per_minute if maker.rate_per_minute is not None else default_per_minute
        return cls(rate, maker.expires_at)

    def grant(self, *, rate_per_minute: int | None, expires_at: datetime | None,
              default_per_minute: int, asked: bool) -> tuple[int | None, datetime | None,
                                                             tuple[str, ...]]:
        """(rate, expiry, capped) of a key within this authority. A rate or expiry the
        request asked for (`asked`, and not None) beyond it is refused, 403 naming the
        field, as a scope the maker lacks; one it did not ask for (the configured rate, no
        expiry, what a rotated key had) is lowered to the maker's and named in capped."""
        capped: list[str] = []
        if self.rate_per_minute:
            rate = rate_per_minute if rate_per_minute is not None else default_per_minute
            if rate == 0 or rate > self.rate_per_minute:
                if asked and rate_per_minute is not None:
                    raise Refused(403, "forbidden", f"a key cannot get more requests per "
                                  f"minute than its maker has ({self.rate_per_minute}); 0 "
                                  "(no limit) only from a maker without one",
                                  field="rate_per_minute")
                rate_per_minute = self.rate_per_minute
                capped.append("rate_per_minute")
        if self.expires_at is not None and (expires_at is None or expires_at > self.expires_at):
            if asked and expires_at is not None:
                raise Refused(403, "forbidden", f"a key cannot outlive its maker's authority, "
                              f"which ends at {self.expires_at.isoformat()}",
                              field="expires_in_seconds")
            expires_at = self.expires_at
            capped.append("expires_at")
        return rate_per_minute, expires_at, tuple(capped)


async def create(store: Store, *, name: str, scopes: tuple[str, ...], tenant: str = "default",
                 expires_at: datetime | None = None, rate_per_minute: int | None = None,
                 actor: Actor, now: datetime, authority: Authority | None = None,
                 default_per_minute: int = 0) -> Minted:
    """A new key and its token (kept nowhere: show it once), within `authority` if one
    is given (Authority.grant, the rate and expiry as asked; `default_per_minute` is
    limits.per_minute)."""
    if not name.strip():
        raise ValueError("a key needs a name")
    check_tenant(tenant)
    capped: tuple[str, ...] = ()
    if authority is not None:
        rate_per_minute, expires_at, capped = authority.grant(
            rate_per_minute=rate_per_minute, expires_at=expires_at,
            default_per_minute=default_per_minute, asked=True)
    token = principals.new_token()
    key = await store.create_key(
        name=name.strip(), tenant=tenant, scopes=principals.check_scopes(scopes),
        token_hash=principals.token_hash(token), token_prefix=token[:principals.SHOWN_PREFIX_CHARS],
        expires_at=expires_at, actor=actor, now=now, rate_per_minute=rate_per_minute)
    return Minted(key, token, capped)


async def rotate(store: Store, key_id: uuid.UUID, *, overlap: timedelta = DEFAULT_ROTATION_OVERLAP,
                 actor: Actor, now: datetime, authority: Authority | None = None,
                 default_per_minute: int = 0) -> Minted | None:
    """A new key like `key_id` (name, tenant, scopes, rate, expiry; the rate and expiry
    lowered to `authority` if one is given), and the old one set to expire after
    `overlap`, so that both work while clients move over; None if there is no such key
    or it is revoked."""
    old = await store.key_by_id(key_id)
    if old is None or old.revoked_at is not None:
        return None
    rate, expires_at = old.rate_per_minute, old.expires_at
    capped: tuple[str, ...] = ()
    if authority is not None:
        rate, expires_at, capped = authority.grant(
            rate_per_minute=rate, expires_at=expires_at,
            default_per_minute=default_per_minute, asked=False)
    new = await create(store, name=old.name, scopes=old.scopes, tenant=old.tenant,
                       expires_at=expires_at, rate_per_minute=rate, actor=actor, now=now)
    await store.expire_key(key_id, at=now + overlap, actor=actor, now=now)
    return Minted(new.key, new.token, capped)

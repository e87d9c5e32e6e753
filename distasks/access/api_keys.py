"""API keys as operations: create (the token is shown once), rotate (a new token, the
old one valid for an overlap), revoke, list. Shared by `distasks keys …` (which talks to
PostgreSQL directly, so that the first key exists before the daemon first runs) and the
/api/v1/keys routes."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from distasks.access import principals
from distasks.access.principals import ApiKey
from distasks.domain.model import Actor
from distasks.domain.tenancy import check_tenant
from distasks.store import Store

# How long the old token of a rotated key stays valid by default.
DEFAULT_ROTATION_OVERLAP = timedelta(hours=24)


async def create(store: Store, *, name: str, scopes: tuple[str, ...], tenant: str = "default",
                 expires_at: datetime | None = None, rate_per_minute: int | None = None,
                 actor: Actor, now: datetime) -> tuple[ApiKey, str]:
    """A new key and its token (kept nowhere: show it once)."""
    if not name.strip():
        raise ValueError("a key needs a name")
    check_tenant(tenant)
    token = principals.new_token()
    key = await store.create_key(
        name=name.strip(), tenant=tenant, scopes=principals.check_scopes(scopes),
        token_hash=principals.token_hash(token), token_prefix=token[:principals.SHOWN_PREFIX_CHARS],
        expires_at=expires_at, actor=actor, now=now, rate_per_minute=rate_per_minute)
    return key, token


async def rotate(store: Store, key_id: uuid.UUID, *, overlap: timedelta = DEFAULT_ROTATION_OVERLAP,
                 actor: Actor, now: datetime) -> tuple[ApiKey, str] | None:
    """A new key like `key_id` (name, tenant, scopes, expiry), and the old one set to
    expire after `overlap`, so that both work while clients move over; None if there is
    no such key or it is revoked."""
    old = await store.key_by_id(key_id)
    if old is None or old.revoked_at is not None:
        return None
    new = await create(store, name=old.name, scopes=old.scopes, tenant=old.tenant,
                       expires_at=old.expires_at, rate_per_minute=old.rate_per_minute,
                       actor=actor, now=now)
    await store.expire_key(key_id, at=now + overlap, actor=actor, now=now)
    return new

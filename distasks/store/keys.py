"""API keys: created, listed, rotated and revoked; found by the hash of their token."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from distasks.access.principals import ApiKey
from distasks.domain.model import Actor
from distasks.store.base import StoreBase, query, record_audit

KEY_COLUMNS = ("id, name, tenant, scopes, token_prefix, created_at, created_by, expires_at,"
               " revoked_at, last_used_at, rate_per_minute")

def _key(r: dict[str, Any]) -> ApiKey:
    return ApiKey(id=r["id"], name=r["name"], tenant=r["tenant"], scopes=tuple(r["scopes"]),
                  token_prefix=r["token_prefix"], created_at=r["created_at"],
                  created_by=r["created_by"], expires_at=r["expires_at"],
                  revoked_at=r["revoked_at"], last_used_at=r["last_used_at"],
                  rate_per_minute=r["rate_per_minute"])


class KeyQueries(StoreBase):
    @query
    async def create_key(self, *, name: str, tenant: str, scopes: tuple[str, ...],
                         token_hash: bytes, token_prefix: str, expires_at: datetime | None,
                         actor: Actor, now: datetime,
                         rate_per_minute: int | None = None) -> ApiKey:
        key_id = uuid.uuid4()
        async with self._pool.transaction() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"INSERT INTO api_keys (id, name, tenant, scopes, token_hash, token_prefix,"
                f" created_at, created_by, expires_at, rate_per_minute)"
                f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {KEY_COLUMNS}",
                (key_id, name, tenant, list(scopes), token_hash, token_prefix, now, actor.id,
                 expires_at, rate_per_minute))
            row = await cur.fetchone()
            await record_audit(conn, at=now, actor=actor, action="key_create", detail={
                "key_id": str(key_id), "name": name, "tenant": tenant, "scopes": list(scopes),
                "rate_per_minute": rate_per_minute,
                "expires_at": expires_at.isoformat() if expires_at else None})
        assert row is not None
        return _key(row)

    @query
    async def list_keys(self) -> list[ApiKey]:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id")
            return [_key(r) for r in await cur.fetchall()]

    @query
    async def key_by_id(self, key_id: uuid.UUID) -> ApiKey | None:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = %s", (key_id,))
            row = await cur.fetchone()
        return _key(row) if row else None

    @query
    async def use_key(self, token_hash: bytes, *, now: datetime) -> ApiKey | None:
        """The key with this token hash, its last use set to `now` (the auth cache asks
        once per token every few seconds, so this is also how last use is kept)."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"UPDATE api_keys SET last_used_at = %s WHERE token_hash = %s"
                              f" RETURNING {KEY_COLUMNS}", (now, token_hash))
            row = await cur.fetchone()
        return _key(row) if row else None

    @query
    async def revoke_key(self, key_id: uuid.UUID, *, actor: Actor, now: datetime) -> ApiKey | None:
        """Revoke at `now` (a key already revoked keeps its first revocation time)."""
        async with self._pool.transaction() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, %s) WHERE id = %s"
                f" RETURNING {KEY_COLUMNS}", (now, key_id))
            row = await cur.fetchone()
            if row is not None:
                await record_audit(conn, at=now, actor=actor, action="key_revoke",
                                   detail={"key_id": str(key_id)})
        return _key(row) if row else None

    @query
    async def expire_key(self, key_id: uuid.UUID, *, at: datetime, actor: Actor,
                         now: datetime) -> None:
        """Make a key expire at `at` unless it expires sooner (rotation's overlap)."""
        async with self._pool.transaction() as conn:
            await conn.execute(
                "UPDATE api_keys SET expires_at = least(coalesce(expires_at, %(at)s), %(at)s)"
                " WHERE id = %(id)s", {"at": at, "id": key_id})
            await record_audit(conn, at=now, actor=actor, action="key_rotate", detail={
                "key_id": str(key_id), "old_key_expires_at": at.isoformat()})

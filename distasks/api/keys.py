"""Key resources: create, list, rotate and revoke API keys (scope keys:admin); the work is
distasks.access.api_keys, shared with `distasks keys …`."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from quart import Blueprint, Response, g, jsonify

from distasks.access import api_keys
from distasks.access.principals import ApiKey
from distasks.api import schemas
from distasks.api.openapi import operation
from distasks.api.parse import parse_body, read_body
from distasks.api.render import iso
from distasks.api.services import actor, services, tenant
from distasks.domain import times
from distasks.domain.errors import NotFound, Refused
from distasks.domain.tenancy import DEFAULT_TENANT

bp = Blueprint("keys", __name__)


@operation(bp, "POST", "/api/v1/keys", scope="keys:admin", tag="keys",
           summary="Create an API key; its token is in this answer only",
           body=schemas.CreateKey, responses={201: schemas.NewKey})
async def create_key() -> tuple[Response, int]:
    req = parse_body(schemas.CreateKey, await read_body())
    s = services()
    target = req.tenant or tenant()
    if not _manages(target):
        raise Refused(403, "forbidden", f"a key of tenant {tenant()!r} cannot make keys "
                      f"for tenant {target!r}")
    _no_stronger(req.scopes)
    now = times.utc(s.clock())
    expires = now + timedelta(seconds=req.expires_in_seconds) if req.expires_in_seconds else None
    minted = await api_keys.create(s.store, name=req.name, scopes=tuple(req.scopes),
                               tenant=target, expires_at=expires,
                               rate_per_minute=req.rate_per_minute, actor=actor(), now=now,
                               **_within_maker())
    return jsonify(_minted_json(minted)), 201


@operation(bp, "GET", "/api/v1/keys", scope="keys:admin", tag="keys",
           summary="Every key, oldest first (never a token)", responses={200: schemas.KeyList})
async def list_keys() -> Response:
    return jsonify({"keys": [key_json(k) for k in await services().store.list_keys()
                             if _manages(k.tenant)]})


@operation(bp, "POST", "/api/v1/keys/<uuid:key_id>/rotate", scope="keys:admin", tag="keys",
           summary="A new token for a key; the old one stays valid for overlap_seconds",
           body=schemas.RotateKey, body_required=False, responses={201: schemas.NewKey},
           errors={404: "No such active key"})
async def rotate_key(key_id: uuid.UUID) -> tuple[Response, int]:
    req = parse_body(schemas.RotateKey, await read_body() or b"{}")
    s = services()
    _no_stronger((await _own_key(key_id)).scopes)
    rotated = await api_keys.rotate(s.store, key_id, overlap=timedelta(seconds=req.overlap_seconds),
                                actor=actor(), now=times.utc(s.clock()), **_within_maker())
    if rotated is None:
        raise NotFound(f"no active key with id {key_id}")
    return jsonify(_minted_json(rotated)), 201


@operation(bp, "POST", "/api/v1/keys/<uuid:key_id>/revoke", scope="keys:admin", tag="keys",
           summary="Revoke a key: refused within seconds", responses={200: schemas.KeyOut},
           errors={404: "No such key"})
async def revoke_key(key_id: uuid.UUID) -> Response:
    s = services()
    await _own_key(key_id)
    key = await s.store.revoke_key(key_id, actor=actor(), now=times.utc(s.clock()))
    if key is None:
        raise NotFound(f"no key with id {key_id}")
    return jsonify(key_json(key))


def _manages(key_tenant: str) -> bool:
    """Whether this request's principal manages keys of `key_tenant`: the default
    tenant's keys:admin (the operator's) manages every tenant's keys, another tenant's
    only its own (architecture §8)."""
    return tenant() in (DEFAULT_TENANT, key_tenant)


async def _own_key(key_id: uuid.UUID) -> ApiKey:
    key = await services().store.key_by_id(key_id)
    if key is None or not _manages(key.tenant):
        raise NotFound(f"no key with id {key_id}")
    return key


def _within_maker() -> dict[str, Any]:
    """keys.create's and keys.rotate's bounds for a key this request's principal mints:
    its own rate limit and expiry (keys.Authority)."""
    default = services().config.limits.per_minute
    return {"authority": api_keys.Authority.of(g.principal, default_per_minute=default),
            "default_per_minute": default}


def _minted_json(m: api_keys.Minted) -> dict[str, object]:
    return {"key": key_json(m.key), "token": m.token, "capped": list(m.capped)}


def _no_stronger(scopes: Iterable[str]) -> None:
    """Refuse to hand out a token with a scope this request's principal lacks: no key
    mints (or rotates into its own hands) a stronger one."""
    beyond = sorted(set(scopes) - set(g.principal.scopes))
    if beyond:
        raise Refused(403, "forbidden", f"a key cannot give scopes its maker lacks: "
                      f"{', '.join(beyond)}")


def key_json(k: ApiKey) -> dict[str, object]:
    return {"id": str(k.id), "name": k.name, "tenant": k.tenant, "scopes": list(k.scopes),
            "rate_per_minute": k.rate_per_minute,
            "token_prefix": k.token_prefix, "created_at": iso(k.created_at),
            "created_by": k.created_by, "expires_at": iso(k.expires_at),
            "revoked_at": iso(k.revoked_at), "last_used_at": iso(k.last_used_at)}

"""`distasks keys …`: API keys managed in PostgreSQL directly (distasks.access.api_keys does the work)."""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
import time
from datetime import datetime, timedelta

import trio

from distasks.access import api_keys
from distasks.access.principals import SCOPES, ApiKey
from distasks.cli import ALL_SCOPES
from distasks.config import Config
from distasks.domain import times
from distasks.domain.model import Actor
from distasks.store import Store


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        return trio.run(_run, args, config)
    except ValueError as e:  # a name, tenant or scope refused by distasks.access.api_keys
        print(f"distasks: {e}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace, config: Config) -> int:
    actor = Actor(f"cli:{getpass.getuser()}@{socket.gethostname()}")
    now = times.utc(time.time())
    async with Store.open(config.database.url, min_size=1, max_size=1) as store:
        await store.migrate()
        if args.action == "create":
            scopes = every_scope(args.scopes)
            expires = now + timedelta(seconds=args.expires_in) if args.expires_in else None
            minted = await api_keys.create(store, name=args.name, scopes=scopes,
                                       tenant=args.tenant, expires_at=expires,
                                       rate_per_minute=args.rate_per_minute, actor=actor,
                                       now=now)
            _show_token(minted.key, minted.token)
        elif args.action == "rotate":
            overlap = (timedelta(seconds=args.overlap) if args.overlap
                       else api_keys.DEFAULT_ROTATION_OVERLAP)
            rotated = await api_keys.rotate(store, args.key_id, overlap=overlap, actor=actor, now=now)
            if rotated is None:
                print(f"distasks: no active key {args.key_id}", file=sys.stderr)
                return 1
            _show_token(rotated.key, rotated.token)
            print(f"the old token stops working at {(now + overlap).isoformat()}",
                  file=sys.stderr)
        elif args.action == "revoke":
            if await store.revoke_key(args.key_id, actor=actor, now=now) is None:
                print(f"distasks: no key {args.key_id}", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}")
        else:
            for key in await store.list_keys():
                print(_line(key, now))
    return 0


def every_scope(given: list[str]) -> tuple[str, ...]:
    """The scopes `--scope` named, with `all` written out as each scope there is."""
    return tuple(SCOPES) if ALL_SCOPES in given else tuple(given)


def _show_token(key: ApiKey, token: str) -> None:
    print(token)
    print(f"key {key.id} ({key.name}, tenant {key.tenant}, scopes {' '.join(key.scopes)}): "
          "the token above is shown only now; keep it secret", file=sys.stderr)


def _line(key: ApiKey, now: datetime) -> str:
    state = ("revoked" if key.revoked_at else "active" if key.valid_at(now) else "expired")
    expires = key.expires_at.isoformat() if key.expires_at else "-"
    used = key.last_used_at.isoformat() if key.last_used_at else "-"
    return (f"{key.id}  {state:8} {key.token_prefix}…  {key.name}  tenant={key.tenant}  "
            f"scopes={','.join(key.scopes)}  expires={expires}  last_used={used}")

"""`distasks keys create|list|revoke|rotate`: API keys managed in PostgreSQL directly, so
they work before the daemon first runs (distasks.access.api_keys does the work)."""

from __future__ import annotations

import argparse
import functools
import getpass
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import trio

from distasks.access.principals import SCOPES, ApiKey
from distasks.cli import options
from distasks.config import Config, load
from distasks.domain import times
from distasks.domain.model import Actor

if TYPE_CHECKING:
    from distasks.store import Store

# `keys create --scope all`: every scope there is when the key is made. The key lists them
# one by one, so a scope a later release adds is not granted by a key made before it.
ALL_SCOPES = "all"

#: one keys command: (store, its arguments, who acts, now) → the exit code
Action = Callable[["Store", argparse.Namespace, Actor, datetime], Awaitable[int]]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 config_options: argparse.ArgumentParser) -> None:
    actions = sub.add_parser(
        "keys", help="API keys, in PostgreSQL directly (works before the daemon first runs)"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")

    def command(name: str, help: str, action: Action) -> argparse.ArgumentParser:
        p = actions.add_parser(name, parents=[config_options], help=help)
        p.set_defaults(run=functools.partial(run, action))
        return p

    p = command("create", "a new key; prints its token once", create)
    p.add_argument("--name", required=True, help="what the key is for, e.g. billing-service")
    p.add_argument("--scope", dest="scopes", action="append", required=True,
                   choices=(*SCOPES, ALL_SCOPES),
                   help="a scope it grants (repeat); all: every scope there is now")
    p.add_argument("--tenant", default="default")
    p.add_argument("--expires-in", metavar="DURATION", type=options.duration,
                   help="e.g. 90d, 12h, 30m; default: never")
    p.add_argument("--rate-per-minute", metavar="N", type=int,
                   help="requests per minute instead of limits.per_minute (0: no limit)")
    command("list", "every key (never a token)", list_keys)
    p = command("revoke", "stop a key at once (within a few seconds)", revoke)
    p.add_argument("key_id", type=uuid.UUID, metavar="KEY_ID")
    p = command("rotate", "a new token for a key; the old one works for --overlap", rotate)
    p.add_argument("key_id", type=uuid.UUID, metavar="KEY_ID")
    p.add_argument("--overlap", metavar="DURATION", type=options.duration,
                   help="how long the old token stays valid (default 24h)")


def run(action: Action, args: argparse.Namespace) -> int:
    """Run one keys command against the configured database; the exit code: 0, 1 if the
    key is not there, 2 if a name, tenant or scope is refused."""
    config = load(options.config_path(args))
    try:
        return trio.run(_run, action, args, config)
    except ValueError as e:  # a name, tenant or scope refused by distasks.access.api_keys
        print(f"distasks: {e}", file=sys.stderr)
        return 2


async def _run(action: Action, args: argparse.Namespace, config: Config) -> int:
    # Imported here, not at the top: every command's parser is built from this module, and
    # `distasks task …` should not load psycopg.
    from distasks.store import Store

    actor = Actor(f"cli:{getpass.getuser()}@{socket.gethostname()}")
    now = times.utc(time.time())
    async with Store.open(config.database.url, min_size=1, max_size=1,
                          pooler=config.database.pooler) as store:
        await store.migrate()
        return await action(store, args, actor, now)


async def create(store: Store, args: argparse.Namespace, actor: Actor, now: datetime) -> int:
    from distasks.access import api_keys  # imports the store: see _run

    expires = now + timedelta(seconds=args.expires_in) if args.expires_in else None
    minted = await api_keys.create(store, name=args.name, scopes=every_scope(args.scopes),
                                   tenant=args.tenant, expires_at=expires,
                                   rate_per_minute=args.rate_per_minute, actor=actor, now=now)
    _show_token(minted.key, minted.token)
    return 0


async def list_keys(store: Store, args: argparse.Namespace, actor: Actor,
                    now: datetime) -> int:
    for key in await store.list_keys():
        print(_line(key, now))
    return 0


async def revoke(store: Store, args: argparse.Namespace, actor: Actor, now: datetime) -> int:
    if await store.revoke_key(args.key_id, actor=actor, now=now) is None:
        print(f"distasks: no key {args.key_id}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0


async def rotate(store: Store, args: argparse.Namespace, actor: Actor, now: datetime) -> int:
    from distasks.access import api_keys  # imports the store: see _run

    overlap = (timedelta(seconds=args.overlap) if args.overlap
               else api_keys.DEFAULT_ROTATION_OVERLAP)
    rotated = await api_keys.rotate(store, args.key_id, overlap=overlap, actor=actor, now=now)
    if rotated is None:
        print(f"distasks: no active key {args.key_id}", file=sys.stderr)
        return 1
    _show_token(rotated.key, rotated.token)
    print(f"the old token stops working at {(now + overlap).isoformat()}", file=sys.stderr)
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

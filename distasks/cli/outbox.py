"""`distasks outbox install`: create (or upgrade) the outbox schema in an application's
database (architecture §10, docs/outbox.md); distasks.store.outbox does the work."""

from __future__ import annotations

import argparse
import sys

import trio

from distasks.cli import options
from distasks.config import load, redact
from distasks.domain.errors import ConfigError, StoreRejected


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 config_options: argparse.ArgumentParser) -> None:
    actions = sub.add_parser(
        "outbox", help="transactional enqueue from an application's own database"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser(
        "install", parents=[config_options],
        help="create or upgrade the outbox schema (table, distasks.enqueue(), NOTIFY "
             "trigger) in an application's database; safe to run again")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--database-url", help="the application's database (libpq URL or DSN)")
    where.add_argument("--source", help="the [[outbox]] source of the config with this name")
    where.add_argument("--print-sql", action="store_true",
                       help="print the schema's SQL instead, for a DBA to apply")
    p.set_defaults(run=install)


def install(args: argparse.Namespace) -> int:
    """Install the schema where asked; 1 with one line when the database refuses it."""
    from distasks.store import outbox  # imports psycopg: only when this command runs

    if args.print_sql:
        sys.stdout.write(outbox.schema_sql())
        return 0
    url = args.database_url
    if args.source is not None:
        config = load(options.config_path(args))
        source = next((s for s in config.outbox if s.name == args.source), None)
        if source is None:
            raise ConfigError("outbox", f"no [[outbox]] source is named {args.source!r}")
        url = source.database_url
    try:
        trio.run(outbox.install, url)
    except StoreRejected as e:
        print(f"distasks: the outbox schema was refused: {' '.join(str(e).split())}",
              file=sys.stderr)
        return 1
    except outbox.SchemaRefused as e:
        print(f"distasks: the outbox schema was refused: {e}", file=sys.stderr)
        return 1
    print(f"outbox schema installed in {redact(url)}")
    return 0

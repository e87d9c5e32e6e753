"""The `distasks` command line: parsing only; the work is elsewhere."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

from distasks import logs
from distasks.config import load
from distasks.errors import ConfigError, StoreUnavailable

# Where the config is looked for when neither --config nor DISTASKS_CONFIG says.
SYSTEM_CONFIG = Path("/etc/distasks/distasks.toml")


def main(argv: list[str] | None = None) -> int:
    # --config is accepted before or after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="TOML config file (default: $DISTASKS_CONFIG, then "
                             f"{SYSTEM_CONFIG} if it exists, else built-in defaults)")
    parser = argparse.ArgumentParser(prog="distasks", description="distasks task platform",
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", parents=[common], help="run the daemon: API, workers, mover")
    sub.add_parser("migrate", parents=[common], help="apply the database schema and exit")
    sub.add_parser("check-config", parents=[common],
                   help="validate the config, print the settings, exit")
    args = parser.parse_args(argv)

    try:
        config = load(_config_path(getattr(args, "config", None)))
        if args.command == "serve":
            from distasks.supervisor import Daemon  # imports the bridge first (see __init__)

            daemon = Daemon(config)
            logs.setup(config.log.level, config.log.format)
            trio.run(daemon.run)
        elif args.command == "migrate":
            from distasks.supervisor import migrate_only

            logs.setup(config.log.level, config.log.format)
            applied = trio.run(migrate_only, config)
            print(f"applied {len(applied)} migration(s)" if applied else "schema is up to date")
        else:
            from distasks.supervisor import load_registry

            registry = load_registry(config)
            print(config.summary())
            print("handlers:", ", ".join(registry))
    except ConfigError as e:
        print(f"distasks: {e}", file=sys.stderr)
        return 2
    except StoreUnavailable as e:
        print(f"distasks: PostgreSQL is unavailable: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _config_path(flag: str | None) -> Path | None:
    if flag:
        return Path(flag)
    if env := os.environ.get("DISTASKS_CONFIG"):
        return Path(env)
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None

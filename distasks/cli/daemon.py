"""`distasks serve|migrate|check-config`: run the daemon, apply the schema, check the
config. distasks.daemon.supervisor does the work; it is imported only when one of these
runs, so that the other commands do not load the daemon."""

from __future__ import annotations

import argparse

import trio

from distasks import logs
from distasks.cli import options
from distasks.config import load, redact


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 config_options: argparse.ArgumentParser) -> None:
    sub.add_parser("serve", parents=[config_options],
                   help="run the daemon: API, workers, mover").set_defaults(run=serve)
    sub.add_parser("migrate", parents=[config_options],
                   help="apply the database schema and exit").set_defaults(run=migrate)
    sub.add_parser("check-config", parents=[config_options],
                   help="validate the config, print the settings, exit"
                   ).set_defaults(run=check_config)


def serve(args: argparse.Namespace) -> int:
    """Run the daemon until it is stopped (SIGTERM, SIGINT)."""
    config_path = options.config_path(args)
    config = load(config_path)
    # The supervisor imports the bridge first (see distasks/__init__.py).
    from distasks.daemon.supervisor import Crashed, Daemon

    daemon = Daemon(config, config_path=config_path)
    logs.setup(config.log.level, config.log.format)
    try:
        trio.run(daemon.run)
    except Crashed:
        return 1  # logged by the supervisor, as one record
    return 0


def migrate(args: argparse.Namespace) -> int:
    """Apply the migrations not applied yet, say how many."""
    config = load(options.config_path(args))
    from distasks.daemon.supervisor import migrate_only

    logs.setup(config.log.level, config.log.format)
    applied = trio.run(migrate_only, config)
    print(f"applied {len(applied)} migration(s)" if applied else "schema is up to date")
    return 0


def check_config(args: argparse.Namespace) -> int:
    """Load the config, the handlers and the JWT keys as `serve` would, print the settings."""
    config = load(options.config_path(args))
    from distasks.access.jwt_tokens import check_jwks_file, from_config
    from distasks.daemon.supervisor import load_registry

    registry = load_registry(config)
    check_jwks_file(config.auth.jwt)
    from_config(config.auth.jwt)  # reads the HS256 secret: a bad file fails here
    print(config.summary())
    print("handlers:", ", ".join(registry))
    for source in config.outbox:
        print(f"outbox {source.name}: {redact(source.database_url)}, tenant {source.tenant}")
    return 0

"""The `distasks` command line: `main` builds the parser, runs the chosen command's handler
and maps the few errors it may raise to exit codes.

Each command group is one module that declares its commands beside the handlers they run:
`daemon` (serve, migrate, check-config), `keys`, `outbox` (install), and the remote commands `tasks`, `queues`,
`dlq`, `workers`, `schedules`, `workflows` (what they share is in `remote`); `options` holds the options
and argument types several groups use.
"""

from __future__ import annotations

import argparse
import sys

from distasks.cli import (
    daemon,
    dlq,
    keys,
    options,
    outbox,
    queues,
    schedules,
    tasks,
    workers,
    workflows,
)
from distasks.domain.errors import CannotListen, ConfigError, StoreUnavailable

# The commands that talk to a daemon over its HTTP API, in the order help lists them.
REMOTE = (tasks, queues, dlq, workers, schedules, workflows)


def parser() -> argparse.ArgumentParser:
    """Every command; the parser of each sets `run`, its handler: args → exit code."""
    config_options = options.config_options()
    # --url, --json and --api-key are accepted before the subcommand too.
    remote_options = options.remote_options()
    top = argparse.ArgumentParser(prog="distasks", description="distasks task platform",
                                  parents=[config_options, remote_options])
    sub = top.add_subparsers(dest="command", required=True)
    daemon.add_commands(sub, config_options)
    for module in REMOTE:
        module.add_commands(sub, remote_options)
    keys.add_commands(sub, config_options)
    outbox.add_commands(sub, config_options)
    return top


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    remote_commands = [module.COMMAND for module in REMOTE]
    if args.command not in remote_commands and (given := options.remote_given(args)):
        top.error(f"{given[0]} applies to the {', '.join(remote_commands)} commands")
    try:
        code: int = args.run(args)
        return code
    except ConfigError as e:
        print(f"distasks: {e}", file=sys.stderr)
        return 2
    except StoreUnavailable as e:
        # psycopg's message spans lines: one line, as every other refusal here.
        print(f"distasks: PostgreSQL is unavailable: {' '.join(str(e).split())}",
              file=sys.stderr)
        return 1
    except CannotListen as e:
        # 1, not 2: the config may be right and the port only busy for now (the previous
        # daemon still stopping), so systemd's restart is worth it.
        print(f"distasks: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

"""The `distasks` command line: parsing only; the work is elsewhere."""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path

import trio

from distasks import logs
from distasks.config import load
from distasks.domain.errors import CannotListen, ConfigError, StoreUnavailable

# Where the config is looked for when neither --config nor DISTASKS_CONFIG says.
SYSTEM_CONFIG = Path("/etc/distasks/distasks.toml")
# `keys create --scope all`: every scope there is when the key is made. The key lists them
# one by one, so a scope a later release adds is not granted by a key made before it.
ALL_SCOPES = "all"


def main(argv: list[str] | None = None) -> int:
    # --config is accepted before or after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="TOML config file (default: $DISTASKS_CONFIG, then "
                             f"{SYSTEM_CONFIG} if it exists, else built-in defaults)")
    # --url, --json and --api-key too, for the commands that talk to a daemon.
    remote = _remote_options()
    parser = argparse.ArgumentParser(prog="distasks", description="distasks task platform",
                                     parents=[common, remote])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", parents=[common], help="run the daemon: API, workers, mover")
    sub.add_parser("migrate", parents=[common], help="apply the database schema and exit")
    sub.add_parser("check-config", parents=[common],
                   help="validate the config, print the settings, exit")
    _add_remote_commands(sub, remote)
    _add_key_commands(sub, common)
    args = parser.parse_args(argv)
    if args.command in REMOTE_COMMANDS:
        from distasks.cli.remote import run

        return run(args)
    if given := [f"--{k.replace('_', '-')}" for k in ("url", "json", "api_key")
                 if k in vars(args)]:
        parser.error(f"{given[0]} applies to the {', '.join(REMOTE_COMMANDS)} commands")

    try:
        config_path = _config_path(getattr(args, "config", None))
        config = load(config_path)
        if args.command == "serve":
            from distasks.daemon.supervisor import (  # the bridge first (see __init__)
                Crashed,
                Daemon,
            )

            daemon = Daemon(config, config_path=config_path)
            logs.setup(config.log.level, config.log.format)
            try:
                trio.run(daemon.run)
            except Crashed:
                return 1  # logged by the supervisor, as one record
        elif args.command == "keys":
            from distasks.cli.keys import run as run_keys

            return run_keys(args, config)
        elif args.command == "migrate":
            from distasks.daemon.supervisor import migrate_only

            logs.setup(config.log.level, config.log.format)
            applied = trio.run(migrate_only, config)
            print(f"applied {len(applied)} migration(s)" if applied else "schema is up to date")
        else:
            from distasks.access.jwt_tokens import check_jwks_file, from_config
            from distasks.daemon.supervisor import load_registry

            registry = load_registry(config)
            check_jwks_file(config.auth.jwt)
            from_config(config.auth.jwt)  # reads the HS256 secret: a bad file fails here
            print(config.summary())
            print("handlers:", ", ".join(registry))
    except ConfigError as e:
        print(f"distasks: {e}", file=sys.stderr)
        return 2
    except StoreUnavailable as e:
        print(f"distasks: PostgreSQL is unavailable: {e}", file=sys.stderr)
        return 1
    except CannotListen as e:
        # 1, not 2: the config may be right and the port only busy for now (the previous
        # daemon still stopping), so systemd's restart is worth it.
        print(f"distasks: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _add_key_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                      common: argparse.ArgumentParser) -> None:
    from distasks.access.principals import SCOPES

    actions = sub.add_parser(
        "keys", help="API keys, in PostgreSQL directly (works before the daemon first runs)"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("create", parents=[common], help="a new key; prints its token once")
    p.add_argument("--name", required=True, help="what the key is for, e.g. billing-service")
    p.add_argument("--scope", dest="scopes", action="append", required=True,
                   choices=(*SCOPES, ALL_SCOPES),
                   help="a scope it grants (repeat); all: every scope there is now")
    p.add_argument("--tenant", default="default")
    p.add_argument("--expires-in", metavar="DURATION", type=_duration,
                   help="e.g. 90d, 12h, 30m; default: never")
    p.add_argument("--rate-per-minute", metavar="N", type=int,
                   help="requests per minute instead of limits.per_minute (0: no limit)")
    actions.add_parser("list", parents=[common], help="every key (never a token)")
    for name, help in (("revoke", "stop a key at once (within a few seconds)"),
                       ("rotate", "a new token for a key; the old one works for --overlap")):
        p = actions.add_parser(name, parents=[common], help=help)
        p.add_argument("key_id", type=uuid.UUID, metavar="KEY_ID")
        if name == "rotate":
            p.add_argument("--overlap", metavar="DURATION", type=_duration,
                           help="how long the old token stays valid (default 24h)")


def _duration(text: str) -> float:
    """Seconds of "90d", "12h", "30m", "45s"."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    try:
        value = float(text[:-1]) * units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90d, 12h, 30m") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return value


def _config_path(flag: str | None) -> Path | None:
    if flag:
        return Path(flag)
    if env := os.environ.get("DISTASKS_CONFIG"):
        return Path(env)
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None


# Commands that talk to a daemon over its HTTP API (distasks.cli.remote runs them).
REMOTE_COMMANDS = ("task", "queue", "dlq", "worker", "schedules")
TASK_STATUSES = ("queued", "completed", "failed", "cancelled")


def _remote_options() -> argparse.ArgumentParser:
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--url", default=argparse.SUPPRESS,
                        help="the API's base URL (default: $DISTASKS_URL, then "
                             "http://127.0.0.1:8080)")
    remote.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON instead of a table")
    remote.add_argument("--api-key", default=argparse.SUPPRESS,
                        help="the API key to call with (default: $DISTASKS_API_KEY; none: "
                             "anonymous, where the daemon allows it)")
    return remote


def _add_remote_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                         remote: argparse.ArgumentParser) -> None:
    def group(name: str, help: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        return sub.add_parser(name, help=help).add_subparsers(
            dest="action", required=True, metavar="ACTION")

    def command(actions: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                help: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, parents=[remote], help=help, description=help)

    tasks = group("task", "create, inspect, list and cancel tasks")
    p = command(tasks, "create", "create a task")
    p.add_argument("name")
    p.add_argument("--handler", help="registered handler (default: the daemon's default)")
    p.add_argument("--payload", type=_json_value, metavar="JSON", help="any JSON value")
    p.add_argument("--queue", help="queue name (default: default)")
    p.add_argument("--priority", type=int)
    p.add_argument("--delay", type=float, metavar="S", help="a delayed task, due in S seconds")
    p.add_argument("--dedup-key", metavar="KEY",
                   help="idempotency key: an existing task with it is returned")
    p.add_argument("--max-retries", type=int, metavar="N")
    p.add_argument("--timeout", type=float, metavar="S", help="per-attempt time limit")
    p.add_argument("--secret", action="append", dest="secret_fields", metavar="KEY",
                   help="a top-level payload key shown as \"[secret]\" (repeatable)")
    p.add_argument("--wait", type=float, metavar="S",
                   help="then wait up to S seconds for a final state and show the task")
    p = command(tasks, "get", "show a task and its runs")
    p.add_argument("id", type=_task_id)
    p.add_argument("--wait", type=float, metavar="S",
                   help="wait up to S seconds for a final state first")
    p = command(tasks, "cancel", "cancel a task")
    p.add_argument("id", type=_task_id)
    p.add_argument("--reason")
    p = command(tasks, "list", "list tasks, newest first")
    p.add_argument("--status", choices=TASK_STATUSES)
    p.add_argument("--queue")
    p.add_argument("--name")
    p.add_argument("--handler")
    p.add_argument("--limit", type=int, default=50, metavar="N",
                   help="at most N tasks (1-500; the page size with --all)")
    p.add_argument("--cursor", help="continue after a previous page")
    p.add_argument("--all", action="store_true", help="every matching task, page by page")

    queues = group("queue", "list, pause, resume and delete queues")
    command(queues, "list", "every queue with its depths")
    for name, help in (("pause", "stop claiming from a queue"),
                       ("resume", "claim from a paused queue again"),
                       ("delete", "delete a queue with no unfinished or dead-lettered task")):
        command(queues, name, help).add_argument("queue")

    dlq = group("dlq", "list, replay and delete dead-lettered tasks")
    p = command(dlq, "list", "a queue's dead-lettered tasks, oldest failure first")
    p.add_argument("queue")
    p.add_argument("--limit", type=int, metavar="N", help="at most N (1-1000, default 50)")
    p.add_argument("--cursor", help="continue after a previous page")
    _dlq_filters(p)
    for name, help in (("replay", "replay DLQ entries as new attempts"),
                       ("delete", "remove DLQ entries (the tasks stay on record)")):
        p = command(dlq, name, help)
        p.add_argument("queue")
        p.add_argument("--count", type=int, metavar="N",
                       help="the oldest N matching entries (default 10, or all --ids)")
        p.add_argument("--ids", nargs="+", type=_task_id, metavar="ID",
                       help="these tasks only")
        if name == "replay":
            p.add_argument("--override-priority", type=int, metavar="N")
        p.add_argument("--dry-run", action="store_true",
                       help="show what would be touched, change nothing")
        _dlq_filters(p)

    workers = group("worker", "daemons and what they run")
    command(workers, "list", "daemons, alive and recently stopped")

    scheds = group("schedules", "cron schedules: create, list, show, change, pause, delete")
    command(scheds, "list", "your tenant's schedules")
    p = command(scheds, "get", "a schedule, its next fire times and its last fires")
    p.add_argument("name")
    p.add_argument("--upcoming", type=int, metavar="N", help="next N fire times (default 5)")
    p.add_argument("--fires", type=int, metavar="N", help="last N fires (default 20)")
    for name, help in (("create", "create a schedule"),
                       ("update", "change the options given (timing changes restart it from "
                                  "the next slot)")):
        p = command(scheds, name, help)
        p.add_argument("name")
        if name == "create":
            p.add_argument("cron", help="5 fields (minute hour day month weekday) or 6 "
                                        "(seconds first), quoted: '30 2 * * *'")
        else:
            p.add_argument("--cron", help="a new expression")
        p.add_argument("--timezone", metavar="TZ", help="IANA name (default UTC)")
        p.add_argument("--handler", help="the tasks' handler (default: the daemon's default)")
        p.add_argument("--queue", help="the tasks' queue (default: default)")
        p.add_argument("--payload", type=_json_value, metavar="JSON", help="the tasks' payload")
        p.add_argument("--priority", type=int)
        p.add_argument("--max-retries", type=int, metavar="N")
        p.add_argument("--timeout", type=float, metavar="S", help="per-attempt time limit")
        p.add_argument("--task-name", help="the tasks' name (default: the schedule's)")
        p.add_argument("--catch-up", choices=("skip", "latest", "all"),
                       help="after downtime: skip missed slots (default), fire the latest, "
                            "or all of them (at most --catch-up-max)")
        p.add_argument("--catch-up-max", type=int, metavar="N")
        p.add_argument("--jitter", type=float, metavar="S",
                       help="delay each task by a random 0..S seconds")
        p.add_argument("--start-at", metavar="TIME", help="RFC 3339: no slot before it")
        p.add_argument("--end-at", metavar="TIME", help="RFC 3339: no slot after it")
        p.add_argument("--skip-if-running", action=argparse.BooleanOptionalAction, default=None,
                       help="skip a slot while the previous slot's task is unfinished")
        if name == "create":
            p.add_argument("--paused", action="store_true", help="create it paused")
    for name, help in (("pause", "stop firing a schedule"),
                       ("resume", "fire a paused schedule again, from its next slot"),
                       ("delete", "delete a schedule (its tasks stay)")):
        command(scheds, name, help).add_argument("name")


def _dlq_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--handler", help="only tasks of this handler")
    p.add_argument("--error", help="only entries whose last error contains this text")


def _task_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a task id (a UUID): {text!r}") from None


def _json_value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None

"""`distasks queue list|pause|resume|limit|delete`: queues through the daemon's API."""

from __future__ import annotations

import argparse
from typing import Any

from distasks.cli import remote
from distasks.cli.remote import Output, table
from distasks.client import Client

COMMAND = "queue"
# A limit option not given: that limit stays as it is.
_UNCHANGED: Any = object()


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 remote_options: argparse.ArgumentParser) -> None:
    command = remote.group(sub, COMMAND, "list, pause, resume and delete queues",
                           remote_options)
    command("list", "every queue with its depths", queue_list)
    command("pause", "stop claiming from a queue", queue_pause).add_argument("queue")
    command("resume", "claim from a paused queue again", queue_resume).add_argument("queue")
    limit = command("limit", "set or lift a queue's global concurrency limit", queue_limit)
    limit.add_argument("queue")
    limit.add_argument("--max-running", metavar="N|none", type=_max_running,
                       default=_UNCHANGED,
                       help="most runs of the queue leased at once across every daemon")
    limit.add_argument("--max-running-per-key", metavar="N|none", type=_max_running,
                       default=_UNCHANGED, help="most runs of one concurrency key leased at "
                       "once across every daemon")
    limit.add_argument("--max-starts-per-second", metavar="R|none", type=_rate,
                       default=_UNCHANGED, help="most runs started per second across every "
                       "daemon")
    limit.add_argument("--burst", metavar="N", type=int, default=None,
                       help="with --max-starts-per-second: most started at once after a "
                       "quiet spell (default: one second's worth)")
    command("delete", "delete a queue with no unfinished or dead-lettered task",
            queue_delete).add_argument("queue")


def queue_list(c: Client, a: argparse.Namespace) -> Output:
    queues = c.queues()
    rows = [(q.name, "yes" if q.paused else "no", q.max_running, q.max_running_per_key, q.ready, q.delayed, q.leased,
             q.dlq,
             q.completed_last_minute, q.failed_last_minute,
             None if q.oldest_ready_age_seconds is None
             else f"{q.oldest_ready_age_seconds:.1f}s") for q in queues]
    return Output({"queues": [q.raw for q in queues]},
                  table(("QUEUE", "PAUSED", "MAX RUNNING", "PER KEY", "READY", "DELAYED", "LEASED", "DLQ", "DONE/MIN",
                         "FAILED/MIN", "OLDEST READY"), rows, empty="no queues"))


def queue_pause(c: Client, a: argparse.Namespace) -> Output:
    state = c.pause(a.queue)
    return Output(state.raw, f"queue {state.name} paused")


def queue_resume(c: Client, a: argparse.Namespace) -> Output:
    state = c.resume(a.queue)
    return Output(state.raw, f"queue {state.name} resumed")


def queue_limit(c: Client, a: argparse.Namespace) -> Output:
    if (a.max_running is _UNCHANGED and a.max_running_per_key is _UNCHANGED
            and a.max_starts_per_second is _UNCHANGED):
        raise SystemExit("queue limit: give --max-running, --max-running-per-key and/or "
                         "--max-starts-per-second")
    if a.max_running is not _UNCHANGED:
        limits = c.set_max_running(a.queue, a.max_running)
    if a.max_running_per_key is not _UNCHANGED:
        limits = c.set_max_running_per_key(a.queue, a.max_running_per_key)
    if a.max_starts_per_second is not _UNCHANGED:
        limits = c.set_start_rate(a.queue, a.max_starts_per_second, a.burst)
    shown = ", ".join(f"{name} {value}" for name, value in (
        ("max_running", limits.max_running),
        ("max_running_per_key", limits.max_running_per_key),
        ("max_starts_per_second", limits.max_starts_per_second),
        ("burst", limits.burst)) if value is not None)
    return Output(limits.raw, f"queue {limits.name}: {shown or 'no limit'}")


def _max_running(text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or none, not {text!r}") from None


def _rate(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or none, not {text!r}") from None


def queue_delete(c: Client, a: argparse.Namespace) -> Output:
    name = c.delete_queue(a.queue)
    return Output({"name": name, "deleted": True}, f"queue {name} deleted")

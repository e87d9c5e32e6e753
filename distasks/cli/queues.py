"""`distasks queue list|pause|resume|limit|delete`: queues through the daemon's API."""

from __future__ import annotations

import argparse

from distasks.cli import remote
from distasks.cli.remote import Output, table
from distasks.client import Client

COMMAND = "queue"


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 remote_options: argparse.ArgumentParser) -> None:
    command = remote.group(sub, COMMAND, "list, pause, resume and delete queues",
                           remote_options)
    command("list", "every queue with its depths", queue_list)
    command("pause", "stop claiming from a queue", queue_pause).add_argument("queue")
    command("resume", "claim from a paused queue again", queue_resume).add_argument("queue")
    limit = command("limit", "set or lift a queue's global concurrency limit", queue_limit)
    limit.add_argument("queue")
    limit.add_argument("--max-running", required=True, metavar="N|none", type=_max_running,
                       help="most runs of the queue leased at once across every daemon")
    command("delete", "delete a queue with no unfinished or dead-lettered task",
            queue_delete).add_argument("queue")


def queue_list(c: Client, a: argparse.Namespace) -> Output:
    queues = c.queues()
    rows = [(q.name, "yes" if q.paused else "no", q.max_running, q.ready, q.delayed, q.leased,
             q.dlq,
             q.completed_last_minute, q.failed_last_minute,
             None if q.oldest_ready_age_seconds is None
             else f"{q.oldest_ready_age_seconds:.1f}s") for q in queues]
    return Output({"queues": [q.raw for q in queues]},
                  table(("QUEUE", "PAUSED", "MAX RUNNING", "READY", "DELAYED", "LEASED", "DLQ", "DONE/MIN",
                         "FAILED/MIN", "OLDEST READY"), rows, empty="no queues"))


def queue_pause(c: Client, a: argparse.Namespace) -> Output:
    state = c.pause(a.queue)
    return Output(state.raw, f"queue {state.name} paused")


def queue_resume(c: Client, a: argparse.Namespace) -> Output:
    state = c.resume(a.queue)
    return Output(state.raw, f"queue {state.name} resumed")


def queue_limit(c: Client, a: argparse.Namespace) -> Output:
    limits = c.set_max_running(a.queue, a.max_running)
    shown = "no limit" if limits.max_running is None else f"max_running {limits.max_running}"
    return Output(limits.raw, f"queue {limits.name}: {shown}")


def _max_running(text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or none, not {text!r}") from None


def queue_delete(c: Client, a: argparse.Namespace) -> Output:
    name = c.delete_queue(a.queue)
    return Output({"name": name, "deleted": True}, f"queue {name} deleted")

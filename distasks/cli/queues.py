"""`distasks queue list|pause|resume|delete`: queues through the daemon's API."""

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
    command("delete", "delete a queue with no unfinished or dead-lettered task",
            queue_delete).add_argument("queue")


def queue_list(c: Client, a: argparse.Namespace) -> Output:
    queues = c.queues()
    rows = [(q.name, "yes" if q.paused else "no", q.ready, q.delayed, q.leased, q.dlq,
             q.completed_last_minute, q.failed_last_minute,
             None if q.oldest_ready_age_seconds is None
             else f"{q.oldest_ready_age_seconds:.1f}s") for q in queues]
    return Output({"queues": [q.raw for q in queues]},
                  table(("QUEUE", "PAUSED", "READY", "DELAYED", "LEASED", "DLQ", "DONE/MIN",
                         "FAILED/MIN", "OLDEST READY"), rows, empty="no queues"))


def queue_pause(c: Client, a: argparse.Namespace) -> Output:
    state = c.pause(a.queue)
    return Output(state.raw, f"queue {state.name} paused")


def queue_resume(c: Client, a: argparse.Namespace) -> Output:
    state = c.resume(a.queue)
    return Output(state.raw, f"queue {state.name} resumed")


def queue_delete(c: Client, a: argparse.Namespace) -> Output:
    name = c.delete_queue(a.queue)
    return Output({"name": name, "deleted": True}, f"queue {name} deleted")

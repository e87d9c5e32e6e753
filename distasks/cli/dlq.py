"""`distasks dlq list|replay|delete`: a queue's dead-lettered tasks through the daemon's API."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from distasks.cli import options, remote
from distasks.cli.remote import Output, table
from distasks.client import Client, DlqFilters

COMMAND = "dlq"


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 remote_options: argparse.ArgumentParser) -> None:
    command = remote.group(sub, COMMAND, "list, replay and delete dead-lettered tasks",
                           remote_options)
    p = command("list", "a queue's dead-lettered tasks, oldest failure first", dlq_list)
    p.add_argument("queue")
    p.add_argument("--limit", type=int, metavar="N", help="at most N (1-1000, default 50)")
    p.add_argument("--cursor", help="continue after a previous page")
    _add_filters(p)
    for name, help, handler in (
            ("replay", "replay DLQ entries as new attempts", dlq_replay),
            ("delete", "remove DLQ entries (the tasks stay on record)", dlq_delete)):
        p = command(name, help, handler)
        p.add_argument("queue")
        p.add_argument("--count", type=int, metavar="N",
                       help="the oldest N matching entries (default 10, or all --ids)")
        p.add_argument("--ids", nargs="+", type=options.task_id, metavar="ID",
                       help="these tasks only")
        if name == "replay":
            p.add_argument("--override-priority", type=int, metavar="N")
        p.add_argument("--dry-run", action="store_true",
                       help="show what would be touched, change nothing")
        _add_filters(p)


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--handler", help="only tasks of this handler")
    p.add_argument("--error", help="only entries whose last error contains this text")


def dlq_list(c: Client, a: argparse.Namespace) -> Output:
    page = c.dlq(a.queue, limit=a.limit, cursor=a.cursor, **_filters(a))
    text = table(("ID", "NAME", "HANDLER", "ATTEMPTS", "FAILED", "LAST ERROR"),
                 [(t.id, t.name, t.handler, t.attempts, t.failed_at, t.last_error)
                  for t in page.tasks], empty=f"the DLQ of {page.queue} is empty")
    if page.next_cursor:
        text += f"\n(more: --cursor {page.next_cursor})"
    return Output(page.raw, text)


def dlq_replay(c: Client, a: argparse.Namespace) -> Output:
    done = c.replay(a.queue, count=a.count, task_ids=a.ids,
                    override_priority=a.override_priority, dry_run=a.dry_run,
                    **_filters(a))
    verb = "would replay" if done.dry_run else "replayed"
    return Output(done.raw, _listing(f"{verb} {done.replayed} task(s) from the DLQ of "
                                     f"{done.queue}", done.task_ids))


def dlq_delete(c: Client, a: argparse.Namespace) -> Output:
    done = c.delete_dlq(a.queue, count=a.count, task_ids=a.ids, dry_run=a.dry_run,
                        **_filters(a))
    verb = "would delete" if done.dry_run else "deleted"
    return Output(done.raw, _listing(f"{verb} {done.deleted} task(s) from the DLQ of "
                                     f"{done.queue}", done.task_ids))


def _filters(a: argparse.Namespace) -> DlqFilters:
    return DlqFilters(handler=a.handler, error=a.error)


def _listing(head: str, ids: Iterable[str]) -> str:
    return "\n".join([head, *(f"  {i}" for i in ids)])

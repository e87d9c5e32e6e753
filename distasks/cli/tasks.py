"""`distasks task create|get|cancel|list`: tasks through the daemon's API."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from distasks.cli import options, remote
from distasks.cli.remote import Output, cell, fields_text, table
from distasks.client import Client, Run, Task, TaskDetail, TaskFilters, WaitTimeout

COMMAND = "task"
# The --status choices of `task list`.
TASK_STATUSES = ("pending", "queued", "completed", "failed", "cancelled", "skipped")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 remote_options: argparse.ArgumentParser) -> None:
    command = remote.group(sub, COMMAND, "create, inspect, list and cancel tasks",
                           remote_options)
    p = command("create", "create a task", task_create)
    p.add_argument("name")
    p.add_argument("--handler", help="registered handler (default: the daemon's default)")
    p.add_argument("--payload", type=options.json_value, metavar="JSON", help="any JSON value")
    p.add_argument("--queue", help="queue name (default: default)")
    p.add_argument("--priority", type=int)
    p.add_argument("--delay", type=float, metavar="S", help="a delayed task, due in S seconds")
    p.add_argument("--dedup-key", metavar="KEY",
                   help="idempotency key: an existing task with it is returned")
    p.add_argument("--max-retries", type=int, metavar="N")
    p.add_argument("--timeout", type=float, metavar="S", help="per-attempt time limit")
    p.add_argument("--secret", action="append", dest="secret_fields", metavar="KEY",
                   help="a top-level payload key shown as \"[secret]\" (repeatable)")
    p.add_argument("--concurrency-key", metavar="KEY",
                   help="runs sharing it count against the queue's max_running_per_key")
    p.add_argument("--wait", type=float, metavar="S",
                   help="then wait up to S seconds for a final state and show the task")
    p = command("get", "show a task and its runs", task_get)
    p.add_argument("id", type=options.task_id)
    p.add_argument("--wait", type=float, metavar="S",
                   help="wait up to S seconds for a final state first")
    p = command("cancel", "cancel a task", task_cancel)
    p.add_argument("id", type=options.task_id)
    p.add_argument("--reason")
    p = command("list", "list tasks, newest first", task_list)
    p.add_argument("--status", choices=TASK_STATUSES)
    p.add_argument("--queue")
    p.add_argument("--name")
    p.add_argument("--handler")
    p.add_argument("--limit", type=int, default=50, metavar="N",
                   help="at most N tasks (1-500; the page size with --all)")
    p.add_argument("--cursor", help="continue after a previous page")
    p.add_argument("--all", action="store_true", help="every matching task, page by page")


def task_create(c: Client, a: argparse.Namespace) -> Output:
    created = c.create(a.name, handler=a.handler, payload=a.payload, queue=a.queue,
                       priority=a.priority, delay_seconds=a.delay, dedup_key=a.dedup_key,
                       max_retries=a.max_retries, timeout_seconds=a.timeout,
                       secret_fields=a.secret_fields, concurrency_key=a.concurrency_key)
    if a.wait is not None:
        return _detail(_wait(c, created.task_id, a.wait))
    how = "created" if created.created else "the existing task with this dedup key"
    return Output(created.raw, f"{created.task_id} {created.status} ({how})")


def task_get(c: Client, a: argparse.Namespace) -> Output:
    return _detail(_wait(c, a.id, a.wait) if a.wait is not None else c.get(a.id))


def _wait(c: Client, task_id: str, timeout: float) -> TaskDetail:
    """The task once final, or as it is after `timeout` seconds."""
    try:
        return c.wait(task_id, timeout=timeout)
    except WaitTimeout as e:
        if e.last is None:
            raise
        return e.last


def task_cancel(c: Client, a: argparse.Namespace) -> Output:
    done = c.cancel(a.id, reason=a.reason)
    text = (f"{done.task_id} cancelled" if done.cancelled
            else f"{done.task_id} not cancelled: already {done.status}")
    return Output(done.raw, text)


def task_list(c: Client, a: argparse.Namespace) -> Output:
    filters = TaskFilters(status=a.status, queue=a.queue, name=a.name, handler=a.handler)
    if a.all:
        tasks = list(c.iter_tasks(limit=a.limit, **filters))
        body: dict[str, Any] = {"tasks": [t.raw for t in tasks], "next_cursor": None}
        more = None
    else:
        page = c.list(limit=a.limit, cursor=a.cursor, **filters)
        tasks, body, more = page.tasks, dict(page.raw), page.next_cursor
    text = _tasks_table(tasks)
    if more:
        text += f"\n(more: --all, or --cursor {more})"
    return Output(body, text)


def _tasks_table(tasks: Sequence[Task]) -> str:
    return table(("ID", "NAME", "STATUS", "QUEUE", "HANDLER", "PRIORITY", "FAILURES",
                  "CREATED"),
                 [(t.id, t.name, t.status, t.queue_name, t.handler, t.priority, t.failures,
                   t.created_at) for t in tasks], empty="no tasks")


def _detail(d: TaskDetail) -> Output:
    t = d.task
    text = fields_text([
        ("id", t.id), ("name", t.name), ("status", t.status), ("queue", t.queue_name),
        ("handler", t.handler), ("priority", t.priority), ("type", t.type),
        ("payload", t.payload), ("secret", ", ".join(t.secret_fields) or None),
        ("dedup_key", t.dedup_key), ("concurrency_key", t.concurrency_key),
        ("retries", f"{t.failures} failure(s) of {t.max_retries} retries allowed"),
        ("run_at", t.run_at), ("created", t.created_at), ("finished", t.finished_at),
        ("cancelled", t.cancelled_at and f"{cell(t.cancelled_at)} by {t.cancelled_by}"
         + (f": {t.cancel_reason}" if t.cancel_reason else "")),
    ])
    return Output(d.raw, text + "\n\n" + _runs_table(d.runs))


def _runs_table(runs: Sequence[Run]) -> str:
    return table(("ATTEMPT", "STATUS", "STARTED", "FINISHED", "NEXT RETRY", "ERROR/RESULT"),
                 [(r.attempt, r.status, r.started_at, r.finished_at, r.next_retry_at,
                   r.error if r.error is not None else r.result) for r in runs],
                 empty="no runs")

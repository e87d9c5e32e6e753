"""The commands that talk to a daemon over HTTP (`task`, `queue`, `dlq`, `worker`,
`schedules`): each
calls distasks.client and prints a table, or the API's JSON with --json.

An API error is one line on stderr, `distasks: 422 invalid_input (priority): …`, and exit
code 1; usage errors are argparse's (exit code 2, before anything is sent).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from distasks.client import (
    Client,
    DistasksError,
    DlqFilters,
    Run,
    Schedule,
    Task,
    TaskDetail,
    TaskFilters,
    WaitTimeout,
)

# Longest text shown in a table cell (errors, names); --json has it all.
MAX_CELL_CHARS = 60


@dataclass(frozen=True, slots=True)
class Output:
    #: what --json prints: the API's JSON
    json: Any
    #: what is printed otherwise
    text: str


def run(args: argparse.Namespace) -> int:
    """Run one remote command; the exit code: 0, or 1 after an API or connection error."""
    command = COMMANDS[(args.command, args.action)]
    try:
        with Client(getattr(args, "url", None), api_key=getattr(args, "api_key", None)) as client:
            out = command(client, args)
        if getattr(args, "json", False):
            print(json.dumps(out.json, indent=2, ensure_ascii=False))
        elif out.text:
            print(out.text)
    except DistasksError as e:
        hint = "; is the daemon running there? (--url, $DISTASKS_URL)"
        print(f"distasks: {e}{hint if e.code == 'unreachable' else ''}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `distasks task list --all | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


# -- tasks ------------------------------------------------------------------------------

def task_create(c: Client, a: argparse.Namespace) -> Output:
    created = c.create(a.name, handler=a.handler, payload=a.payload, queue=a.queue,
                       priority=a.priority, delay_seconds=a.delay, dedup_key=a.dedup_key,
                       max_retries=a.max_retries, timeout_seconds=a.timeout,
                       secret_fields=a.secret_fields)
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
    fields: list[tuple[str, Any]] = [
        ("id", t.id), ("name", t.name), ("status", t.status), ("queue", t.queue_name),
        ("handler", t.handler), ("priority", t.priority), ("type", t.type),
        ("payload", t.payload), ("secret", ", ".join(t.secret_fields) or None),
        ("dedup_key", t.dedup_key),
        ("retries", f"{t.failures} failure(s) of {t.max_retries} retries allowed"),
        ("run_at", t.run_at), ("created", t.created_at), ("finished", t.finished_at),
        ("cancelled", t.cancelled_at and f"{cell(t.cancelled_at)} by {t.cancelled_by}"
         + (f": {t.cancel_reason}" if t.cancel_reason else "")),
    ]
    shown = [(k, v) for k, v in fields if v is not None]
    width = max(len(k) for k, _ in shown)
    text = "\n".join(f"{k.ljust(width)}  {cell(v, limit=200)}" for k, v in shown)
    return Output(d.raw, text + "\n\n" + _runs_table(d.runs))


def _runs_table(runs: Sequence[Run]) -> str:
    return table(("ATTEMPT", "STATUS", "STARTED", "FINISHED", "NEXT RETRY", "ERROR/RESULT"),
                 [(r.attempt, r.status, r.started_at, r.finished_at, r.next_retry_at,
                   r.error if r.error is not None else r.result) for r in runs],
                 empty="no runs")


# -- queues -----------------------------------------------------------------------------

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


# -- dead-letter queues -------------------------------------------------------------------

def dlq_list(c: Client, a: argparse.Namespace) -> Output:
    page = c.dlq(a.queue, limit=a.limit, cursor=a.cursor, **_dlq_filters(a))
    text = table(("ID", "NAME", "HANDLER", "ATTEMPTS", "FAILED", "LAST ERROR"),
                 [(t.id, t.name, t.handler, t.attempts, t.failed_at, t.last_error)
                  for t in page.tasks], empty=f"the DLQ of {page.queue} is empty")
    if page.next_cursor:
        text += f"\n(more: --cursor {page.next_cursor})"
    return Output(page.raw, text)


def dlq_replay(c: Client, a: argparse.Namespace) -> Output:
    done = c.replay(a.queue, count=a.count, task_ids=a.ids,
                    override_priority=a.override_priority, dry_run=a.dry_run,
                    **_dlq_filters(a))
    verb = "would replay" if done.dry_run else "replayed"
    return Output(done.raw, _listing(f"{verb} {done.replayed} task(s) from the DLQ of "
                                     f"{done.queue}", done.task_ids))


def dlq_delete(c: Client, a: argparse.Namespace) -> Output:
    done = c.delete_dlq(a.queue, count=a.count, task_ids=a.ids, dry_run=a.dry_run,
                        **_dlq_filters(a))
    verb = "would delete" if done.dry_run else "deleted"
    return Output(done.raw, _listing(f"{verb} {done.deleted} task(s) from the DLQ of "
                                     f"{done.queue}", done.task_ids))


def _dlq_filters(a: argparse.Namespace) -> DlqFilters:
    return DlqFilters(handler=a.handler, error=a.error)


def _listing(head: str, ids: Iterable[str]) -> str:
    return "\n".join([head, *(f"  {i}" for i in ids)])


# -- workers ----------------------------------------------------------------------------

def worker_list(c: Client, a: argparse.Namespace) -> Output:
    workers = c.workers()
    rows = [(w.id, "alive" if w.alive else "stopped" if w.stopped_at else "silent",
             ",".join(w.queues), f"{len(w.running)}/{w.concurrency}", w.version, w.started_at,
             w.heartbeat_at) for w in workers]
    return Output({"workers": [w.raw for w in workers]},
                  table(("ID", "STATE", "QUEUES", "RUNNING", "VERSION", "STARTED",
                         "HEARTBEAT"), rows, empty="no workers"))


# -- schedules --------------------------------------------------------------------------

def in_zone(value: datetime | None, zone: str) -> str | None:
    """An instant of a schedule on the schedule's own clock, with its UTC offset
    (`2030-01-02 02:30:00+01:00` in Europe/Berlin), so that a slot reads as its cron
    expression says it and the offset tells the instant; UTC if the zone is unknown here."""
    if value is None:
        return None
    try:
        tz: tzinfo = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        tz = UTC
    return value.astimezone(tz).isoformat(sep=" ", timespec="seconds")


def schedules_list(c: Client, a: argparse.Namespace) -> Output:
    found = c.schedules()
    rows = [(x.name, x.cron, x.timezone, "yes" if x.enabled else "paused", x.catch_up,
             x.task.get("handler") or "-", x.task.get("queue_name"),
             in_zone(x.next_fire_at, x.timezone), in_zone(x.last_fire_at, x.timezone),
             x.owner) for x in found]
    return Output({"schedules": [x.raw for x in found]},
                  table(("NAME", "CRON", "TIMEZONE", "ENABLED", "CATCH-UP", "HANDLER", "QUEUE",
                         "NEXT FIRE", "LAST FIRE", "OWNER"), rows, empty="no schedules"))


def schedules_get(c: Client, a: argparse.Namespace) -> Output:
    d = c.schedule(a.name, upcoming=a.upcoming, fires=a.fires)
    zone = d.schedule.timezone
    return Output(d.raw, _schedule_text(d.schedule) + "\n\n" + table(
        ("NEXT FIRE TIMES",), [(in_zone(t, zone),) for t in d.upcoming],
        empty="no next fire: paused or ended")
        + "\n\n" + table(("SLOT", "FIRED", "OUTCOME", "TASK", "ERROR"),
                          [(in_zone(f.fire_at, zone), in_zone(f.fired_at, zone), f.outcome,
                            f.task_id, f.error) for f in d.fires], empty="no fires yet"))


def _schedule_text(x: Schedule) -> str:
    fields: list[tuple[str, Any]] = [
        ("name", x.name), ("cron", f"{x.cron} ({x.timezone})"),
        ("enabled", "yes" if x.enabled else "paused"),
        ("catch_up", f"{x.catch_up}" + (f" (at most {x.catch_up_max})"
                                        if x.catch_up == "all" else "")),
        ("jitter", f"{x.jitter_seconds:g}s" if x.jitter_seconds else None),
        ("start_at", in_zone(x.start_at, x.timezone)), ("end_at", in_zone(x.end_at, x.timezone)),
        ("skip_if_running", "yes" if x.skip_if_running else None), ("task", dict(x.task)),
        ("next_fire", in_zone(x.next_fire_at, x.timezone)),
        ("last_fire", in_zone(x.last_fire_at, x.timezone)),
        ("last_task", x.last_task_id), ("owner", x.owner),
    ]
    shown = [(k, v) for k, v in fields if v is not None]
    width = max(len(k) for k, _ in shown)
    return "\n".join(f"{k.ljust(width)}  {cell(v, limit=200)}" for k, v in shown)


def _schedule_options(a: argparse.Namespace) -> dict[str, Any]:
    """The options of `schedules create` and `update` that were given, as API fields."""
    task = {field: value for field, value in (
        ("handler", a.handler), ("queue_name", a.queue), ("payload", a.payload),
        ("priority", a.priority), ("max_retries", a.max_retries),
        ("timeout_seconds", a.timeout), ("name", a.task_name)) if value is not None}
    out = {field: value for field, value in (
        ("timezone", a.timezone), ("catch_up", a.catch_up), ("catch_up_max", a.catch_up_max),
        ("jitter_seconds", a.jitter), ("start_at", a.start_at), ("end_at", a.end_at),
        ("skip_if_running", a.skip_if_running)) if value is not None}
    if task:
        out["task"] = task
    return out


def schedules_create(c: Client, a: argparse.Namespace) -> Output:
    x = c.create_schedule(a.name, a.cron, enabled=False if a.paused else None,
                          **_schedule_options(a))
    return Output(x.raw, f"schedule {x.name} created; next fire "
                  f"{cell(in_zone(x.next_fire_at, x.timezone))}")


def schedules_update(c: Client, a: argparse.Namespace) -> Output:
    changes = _schedule_options(a)
    if a.cron is not None:
        changes["cron"] = a.cron
    x = c.update_schedule(a.name, **changes)
    return Output(x.raw, f"schedule {x.name} changed; next fire "
                  f"{cell(in_zone(x.next_fire_at, x.timezone))}")


def schedules_pause(c: Client, a: argparse.Namespace) -> Output:
    x = c.pause_schedule(a.name)
    return Output(x.raw, f"schedule {x.name} paused")


def schedules_resume(c: Client, a: argparse.Namespace) -> Output:
    x = c.resume_schedule(a.name)
    return Output(x.raw, f"schedule {x.name} resumed; next fire "
                  f"{cell(in_zone(x.next_fire_at, x.timezone))}")


def schedules_delete(c: Client, a: argparse.Namespace) -> Output:
    c.delete_schedule(a.name)
    return Output({"name": a.name, "deleted": True}, f"schedule {a.name} deleted")


COMMANDS: dict[tuple[str, str], Callable[[Client, argparse.Namespace], Output]] = {
    ("task", "create"): task_create,
    ("task", "get"): task_get,
    ("task", "cancel"): task_cancel,
    ("task", "list"): task_list,
    ("queue", "list"): queue_list,
    ("queue", "pause"): queue_pause,
    ("queue", "resume"): queue_resume,
    ("queue", "delete"): queue_delete,
    ("dlq", "list"): dlq_list,
    ("dlq", "replay"): dlq_replay,
    ("dlq", "delete"): dlq_delete,
    ("worker", "list"): worker_list,
    ("schedules", "list"): schedules_list,
    ("schedules", "get"): schedules_get,
    ("schedules", "create"): schedules_create,
    ("schedules", "update"): schedules_update,
    ("schedules", "pause"): schedules_pause,
    ("schedules", "resume"): schedules_resume,
    ("schedules", "delete"): schedules_delete,
}


# -- tables -----------------------------------------------------------------------------

def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str) -> str:
    """Aligned columns under a header, or `empty` when there are no rows."""
    cells = [[cell(v) for v in row] for row in rows]
    if not cells:
        return f"({empty})"
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def cell(value: Any, *, limit: int = MAX_CELL_CHARS) -> str:
    """One value as table text: instants in UTC to the second, JSON compact, one line."""
    if value is None:
        text = "-"
    elif isinstance(value, datetime):
        text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"

"""`distasks schedules list|get|create|update|pause|resume|delete`: cron schedules through
the daemon's API, their times shown on the schedule's own clock."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from distasks.cli import options, remote
from distasks.cli.remote import Output, cell, fields_text, table
from distasks.client import Client, Schedule

COMMAND = "schedules"


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 remote_options: argparse.ArgumentParser) -> None:
    command = remote.group(sub, COMMAND,
                           "cron schedules: create, list, show, change, pause, delete",
                           remote_options)
    command("list", "your tenant's schedules", schedules_list)
    p = command("get", "a schedule, its next fire times and its last fires", schedules_get)
    p.add_argument("name")
    p.add_argument("--upcoming", type=int, metavar="N", help="next N fire times (default 5)")
    p.add_argument("--fires", type=int, metavar="N", help="last N fires (default 20)")
    for name, help, handler in (
            ("create", "create a schedule", schedules_create),
            ("update", "change the options given (timing changes restart it from the next "
                       "slot)", schedules_update)):
        p = command(name, help, handler)
        p.add_argument("name")
        if name == "create":
            p.add_argument("cron", help="5 fields (minute hour day month weekday) or 6 "
                                        "(seconds first), quoted: '30 2 * * *'")
        else:
            p.add_argument("--cron", help="a new expression")
        p.add_argument("--timezone", metavar="TZ", help="IANA name (default UTC)")
        p.add_argument("--handler", help="the tasks' handler (default: the daemon's default)")
        p.add_argument("--queue", help="the tasks' queue (default: default)")
        p.add_argument("--payload", type=options.json_value, metavar="JSON",
                       help="the tasks' payload")
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
    for name, help, handler in (
            ("pause", "stop firing a schedule", schedules_pause),
            ("resume", "fire a paused schedule again, from its next slot", schedules_resume),
            ("delete", "delete a schedule (its tasks stay)", schedules_delete)):
        command(name, help, handler).add_argument("name")


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
    return fields_text([
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
    ])


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

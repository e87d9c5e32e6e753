"""The command line shows a schedule's times with their zone: in the schedule's own time
zone, with the UTC offset, so that `30 2 * * *` in Europe/Berlin reads 02:30+01:00 and
no reader has to guess which clock a time is on (issue 15, item 7)."""

from __future__ import annotations

import argparse
from typing import Any

from distasks.cli import schedules
from distasks.client import Fire, Schedule, ScheduleDetail, _shape

SCHEDULE = {
    "name": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
    "task": {"name": "nightly", "handler": "noop", "queue_name": "reports", "priority": 0,
             "payload": {}, "max_retries": None, "timeout_seconds": None, "secret_fields": []},
    "enabled": True, "catch_up": "skip", "catch_up_max": 10, "jitter_seconds": 0.0,
    "start_at": "2030-01-01T00:00:00Z", "end_at": None, "skip_if_running": False,
    "owner": "api", "next_fire_at": "2030-01-02T01:30:00Z",
    "last_fire_at": "2030-07-01T00:30:00Z", "last_task_id": None,
    "created_at": "2029-12-01T00:00:00Z", "created_by": "key:1",
    "updated_at": "2029-12-01T00:00:00Z",
}
FIRE = {"fire_at": "2030-07-01T00:30:00Z", "fired_at": "2030-07-01T00:30:01Z",
        "outcome": "created", "task_id": None, "error": None}


class FakeClient:
    def schedules(self) -> list[Schedule]:
        return [_shape(Schedule, SCHEDULE)]

    def schedule(self, name: str, **_: Any) -> ScheduleDetail:
        from datetime import datetime  # noqa: PLC0415

        return _shape(ScheduleDetail, {"schedule": SCHEDULE, "upcoming": [], "fires": [FIRE]},
                      schedule=_shape(Schedule, SCHEDULE),
                      upcoming=[datetime.fromisoformat("2030-01-03T01:30:00Z")],
                      fires=[_shape(Fire, FIRE)])


def test_schedule_times_are_shown_in_the_schedules_zone_with_their_offset():
    a = argparse.Namespace(name="nightly", upcoming=1, fires=1)
    shown = schedules.schedules_get(FakeClient(), a).text  # type: ignore[arg-type]

    assert "2030-01-02 02:30:00+01:00" in shown      # next_fire, winter (CET)
    assert "2030-01-03 02:30:00+01:00" in shown      # the next fire times
    assert "2030-07-01 02:30:00+02:00" in shown      # last fire and its slot, summer (CEST)
    assert "2030-01-01 01:00:00+01:00" in shown      # start_at


def test_the_schedule_list_shows_times_with_their_offset():
    shown = schedules.schedules_list(FakeClient(), argparse.Namespace()).text  # type: ignore[arg-type]

    assert "2030-01-02 02:30:00+01:00" in shown and "2030-07-01 02:30:00+02:00" in shown

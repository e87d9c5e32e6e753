"""distasks.domain.cron: slots in time zones across DST days, the catch-up plans, and the
expressions and zones refused (pure: no servers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from distasks.domain import cron
from distasks.domain.cron import CatchUp, CronError

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def local_slots(expression: str, tz: ZoneInfo, day: datetime) -> list[datetime]:
    """Every slot whose local date is `day` (a naive date at midnight), in local time."""
    start = day.replace(tzinfo=tz) - timedelta(seconds=1)
    out = []
    for slot in cron.slots_after(expression, str(tz), start):
        local = slot.astimezone(tz)
        if local.date() != day.date():
            break
        out.append(local)
    return out


def test_a_fixed_time_fires_once_on_the_fall_back_day_in_berlin():
    # 2026-10-25: 03:00 CEST becomes 02:00 CET, so 02:30 happens twice.
    slots = local_slots("30 2 * * *", BERLIN, datetime(2026, 10, 25))
    assert [s.astimezone(UTC) for s in slots] == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC)]


def test_a_fixed_time_fires_at_three_on_the_spring_forward_day_in_berlin():
    # 2026-03-29: 02:00 CET becomes 03:00 CEST, so 02:30 does not exist.
    slots = local_slots("30 2 * * *", BERLIN, datetime(2026, 3, 29))
    assert [(s.hour, s.minute) for s in slots] == [(3, 0)]
    assert slots[0].astimezone(UTC) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_a_fixed_time_fires_once_on_the_fall_back_day_in_new_york():
    # 2026-11-01: 02:00 EDT becomes 01:00 EST, so 01:30 happens twice.
    slots = local_slots("30 1 * * *", NEW_YORK, datetime(2026, 11, 1))
    assert [s.astimezone(UTC) for s in slots] == [datetime(2026, 11, 1, 5, 30, tzinfo=UTC)]


def test_a_fixed_time_fires_at_three_on_the_spring_forward_day_in_new_york():
    slots = local_slots("30 2 * * *", NEW_YORK, datetime(2026, 3, 8))
    assert [(s.hour, s.minute) for s in slots] == [(3, 0)]
    assert slots[0].astimezone(UTC) == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)


def test_days_around_the_changes_keep_their_one_slot():
    for tz, day in ((BERLIN, datetime(2026, 10, 24)), (BERLIN, datetime(2026, 10, 26)),
                    (NEW_YORK, datetime(2026, 3, 7)), (NEW_YORK, datetime(2026, 3, 9))):
        assert [(s.hour, s.minute) for s in local_slots("30 2 * * *", tz, day)] == [(2, 30)]


def test_an_interval_follows_elapsed_time_through_the_repeated_hour():
    # Every 30 minutes: the repeated hour 02:00-03:00 is two real hours, four slots.
    start = datetime(2026, 10, 25, 1, 59, tzinfo=BERLIN)
    slots = cron.upcoming("*/30 * * * *", "Europe/Berlin", after=start, count=6)
    gaps = {b - a for a, b in zip(slots, slots[1:], strict=False)}
    assert gaps == {timedelta(minutes=30)}
    assert slots[0] == datetime(2026, 10, 25, 0, 0, tzinfo=UTC)


def test_slots_are_strictly_after_and_in_utc():
    after = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    slots = cron.upcoming("0 * * * *", "UTC", after=after, count=3)
    assert slots == [after + timedelta(hours=h) for h in (1, 2, 3)]
    assert all(s.tzinfo is UTC for s in slots)
    assert cron.upcoming("* * * * * *", "UTC", after=after, count=2) == [
        after + timedelta(seconds=1), after + timedelta(seconds=2)]


@pytest.mark.parametrize(("expression", "timezone", "field"), [
    ("61 * * * *", "UTC", "cron"),
    ("* * *", "UTC", "cron"),
    ("* * * * * * *", "UTC", "cron"),
    ("0 0 30 2 *", "UTC", "cron"),
    ("*/0 * * * *", "UTC", "cron"),
    ("nonsense", "UTC", "cron"),
    ("0 0 * * *", "Mars/Olympus_Mons", "timezone"),
    ("0 0 * * *", "../../etc/passwd", "timezone"),
    ("0 0 * * *", "", "timezone"),
])
def test_bad_expressions_and_time_zones_are_refused_naming_the_field(expression, timezone, field):
    with pytest.raises(CronError) as caught:
        cron.check(expression, timezone, now=datetime(2030, 1, 1, tzinfo=UTC))
    assert caught.value.field == field


def test_start_and_end_bound_the_first_slot():
    now = datetime(2030, 1, 1, 12, 0, 30, tzinfo=UTC)
    assert cron.first_slot("* * * * *", "UTC", now=now, starts_at=None, ends_at=None) == (
        datetime(2030, 1, 1, 12, 1, tzinfo=UTC))
    start = datetime(2030, 2, 1, tzinfo=UTC)
    assert cron.first_slot("* * * * *", "UTC", now=now, starts_at=start, ends_at=None) == start
    assert cron.first_slot("* * * * *", "UTC", now=now, starts_at=None,
                           ends_at=datetime(2030, 1, 1, 12, 0, 45, tzinfo=UTC)) is None


T0 = datetime(2030, 1, 1, 0, 0, tzinfo=UTC)
GRACE = timedelta(seconds=60)


def minutes(*ms: int) -> list[datetime]:
    return [T0 + timedelta(minutes=m) for m in ms]


@pytest.mark.parametrize(("catch_up", "fired", "missed"), [
    (CatchUp.SKIP, [], 10),
    (CatchUp.LATEST, minutes(10), 9),
    (CatchUp.ALL, minutes(8, 9, 10), 7),
])
def test_after_downtime_each_policy_fires_what_it_says(catch_up, fired, missed):
    # Every minute, next slot 00:01, the fleet back at 00:10:30: slots 1..10 are due.
    p = cron.plan("* * * * *", "UTC", next_fire_at=minutes(1)[0],
                  now=T0 + timedelta(minutes=10, seconds=30), catch_up=catch_up,
                  catch_up_max=3, grace=timedelta(seconds=20), ends_at=None)
    assert (p.fire, p.missed, p.next_fire_at) == (fired, missed, minutes(11)[0])


def test_an_on_time_slot_fires_under_every_policy():
    for catch_up in CatchUp:
        p = cron.plan("* * * * *", "UTC", next_fire_at=minutes(1)[0],
                      now=T0 + timedelta(minutes=1, seconds=2), catch_up=catch_up,
                      catch_up_max=5, grace=GRACE, ends_at=None)
        assert (p.fire, p.missed, p.next_fire_at) == (minutes(1), 0, minutes(2)[0])


def test_a_long_outage_of_a_frequent_schedule_is_bounded():
    # Every second for two days: the plan still counts at most MAX_COUNTED_MISSES and
    # fires the most recent slots.
    now = T0 + timedelta(days=2)
    p = cron.plan("* * * * * *", "UTC", next_fire_at=T0 + timedelta(seconds=1), now=now,
                  catch_up=CatchUp.ALL, catch_up_max=4, grace=GRACE, ends_at=None)
    assert p.fire == [now - timedelta(seconds=s) for s in (3, 2, 1, 0)]
    assert p.missed == cron.MAX_COUNTED_MISSES
    assert p.next_fire_at == now + timedelta(seconds=1)


def test_no_slot_past_the_end_fires_and_the_schedule_then_stops():
    p = cron.plan("* * * * *", "UTC", next_fire_at=minutes(1)[0], now=minutes(5)[0],
                  catch_up=CatchUp.ALL, catch_up_max=10, grace=GRACE, ends_at=minutes(3)[0])
    assert p.fire == minutes(1, 2, 3)
    assert p.next_fire_at is None


def test_the_most_recent_slots_fire_when_the_count_stops_just_before_now():
    # The walk stops counting a slot or two before now: the slots it kept and the ones
    # found walking back from now make up the most recent catch_up_max together.
    last = cron.MAX_COUNTED_MISSES + 6
    p = cron.plan("* * * * * *", "UTC", next_fire_at=T0 + timedelta(seconds=1),
                  now=T0 + timedelta(seconds=last), catch_up=CatchUp.ALL, catch_up_max=4,
                  grace=GRACE, ends_at=None)
    assert p.fire == [T0 + timedelta(seconds=s) for s in range(last - 3, last + 1)]


def test_dates_at_the_ends_of_the_calendar_give_no_slot_instead_of_an_error():
    now = datetime(2026, 12, 1, tzinfo=UTC)
    first = cron.first_slot("0 0 1 * *", "UTC", now=now,
                            starts_at=datetime(1, 1, 1, tzinfo=UTC), ends_at=None)
    assert first == datetime(2027, 1, 1, tzinfo=UTC)
    late = datetime(9999, 12, 1, tzinfo=UTC)
    assert cron.first_slot("0 0 1 * *", "UTC", now=now, starts_at=late, ends_at=None) == late
    assert cron.upcoming("0 0 1 * *", "UTC", after=datetime(9999, 11, 1, tzinfo=UTC),
                         count=3) == [datetime(9999, 12, 1, tzinfo=UTC)]

"""Cron: when a schedule's slots fall, and which of the due ones fire (architecture §9).

Pure functions over aware datetimes, no I/O and no clock: `now` is an argument. The
expressions are cronsim's (5 fields, or 6 with seconds first), evaluated as wall-clock
times in an IANA time zone. cronsim gets DST right in the way Debian cron does: a job at a
fixed time (`30 2 * * *`) fires once on the day the clock falls back and at the first
valid minute (03:00) on the day it springs forward; an interval job (`*/30 * * * *`)
follows elapsed time, so it fires in both copies of a repeated hour. Slots are kept in
UTC everywhere else.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

# Longest expression accepted (the longest sensible one is far shorter).
MAX_EXPRESSION_CHARS = 200
# Most missed slots counted one by one after downtime; beyond it, the count says "at least".
MAX_COUNTED_MISSES = 1000


class CatchUp(enum.StrEnum):
    """What a schedule does with the slots that fell due while no daemon fired them."""

    #: only a slot at most `grace` late fires; older ones are missed
    SKIP = "skip"
    #: the latest due slot fires however late; the older ones are missed
    LATEST = "latest"
    #: every due slot fires, at most `catch_up_max` of them (the most recent)
    ALL = "all"


class CronError(ValueError):
    """An expression or a time zone that cannot be used; `field` says which."""

    def __init__(self, field: str, problem: str):
        super().__init__(problem)
        self.field = field
        self.problem = problem


# Names a time zone database may hold that are no zone to schedule in: `localtime` is
# the host's own setting (slots would differ from host to host), `posixrules` a build
# leftover whose rules vary by distribution, `Factory` tzdata's "zone not yet set" (-00).
NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


@functools.cache
def known_zones() -> frozenset[str]:
    """The IANA names this machine's time zone database has (read once), without
    NOT_ZONES."""
    return frozenset(available_timezones()) - NOT_ZONES


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; CronError naming `timezone` if there is none."""
    if name in NOT_ZONES:
        raise CronError("timezone", f"{name!r} names no fixed zone (its rules depend on the "
                                    "host); give an IANA name like UTC or Europe/Berlin")
    try:
        if name not in known_zones():
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CronError("timezone", f"{name!r} is not an IANA time zone name "
                                    "(like UTC or Europe/Berlin)") from None


def check(expression: str, timezone: str, *, now: datetime) -> None:
    """Raise CronError (naming `cron` or `timezone`) unless `expression` parses and fires
    at least once in the 50 years after `now` in `timezone`."""
    tz = zone(timezone)
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CronError("cron", f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    fields = len(expression.split())
    if fields not in (5, 6):
        raise CronError("cron", f"an expression has 5 fields (minute hour day month weekday) "
                                f"or 6 (seconds first), not {fields}")
    try:
        next(CronSim(expression, now.astimezone(tz)))
    except CronSimError as e:
        raise CronError("cron", f"{expression!r}: {e}") from None
    except StopIteration:
        raise CronError("cron", f"{expression!r} never fires") from None


def slots_after(expression: str, timezone: str, after: datetime) -> Iterator[datetime]:
    """The slots strictly after `after`, in order, as UTC datetimes (none beyond 50 years)."""
    tz = zone(timezone)
    last = after.astimezone(UTC)
    try:
        it = CronSim(expression, after.astimezone(tz))
    except CronSimError as e:
        raise CronError("cron", f"{expression!r}: {e}") from None
    try:
        for local in it:
            slot = local.astimezone(UTC)
            if slot > last:  # belt and braces: time never goes backwards here
                last = slot
                yield slot
    # cronsim gives up after 50 years without a match, or fails near year 9999
    except (StopIteration, OverflowError, ValueError):
        return


def next_after(expression: str, timezone: str, after: datetime) -> datetime | None:
    """The first slot strictly after `after`; None if there is none within 50 years."""
    return next(slots_after(expression, timezone, after), None)


def upcoming(expression: str, timezone: str, *, after: datetime, count: int,
             ends_at: datetime | None = None) -> list[datetime]:
    """The next `count` slots after `after`, none past `ends_at`."""
    out: list[datetime] = []
    for slot in slots_after(expression, timezone, after):
        if len(out) == count or (ends_at is not None and slot > ends_at):
            break
        out.append(slot)
    return out


def first_slot(expression: str, timezone: str, *, now: datetime,
               starts_at: datetime | None, ends_at: datetime | None) -> datetime | None:
    """The slot a new (or changed, or resumed) schedule waits for: the first after `now`,
    and not before `starts_at`; None if it would be past `ends_at`."""
    # Before starts_at by a microsecond, so that a slot at starts_at fires; never below
    # `now` (so year 1 cannot underflow).
    after = now if starts_at is None or starts_at <= now else (
        starts_at - timedelta(microseconds=1))
    slot = next_after(expression, timezone, after)
    if slot is None or (ends_at is not None and slot > ends_at):
        return None
    return slot


@dataclass(frozen=True, slots=True)
class Plan:
    """What one pass does with a due schedule."""

    #: slots to fire, oldest first
    fire: list[datetime]
    #: due slots left unfired (at most MAX_COUNTED_MISSES counted)
    missed: int
    #: the schedule's next slot after this pass (None: past ends_at, no more)
    next_fire_at: datetime | None


def plan(expression: str, timezone: str, *, next_fire_at: datetime, now: datetime,
         catch_up: CatchUp, catch_up_max: int, grace: timedelta,
         ends_at: datetime | None) -> Plan:
    """The slots of a schedule due at `now` (from `next_fire_at` on, none past `ends_at`)
    and which of them fire under `catch_up`. `grace` is how late a slot may be and still
    count as on time for `skip` (the scheduler's tick is never exactly on the slot)."""
    due: list[datetime] = []
    keep = 1 if catch_up is not CatchUp.ALL else catch_up_max
    seen = 0
    horizon = now if ends_at is None else min(now, ends_at)
    # The first due slot is next_fire_at itself; the others follow it.
    slot: datetime | None = next_fire_at
    following = slots_after(expression, timezone, next_fire_at)
    while slot is not None and slot <= horizon:
        seen += 1
        due.append(slot)
        if len(due) > keep:
            due.pop(0)
        if seen > MAX_COUNTED_MISSES + keep:
            # Long downtime of a frequent schedule: stop counting, jump to the end.
            due = (due + _latest(expression, timezone, after=slot, upto=horizon,
                                 keep=keep))[-keep:]
            break
        slot = next(following, None)
    fire = due
    if catch_up is CatchUp.SKIP:
        fire = [s for s in due if now - s <= grace]
    following_now = next_after(expression, timezone, max(now, next_fire_at))
    if following_now is not None and ends_at is not None and following_now > ends_at:
        following_now = None
    return Plan(fire=fire, missed=min(seen, MAX_COUNTED_MISSES + keep) - len(fire),
                next_fire_at=following_now)


def _latest(expression: str, timezone: str, *, after: datetime, upto: datetime,
            keep: int) -> list[datetime]:
    """The last `keep` slots in (after, upto], found walking back from `upto`."""
    tz = zone(timezone)
    # cronsim's reverse iteration starts one second before its start: start just past upto.
    start = (upto.astimezone(tz) + timedelta(seconds=1)).replace(microsecond=0)
    out: list[datetime] = []
    try:
        for local in CronSim(expression, start, reverse=True):
            slot = local.astimezone(UTC)
            if slot <= after or len(out) == keep:
                break
            if slot <= upto:
                out.append(slot)
    except (StopIteration, OverflowError, ValueError):
        pass
    return sorted(out)

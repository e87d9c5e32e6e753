"""A schedule's definition: what the API's create and change requests and the config
file's `[[schedules]]` tables may say (architecture §9), with the cron syntax as a pattern
the API's schema publishes. daemon/schedules.py turns a definition into a stored schedule.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, ValidationInfo, field_validator

from distasks.domain import cron
from distasks.domain.fields import (
    QUEUE_NAME_PATTERN,
    SECRET_FIELDS_RULE,
    Priority,
    Retries,
    SecretFieldName,
    Strict,
    UtcDatetime,
    text,
)

# A schedule name stands in URLs: the same rule as a queue name.
SCHEDULE_NAME_PATTERN = QUEUE_NAME_PATTERN


def _numbers(low: int, high: int) -> str:
    """A pattern for the integers low..high (no leading zeros), grouped by tens so that it
    stays short: 7..23 is `7|8|9|1[0-9]|2[0-3]`."""
    parts = []
    for tens in range(low // 10, high // 10 + 1):
        first, last = max(low, tens * 10) % 10, min(high, tens * 10 + 9) % 10
        digits = str(first) if first == last else f"[{first}-{last}]"
        parts.append(digits if tens == 0 else f"{tens}{digits}")
    return "|".join(parts)


def _forward_ranges(low: int, high: int) -> str:
    """A pattern for the ranges a-b of integers low <= a <= b <= high, grouped by the tens
    of a: `1[0-9]-(?:2[0-3])` for an end in a later ten, `13-1[3-9]` within the same."""
    parts = []
    for tens in range(low // 10, high // 10 + 1):
        prefix = str(tens) if tens else ""
        first, last = max(low, tens * 10) % 10, min(high, tens * 10 + 9) % 10
        same = "|".join(f"{prefix}{u}-{prefix}{u if u == last else f'[{u}-{last}]'}"
                        for u in range(first, last + 1))
        parts.append(same)
        if (tens + 1) * 10 <= high:
            starts = str(first) if first == last else f"[{first}-{last}]"
            parts.append(f"{prefix}{starts}-(?:{_numbers((tens + 1) * 10, high)})")
    return "|".join(parts)


def _values(low: int, high: int, names: dict[int, str]) -> str:
    """A value in low..high, as a number or, where it has one, its name."""
    named = [n for v, n in sorted(names.items()) if low <= v <= high]
    return f"(?:{'|'.join([_numbers(low, high), *named])})"


def _cron_pattern() -> str:
    """5 or 6 fields (seconds first) separated by spaces, each a list of `*`, a value or
    a range that runs forwards (`MON-FRI`, not `FRI-MON`), with an optional /step; `L`,
    `LW`, `nL` and `n#k` where cronsim takes them. Each value is within its field's
    range. What a pattern cannot say (a day no listed month has, `30 2`) cronsim refuses
    (distasks.domain.cron.check): a 422 naming `cron`."""
    def field(low: int, high: int, names: dict[int, str] | None = None,
              extra: str = "") -> str:
        value = _values(low, high, names or {})
        # A range a-b with b >= a: by tens for numbers, one alternative per start value
        # where values have names.
        ranges = "|".join(f"{_values(a, a, names)}-{_values(a, high, names)}"
                          for a in range(low, high + 1)) if names else _forward_ranges(low, high)
        term = rf"(?:\*|{ranges}|{value})(?:/[1-9][0-9]?)?"
        one = f"(?:{extra}{term})" if extra else f"(?:{term})"
        # At most LIST_ITEMS items, so that no expression the pattern allows is longer than
        # cron.MAX_EXPRESSION_CHARS (200): the longest item is "SAT-SAT/99".
        return rf"{one}(?:,{one}){{0,{LIST_ITEMS - 1}}}"

    months = dict(enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP",
                             "OCT", "NOV", "DEC"], start=1))
    days = dict(enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]))
    weekday = _values(0, 7, days)
    five = " {1,3}".join([field(0, 59), field(0, 23), field(1, 31, extra=r"LW|L|"),
                      field(1, 12, months),
                      field(0, 7, days, extra=rf"[0-7]L|{weekday}#[1-5]|")])
    return rf"^(?:{field(0, 59)} {{1,3}})?{five}$"


# Most items in one field's list that the pattern describes (the server takes more, as
# long as the expression stays within 200 characters).
LIST_ITEMS = 3
CRON_PATTERN = _cron_pattern()
_CRON_RE = re.compile(CRON_PATTERN)


def _cron_syntax(value: str) -> str:
    """CRON_PATTERN, with cronsim's word on what is wrong rather than the pattern."""
    if not _CRON_RE.fullmatch(value):
        try:
            cron.check(value, "UTC", now=datetime.now(UTC))
        except cron.CronError as e:
            raise ValueError(e.problem) from None
        raise ValueError("fields hold *, values within their range (names in capitals: MON, "
                         "JAN), ranges a-b, lists and /steps; L, LW, nL and n#k where cron "
                         "takes them")
    return value


CronExpression = Annotated[str, Field(max_length=200, json_schema_extra={"pattern": CRON_PATTERN}),
                           AfterValidator(_cron_syntax)]
CatchUpName = Literal["skip", "latest", "all"]
WINDOW_BACKWARDS = "must be after start_at (a schedule that ends before it starts never fires)"
CatchUpMax = Annotated[int, Field(ge=1, le=1000)]


class ScheduleTask(Strict):
    """The task each slot creates."""

    model_config = ConfigDict(json_schema_extra=SECRET_FIELDS_RULE)

    name: str | None = text(1, 256, "The tasks' name; the schedule's name if absent")
    handler: str | None = text(1, 128, "Registered handler; the config's default if absent")
    queue_name: str = Field("default", pattern=QUEUE_NAME_PATTERN)
    priority: Priority = 0
    payload: Any = Field(default_factory=dict, description="Any JSON value")
    max_retries: Retries | None = None
    timeout_seconds: float | None = Field(None, gt=0, le=7 * 86400)
    secret_fields: list[SecretFieldName] = Field(
        default_factory=list, max_length=64,
        description="Top-level keys of the (object) payload shown as \"[secret]\" in the "
                    "schedule and in the tasks it creates")


class CreateSchedule(Strict):
    name: str = Field(pattern=SCHEDULE_NAME_PATTERN, description="Unique in the tenant")
    cron: CronExpression = Field(
        description="5 fields (minute hour day month weekday) or 6 (seconds first); "
                    "names in capitals (MON, JAN); L, LW, nL and n#k as cronsim reads them")
    timezone: str = Field("UTC", min_length=1, max_length=64,
                          description="IANA time zone of the cron's wall-clock times (one "
                                      "of the names listed; never the host's localtime)")
    task: ScheduleTask = Field(default_factory=lambda: ScheduleTask.model_validate({}))
    enabled: bool = Field(True, description="False: paused, no slot fires")
    catch_up: CatchUpName = Field("skip", description="After downtime: skip the missed slots, "
                                  "fire the latest, or fire all (at most catch_up_max)")
    catch_up_max: CatchUpMax = 10
    jitter_seconds: float = Field(0, ge=0, le=86400,
                                  description="Each task is delayed by a random 0..jitter")
    start_at: UtcDatetime | None = Field(None, description="No slot before it; before "
                                         "end_at when both are given")
    end_at: UtcDatetime | None = Field(None, description="No slot after it; after start_at "
                                       "when both are given (a 422 naming end_at otherwise)")
    skip_if_running: bool = Field(False, description="Skip a slot while the previous "
                                  "slot's task is not finished")

    @field_validator("end_at")
    @classmethod
    def _ends_after_start(cls, end_at: datetime | None, info: ValidationInfo
                          ) -> datetime | None:
        """A window that ends before it starts would never fire: refused, naming end_at
        (a change is checked against the stored start by schedules.check_definition)."""
        start_at = info.data.get("start_at")
        if end_at is not None and start_at is not None and end_at <= start_at:
            raise ValueError(WINDOW_BACKWARDS)
        return end_at


class UpdateScheduleTask(Strict):
    """Fields given replace the template's; null clears handler, name, max_retries and
    timeout_seconds (back to their defaults)."""

    name: str | None = text(1, 256)
    handler: str | None = text(1, 128)
    queue_name: str | None = Field(None, pattern=QUEUE_NAME_PATTERN)
    priority: Priority | None = None
    payload: Any = Field(None, description="Any JSON value")
    max_retries: Retries | None = None
    timeout_seconds: float | None = Field(None, gt=0, le=7 * 86400)
    secret_fields: list[SecretFieldName] | None = Field(
        None, max_length=64,
        description="May add keys; a key already marked stays marked unless payload is "
                    "given too (a 422 otherwise), so that a stored secret is never shown")


class UpdateSchedule(Strict):
    """Only the fields given change; a change of cron, timezone, start_at or end_at, or
    enabling a paused schedule, restarts it from the next slot after now."""

    cron: CronExpression | None = None
    timezone: str | None = Field(None, min_length=1, max_length=64)
    task: UpdateScheduleTask | None = None
    enabled: bool | None = None
    catch_up: CatchUpName | None = None
    catch_up_max: CatchUpMax | None = None
    jitter_seconds: float | None = Field(None, ge=0, le=86400)
    start_at: UtcDatetime | None = Field(None, description="null: no start; before end_at")
    end_at: UtcDatetime | None = Field(None, description="null: no end; after start_at")
    skip_if_running: bool | None = None



"""Request and response shapes, declared once: they validate requests and are the
schemas of the OpenAPI document (api/openapi.py), so the two cannot drift apart."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from distasks.api.cursor import PATTERN as CURSOR_PATTERN
from distasks.config import QUEUE_NAME_PATTERN as QUEUE_NAME_PATTERN
from distasks.tenancy import TENANT_PATTERN

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
TaskStatusName = Literal["queued", "completed", "failed", "cancelled"]
RunStatusName = Literal["queued", "running", "succeeded", "retrying", "failed", "interrupted",
                        "cancelled"]


def _rfc3339(value: Any) -> Any:
    """Lax parsing would read "1.5" as a Unix time; a query date-time must look like one."""
    if isinstance(value, str) and not re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]", value):
        raise ValueError("must be an RFC 3339 date-time, e.g. 2030-01-01T00:00:00Z")
    return value


def _utc(value: datetime) -> datetime:
    """PostgreSQL takes UTC offsets up to 15:59 only, and RFC 3339 allows up to 23:59:
    every time is kept in UTC."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
QueryDatetime = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_utc)]

# What each pattern allows, in words: a refusal says this (api/errors.py), never the
# regular expression itself.
QUEUE_NAME_RULE = ("1-64 characters of letters, digits, '.', '_' and '-' (not '.' or '..' "
                   "alone)")
PATTERN_RULES: dict[str, str] = {
    QUEUE_NAME_PATTERN: QUEUE_NAME_RULE,
    TENANT_PATTERN: ("1-32 characters of lower-case letters, digits, '_' and '-', starting "
                     "with a letter or digit"),
    CURSOR_PATTERN: "the next_cursor of the previous page, as given",
}

# PostgreSQL text and jsonb cannot hold NUL: said in the schema by this pattern on every
# free text (the server refuses NUL itself, naming the field, api/parse.py refuse_nul).
NO_NUL = r"^[^\x00]*$"
NO_NUL_TEXT: dict[str, Any] = {"pattern": NO_NUL}


# Integers within bounds. The bounds sit inside the type, so that they stay in the schema
# (on the field of an `int | None` they would not). In a body an integer is strict, as
# the README promises: 3.0, "3" and true are refused (`_Strict`'s config, the one rule
# for every request body).
Priority = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX)]
Retries = Annotated[int, Field(ge=0, le=1000)]
SelectionCount = Annotated[int, Field(ge=1, le=10_000)]
TaskPageLimit = Annotated[int, Field(ge=1, le=500)]
DlqPageCount = Annotated[int, Field(ge=0, le=1000)]
DlqPageLimit = Annotated[int, Field(ge=1, le=1000)]
RatePerMinute = Annotated[int, Field(ge=0, le=10_000_000)]


def text(min_length: int, max_length: int, description: str | None = None) -> Any:
    """A free-text field, absent by default."""
    return Field(None, min_length=min_length, max_length=max_length, description=description,
                 json_schema_extra=NO_NUL_TEXT)


# Any JSON value without NUL in its strings or keys: what a payload may be. The document
# (api/openapi.py) gives it to the payload field, which pydantic can only call "any".
JSON_VALUE_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": "null"}, {"type": "boolean"}, {"type": "number"},
    {"type": "string", "pattern": NO_NUL},
    {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
    {"type": "object", "propertyNames": {"pattern": NO_NUL},
     "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
]}

# What the type decides: an immediate task takes neither run_at nor delay_seconds; a
# delayed one exactly one of them.
TIMING_RULES: dict[str, Any] = {"anyOf": [
    {"properties": {"type": {"const": "immediate"}, "run_at": {"type": "null"},
                    "delay_seconds": {"type": "null"}}},
    {"required": ["type", "run_at"],
     "properties": {"type": {"const": "delayed"}, "run_at": {"type": "string"},
                    "delay_seconds": {"type": "null"}}},
    {"required": ["type", "delay_seconds"],
     "properties": {"type": {"const": "delayed"}, "delay_seconds": {"type": "number"},
                    "run_at": {"type": "null"}}},
]}


# A payload with secret fields is an object. (Names it does not hold mark nothing: JSON
# Schema cannot tie one field's items to another's keys, and the document must say
# exactly what is accepted; see architecture §7.)
SECRET_FIELDS_RULE: dict[str, Any] = {
    "if": {"required": ["secret_fields"], "properties": {"secret_fields": {"minItems": 1}}},
    "then": {"properties": {"payload": {"type": "object"}}},
}

SecretFieldName = Annotated[str, Field(min_length=1, max_length=256,
                                       json_schema_extra=NO_NUL_TEXT)]


class _Strict(BaseModel):
    # Unknown fields are refused (a typo such as `max_retry` must not pass silently);
    # strict types: "3", 3.0 and true are not integers, 1 is no boolean.
    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")


class _Query(BaseModel):
    # Query strings are text: lax mode turns "50" into 50. Unknown parameters are refused.
    model_config = ConfigDict(extra="forbid", regex_engine="python-re")


# -- requests -----------------------------------------------------------------------

class CreateTask(_Strict):
    model_config = ConfigDict(json_schema_extra={**TIMING_RULES, **SECRET_FIELDS_RULE})

    name: str = Field(min_length=1, max_length=256, description="A free label",
                      json_schema_extra=NO_NUL_TEXT)
    handler: str | None = text(1, 128, "Registered handler; the config's default if absent")
    type: Literal["immediate", "delayed"] = "immediate"
    queue_name: str = Field("default", pattern=QUEUE_NAME_PATTERN)
    priority: Priority = 0
    payload: Any = Field(default_factory=dict, description="Any JSON value")
    dedup_key: str | None = text(1, 256)
    max_retries: Retries | None = None
    timeout_seconds: float | None = Field(None, gt=0, le=7 * 86400)
    run_at: UtcDatetime | None = Field(None, description="RFC 3339, for type delayed")
    delay_seconds: float | None = Field(None, ge=0, le=366 * 86400,
                                        description="For type delayed, instead of run_at")
    secret_fields: list[SecretFieldName] = Field(
        default_factory=list, max_length=64,
        description="Top-level keys of the (object) payload whose values the API and CLI "
                    "show as \"[secret]\"; the handler gets them as given")


class CreateTasks(_Strict):
    tasks: list[CreateTask] = Field(min_length=1, description="At most http.max_batch items")


class CancelTask(_Strict):
    reason: str | None = Field(None, max_length=1000, json_schema_extra=NO_NUL_TEXT)


class DlqSelection(_Strict):
    """Which DLQ entries a replay or delete touches: `task_ids`, or the oldest `count`
    matching the filters."""

    count: SelectionCount = 10
    task_ids: list[uuid.UUID] | None = Field(None, min_length=1, max_length=10_000)
    handler: str | None = text(1, 128)
    error: str | None = text(1, 1000, "Substring of the last error, case-insensitive")
    failed_since: UtcDatetime | None = None
    dry_run: bool = False


class ReplayDlq(DlqSelection):
    override_priority: Priority | None = None


ScopeName = Literal["tasks:write", "tasks:read", "tasks:cancel", "queues:read", "queues:admin",
                    "dlq:admin", "keys:admin", "audit:read", "metrics:read", "schedules:read",
                    "schedules:write"]


class CreateKey(_Strict):
    name: str = Field(min_length=1, max_length=200, description="What the key is for",
                      json_schema_extra=NO_NUL_TEXT)
    scopes: list[ScopeName] = Field(min_length=1, max_length=11)
    tenant: str | None = Field(None, pattern=TENANT_PATTERN,
                               description="Default: the maker's tenant")
    expires_in_seconds: float | None = Field(None, gt=0, le=10 * 366 * 86400,
                                             description="Default: never")
    rate_per_minute: RatePerMinute | None = Field(
        None, description="Requests per minute instead of limits.per_minute (0: none)")


class RotateKey(_Strict):
    overlap_seconds: float = Field(86400, ge=0, le=366 * 86400,
                                   description="How long the old token stays valid")


AUDIT_CURSOR_PATTERN = r"^[1-9][0-9]{0,18}$(?!\n)"
PATTERN_RULES[AUDIT_CURSOR_PATTERN] = PATTERN_RULES[CURSOR_PATTERN]


class AuditQuery(_Query):
    actor: str | None = text(1, 256, "Exactly this actor (key:<id>, anonymous@<address>, …)")
    action: str | None = text(1, 64, "cancel, pause, resume, queue_delete, dlq_replay, "
                                     "dlq_delete, key_…, schedule_…, login_failed, "
                                     "login_failures, config_reload, config_reload_refused")
    queue: str | None = Field(None, pattern=QUEUE_NAME_PATTERN)
    since: QueryDatetime | None = None
    limit: TaskPageLimit = 50
    cursor: str | None = Field(None, pattern=AUDIT_CURSOR_PATTERN,
                               description="next_cursor of the previous page")


class TaskQuery(_Query):
    status: TaskStatusName | None = None
    queue: str | None = Field(None, pattern=QUEUE_NAME_PATTERN)
    name: str | None = text(1, 256)
    handler: str | None = text(1, 128)
    dedup_key: str | None = text(1, 256)
    created_after: QueryDatetime | None = None
    created_before: QueryDatetime | None = None
    limit: TaskPageLimit = 50
    cursor: str | None = Field(None, pattern=CURSOR_PATTERN,
                               description="next_cursor of the previous page")
    include_payload: bool = Field(False, description=(
        "Each task's payload too; the page then ends before http.max_response_bytes "
        "(fewer than limit items, next_cursor for the rest)"))


class GetTaskQuery(_Query):
    wait: float = Field(0, ge=0, le=60,
                        description="Seconds to wait for a final state before answering")


class DlqQuery(_Query):
    count: DlqPageCount = Field(0, description="Same as limit, as in the original API; 0: use limit")
    limit: DlqPageLimit = 50
    cursor: str | None = Field(None, pattern=CURSOR_PATTERN,
                               description="next_cursor of the previous page")
    handler: str | None = text(1, 128)
    error: str | None = text(1, 1000)
    failed_since: QueryDatetime | None = None
    include_payload: bool = Field(False, description=(
        "Each task's payload too; the page then ends before http.max_response_bytes "
        "(fewer than limit items, next_cursor for the rest)"))


# -- responses ----------------------------------------------------------------------

class TaskOut(BaseModel):
    id: str
    name: str
    handler: str
    type: Literal["immediate", "delayed"]
    queue_name: str
    priority: int
    payload: Any = Field(None, description="In lists only with include_payload=true")
    dedup_key: str | None
    max_retries: int
    timeout_seconds: float | None
    status: TaskStatusName
    failures: int
    run_at: str | None
    created_at: str
    updated_at: str
    finished_at: str | None
    cancelled_at: str | None
    cancelled_by: str | None
    cancel_reason: str | None
    secret_fields: list[str] = Field(description="Payload keys shown as \"[secret]\"")


class RunOut(BaseModel):
    id: str
    task_id: str
    attempt: int
    status: RunStatusName
    worker_id: str | None
    lease_expires_at: str | None
    available_at: str
    next_retry_at: str | None
    error: str | None
    result: Any
    created_at: str
    started_at: str | None
    finished_at: str | None


class Created(BaseModel):
    task_id: str
    status: TaskStatusName


class BatchItem(Created):
    created: bool
    conflict: bool = Field(description="The dedup_key names a task made from a different "
                                       "request (created is false)")


class BatchCreated(BaseModel):
    tasks: list[BatchItem]


class TaskDetail(BaseModel):
    task: TaskOut
    latest_run: RunOut | None
    runs: list[RunOut]


class TaskPage(BaseModel):
    tasks: list[TaskOut]
    next_cursor: str | None


class RunList(BaseModel):
    runs: list[RunOut]


class Cancelled(BaseModel):
    task_id: str
    status: TaskStatusName
    cancelled: bool = Field(description="False when the task had already finished")


class QueueOut(BaseModel):
    name: str
    paused: bool
    paused_at: str | None
    paused_by: str | None
    ready: int
    delayed: int
    leased: int
    dlq: int
    completed_last_minute: int
    failed_last_minute: int
    oldest_ready_age_seconds: float | None


class QueueList(BaseModel):
    queues: list[QueueOut]


class QueueState(BaseModel):
    name: str
    paused: bool


class QueueDeleted(BaseModel):
    name: str
    deleted: Literal[True]


class DeadTaskOut(TaskOut):
    attempts: int
    last_error: str | None
    failed_at: str | None


class DlqPage(BaseModel):
    queue: str
    count: int
    tasks: list[DeadTaskOut]
    next_cursor: str | None


class Replayed(BaseModel):
    queue: str
    replayed: int
    task_ids: list[str]
    dry_run: bool


class Deleted(BaseModel):
    queue: str
    deleted: int
    task_ids: list[str]
    dry_run: bool


class RunningOut(BaseModel):
    run_id: str
    task_id: str
    attempt: int
    name: str
    handler: str
    queue_name: str
    started_at: str | None
    lease_expires_at: str | None


class WorkerOut(BaseModel):
    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    version: str
    started_at: str
    heartbeat_at: str
    stopped_at: str | None
    alive: bool
    running: list[RunningOut]


class WorkerList(BaseModel):
    workers: list[WorkerOut]


class Health(BaseModel):
    status: Literal["ok"]


class ProgressOut(BaseModel):
    stalled: bool
    ready_runs: int
    last_outcome_age_seconds: float | None


class Readiness(BaseModel):
    """Only `ready` for a caller that is neither authenticated nor on a scrape network."""

    ready: bool
    postgres: str | None = None
    redis: str | None = None
    components: dict[str, Literal["ok", "down"]] | None = None
    progress: ProgressOut | None = None


class KeyOut(BaseModel):
    id: str
    name: str
    tenant: str
    scopes: list[str]
    rate_per_minute: int | None
    token_prefix: str
    created_at: str
    created_by: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None


class KeyList(BaseModel):
    keys: list[KeyOut]


class NewKey(BaseModel):
    key: KeyOut
    token: str = Field(description="Shown only in this answer; kept nowhere")
    capped: list[str] = Field(description="rate_per_minute, expires_at: what was lowered to "
                              "the maker's own (a key gets no more than its maker has)")


class AuditEntry(BaseModel):
    id: int
    at: str
    actor: str
    tenant: str
    address: str | None
    request_id: str | None
    action: str
    queue_name: str | None
    detail: dict[str, Any]


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next_cursor: str | None


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None


class ErrorOut(BaseModel):
    error: ErrorBody


# -- schedules (architecture §9) ------------------------------------------------------

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
    (distasks.cron.check): a 422 naming `cron`."""
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
        from distasks import cron  # noqa: PLC0415 (schemas stay free of the domain at import)

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


class ScheduleTask(_Strict):
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


class CreateSchedule(_Strict):
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


class UpdateScheduleTask(_Strict):
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


class UpdateSchedule(_Strict):
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


class ScheduleListQuery(_Query):
    limit: TaskPageLimit = 100
    cursor: str | None = Field(None, pattern=SCHEDULE_NAME_PATTERN,
                               description="next_cursor of the previous page")
    include_payload: bool = Field(False, description="Add each template's payload "
                                  "(left out by default, as in task lists)")


class ScheduleQuery(_Query):
    upcoming: int = Field(5, ge=0, le=100, description="How many next fire times to show")
    fires: int = Field(20, ge=0, le=500, description="How many of the last fires to show")


class ScheduleTaskOut(BaseModel):
    name: str
    handler: str | None
    queue_name: str
    priority: int
    payload: Any = Field(None, description="Left out of lists unless include_payload=true")
    max_retries: int | None
    timeout_seconds: float | None
    secret_fields: list[str] = Field(description="Payload keys shown as \"[secret]\"")


class ScheduleOut(BaseModel):
    name: str
    cron: str
    timezone: str
    task: ScheduleTaskOut
    enabled: bool
    catch_up: CatchUpName
    catch_up_max: int
    jitter_seconds: float
    start_at: str | None
    end_at: str | None
    skip_if_running: bool
    owner: Literal["api", "config"]
    next_fire_at: str | None
    last_fire_at: str | None
    last_task_id: str | None
    created_at: str
    created_by: str
    updated_at: str


class ScheduleList(BaseModel):
    schedules: list[ScheduleOut]
    next_cursor: str | None = Field(description="For the next page; null on the last")


class FireOut(BaseModel):
    fire_at: str
    fired_at: str
    outcome: Literal["created", "skipped_running", "refused"]
    task_id: str | None
    error: str | None


class ScheduleDetail(BaseModel):
    schedule: ScheduleOut
    upcoming: list[str] = Field(description="The next fire times (UTC), before jitter")
    fires: list[FireOut] = Field(description="The latest fires, newest first")

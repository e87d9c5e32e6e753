"""Request and response shapes, declared once: they validate requests and are the
schemas of the OpenAPI document (api/openapi.py), so the two cannot drift apart. The
field rules and a schedule's definition, which the config file shares, come from
domain/fields.py and domain/schedule_definitions.py; a task's and a workflow's, which the
outbox relay shares, from domain/task_definitions.py and domain/workflow_definitions.py."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from distasks.api.cursor import PATTERN as CURSOR_PATTERN
from distasks.domain.fields import (
    NO_NUL_TEXT,
    PATTERN_RULES,
    QUEUE_NAME_PATTERN,
    DlqPageCount,
    DlqPageLimit,
    Priority,
    Query,
    QueryDatetime,
    RatePerMinute,
    SelectionCount,
    Strict,
    TaskPageLimit,
    UtcDatetime,
    text,
)
from distasks.domain.schedule_definitions import CRON_PATTERN as CRON_PATTERN
from distasks.domain.schedule_definitions import SCHEDULE_NAME_PATTERN, CatchUpName
from distasks.domain.schedule_definitions import CreateSchedule as CreateSchedule
from distasks.domain.schedule_definitions import UpdateSchedule as UpdateSchedule
from distasks.domain.task_definitions import TIMING_RULES as TIMING_RULES
from distasks.domain.task_definitions import CreateTask as CreateTask
from distasks.domain.tenancy import TENANT_PATTERN
from distasks.domain.workflow_definitions import NODE_KEY_PATTERN as NODE_KEY_PATTERN
from distasks.domain.workflow_definitions import CreateWorkflow as CreateWorkflow
from distasks.domain.workflow_definitions import Dependency as Dependency
from distasks.domain.workflow_definitions import OnFailureTask as OnFailureTask
from distasks.domain.workflow_definitions import OnParentFailureName as OnParentFailureName
from distasks.domain.workflow_definitions import WorkflowTask as WorkflowTask

TaskStatusName = Literal["pending", "queued", "completed", "failed", "cancelled", "skipped"]
WorkflowStateName = Literal["running", "succeeded", "failed", "cancelled"]
RunStatusName = Literal["queued", "running", "succeeded", "retrying", "failed", "interrupted",
                        "cancelled"]


# -- requests -----------------------------------------------------------------------

class CancelWorkflow(Strict):
    reason: str | None = Field(None, max_length=1000, json_schema_extra=NO_NUL_TEXT)


class WorkflowQuery(Query):
    state: WorkflowStateName | None = None
    name: str | None = text(1, 256)
    dedup_key: str | None = text(1, 256)
    created_after: QueryDatetime | None = None
    created_before: QueryDatetime | None = None
    limit: TaskPageLimit = 50
    cursor: str | None = Field(None, pattern=CURSOR_PATTERN,
                               description="next_cursor of the previous page")


class CreateTasks(Strict):
    tasks: list[CreateTask] = Field(min_length=1, description="At most http.max_batch items")


class CancelTask(Strict):
    reason: str | None = Field(None, max_length=1000, json_schema_extra=NO_NUL_TEXT)


class DlqSelection(Strict):
    """Which DLQ entries a replay or delete touches: `task_ids`, or the oldest `count`
    matching the filters."""

    count: SelectionCount = 10
    task_ids: list[uuid.UUID] | None = Field(None, min_length=1, max_length=10_000)
    handler: str | None = text(1, 128)
    error: str | None = text(1, 1000, "Substring of the last error, case-insensitive")
    failed_since: UtcDatetime | None = None
    dry_run: bool = False


MAX_RUNNING_DESCRIPTION = (
    "Most runs of the queue leased at once, counted across every daemon (runs claimed, "
    "running, or waiting for an executor); null: no limit")


MAX_RUNNING_PER_KEY_DESCRIPTION = (
    "Most runs of one concurrency_key of the queue leased at once, counted across every "
    "daemon; keys with runs waiting are served round robin; null: no limit")


MAX_STARTS_DESCRIPTION = (
    "Most runs of the queue started per second, counted across every daemon by a token "
    "bucket on Redis's clock; null: no rate")
BURST_DESCRIPTION = (
    "Most runs started at once after a quiet spell, with max_starts_per_second; null: one "
    "second's worth")


class UpdateQueue(Strict):
    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    max_running: int | None = Field(None, ge=1, le=1_000_000,
                                    description=MAX_RUNNING_DESCRIPTION + "; absent: unchanged")
    max_running_per_key: int | None = Field(
        None, ge=1, le=1_000_000, description=MAX_RUNNING_PER_KEY_DESCRIPTION + "; absent: "
        "unchanged")
    max_starts_per_second: float | None = Field(
        None, gt=0, le=1_000_000, description=MAX_STARTS_DESCRIPTION + "; absent: unchanged")
    burst: int | None = Field(None, ge=1, le=1_000_000,
                              description=BURST_DESCRIPTION + "; absent: unchanged")


class ReplayDlq(DlqSelection):
    override_priority: Priority | None = Field(
        None, description="The priority the replayed tasks get (and are claimed at); "
                          "absent: each keeps its own")


ScopeName = Literal["tasks:write", "tasks:read", "tasks:cancel", "queues:read", "queues:admin",
                    "dlq:admin", "keys:admin", "audit:read", "metrics:read", "schedules:read",
                    "schedules:write", "workflows:read", "workflows:write"]


class CreateKey(Strict):
    name: str = Field(min_length=1, max_length=200, description="What the key is for",
                      json_schema_extra=NO_NUL_TEXT)
    scopes: list[ScopeName] = Field(min_length=1, max_length=11)
    tenant: str | None = Field(None, pattern=TENANT_PATTERN,
                               description="Default: the maker's tenant")
    expires_in_seconds: float | None = Field(None, gt=0, le=10 * 366 * 86400,
                                             description="Default: never")
    rate_per_minute: RatePerMinute | None = Field(
        None, description="Requests per minute instead of limits.per_minute (0: none)")


class RotateKey(Strict):
    overlap_seconds: float = Field(86400, ge=0, le=366 * 86400,
                                   description="How long the old token stays valid")


AUDIT_CURSOR_PATTERN = r"^[1-9][0-9]{0,18}$(?!\n)"


class AuditQuery(Query):
    actor: str | None = text(1, 256, "Exactly this actor (key:<id>, anonymous@<address>, …)")
    action: str | None = text(1, 64, "cancel, pause, resume, queue_delete, dlq_replay, "
                                     "dlq_delete, key_…, schedule_…, workflow_…, login_failed, "
                                     "login_failures, config_reload, config_reload_refused")
    queue: str | None = Field(None, pattern=QUEUE_NAME_PATTERN)
    since: QueryDatetime | None = None
    limit: TaskPageLimit = 50
    cursor: str | None = Field(None, pattern=AUDIT_CURSOR_PATTERN,
                               description="next_cursor of the previous page")


class TaskQuery(Query):
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


class GetTaskQuery(Query):
    wait: float = Field(0, ge=0, le=60,
                        description="Seconds to wait for a final state before answering")


class DlqQuery(Query):
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
    concurrency_key: str | None = None
    workflow_id: str | None = Field(None, description="The workflow it is a node of")
    workflow_key: str | None = Field(None, description="Its key in that workflow")


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


class WorkflowCreatedOut(BaseModel):
    workflow_id: str
    created: bool = Field(description="False when the dedup_key named an existing workflow")
    tasks: dict[str, str] = Field(description="Task id by key (empty when not created)")


class NodeOut(BaseModel):
    key: str
    task_id: str
    status: TaskStatusName
    handler: str
    queue_name: str
    depends_on: list[Dependency]
    deps_remaining: int = Field(description="Parents not final yet")
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None = Field(description="The latest attempt's error")
    cancel_reason: str | None
    on_failure: bool = Field(False, description="The workflow's on_failure task")


class WorkflowOut(BaseModel):
    id: str
    name: str
    state: WorkflowStateName
    dedup_key: str | None
    open_nodes: int = Field(description="Tasks not final yet")
    counts: dict[str, int] = Field(description="Tasks by status")
    created_at: str
    updated_at: str
    finished_at: str | None
    cancelled_at: str | None
    cancelled_by: str | None


class WorkflowDetail(WorkflowOut):
    nodes: list[NodeOut]


class WorkflowPage(BaseModel):
    workflows: list[WorkflowOut]
    next_cursor: str | None


class WorkflowResults(BaseModel):
    results: dict[str, Any] = Field(description="By key: {status, result, error}")


class WorkflowChanged(BaseModel):
    workflow_id: str
    state: WorkflowStateName
    changed: bool = Field(description="False when the workflow was not in a state to change")


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
    max_running: int | None = Field(description=MAX_RUNNING_DESCRIPTION)
    max_running_per_key: int | None = Field(description=MAX_RUNNING_PER_KEY_DESCRIPTION)
    max_starts_per_second: float | None = Field(description=MAX_STARTS_DESCRIPTION)
    burst: int | None = Field(description=BURST_DESCRIPTION)
    waiting_for_limit: int = Field(description=(
        "Ready runs a limit holds back now: all of them while max_running runs are leased "
        "or no start is left in this second's rate, else those of keys at "
        "max_running_per_key"))


class QueueList(BaseModel):
    queues: list[QueueOut]


class QueueState(BaseModel):
    name: str
    paused: bool


class QueueLimits(BaseModel):
    name: str
    max_running: int | None = Field(description=MAX_RUNNING_DESCRIPTION)
    max_running_per_key: int | None = Field(description=MAX_RUNNING_PER_KEY_DESCRIPTION)
    max_starts_per_second: float | None = Field(description=MAX_STARTS_DESCRIPTION)
    burst: int | None = Field(description=BURST_DESCRIPTION)


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


class ScheduleListQuery(Query):
    limit: TaskPageLimit = 100
    cursor: str | None = Field(None, pattern=SCHEDULE_NAME_PATTERN,
                               description="next_cursor of the previous page")
    include_payload: bool = Field(False, description="Add each template's payload "
                                  "(left out by default, as in task lists)")


class ScheduleQuery(Query):
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


# What a refused pattern allows, in words (api/errors.py): the domain's, and the API's own.
API_PATTERN_RULES: dict[str, str] = {
    **PATTERN_RULES,
    CURSOR_PATTERN: "the next_cursor of the previous page, as given",
    AUDIT_CURSOR_PATTERN: "the next_cursor of the previous page, as given",
}

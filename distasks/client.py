"""A typed Python client for the distasks HTTP API, blocking (`Client`) or async
(`AsyncClient`, on Trio or asyncio through httpx/anyio).

Each API operation is written once, as a sans-I/O generator that yields the requests it
needs and turns the responses into results or exceptions (`_get`, `_wait`, …). The two
clients only differ in how they send a request, so their methods cannot drift apart:
`Client.get` runs the generator blocking, `AsyncClient.get` awaits it.

    with Client("http://127.0.0.1:8080", api_key=os.environ["DISTASKS_API_KEY"]) as c:
        task_id = c.create("send-email", payload={"to": "a@example.com"}).task_id
        print(c.wait(task_id, timeout=30).task.status)

To create tasks at a high rate, `AsyncClient.producer()` and `Client.producer()` gather
single creates into batch requests and answer each caller on its own (`Producer`,
`BlockingProducer`).

Errors: every non-2xx answer raises a `DistasksError` subclass carrying the API's
`status`, `code`, `message` and `field`; a daemon that cannot be reached raises
`Unavailable` with no status.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import functools
import inspect
import os
import queue
import re
import threading
import time
import urllib.parse
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, ParamSpec, TypedDict, TypeVar, Unpack, overload

import anyio
import anyio.abc
import httpx

from distasks.domain import errors
from distasks.domain.model import Json

__all__ = [
    "AccessDenied", "AsyncClient", "BlockingProducer", "CancelResult", "Client", "Conflict", "CreateResult",
    "DeadTask", "DeleteResult", "RateLimited",
    "DistasksError", "DlqFilters", "DlqPage", "InvalidRequest", "NotFound", "Producer", "Queue",
    "QueueState", "Readiness", "ReplayResult", "Run", "RunningRun", "Schedule",
    "ScheduleDetail", "Fire", "ServerError", "Task",
    "TaskDetail", "TaskFilters", "TaskPage", "TaskSpec", "Unavailable", "WaitTimeout",
    "Worker", "Workflow", "WorkflowChange", "WorkflowCreated", "WorkflowNode", "WorkflowPage",
    "WorkflowTask", "chain", "fan_out_fan_in",
]

# Where the API is when neither the `url` argument nor $DISTASKS_URL says.
DEFAULT_URL = "http://127.0.0.1:8080"
# Seconds to connect, send, or wait for an answer (a long poll adds its wait to the read).
DEFAULT_TIMEOUT_S = 10.0
# The longest wait one GET /api/v1/tasks/{id}?wait= may ask for (the API's limit).
MAX_WAIT_PER_REQUEST_S = 60.0
# Task statuses no daemon moves out of on its own (a DLQ replay does, on request).
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "skipped"})
# How often wait_workflow reads a running workflow again.
WORKFLOW_POLL_S = 0.2
# How many creates one batch request of a Producer holds at most, and how long the first
# of them waits for others before the batch is sent anyway.
DEFAULT_PRODUCER_BATCH = 100
DEFAULT_PRODUCER_DELAY_S = 0.005

P = ParamSpec("P")
T = TypeVar("T")


# -- errors -------------------------------------------------------------------------

class DistasksError(errors.DistasksError):
    """The API answered with an error (`status` is its HTTP status), or could not be
    reached (`status` is None). `code` and `field` are the API's, e.g. `invalid_input`
    and `priority`."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "error",
                 field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field

    def __str__(self) -> str:
        # "422 invalid_input (priority): priority: Input should be …"
        head = " ".join(str(p) for p in (self.status, self.code) if p is not None)
        if self.field:
            head += f" ({self.field})"
        return f"{head}: {self.message}"


class InvalidRequest(DistasksError):
    """400, 413 or 422: the request was refused and nothing was written."""


class NotFound(DistasksError):
    """404: no such task (or route)."""


class Unavailable(DistasksError):
    """503 (PostgreSQL or Redis is down; retry after `retry_after_s`), or the daemon
    could not be reached at all (`status` None)."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "unavailable",
                 field: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, status=status, code=code, field=field)
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        after = f" (retry after {self.retry_after_s:g} s)" if self.retry_after_s else ""
        return super().__str__() + after


class ServerError(DistasksError):
    """Any other 5xx: a bug or a proxy error; the daemon's log says more."""


class AccessDenied(DistasksError):
    """401 (no API key, or one unknown, expired or revoked) or 403 (the key lacks the
    operation's scope)."""


class Conflict(DistasksError):
    """409: the dedup_key names a task made from a different request."""


class RateLimited(DistasksError):
    """429: over the key's or its tenant's rate limit; retry after `retry_after_s`."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "rate_limited",
                 field: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, status=status, code=code, field=field)
        self.retry_after_s = retry_after_s


class WaitTimeout(DistasksError, TimeoutError):
    """`wait()` ran out of time before the task was final; `last` is what it saw last."""

    def __init__(self, task_id: str, timeout: float, last: TaskDetail | None) -> None:
        status = last.task.status if last else "unknown"
        super().__init__(f"task {task_id} is not final after {timeout:g} s (status {status})",
                         code="wait_timeout")
        self.task_id = task_id
        self.last = last

    def __str__(self) -> str:
        return self.message


# -- results ------------------------------------------------------------------------
# Frozen views of the API's JSON. Instants (`*_at`) become aware datetimes; `raw` keeps
# the object as the API sent it, including fields this client does not know yet.

@dataclass(frozen=True, slots=True, kw_only=True)
class _Shape:
    raw: Mapping[str, Any] = dataclasses.field(repr=False, compare=False)


S = TypeVar("S", bound=_Shape)


def _shape(cls: type[S], data: Any, **nested: Any) -> S:
    """Build `cls` from a JSON object: known fields only, `*_at` strings parsed,
    `nested` given already built. A missing field is an unexpected response."""
    if not isinstance(data, Mapping):
        raise _unexpected(f"expected a JSON object for {cls.__name__}, got {data!r:.80}")
    values: dict[str, Any] = {}
    for f in _fields(cls):
        if f.name in nested:
            values[f.name] = nested[f.name]
        elif f.name in data:
            value = data[f.name]
            if f.name.endswith("_at") and isinstance(value, str):
                value = datetime.fromisoformat(value)
            values[f.name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _unexpected(f"{cls.__name__} without {f.name!r}")
    return cls(raw=dict(data), **values)


_FIELDS: dict[type[_Shape], tuple[dataclasses.Field[Any], ...]] = {}


def _fields(cls: type[_Shape]) -> tuple[dataclasses.Field[Any], ...]:
    """The fields `_shape` fills, `raw` aside; read once per class."""
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = tuple(f for f in dataclasses.fields(cls) if f.name != "raw")
    return found


def _unexpected(what: str) -> ServerError:
    return ServerError(f"unexpected response: {what}", code="unexpected_response")


@dataclass(frozen=True, slots=True, kw_only=True)
class Task(_Shape):
    id: str
    name: str
    handler: str
    type: str
    queue_name: str
    priority: int
    #: None in lists unless asked for (`include_payload=True`)
    payload: Json = None
    dedup_key: str | None
    max_retries: int
    timeout_seconds: float | None
    status: str
    failures: int
    run_at: datetime | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    cancelled_at: datetime | None = None
    cancelled_by: str | None = None
    cancel_reason: str | None = None
    #: payload keys the API shows as "[secret]" (the handler gets their values)
    secret_fields: list[str] = dataclasses.field(default_factory=list)
    #: runs sharing it count against the queue's max_running_per_key
    concurrency_key: str | None = None
    #: the workflow it is a node of, and its key there
    workflow_id: str | None = None
    workflow_key: str | None = None

    @property
    def is_final(self) -> bool:
        """Completed, failed, cancelled or skipped: no daemon will change it on its own."""
        return self.status in FINAL_STATUSES


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadTask(Task):
    """A task in a dead-letter queue, with its last error."""

    attempts: int
    last_error: str | None
    failed_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Run(_Shape):
    """One attempt of a task."""

    id: str
    task_id: str
    attempt: int
    status: str
    worker_id: str | None
    available_at: datetime
    error: str | None
    result: Json
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_expires_at: datetime | None = None
    next_retry_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDetail(_Shape):
    """A task with every run; `latest_run` is the latest attempt that has started."""

    task: Task
    latest_run: Run | None
    runs: list[Run]


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateResult(_Shape):
    task_id: str
    status: str
    #: False when an existing task with the same dedup_key was returned
    created: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskPage(_Shape):
    tasks: list[Task]
    #: pass to `list(cursor=)` for the next page; None on the last page
    next_cursor: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelResult(_Shape):
    task_id: str
    status: str
    #: False when the task had already finished
    cancelled: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Queue(_Shape):
    name: str
    paused: bool
    paused_at: datetime | None
    paused_by: str | None
    ready: int
    delayed: int
    leased: int
    dlq: int
    completed_last_minute: int
    failed_last_minute: int
    oldest_ready_age_seconds: float | None
    #: most runs leased at once across every daemon; None: no limit
    max_running: int | None = None
    #: most runs of one concurrency key leased at once across every daemon; None: no limit
    max_running_per_key: int | None = None
    #: most runs started per second across every daemon; None: no rate
    max_starts_per_second: float | None = None
    #: most runs started at once after a quiet spell; None: one second's worth
    burst: int | None = None
    #: ready runs a limit holds back now
    waiting_for_limit: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueState(_Shape):
    name: str
    paused: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueLimits(_Shape):
    name: str
    max_running: int | None
    max_running_per_key: int | None = None
    max_starts_per_second: float | None = None
    burst: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DlqPage(_Shape):
    queue: str
    tasks: list[DeadTask]
    next_cursor: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayResult(_Shape):
    queue: str
    replayed: int
    task_ids: list[str]
    #: True: nothing was changed, `task_ids` are what would have been replayed
    dry_run: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteResult(_Shape):
    queue: str
    deleted: int
    task_ids: list[str]
    dry_run: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningRun(_Shape):
    """A run a worker holds right now."""

    run_id: str
    task_id: str
    attempt: int
    name: str
    handler: str
    queue_name: str
    started_at: datetime | None
    lease_expires_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Worker(_Shape):
    """A daemon, alive or recently stopped, and the runs it holds."""

    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    version: str
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    alive: bool
    running: list[RunningRun]


@dataclass(frozen=True, slots=True, kw_only=True)
class Readiness(_Shape):
    ready: bool
    #: each backing service: "ok" or "down: why"
    checks: dict[str, str]
    #: each component loop of the daemon: "ok" or "down"
    components: dict[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule(_Shape):
    """A cron schedule (architecture §9); `task` is its template as the API shows it."""

    name: str
    cron: str
    timezone: str
    task: Mapping[str, Any]
    enabled: bool
    catch_up: str
    catch_up_max: int
    jitter_seconds: float
    start_at: datetime | None
    end_at: datetime | None
    skip_if_running: bool
    #: "api", or "config" for a schedule of the config file (only `enabled` may change)
    owner: str
    next_fire_at: datetime | None
    last_fire_at: datetime | None
    last_task_id: str | None
    created_at: datetime
    created_by: str
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Fire(_Shape):
    """One slot a schedule dealt with: its task, or why there was none."""

    fire_at: datetime
    fired_at: datetime
    #: "created", "skipped_running" or "refused"
    outcome: str
    task_id: str | None
    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleDetail(_Shape):
    schedule: Schedule
    #: the next fire times, before jitter
    upcoming: list[datetime]
    #: the latest fires, newest first
    fires: list[Fire]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowCreated(_Shape):
    workflow_id: str
    #: False when an existing workflow with the same dedup_key was returned
    created: bool
    #: task id by key (empty when not created)
    tasks: dict[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowNode(_Shape):
    """One task of a workflow, with its state, attempts and timing."""

    key: str
    task_id: str
    status: str
    handler: str
    queue_name: str
    #: [{"key", "on_parent_failure"}]
    depends_on: list[dict[str, str]]
    deps_remaining: int
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    cancel_reason: str | None
    #: the workflow's on_failure task
    on_failure: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Workflow(_Shape):
    id: str
    name: str
    #: running, succeeded, failed or cancelled
    state: str
    dedup_key: str | None
    open_nodes: int
    #: tasks by status
    counts: dict[str, int]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    cancelled_at: datetime | None = None
    cancelled_by: str | None = None
    #: every task (empty in lists)
    nodes: list[WorkflowNode] = dataclasses.field(default_factory=list)

    @property
    def is_final(self) -> bool:
        return self.state != "running"

    def node(self, key: str) -> WorkflowNode:
        """The node with `key`; KeyError if there is none."""
        for n in self.nodes:
            if n.key == key:
                return n
        raise KeyError(key)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowPage(_Shape):
    workflows: list[Workflow]
    next_cursor: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowChange(_Shape):
    workflow_id: str
    state: str
    #: False when the workflow was not in a state to change
    changed: bool


# -- requests -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowTask:
    """One task of a workflow: its `key`, what it does (a TaskSpec, without dedup_key)
    and the keys it waits for. `on_parent_failure` ("cancel", "continue" or "skip")
    applies to every parent named by a plain key; a (key, policy) pair sets one."""

    key: str
    task: TaskSpec
    depends_on: Sequence[str | tuple[str, str]] = ()
    on_parent_failure: str | None = None

    def to_json(self) -> dict[str, Json]:
        deps: list[Json] = []
        for d in self.depends_on:
            if isinstance(d, str):
                deps.append(d if self.on_parent_failure is None
                            else {"key": d, "on_parent_failure": self.on_parent_failure})
            else:
                deps.append({"key": d[0], "on_parent_failure": d[1]})
        return {"key": self.key, **self.task.to_json(), "depends_on": deps}


def chain(*specs: TaskSpec, keys: Sequence[str] | None = None) -> list[WorkflowTask]:
    """Tasks that run one after the other: each waits for the one before. Keys are
    `keys`, or step0, step1, …"""
    names = list(keys) if keys is not None else [f"step{i}" for i in range(len(specs))]
    return [WorkflowTask(key=k, task=spec, depends_on=[names[i - 1]] if i else [])
            for i, (k, spec) in enumerate(zip(names, specs, strict=True))]


def fan_out_fan_in(first: TaskSpec, middle: Sequence[TaskSpec], last: TaskSpec, *,
                   on_parent_failure: str | None = None) -> list[WorkflowTask]:
    """`first`, then every one of `middle` at once (keys part0, part1, …), then `last`
    (key "last"), which sees every part's result in ctx.parents."""
    parts = [f"part{i}" for i in range(len(middle))]
    return [WorkflowTask(key="first", task=first),
            *(WorkflowTask(key=k, task=spec, depends_on=["first"])
              for k, spec in zip(parts, middle, strict=True)),
            WorkflowTask(key="last", task=last, depends_on=parts,
                         on_parent_failure=on_parent_failure)]


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSpec:
    """One task to create; None leaves a field to the API's default. `type` is inferred
    as "delayed" when `run_at` or `delay_seconds` is given."""

    name: str
    handler: str | None = None
    payload: Json = None
    queue: str | None = None
    priority: int | None = None
    type: str | None = None
    run_at: datetime | str | None = None
    delay_seconds: float | None = None
    dedup_key: str | None = None
    max_retries: int | None = None
    timeout_seconds: float | None = None
    #: top-level keys of the (object) payload that the API and CLI show as "[secret]"
    secret_fields: Sequence[str] | None = None
    #: runs sharing it count against the queue's max_running_per_key (e.g. a customer id)
    concurrency_key: str | None = None

    def to_json(self) -> dict[str, Json]:
        """The create body, in the API's field names."""
        body: dict[str, Json] = {"name": self.name}
        task_type = self.type
        if task_type is None and (self.run_at is not None or self.delay_seconds is not None):
            task_type = "delayed"
        for key, value in (("handler", self.handler), ("payload", self.payload),
                           ("queue_name", self.queue), ("priority", self.priority),
                           ("type", task_type), ("run_at", _param(self.run_at)),
                           ("delay_seconds", self.delay_seconds),
                           ("dedup_key", self.dedup_key), ("max_retries", self.max_retries),
                           ("timeout_seconds", self.timeout_seconds),
                           ("secret_fields", _names(self.secret_fields)),
                           ("concurrency_key", self.concurrency_key)):
            if value is not None:
                body[key] = value
        return body


def _names(values: Sequence[str] | None) -> list[str] | None:
    # A lone string would be sent as a list of its characters.
    if isinstance(values, str):
        raise TypeError("secret_fields must be a sequence of key names, not a string")
    return list(values) if values is not None else None


class TaskFilters(TypedDict, total=False):
    """Filters of `list()` and `iter_tasks()`; all given must match, None is no filter."""

    status: str | None
    queue: str | None
    name: str | None
    handler: str | None
    dedup_key: str | None
    created_after: datetime | str | None
    created_before: datetime | str | None


class DlqFilters(TypedDict, total=False):
    """Filters of the DLQ operations; `error` is a case-insensitive substring of the last
    error. None is no filter."""

    handler: str | None
    error: str | None
    failed_since: datetime | str | None


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Json = None
    #: seconds the server may hold the answer (a long poll), added to the read timeout
    wait_s: float = 0.0


# An operation: yields requests, receives their responses, returns its result.
Op = Generator[_Request, httpx.Response, T]
# A request an operation yields to pause for its wait_s (a poll), sent nowhere: each
# client sleeps its own way and answers with _SLEPT.
SLEEP = "SLEEP"
_SLEPT = httpx.Response(204)


def _param(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _params(**values: Any) -> dict[str, Any]:
    return {k: _param(v) for k, v in values.items() if v is not None}


def _quote(segment: str) -> str:
    # A task id or queue name is one path segment, whatever it contains.
    return urllib.parse.quote(str(segment), safe="")


def _json(response: httpx.Response) -> Any:
    """The body of a 2xx answer; any other status raises its DistasksError."""
    if response.is_success:
        try:
            return response.json()
        except ValueError:
            raise _unexpected(f"HTTP {response.status_code} without JSON") from None
    raise error_from(response)


def error_from(response: httpx.Response) -> DistasksError:
    """The exception for a non-2xx answer: the API's `{"error": {code, message, field}}`
    when the body has one (a proxy's error page has not)."""
    status = response.status_code
    code, message, field = f"http_{status}", response.reason_phrase or "error", None
    try:
        error = response.json()["error"]
        code = str(error["code"])
        message = str(error.get("message") or message)
        field = error.get("field")
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()
        if text:
            message = text.splitlines()[0][:200]
    if status in (400, 413, 422):
        return InvalidRequest(message, status=status, code=code, field=field)
    if status == 404:
        return NotFound(message, status=status, code=code, field=field)
    if status in (401, 403):
        return AccessDenied(message, status=status, code=code, field=field)
    if status == 409:
        return Conflict(message, status=status, code=code, field=field)
    if status == 429:
        return RateLimited(message, status=status, code=code, field=field,
                           retry_after_s=_retry_after(response.headers.get("Retry-After")))
    if status == 503:
        return Unavailable(message, status=status, code=code, field=field,
                           retry_after_s=_retry_after(response.headers.get("Retry-After")))
    if status >= 500:
        return ServerError(message, status=status, code=code, field=field)
    return DistasksError(message, status=status, code=code, field=field)


def _retry_after(value: str | None) -> float | None:
    # The API sends seconds; an HTTP date (from a proxy) is not worth parsing here.
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _unreachable(url: str, e: httpx.TransportError) -> Unavailable:
    """The error an operation gets (thrown in where it yielded the request) for a
    request that did not reach the daemon, or whose answer did not come back."""
    why = "connection refused" if _refused(e) else (str(e) or type(e).__name__)
    error = Unavailable(f"cannot reach the distasks API at {url}: {why}", code="unreachable")
    error.__cause__ = e
    return error


def _refused(e: BaseException | None) -> bool:
    """Whether a ConnectionRefusedError is behind `e` (anyio wraps it in a group)."""
    seen = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, ConnectionRefusedError):
            return True
        stack += [x.__cause__, x.__context__, *getattr(x, "exceptions", ())]
    return False


# -- operations (sans-I/O; shared by both clients) ------------------------------------

def _create(name: str, *, handler: str | None = None, payload: Json = None,
            queue: str | None = None, priority: int | None = None, type: str | None = None,
            run_at: datetime | str | None = None, delay_seconds: float | None = None,
            dedup_key: str | None = None, max_retries: int | None = None,
            timeout_seconds: float | None = None,
            secret_fields: Sequence[str] | None = None,
            concurrency_key: str | None = None) -> Op[CreateResult]:
    """Create a task; unset arguments take the API's defaults (see TaskSpec). With a
    `dedup_key` that exists, returns that task with `created` False. `secret_fields`
    names payload keys whose values the API shows as "[secret]".

    Raises InvalidRequest (e.g. `unknown_handler`, field `handler`)."""
    spec = TaskSpec(name=name, handler=handler, payload=payload, queue=queue,
                    priority=priority, type=type, run_at=run_at, delay_seconds=delay_seconds,
                    dedup_key=dedup_key, max_retries=max_retries,
                    timeout_seconds=timeout_seconds, secret_fields=secret_fields,
                    concurrency_key=concurrency_key)
    return (yield from _create_one(spec.to_json()))


def _create_one(body: dict[str, Json]) -> Op[CreateResult]:
    """POST one create body (TaskSpec.to_json)."""
    response = yield _Request("POST", "/api/v1/tasks", json=body)
    return _shape(CreateResult, _json(response), created=response.status_code == 201)


def _create_batch(bodies: list[dict[str, Json]]) -> Op[list[Any]]:
    """POST create bodies as one batch: the API's per-item results, in order."""
    items = _member(_json((yield _Request("POST", "/api/v1/tasks/batch",
                                          json={"tasks": bodies}))), "tasks")
    if not isinstance(items, list) or len(items) != len(bodies):
        raise _unexpected(f"{len(bodies)} tasks sent, answer {items!r:.80}")
    return items


def _create_many(tasks: Iterable[TaskSpec | Mapping[str, Any]]) -> Op[list[CreateResult]]:
    """Create tasks in one transaction: all or none. Mappings are TaskSpec's keyword
    arguments (`queue`, not `queue_name`). Results are in the order given.

    Raises InvalidRequest with `field` like `tasks.3.priority`."""
    specs = [t if isinstance(t, TaskSpec) else TaskSpec(**t) for t in tasks]
    items = yield from _create_batch([s.to_json() for s in specs])
    return [_shape(CreateResult, item) for item in items]


def _member(body: Any, key: str) -> Any:
    """`body[key]`, or an unexpected-response error."""
    try:
        return body[key]
    except (KeyError, TypeError, IndexError):
        raise _unexpected(f"no {key!r} in {body!r:.80}") from None


def _detail(body: Any) -> TaskDetail:
    runs = [_shape(Run, r) for r in _member(body, "runs")]
    latest = _member(body, "latest_run")
    return _shape(TaskDetail, body, task=_shape(Task, _member(body, "task")), runs=runs,
                  latest_run=_shape(Run, latest) if latest is not None else None)


def _get(task_id: str, *, wait: float | None = None) -> Op[TaskDetail]:
    """The task with its runs. `wait` (seconds, at most 60) lets the API hold the answer
    until the task is final or the time is up; either way the current state is returned.

    Raises NotFound; InvalidRequest (`invalid_id`) when `task_id` is not a UUID."""
    body = _json((yield _Request("GET", f"/api/v1/tasks/{_quote(task_id)}",
                                 params=_params(wait=wait), wait_s=wait or 0.0)))
    return _detail(body)


def _wait(task_id: str, *, timeout: float) -> Op[TaskDetail]:
    """The task once it is final (completed, failed or cancelled), long-polling for up to
    `timeout` seconds in requests of at most 60 s.

    Raises WaitTimeout (a TimeoutError, with the last state seen) when time is up."""
    deadline = time.monotonic() + timeout
    last: TaskDetail | None = None
    while True:
        remaining = deadline - time.monotonic()
        if last is not None and remaining <= 0:
            raise WaitTimeout(task_id, timeout, last)
        wait = round(min(MAX_WAIT_PER_REQUEST_S, max(0.0, remaining)), 3)
        last = yield from _get(task_id, wait=wait)
        if last.task.is_final:
            return last


def _runs(task_id: str) -> Op[list[Run]]:
    """Every attempt of the task, oldest first. Raises NotFound."""
    body = _json((yield _Request("GET", f"/api/v1/tasks/{_quote(task_id)}/runs")))
    return [_shape(Run, r) for r in _member(body, "runs")]


def _cancel(task_id: str, *, reason: str | None = None) -> Op[CancelResult]:
    """Cancel the task: at once if it waits, within about a second if it runs.
    `cancelled` is False when it had already finished. Raises NotFound."""
    body = _json((yield _Request("POST", f"/api/v1/tasks/{_quote(task_id)}/cancel",
                                 json=_params(reason=reason))))
    return _shape(CancelResult, body)


def _list(*, limit: int | None = None, cursor: str | None = None,
          include_payload: bool = False, **filters: Unpack[TaskFilters]) -> Op[TaskPage]:
    """One page of tasks, newest first (`limit` 1–500, API default 50), their payloads
    only with `include_payload`; follow `next_cursor`, or use `iter_tasks()`."""
    body = _json((yield _Request("GET", "/api/v1/tasks", params=_params(
        limit=limit, cursor=cursor, include_payload="true" if include_payload else None,
        **filters))))
    return _shape(TaskPage, body, tasks=[_shape(Task, t) for t in _member(body, "tasks")])


def _queues() -> Op[list[Queue]]:
    """Every queue known to the daemons, with depths and last-minute throughput."""
    body = _json((yield _Request("GET", "/api/v1/queues")))
    return [_shape(Queue, q) for q in _member(body, "queues")]


def _pause(queue: str) -> Op[QueueState]:
    """Stop every daemon claiming from `queue`; creates are still accepted."""
    return _shape(QueueState, _json((yield _Request(
        "POST", f"/api/v1/queues/{_quote(queue)}/pause"))))


def _set_max_running(queue: str, max_running: int | None) -> Op[QueueLimits]:
    """Allow at most `max_running` runs of `queue` leased at once across every daemon
    (None: no limit)."""
    return _shape(QueueLimits, _json((yield _Request(
        "PATCH", f"/api/v1/queues/{_quote(queue)}", json={"max_running": max_running}))))


def _set_max_running_per_key(queue: str, max_running_per_key: int | None) -> Op[QueueLimits]:
    """Allow at most `max_running_per_key` runs of one concurrency key of `queue` leased
    at once across every daemon (None: no limit); keys are served round robin."""
    return _shape(QueueLimits, _json((yield _Request(
        "PATCH", f"/api/v1/queues/{_quote(queue)}",
        json={"max_running_per_key": max_running_per_key}))))


def _set_start_rate(queue: str, max_starts_per_second: float | None,
                    burst: int | None = None) -> Op[QueueLimits]:
    """Start at most `max_starts_per_second` runs of `queue` per second across every
    daemon, up to `burst` at once after a quiet spell (None: one second's worth); None
    lifts the rate."""
    return _shape(QueueLimits, _json((yield _Request(
        "PATCH", f"/api/v1/queues/{_quote(queue)}",
        json={"max_starts_per_second": max_starts_per_second, "burst": burst}))))


def _resume(queue: str) -> Op[QueueState]:
    """Claim from a paused `queue` again."""
    return _shape(QueueState, _json((yield _Request(
        "POST", f"/api/v1/queues/{_quote(queue)}/resume"))))


def _delete_queue(queue: str) -> Op[str]:
    """Delete `queue`; returns its name. Conflict (409 `queue_not_empty`) while it holds
    unfinished or dead-lettered tasks, NotFound if there is no such queue."""
    body = _json((yield _Request("DELETE", f"/api/v1/queues/{_quote(queue)}")))
    return str(_member(body, "name"))


def _dlq(queue: str, *, limit: int | None = None, cursor: str | None = None,
         include_payload: bool = False, **filters: Unpack[DlqFilters]) -> Op[DlqPage]:
    """One page of `queue`'s dead-lettered tasks, oldest failure first (`limit` 1–1000),
    their payloads only with `include_payload`."""
    body = _json((yield _Request("GET", f"/api/v1/queues/{_quote(queue)}/dlq", params=_params(
        limit=limit, cursor=cursor, include_payload="true" if include_payload else None,
        **filters))))
    return _shape(DlqPage, body, tasks=[_shape(DeadTask, t) for t in _member(body, "tasks")])


def _selection(count: int | None, task_ids: Iterable[str] | None, dry_run: bool,
               filters: Mapping[str, Any]) -> dict[str, Any]:
    ids = None if task_ids is None else [str(i) for i in task_ids]
    if count is None and ids:
        # The API applies `count` (default 10) to task_ids too.
        count = len(ids)
    return _params(count=count, task_ids=ids, **filters) | {"dry_run": dry_run}


def _replay(queue: str, *, count: int | None = None, task_ids: Iterable[str] | None = None,
            override_priority: int | None = None, dry_run: bool = False,
            **filters: Unpack[DlqFilters]) -> Op[ReplayResult]:
    """Replay DLQ entries as new queued attempts with fresh retries: `task_ids`, or the
    oldest `count` (API default 10) matching the filters. `dry_run` only reports."""
    body = _selection(count, task_ids, dry_run, filters) | _params(
        override_priority=override_priority)
    return _shape(ReplayResult, _json((yield _Request(
        "POST", f"/api/v1/queues/{_quote(queue)}/dlq/replay", json=body))))


def _delete_dlq(queue: str, *, count: int | None = None,
                task_ids: Iterable[str] | None = None, dry_run: bool = False,
                **filters: Unpack[DlqFilters]) -> Op[DeleteResult]:
    """Remove DLQ entries (the tasks stay on record, failed), selected as in `replay`."""
    return _shape(DeleteResult, _json((yield _Request(
        "POST", f"/api/v1/queues/{_quote(queue)}/dlq/delete",
        json=_selection(count, task_ids, dry_run, filters)))))


def _workers() -> Op[list[Worker]]:
    """Daemons, alive and recently stopped, with the runs they hold."""
    body = _json((yield _Request("GET", "/api/v1/workers")))
    return [_shape(Worker, w, running=[_shape(RunningRun, r) for r in _member(w, "running")])
            for w in _member(body, "workers")]


def _create_schedule(name: str, cron: str, *, timezone: str | None = None,
                     task: Mapping[str, Any] | None = None, enabled: bool | None = None,
                     catch_up: str | None = None, catch_up_max: int | None = None,
                     jitter_seconds: float | None = None,
                     start_at: datetime | str | None = None,
                     end_at: datetime | str | None = None,
                     skip_if_running: bool | None = None) -> Op[Schedule]:
    """Create a schedule: `cron` (5 fields, or 6 with seconds first) in `timezone` (IANA,
    default UTC), each slot creating a task from `task` (handler, queue_name, payload,
    secret_fields, priority, max_retries, timeout_seconds, name). Unset arguments take the
    API's defaults.

    Raises InvalidRequest naming the field (`cron`, `timezone`, `task.handler`, …) and
    Conflict when the name is taken."""
    body = _params(name=name, cron=cron, timezone=timezone, task=task, enabled=enabled,
                   catch_up=catch_up, catch_up_max=catch_up_max,
                   jitter_seconds=jitter_seconds, start_at=start_at, end_at=end_at,
                   skip_if_running=skip_if_running)
    return _shape(Schedule, _json((yield _Request("POST", "/api/v1/schedules", json=body))))


def _schedules(*, include_payload: bool = False) -> Op[list[Schedule]]:
    """Your tenant's schedules, by name (every page); their templates' payloads only with
    `include_payload`."""
    found: list[Schedule] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor is not None:
            params["cursor"] = cursor
        if include_payload:
            params["include_payload"] = "true"
        body = _json((yield _Request("GET", "/api/v1/schedules", params=params)))
        found += [_shape(Schedule, x) for x in _member(body, "schedules")]
        cursor = body.get("next_cursor") if isinstance(body, dict) else None
        if cursor is None:
            return found


def _schedule(name: str, *, upcoming: int | None = None,
              fires: int | None = None) -> Op[ScheduleDetail]:
    """A schedule with its next `upcoming` fire times (API default 5) and its last
    `fires` fires (default 20). Raises NotFound."""
    body = _json((yield _Request("GET", f"/api/v1/schedules/{_quote(name)}",
                                 params=_params(upcoming=upcoming, fires=fires))))
    return _shape(ScheduleDetail, body, schedule=_shape(Schedule, _member(body, "schedule")),
                  upcoming=[datetime.fromisoformat(t) for t in _member(body, "upcoming")],
                  fires=[_shape(Fire, f) for f in _member(body, "fires")])


def _update_schedule(name: str, **changes: Any) -> Op[Schedule]:
    """Change the fields given (as in `create_schedule`; `task` changes only the template
    fields it names; `start_at=None`/`end_at=None` remove them). A change of timing, or
    enabling a paused schedule, restarts it from the next slot after now."""
    body = {k: _param(v) for k, v in changes.items()}
    return _shape(Schedule, _json((yield _Request(
        "PATCH", f"/api/v1/schedules/{_quote(name)}", json=body))))


def _pause_schedule(name: str) -> Op[Schedule]:
    """Stop firing `name` (no catch-up for the slots missed while paused)."""
    return (yield from _update_schedule(name, enabled=False))


def _resume_schedule(name: str) -> Op[Schedule]:
    """Fire `name` again, from its next slot after now."""
    return (yield from _update_schedule(name, enabled=True))


def _delete_schedule(name: str) -> Op[None]:
    """Delete a schedule (the tasks it made stay). Raises NotFound, and Conflict for a
    schedule of the config file."""
    response = yield _Request("DELETE", f"/api/v1/schedules/{_quote(name)}")
    if not response.is_success:
        raise error_from(response)


def _ready() -> Op[Readiness]:
    """Readiness of the daemon answering: `ready` False (its 503) names what is down.
    Raises Unavailable only when the daemon cannot be reached."""
    response = yield _Request("GET", "/readyz")
    if response.status_code != 503:
        body = _json(response)
    else:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not (isinstance(body, Mapping) and "ready" in body):
            raise error_from(response)  # a 503 from something else than the readiness check
    if not isinstance(body, Mapping):
        raise _unexpected(f"readiness {body!r:.80}")
    checks = {str(k): str(v) for k, v in body.items()
              if k not in ("ready", "components", "progress")}
    components = body.get("components")
    return _shape(Readiness, body, ready=bool(_member(body, "ready")), checks=checks,
                  components={str(k): str(v) for k, v in components.items()}
                  if isinstance(components, Mapping) else {})


def _workflow_shape(body: Any) -> Workflow:
    return _shape(Workflow, body, nodes=[_shape(WorkflowNode, n) for n in body.get("nodes", [])])


def _submit_workflow(name: str, tasks: Iterable[WorkflowTask | Mapping[str, Any]], *,
                     dedup_key: str | None = None,
                     on_failure: TaskSpec | None = None) -> Op[WorkflowCreated]:
    """Submit a workflow: every task written in one transaction, or none. Mappings are
    sent as they are (the API's fields: key, depends_on, name, handler, …). With a
    `dedup_key` that exists, returns that workflow with `created` False.

    Raises InvalidRequest naming the problem: a cycle, an unknown or duplicate key, a
    graph over limits.max_workflow_tasks, a bad task (field `tasks.3.priority`)."""
    body: dict[str, Json] = {"name": name, "tasks": [
        t.to_json() if isinstance(t, WorkflowTask) else dict(t) for t in tasks]}
    if dedup_key is not None:
        body["dedup_key"] = dedup_key
    if on_failure is not None:
        body["on_failure"] = on_failure.to_json()
    response = yield _Request("POST", "/api/v1/workflows", json=body)
    return _shape(WorkflowCreated, _json(response))


def _workflow(workflow_id: str) -> Op[Workflow]:
    """The workflow with every task's state, attempts and timing. Raises NotFound."""
    body = _json((yield _Request("GET", f"/api/v1/workflows/{_quote(workflow_id)}")))
    return _workflow_shape(body)


def _wait_workflow(workflow_id: str, *, timeout: float) -> Op[Workflow]:
    """The workflow once it is no longer running, reading it every WORKFLOW_POLL_S.

    Raises TimeoutError when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        wf = yield from _workflow(workflow_id)
        if wf.is_final:
            return wf
        if time.monotonic() >= deadline:
            raise TimeoutError(f"workflow {workflow_id} still {wf.state} after {timeout}s")
        # A poll: the pause is a request the client sends after sleeping.
        yield _Request(SLEEP, "", wait_s=WORKFLOW_POLL_S)


def _workflow_results(workflow_id: str) -> Op[dict[str, Json]]:
    """Each task's result by key (None for one that has none). Raises NotFound."""
    body = _json((yield _Request("GET", f"/api/v1/workflows/{_quote(workflow_id)}/results")))
    return {k: v.get("result") for k, v in _member(body, "results").items()}


def _workflows(*, state: str | None = None, name: str | None = None,
               dedup_key: str | None = None, limit: int | None = None,
               cursor: str | None = None) -> Op[WorkflowPage]:
    """One page of workflows, newest first; follow `next_cursor`."""
    body = _json((yield _Request("GET", "/api/v1/workflows", params=_params(
        state=state, name=name, dedup_key=dedup_key, limit=limit, cursor=cursor))))
    return _shape(WorkflowPage, body, workflows=[_workflow_shape(w)
                                                 for w in _member(body, "workflows")])


def _cancel_workflow(workflow_id: str, *, reason: str | None = None) -> Op[WorkflowChange]:
    """Cancel every unfinished task of the workflow. Raises NotFound."""
    body = _json((yield _Request("POST", f"/api/v1/workflows/{_quote(workflow_id)}/cancel",
                                 json=_params(reason=reason))))
    return _shape(WorkflowChange, body)


def _resume_workflow(workflow_id: str) -> Op[WorkflowChange]:
    """Run a failed workflow's failed tasks (and those cancelled or skipped because of
    them) again; completed ones keep their results. Raises NotFound."""
    body = _json((yield _Request("POST", f"/api/v1/workflows/{_quote(workflow_id)}/resume")))
    return _shape(WorkflowChange, body)


# -- the two clients ---------------------------------------------------------------------

class _Endpoint(Generic[P, T]):
    """An operation as a method of both clients: `Client` runs it blocking and returns
    its result, `AsyncClient` returns a coroutine (typed by the overloads)."""

    def __init__(self, op: Callable[P, Op[T]]) -> None:
        self.op = op
        self.__doc__ = op.__doc__

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> _Endpoint[P, T]: ...
    @overload
    def __get__(self, obj: AsyncClient, owner: type[Any]) -> Callable[
        P, Coroutine[Any, Any, T]]: ...
    @overload
    def __get__(self, obj: Client, owner: type[Any]) -> Callable[P, T]: ...

    def __get__(self, obj: _BaseClient | None, owner: type[Any]) -> Any:
        if obj is None:
            return self
        method = obj._bind(self.op)
        method.__name__ = self.name
        method.__qualname__ = f"{type(obj).__name__}.{self.name}"
        method.__doc__ = self.op.__doc__
        method.__signature__ = self._signature()
        # Bound once per client: an _Endpoint defines no __set__, so the instance's
        # attribute now wins every later lookup (a lookup used to cost a signature).
        obj.__dict__[self.name] = method
        return method

    @functools.cache  # noqa: B019 (one entry per endpoint, which lives as long as its class)
    def _signature(self) -> inspect.Signature:
        signature = inspect.signature(self.op)
        # For help(): the op's "Op[X]" return annotation is X to the caller.
        returns = str(signature.return_annotation).removeprefix("Op[").removesuffix("]")
        return signature.replace(return_annotation=returns)


class _BaseClient:
    """What both clients share: the base URL, headers and timeouts, and the operations."""

    def __init__(self, url: str | None, *, api_key: str | None, timeout: float) -> None:
        #: the API's base URL, e.g. http://127.0.0.1:8080
        self.url = (url or os.environ.get("DISTASKS_URL") or DEFAULT_URL).rstrip("/")
        self._timeout = timeout
        # The timeout of every request that is not a long poll, built once.
        self._timeouts = {0.0: httpx.Timeout(timeout)}
        self._headers = {"User-Agent": "distasks-client", "Accept": "application/json"}
        if key := api_key or os.environ.get("DISTASKS_API_KEY"):
            self._headers["Authorization"] = f"Bearer {key}"

    def _request_args(self, request: _Request) -> dict[str, Any]:
        timeout = self._timeouts.get(request.wait_s)
        if timeout is None:  # a long poll: its wait is added to the read timeout
            timeout = httpx.Timeout(self._timeout, read=self._timeout + request.wait_s)
        return {"method": request.method, "url": request.path, "params": request.params,
                "json": request.json, "timeout": timeout}

    def _bind(self, op: Callable[P, Op[T]]) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    create = _Endpoint(_create)
    create_many = _Endpoint(_create_many)
    get = _Endpoint(_get)
    wait = _Endpoint(_wait)
    runs = _Endpoint(_runs)
    cancel = _Endpoint(_cancel)
    list = _Endpoint(_list)
    queues = _Endpoint(_queues)
    pause = _Endpoint(_pause)
    resume = _Endpoint(_resume)
    set_max_running = _Endpoint(_set_max_running)
    set_max_running_per_key = _Endpoint(_set_max_running_per_key)
    set_start_rate = _Endpoint(_set_start_rate)
    delete_queue = _Endpoint(_delete_queue)
    dlq = _Endpoint(_dlq)
    replay = _Endpoint(_replay)
    delete_dlq = _Endpoint(_delete_dlq)
    workers = _Endpoint(_workers)
    ready = _Endpoint(_ready)
    create_schedule = _Endpoint(_create_schedule)
    schedules = _Endpoint(_schedules)
    schedule = _Endpoint(_schedule)
    update_schedule = _Endpoint(_update_schedule)
    pause_schedule = _Endpoint(_pause_schedule)
    resume_schedule = _Endpoint(_resume_schedule)
    delete_schedule = _Endpoint(_delete_schedule)
    submit_workflow = _Endpoint(_submit_workflow)
    workflow = _Endpoint(_workflow)
    wait_workflow = _Endpoint(_wait_workflow)
    workflow_results = _Endpoint(_workflow_results)
    workflows = _Endpoint(_workflows)
    cancel_workflow = _Endpoint(_cancel_workflow)
    resume_workflow = _Endpoint(_resume_workflow)


class Client(_BaseClient):
    """The API, blocking. `url` defaults to $DISTASKS_URL, then http://127.0.0.1:8080;
    `api_key` (default $DISTASKS_API_KEY) authenticates you; `timeout` is seconds per
    request. Use as a context manager, or call `close()`."""

    def __init__(self, url: str | None = None, *, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(url, api_key=api_key, timeout=timeout)
        self._http = httpx.Client(base_url=self.url, headers=self._headers,
                                  transport=transport)

    def _bind(self, op: Callable[P, Op[T]]) -> Callable[P, T]:
        def call(*args: P.args, **kwargs: P.kwargs) -> T:
            steps = op(*args, **kwargs)
            try:
                request = next(steps)
                while True:
                    if request.method == SLEEP:
                        time.sleep(request.wait_s)
                        request = steps.send(_SLEPT)
                        continue
                    try:
                        response = self._http.request(**self._request_args(request))
                    except httpx.TransportError as e:
                        request = steps.throw(_unreachable(self.url, e))
                    else:
                        request = steps.send(response)
            except StopIteration as done:
                result: T = done.value
                return result
            finally:
                steps.close()
        return call

    def iter_tasks(self, *, limit: int | None = None,
                   **filters: Unpack[TaskFilters]) -> Iterator[Task]:
        """Every task matching the filters, newest first, fetching pages of `limit`."""
        cursor = None
        while True:
            page = self.list(limit=limit, cursor=cursor, **filters)
            yield from page.tasks
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def producer(self, *, max_batch: int = DEFAULT_PRODUCER_BATCH,
                 max_delay_s: float = DEFAULT_PRODUCER_DELAY_S) -> BlockingProducer:
        """A `BlockingProducer` sending this client's creates in batches from a thread
        of its own (the way to enqueue at a high rate); use it as a context manager."""
        return BlockingProducer(self, max_batch=max_batch, max_delay_s=max_delay_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncClient(_BaseClient):
    """The API, async (Trio or asyncio). Arguments as for `Client`. Use as an async
    context manager, or call `aclose()`. Cancelling a call abandons its request."""

    def __init__(self, url: str | None = None, *, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(url, api_key=api_key, timeout=timeout)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self._headers,
                                       transport=transport)

    def _bind(self, op: Callable[P, Op[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        async def call(*args: P.args, **kwargs: P.kwargs) -> T:
            steps = op(*args, **kwargs)
            try:
                request = next(steps)
                while True:
                    if request.method == SLEEP:
                        await anyio.sleep(request.wait_s)
                        request = steps.send(_SLEPT)
                        continue
                    try:
                        response = await self._http.request(**self._request_args(request))
                    except httpx.TransportError as e:
                        request = steps.throw(_unreachable(self.url, e))
                    else:
                        request = steps.send(response)
            except StopIteration as done:
                result: T = done.value
                return result
            finally:
                steps.close()
        return call

    async def iter_tasks(self, *, limit: int | None = None,
                         **filters: Unpack[TaskFilters]) -> AsyncIterator[Task]:
        """Every task matching the filters, newest first, fetching pages of `limit`."""
        cursor = None
        while True:
            page = await self.list(limit=limit, cursor=cursor, **filters)
            for task in page.tasks:
                yield task
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def producer(self, *, max_batch: int = DEFAULT_PRODUCER_BATCH,
                 max_delay_s: float = DEFAULT_PRODUCER_DELAY_S) -> Producer:
        """A `Producer` sending this client's creates in batches (the way to enqueue at
        a high rate); use it as an async context manager."""
        return Producer(self, max_batch=max_batch, max_delay_s=max_delay_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


# -- batching for producers ---------------------------------------------------------------

# "tasks.3.priority" or "tasks.3": the item of a batch that an error names.
_ITEM_FIELD = re.compile(r"tasks\.(\d+)(?:\.(.+))?")


@dataclass(slots=True)
class _Enqueued:
    """One `enqueue` call: its create body, and its answer once the batch is back."""

    body: dict[str, Json]
    done: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    result: CreateResult | None = None
    error: DistasksError | None = None

    def succeed(self, result: CreateResult) -> None:
        self.result = result
        self.done.set()

    def fail(self, error: DistasksError) -> None:
        self.error = error
        self.done.set()


class Producer:
    """Many concurrent creates, sent as batch requests: `await enqueue(...)` takes
    `create`'s arguments and returns (or raises) what `create` would, once the batch
    holding the task committed. A batch leaves when it holds `max_batch` tasks or its
    first task waited `max_delay_s`, whichever comes first; one batch is in flight at a
    time, and what arrives meanwhile forms the next. Get one from
    `AsyncClient.producer()`; it works on Trio and asyncio.

    Errors are each caller's own: a task the API refuses (a 422 naming `tasks.<i>`) fails
    its `enqueue` with InvalidRequest (`field` as `create` names it) and the rest of its
    batch is sent again without it; a dedup_key naming a task made from a different
    request raises Conflict (`dedup_conflict`) in its caller only; a refusal of the whole
    batch that names no item (e.g. 413) is retried as single creates. An error that
    concerns every task (unreachable, 401/403, 429, 503, 5xx) is raised in every caller of
    that batch: nothing accepted is dropped silently.

    Resource handling: leaving the block sends whatever is waiting and returns once every
    batch is answered. Leaving it by an exception, or cancelling it, cancels the batch in
    flight; its callers get Unavailable (`code` "cancelled"), as the tasks may or may not
    have been written, and so do the callers whose tasks were not sent yet (those tasks
    do not exist). Cancelling one `enqueue` withdraws its task only while it waits for
    its batch to leave."""

    def __init__(self, client: AsyncClient, *, max_batch: int = DEFAULT_PRODUCER_BATCH,
                 max_delay_s: float = DEFAULT_PRODUCER_DELAY_S) -> None:
        _check_bounds(max_batch, max_delay_s)
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._create_each = client._bind(_create_each)
        self._waiting: list[_Enqueued] = []
        # When the oldest of `_waiting` arrived (anyio.current_time()).
        self._oldest_at = 0.0
        # Set when a task arrives in an empty queue, and when `max_batch` are waiting.
        self._arrived = anyio.Event()
        self._full = anyio.Event()
        self._closing = False
        self._tasks: anyio.abc.TaskGroup | None = None

    async def enqueue(self, name: str, *, handler: str | None = None, payload: Json = None,
                      queue: str | None = None, priority: int | None = None,
                      type: str | None = None, run_at: datetime | str | None = None,
                      delay_seconds: float | None = None, dedup_key: str | None = None,
                      max_retries: int | None = None, timeout_seconds: float | None = None,
                      secret_fields: Sequence[str] | None = None) -> CreateResult:
        """Create a task as `AsyncClient.create` does, in the next batch; returns once
        that batch committed. Raises as `create` does, and RuntimeError outside the
        producer's block."""
        if self._tasks is None or self._closing:
            raise RuntimeError("enqueue() outside `async with client.producer()`")
        spec = TaskSpec(name=name, handler=handler, payload=payload, queue=queue,
                        priority=priority, type=type, run_at=run_at,
                        delay_seconds=delay_seconds, dedup_key=dedup_key,
                        max_retries=max_retries, timeout_seconds=timeout_seconds,
                        secret_fields=secret_fields)
        item = _Enqueued(spec.to_json())
        if not self._waiting:
            self._oldest_at = anyio.current_time()
            self._arrived.set()
        self._waiting.append(item)
        if len(self._waiting) >= self.max_batch:
            self._full.set()
        try:
            await item.done.wait()
        except BaseException:
            if item in self._waiting:  # not sent yet: withdrawn
                self._waiting.remove(item)
            raise
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    async def __aenter__(self) -> Producer:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self._run)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        assert self._tasks is not None
        self._closing = True
        if exc_type is None:  # send what waits
            self._arrived.set()
            self._full.set()
        else:  # send nothing more: `_run` tells the callers
            self._tasks.cancel_scope.cancel()
        return await self._tasks.__aexit__(exc_type, exc, tb)

    async def _run(self) -> None:
        """Batch after batch until closed and nothing waits. Cancelled (the block left by
        an exception), it tells the callers whose tasks were not sent."""
        try:
            await self._batches()
        finally:
            self._closing = True
            for item in self._waiting:
                item.fail(Unavailable("the producer was closed before this task was sent: "
                                      "it was not created", code="cancelled"))
            self._waiting.clear()

    async def _batches(self) -> None:
        while True:
            if not self._waiting:
                if self._closing:
                    return
                await self._arrived.wait()
                self._arrived = anyio.Event()
                continue
            if len(self._waiting) < self.max_batch and not self._closing:
                remaining_s = self._oldest_at + self.max_delay_s - anyio.current_time()
                with anyio.move_on_after(remaining_s):
                    await self._full.wait()
            if not self._waiting:  # every waiting caller was cancelled
                continue
            batch = self._waiting[:self.max_batch]
            del self._waiting[:self.max_batch]
            if self._waiting:
                self._oldest_at = anyio.current_time()
            if len(self._waiting) < self.max_batch and not self._closing:
                self._full = anyio.Event()
            try:
                await self._send(batch)
            except BaseException:
                for item in batch:
                    if not item.done.is_set():
                        item.fail(Unavailable("the producer was closed while this task's "
                                              "batch was in flight: it may or may not "
                                              "exist", code="cancelled"))
                raise

    async def _send(self, batch: list[_Enqueued]) -> None:
        outcomes = await self._create_each([item.body for item in batch])
        for item, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, DistasksError):
                item.fail(outcome)
            else:
                item.succeed(outcome)


class BlockingProducer:
    """`Producer` for the blocking `Client`: `submit(...)` takes `create`'s arguments and
    returns at once a `concurrent.futures.Future`, whose `result()` is what `create`
    would return (or raises what it would raise) once the batch holding the task
    committed. Batches are formed and sent, one at a time, by a thread of the producer's
    own, with the same bounds and the same per-task errors as `Producer`.

    Resource handling: leaving the block sends whatever waits and returns once every
    batch is answered; `submit` after that raises RuntimeError. A future cancelled
    before its batch leaves is still sent (a future, once queued, is not withdrawn)."""

    def __init__(self, client: Client, *, max_batch: int = DEFAULT_PRODUCER_BATCH,
                 max_delay_s: float = DEFAULT_PRODUCER_DELAY_S) -> None:
        _check_bounds(max_batch, max_delay_s)
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._create_each = client._bind(_create_each)
        # Bodies with their futures; None, put last by __exit__, ends the thread.
        self._queue: queue.SimpleQueue[
            tuple[dict[str, Json], concurrent.futures.Future[CreateResult]] | None
        ] = queue.SimpleQueue()
        # Held while checking `_closed` and queueing, so nothing is queued after the None.
        self._lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, name: str, *, handler: str | None = None, payload: Json = None,
               queue: str | None = None, priority: int | None = None,
               type: str | None = None, run_at: datetime | str | None = None,
               delay_seconds: float | None = None, dedup_key: str | None = None,
               max_retries: int | None = None, timeout_seconds: float | None = None,
               secret_fields: Sequence[str] | None = None,
               ) -> concurrent.futures.Future[CreateResult]:
        """Queue a task for the next batch; the future resolves as `create` would."""
        spec = TaskSpec(name=name, handler=handler, payload=payload, queue=queue,
                        priority=priority, type=type, run_at=run_at,
                        delay_seconds=delay_seconds, dedup_key=dedup_key,
                        max_retries=max_retries, timeout_seconds=timeout_seconds,
                        secret_fields=secret_fields)
        future: concurrent.futures.Future[CreateResult] = concurrent.futures.Future()
        body = spec.to_json()
        with self._lock:
            if self._thread is None or self._closed:
                raise RuntimeError("submit() outside `with client.producer()`")
            self._queue.put((body, future))
        return future

    def __enter__(self) -> BlockingProducer:
        self._thread = threading.Thread(target=self._run, name="distasks-producer")
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._thread is not None
        with self._lock:
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        """Batch after batch until the None that `__exit__` queues."""
        closing = False
        while not closing:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_delay_s
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            try:
                outcomes = self._create_each([body for body, _ in batch])
            except Exception as e:  # a bug of this client: no caller is left waiting
                outcomes = [e] * len(batch)  # type: ignore[list-item]
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.set_running_or_notify_cancel():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)


def _check_bounds(max_batch: int, max_delay_s: float) -> None:
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    if max_delay_s < 0:
        raise ValueError(f"max_delay_s must not be negative, got {max_delay_s}")


def _create_each(bodies: list[dict[str, Json]]) -> Op[list[CreateResult | DistasksError]]:
    """Create every body, in batch requests, each with its own outcome (in order): its
    result, or the error a single create of it would have raised. A body the API refuses
    is answered with its error and the others are sent again without it; a refusal of the
    whole request naming no body (e.g. 413) sends them one by one; any other error (the
    daemon unreachable, 401/403, 429, 503, 5xx) is every remaining body's outcome."""
    outcomes: list[CreateResult | DistasksError | None] = [None] * len(bodies)
    left = list(range(len(bodies)))
    while left:
        try:
            answers = yield from _create_batch([bodies[i] for i in left])
        except (InvalidRequest, Conflict) as e:
            match = _ITEM_FIELD.fullmatch(e.field or "")
            if match is not None and int(match[1]) < len(left):
                outcomes[left.pop(int(match[1]))] = _for_item(e, int(match[1]), match[2])
                continue
            if isinstance(e, Conflict):
                for i in left:
                    outcomes[i] = _own(e)
                break
            for i in left:
                try:
                    outcomes[i] = yield from _create_one(bodies[i])
                except DistasksError as single:
                    outcomes[i] = single
            break
        except DistasksError as e:
            for i in left:
                outcomes[i] = _own(e)
            break
        for i, answer in zip(left, answers, strict=True):
            outcomes[i] = _created_or_conflict(bodies[i], answer)
        break
    return [o if o is not None else _unexpected("no outcome") for o in outcomes]


def _created_or_conflict(body: dict[str, Json], answer: Any) -> CreateResult | DistasksError:
    """One item of a batch answer: its result, or Conflict for a dedup_key that names a
    task made from a different request (what a single create answers with a 409)."""
    if isinstance(answer, Mapping) and answer.get("conflict"):
        return Conflict(f"dedup_key {body.get('dedup_key')!r} names task "
                        f"{answer.get('task_id')}, created from a different request",
                        status=409, code="dedup_conflict", field="dedup_key")
    try:
        return _shape(CreateResult, answer)
    except DistasksError as e:
        return e


def _own(error: DistasksError) -> DistasksError:
    # One exception object per caller: each raise writes its own traceback into it.
    own = copy.copy(error)
    own.__cause__ = error
    return own


def _for_item(error: DistasksError, index: int, field: str | None) -> DistasksError:
    """The batch's error about item `index`, as a single create would have named it."""
    own = copy.copy(error)
    own.field = field
    own.message = error.message.removeprefix(f"tasks[{index}]: ").removeprefix(
        f"tasks.{index}.")
    own.args = (own.message,)
    return own

"""Writing responses: the JSON of tasks and runs, and of times, shared by the resource
modules so that a task reads the same wherever it appears."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from distasks.domain.model import JsonText, RunStatus, Task, TaskRun
from distasks.domain.secret_fields import redacted
from distasks.domain.tenancy import shown


def iso(d: datetime | None) -> str | None:
    """RFC 3339 in UTC, with a Z."""
    return d.isoformat().replace("+00:00", "Z") if d else None


def task_json(t: Task, *, with_payload: bool = True) -> dict[str, Any]:
    """A task, its secret fields redacted; lists leave the payload out unless asked
    (with_payload False). A payload read as JsonText stays text (the encoder splices it
    in), unless fields of it must be redacted."""
    out = _task_json(t)
    if not with_payload:
        del out["payload"]
    elif t.secret_fields:
        payload = json.loads(t.payload) if isinstance(t.payload, JsonText) else t.payload
        out["payload"] = (redacted(payload, t.secret_fields) if isinstance(payload, dict)
                          else payload)
    return out


def _task_json(t: Task) -> dict[str, Any]:
    return {
        "id": str(t.id), "name": t.name, "handler": t.handler, "type": t.type.value,
        "queue_name": shown(t.queue_name), "priority": t.priority, "payload": t.payload,
        "dedup_key": t.dedup_key, "max_retries": t.max_retries, "timeout_seconds": t.timeout_s,
        "status": t.status.value, "failures": t.failures, "run_at": iso(t.run_at),
        "created_at": iso(t.created_at), "updated_at": iso(t.updated_at),
        "finished_at": iso(t.finished_at), "cancelled_at": iso(t.cancelled_at),
        "cancelled_by": t.cancelled_by, "cancel_reason": t.cancel_reason,
        "secret_fields": list(t.secret_fields), "concurrency_key": t.concurrency_key,
        "workflow_id": str(t.workflow_id) if t.workflow_id else None,
        "workflow_key": t.workflow_key,
    }


def run_json(r: TaskRun) -> dict[str, Any]:
    return {
        "id": str(r.id), "task_id": str(r.task_id), "attempt": r.attempt, "status": r.status.value,
        "worker_id": r.worker_id, "lease_expires_at": iso(r.lease_expires_at),
        "available_at": iso(r.available_at), "next_retry_at": iso(r.next_retry_at),
        "error": r.error, "result": r.result, "created_at": iso(r.created_at),
        "started_at": iso(r.started_at), "finished_at": iso(r.finished_at),
    }


def latest_run_json(runs: list[TaskRun]) -> dict[str, Any] | None:
    """The latest attempt that has started; the next attempt waiting for its time is
    listed in `runs` but is not "latest" until it starts, so that right after a failure
    the latest run says `retrying` and when the retry is due."""
    started = [r for r in runs if r.status is not RunStatus.QUEUED]
    pick = started[-1] if started else (runs[-1] if runs else None)
    return run_json(pick) if pick else None

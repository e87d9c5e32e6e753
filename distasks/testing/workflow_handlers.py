"""Handlers the workflow tests and bench/workflows.py run (loaded with
`DISTASKS_WORKER_HANDLERS=distasks.testing.workflow_handlers`).

`wf_step` sleeps `payload["ms"]` (default 0), fails while `payload["fail"]` is true (or
until attempt `payload["fail_until"]`), and returns `payload["value"]`. `wf_gather`
returns what it saw of its parents: how many, their states and the sum of their numeric
results. Both append `task_id attempt run_id pid key` to `DISTASKS_CHAOS_LOG` when they
start, as distasks.testing.chaos_handlers does, so a test can count executions.
"""

from __future__ import annotations

import os
from typing import Any

import trio

import distasks


class StepFailed(Exception):
    """A failure the payload asked for."""


def _record(ctx: distasks.TaskContext) -> None:
    path = os.environ.get("DISTASKS_CHAOS_LOG")
    if not path:
        return
    line = (f"{ctx.task.id} {ctx.attempt} {ctx.run_id} {os.getpid()} "
            f"{ctx.task.workflow_key}\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@distasks.handler("wf_step")
async def wf_step(ctx: distasks.TaskContext) -> Any:
    _record(ctx)
    payload = ctx.payload if isinstance(ctx.payload, dict) else {}
    ms = payload.get("ms", 0)
    if isinstance(ms, int) and ms > 0:
        await trio.sleep(ms / 1000)
    if payload.get("fail") is True:
        raise StepFailed(f"{ctx.task.workflow_key} failed as asked")
    fail_until = payload.get("fail_until")
    if isinstance(fail_until, int) and ctx.attempt < fail_until:
        raise StepFailed(f"{ctx.task.workflow_key} fails attempt {ctx.attempt}")
    return payload.get("value")


@distasks.handler("wf_gather")
async def wf_gather(ctx: distasks.TaskContext) -> Any:
    _record(ctx)
    total = 0
    for p in ctx.parents.values():
        if isinstance(p, dict) and isinstance(p.get("result"), int):
            total += p["result"]
    states: dict[str, int] = {}
    for p in ctx.parents.values():
        states[p["status"]] = states.get(p["status"], 0) + 1
    return {"parents": len(ctx.parents), "sum": total, "states": states}

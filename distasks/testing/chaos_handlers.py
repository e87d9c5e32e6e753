"""The handler the fault tests run: `chaos_sleep` sleeps `payload["ms"]` milliseconds.

Each execution appends one line `task_id attempt run_id pid` to the file named by
`DISTASKS_CHAOS_LOG` when it *starts*, so that an execution cut short by `kill -9` is
counted too. The file is opened with O_APPEND and each line is one write(2), so the
daemons of one test can share it. Loaded by the daemon through
`DISTASKS_WORKER_HANDLERS=distasks.testing.chaos_handlers`.
"""

from __future__ import annotations

import os

import trio

import distasks

# Sleep when the payload names no duration.
DEFAULT_MS = 100


@distasks.handler("chaos_sleep")
async def chaos_sleep(ctx: distasks.TaskContext) -> dict[str, int]:
    record_execution(ctx)
    payload = ctx.payload if isinstance(ctx.payload, dict) else {}
    ms = payload.get("ms", DEFAULT_MS)
    if not isinstance(ms, int) or ms < 0:
        ms = DEFAULT_MS
    await trio.sleep(ms / 1000)
    return {"slept_ms": ms, "attempt": ctx.attempt}


def record_execution(ctx: distasks.TaskContext) -> None:
    """Append this execution to the chaos log, if one is configured."""
    path = os.environ.get("DISTASKS_CHAOS_LOG")
    if not path:
        return
    line = f"{ctx.task.id} {ctx.attempt} {ctx.run_id} {os.getpid()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)

"""Control: what daemons tell each other through Redis pub/sub, at once.

"cancel <run ids>": the daemon running one of them stops its handler.
"done <task ids>": tasks reached a final state; long-polling requests wake up (only
tasks some request waits for are announced: broker/announce_done.lua).
Every message is a hint with a slower fallback (heartbeats notice cancelled tasks,
long polls re-read PostgreSQL every second), so a message lost to a reconnect is harmless.
"""

from __future__ import annotations

import logging
import uuid

import trio

from distasks.broker import Broker
from distasks.daemon.health import Health
from distasks.daemon.waiters import TaskWaiters
from distasks.daemon.worker import WorkerPool
from distasks.domain import backoff
from distasks.domain.errors import BrokerUnavailable

log = logging.getLogger(__name__)

# How long one wait for a message lasts; also bounds how late shutdown notices.
WAIT_S = 1.0


async def run(broker: Broker, pool: WorkerPool, waiters: TaskWaiters, *, health: Health,
              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on the control channel until cancelled, resubscribing after failures."""
    health.expect("control", allowance_s=30 * WAIT_S)
    failures = 0
    started = False
    while True:
        try:
            async with broker.control_messages() as messages:
                if not started:
                    task_status.started()
                    started = True
                failures = 0
                while True:
                    health.beat("control")
                    message = await messages.next(wait_s=WAIT_S)
                    if message is not None:
                        _handle(*message, pool=pool, waiters=waiters)
        except BrokerUnavailable as e:
            failures += 1
            health.beat("control")  # alive and retrying: an outage is not a hang
            if not started:
                task_status.started()
                started = True
            log.warning("control channel lost, resubscribing: %s", e,
                        extra={"event": "control_retry"})
            await trio.sleep(backoff.delay_s(failures))


def _handle(verb: str, ids: list[str], *, pool: WorkerPool, waiters: TaskWaiters) -> None:
    if verb == "cancel":
        run_ids = set()
        for i in ids:
            try:
                run_ids.add(uuid.UUID(i))
            except ValueError:
                continue
        pool.cancel_runs(run_ids)
    elif verb == "done":
        waiters.notify(ids)

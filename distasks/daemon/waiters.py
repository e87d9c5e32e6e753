"""Waiters: requests waiting for tasks to reach a final state (GET /api/v1/tasks/{id}?wait=),
woken by the "done" messages the control channel (distasks.daemon.control) delivers, and, for a
message lost or an end that came between a waiter's read and its registration, by `poll`:
one query a second for every waited task of this daemon together, not one per waiter."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import trio

from distasks.daemon import periodic
from distasks.daemon.health import Health
from distasks.store import Store


class TaskWaiters:
    """Requests waiting for tasks to finish, woken by "done" messages."""

    def __init__(self) -> None:
        self._events: dict[str, list[trio.Event]] = {}

    async def wait(self, task_id: uuid.UUID) -> None:
        """Return when `task_id` is announced done; callers bound the wait."""
        event = trio.Event()
        key = str(task_id)
        self._events.setdefault(key, []).append(event)
        try:
            await event.wait()
        finally:
            waiting = self._events.get(key, [])
            if event in waiting:
                waiting.remove(event)
            if not waiting:
                self._events.pop(key, None)

    def waited(self) -> list[uuid.UUID]:
        return [uuid.UUID(key) for key in self._events]

    def notify(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            for event in self._events.pop(task_id, []):
                event.set()


async def poll(store: Store, waiters: TaskWaiters, *, interval_s: float, health: Health,
               task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Every `interval_s`, wake the waiters of tasks that are final, until cancelled."""

    async def one_pass() -> None:
        if waited := waiters.waited():
            waiters.notify(str(t) for t in await store.final_among(waited))

    await periodic.every("waiters", interval_s, one_pass, health=health,
                         allowance_s=max(60.0, 10 * interval_s), task_status=task_status)

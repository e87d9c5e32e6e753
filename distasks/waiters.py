"""Waiters: requests waiting for tasks to reach a final state (GET /api/v1/tasks/{id}?wait=),
woken by the "done" messages the control channel (distasks.control) delivers."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import trio


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

    def notify(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            for event in self._events.pop(task_id, []):
                event.set()

"""Control: what daemons tell each other at once over pub/sub (a cancel for the daemon
running a task, "done" for long polls), and the waits long polls register."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from distasks import aio
from distasks.broker.base import _UNAVAILABLE, SOCKET_TIMEOUT_S, BrokerBase, cross, crossing
from distasks.broker.keys import global_keys


class ControlCommands(BrokerBase):
    """Cancels, announcements and the control channel."""

    @crossing
    async def cancelled(self, *, waiting: Sequence[tuple[str, str]], running: str | None,
                        task_id: str, now_ms: int) -> None:
        """A task was cancelled: drop its waiting runs from the index, tell the daemon
        running it (if any) to stop, and wake whoever waits for the task."""
        async with self._redis.pipeline(transaction=False) as pipe:
            by_queue: dict[str, list[str]] = {}
            for queue, run_id in waiting:
                by_queue.setdefault(queue, []).append(run_id)
            for queue, run_ids in by_queue.items():
                keys = self.keys(queue)
                self._pipe_script(pipe, "withdraw", [keys.ready, keys.delayed, keys.priorities,
                                                     keys.key_turns], run_ids)
            if running:
                # Raw: redis-py's cluster pipeline refuses its `publish` method (a
                # PUBLISH on any node reaches every node of a cluster).
                pipe.execute_command("PUBLISH", self.control_channel, f"cancel {running}")
            await self._execute_announcing(pipe, [task_id], now_ms=now_ms)

    @crossing
    async def cancelled_many(self, *, waiting: Sequence[tuple[str, str]],
                             running: Sequence[str], task_ids: Sequence[str],
                             now_ms: int) -> None:
        """`cancelled` for many tasks at once (a workflow's nodes)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            by_queue: dict[str, list[str]] = {}
            for queue, run_id in waiting:
                by_queue.setdefault(queue, []).append(run_id)
            for queue, run_ids in by_queue.items():
                keys = self.keys(queue)
                self._pipe_script(pipe, "withdraw", [keys.ready, keys.delayed, keys.priorities,
                                                     keys.key_turns], run_ids)
            for run_id in running:
                pipe.publish(self.control_channel, f"cancel {run_id}")
            await self._execute_announcing(pipe, list(task_ids), now_ms=now_ms)

    @crossing
    async def watch(self, task_id: str, *, until_ms: int) -> None:
        """Have "done" announced for `task_id` (see announce_done.lua) until `until_ms`:
        call it before reading the task's state, so that an end between the read and the
        wait is announced."""
        await self._redis.zadd(global_keys(self._prefix).waited, {task_id: until_ms}, gt=True)

    @asynccontextmanager
    async def control_messages(self) -> AsyncIterator[ControlSubscription]:
        """Subscribe to the control channel for the block."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await cross(self._subscribe_on_asyncio, pubsub)
            yield ControlSubscription(pubsub)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(SOCKET_TIMEOUT_S):
                try:
                    await aio.call(pubsub.aclose)
                except _UNAVAILABLE:
                    pass


    async def _subscribe_on_asyncio(self, pubsub: Any) -> None:
        """SUBSCRIBE on one node. On a cluster a PUBLISH reaches every node, so any one
        will do: the master of the channel's slot as the client's slot map has it now
        (after a failover, the new one; a subscription lost with its node fails, and
        the caller subscribes again)."""
        if self.is_cluster:
            await self._redis.initialize()  # the slot map, learnt on first use
        await pubsub.subscribe(self.control_channel)


class ControlSubscription:
    def __init__(self, pubsub: Any):
        self._pubsub = pubsub

    async def next(self, *, wait_s: float) -> tuple[str, list[str]] | None:
        """The next control message as (verb, ids), or None if none came within `wait_s`.
        Messages are hints: each has a slower fallback, so one lost to a reconnect or a
        cancellation is harmless."""
        message = await cross(self._pubsub.get_message, timeout=wait_s)
        if not message or message.get("type") != "message":
            return None
        verb, _, rest = str(message["data"]).partition(" ")
        return verb, rest.split()

"""Broker: the Redis dispatch index of ready, delayed, leased and dead-lettered work.

Redis holds only run and task ids, never payloads, and can be rebuilt from PostgreSQL
(architecture §2). Every public method is one crossing of the bridge, written the one way: its
body is asyncio-side redis-py code and `@crossing` runs it from Trio under a deadline,
failures mapped to BrokerUnavailable, so no caller ever holds an asyncio coroutine. A
body two crossings share is a private `_…_on_asyncio` helper, called only from inside a
crossing. Multi-command steps are pipelined or done by a Lua script (`<name>.lua`
beside this file, called by SHA).
"""

from __future__ import annotations

import contextlib
import functools
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Concatenate, ParamSpec, TypeVar

import redis.asyncio as aredis
import redis.exceptions
import trio

from distasks import aio
from distasks.broker.keys import QueueKeys, global_keys, queue_keys, rate_keys
from distasks.domain.errors import BrokerUnavailable

P = ParamSpec("P")
T = TypeVar("T")

# Replies are decoded as UTF-8, and bytes that are not UTF-8 (an entry no daemon wrote)
# survive as lone surrogates instead of raising: such an entry reads without error and,
# encoded back the same way, still names the exact bytes to remove.
ENCODING_ERRORS = "surrogateescape"
# Longest any crossing to Redis may take (a blocking claim waits at most CLAIM_BLOCK_S of
# it), also how long connecting may take. A Trio deadline around the crossing, not
# redis-py's socket timeouts: those wrap every command in an asyncio timer (and every
# send in a task), which costs more than the command. Cancelling the crossing drops the
# connection it was using (redis-py disconnects on cancellation mid-reply).
SOCKET_TIMEOUT_S = 5.0
# How long a claim blocks on an empty queue. It is never cancelled in flight (a pop
# whose reply is lost loses the item, architecture §1), so shutdown waits at most this long.
CLAIM_BLOCK_S = 1
# Most batches the mover moves per lock, so one busy queue cannot hold a daemon forever.
MOVE_MAX_ROUNDS = 10
# Most entries of each structure a queue delete reads to find the stale ones (a deleted
# queue holds none but leftovers of copies that failed: few).
FORGET_LIMIT = 10_000

# Outages, not bugs: connection loss, a replica after failover (READONLY), memory full,
# a master or cluster not ready yet.
_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.BusyLoadingError, redis.exceptions.ReadOnlyError,
                redis.exceptions.OutOfMemoryError, redis.exceptions.MasterDownError,
                redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError, OSError)


@dataclass(slots=True)
class Settlement:
    """Redis follow-ups of a batch of recorded outcomes, for `settle`, by queue."""

    #: queue -> run ids whose lease ends
    unleased: dict[str, list[str]] = field(default_factory=dict)
    #: queue -> (due_ms, run id) of retries
    delayed: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    #: queue -> task ids out of retries
    dead: dict[str, list[str]] = field(default_factory=dict)
    #: queue -> run ids to run next (interrupted runs handed back)
    urgent: dict[str, list[str]] = field(default_factory=dict)
    #: task ids that reached a final state (announced to long-poll waiters)
    finished: list[str] = field(default_factory=list)
    #: when the outcomes were recorded, Unix time in ms
    now_ms: int = 0


@contextlib.contextmanager
def broker_errors() -> Iterator[None]:
    """Map redis-py's connection failures to BrokerUnavailable, on either side of the
    bridge."""
    try:
        yield
    except _UNAVAILABLE as e:
        raise BrokerUnavailable(str(e) or type(e).__name__) from e


B = TypeVar("B", bound="Broker")


def crossing(fn: Callable[Concatenate[B, P], Awaitable[T]]) -> Callable[Concatenate[B, P], Awaitable[T]]:
    """An asyncio-side method called from Trio in one crossing, failures mapped."""

    @functools.wraps(fn)
    async def from_trio(self: B, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await _cross(fn, self, *args, **kwargs)

    return from_trio


async def _cross(fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """One crossing of the bridge within SOCKET_TIMEOUT_S, failures mapped."""
    with broker_errors(), trio.move_on_after(SOCKET_TIMEOUT_S):
        return await aio.call(fn, *args, **kwargs)
    raise BrokerUnavailable(f"no answer from Redis within {SOCKET_TIMEOUT_S:g}s")


class Broker:
    def __init__(self, client: aredis.Redis, prefix: str):
        self._redis = client
        self._prefix = prefix
        self._scripts = {name: client.register_script(_lua(name))
                         for name in ("claim", "move_due", "requeue", "announce_done",
                                      "release_lock", "rate_take")}

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str, *, prefix: str, max_connections: int = 64) -> AsyncIterator[Broker]:
        """Connect to `url` for the block; must run inside aio.open_loop()."""
        pool = aredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=None,
            socket_timeout=None, socket_connect_timeout=SOCKET_TIMEOUT_S,
            decode_responses=True, encoding_errors=ENCODING_ERRORS, retry_on_timeout=False)
        client = aredis.Redis(connection_pool=pool)
        try:
            yield cls(client, prefix)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(SOCKET_TIMEOUT_S):
                await aio.call(client.aclose)
                await aio.call(pool.disconnect)

    def keys(self, queue: str) -> QueueKeys:
        return queue_keys(self._prefix, queue)

    async def ping(self) -> None:
        """PING, asked twice before Redis is called down: a connection the pool kept
        across a Redis restart can be dead while Redis is up, and the first command on
        it fails; the second runs on a fresh connection."""
        try:
            await self._ping()
        except BrokerUnavailable:
            await self._ping()

    @crossing
    async def _ping(self) -> None:
        await self._redis.ping()

    # -- dispatch --------------------------------------------------------------------

    @crossing
    async def dispatch(self, ready: Sequence[tuple[str, str]] = (),
                       delayed: Sequence[tuple[str, str, int]] = ()) -> None:
        """Push (queue, run_id) to ready lists and (queue, run_id, due_ms) to delayed sets."""
        if not ready and not delayed:
            return
        by_queue: dict[str, list[str]] = {}
        for queue, run_id in ready:
            by_queue.setdefault(queue, []).append(run_id)
        due_by_queue: dict[str, dict[str, int]] = {}
        for queue, run_id, due_ms in delayed:
            due_by_queue.setdefault(queue, {})[run_id] = due_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue, run_ids in by_queue.items():
                pipe.rpush(self.keys(queue).ready, *run_ids)
            for queue, mapping in due_by_queue.items():
                pipe.zadd(self.keys(queue).delayed, mapping)
            await pipe.execute()

    # -- claim -----------------------------------------------------------------------

    @crossing
    async def claim(self, queue: str, *, count: int, lease_until_ms: int,
                    block: bool) -> list[str] | None:
        """Lease up to `count` ready run ids of `queue`; with `block`, wait up to
        CLAIM_BLOCK_S for the first one. None when the queue is paused.

        Returns at once when work is ready; otherwise waits on the server (`wait_ready`)
        and claims what arrived, all in one crossing. Claimed ids are in the lease set when
        this returns. Call it shielded: it must not be cancelled in flight, and it ends by
        itself within CLAIM_BLOCK_S plus a round trip.
        """
        keys = self.keys(queue)
        script, script_keys = self._scripts["claim"], [keys.ready, keys.leases, keys.paused]
        items: list[str] | None = await script(keys=script_keys, args=[count, lease_until_ms])
        if items is None or items or not block or not await self._wait_ready_on_asyncio(queue):
            return items
        return await script(keys=script_keys, args=[count, lease_until_ms])  # type: ignore[no-any-return]

    @crossing
    async def wait_ready(self, queue: str) -> bool:
        """Wait up to CLAIM_BLOCK_S until `queue` has a ready item; takes nothing.

        BLMOVE of the list onto itself (head to head) blocks like a pop but leaves the
        item where it was, so even a reply lost to a dropped connection loses nothing.
        """
        return await self._wait_ready_on_asyncio(queue)

    async def _wait_ready_on_asyncio(self, queue: str) -> bool:
        """wait_ready's body, for `claim` to use within its own crossing."""
        ready = self.keys(queue).ready
        return await self._redis.blmove(ready, ready, CLAIM_BLOCK_S, "LEFT", "LEFT") is not None

    @crossing
    async def requeue(self, queue: str, run_ids: Sequence[str]) -> int:
        """Hand leased run ids back to the head of the ready list; returns how many."""
        if not run_ids:
            return 0
        keys = self.keys(queue)
        return int(await self._scripts["requeue"](keys=[keys.leases, keys.ready],
                                                  args=list(run_ids)))

    @crossing
    async def release(self, queue: str, run_ids: Sequence[str]) -> None:
        """Drop the leases of claimed ids that have nothing to run."""
        if run_ids:
            await self._redis.zrem(self.keys(queue).leases, *run_ids)

    @crossing
    async def settle(self, s: Settlement) -> None:
        """Apply the Redis side of recorded outcomes in one pipeline."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue, run_ids in s.unleased.items():
                pipe.zrem(self.keys(queue).leases, *run_ids)
            for queue, due in s.delayed.items():
                pipe.zadd(self.keys(queue).delayed, {run_id: ms for ms, run_id in due})
            for queue, task_ids in s.dead.items():
                pipe.rpush(self.keys(queue).dlq, *task_ids)
            for queue, run_ids in s.urgent.items():
                pipe.lpush(self.keys(queue).ready, *reversed(run_ids))
            await self._execute_announcing(pipe, s.finished, now_ms=s.now_ms)

    # -- mover -----------------------------------------------------------------------

    @crossing
    async def move_due(self, queue: str, *, now_ms: int, limit: int, lock_ms: int) -> int | None:
        """Move due delayed ids of `queue` to ready; None if another daemon holds the lock.

        The lock (SET NX PX, not released) makes one daemon move per `lock_ms`; the script
        is atomic, so even two movers would never move one item twice.
        """
        keys = self.keys(queue)
        if not await self._redis.set(keys.mover_lock, secrets.token_hex(8), nx=True, px=lock_ms):
            return None
        moved = 0
        for _ in range(MOVE_MAX_ROUNDS):
            n = int(await self._scripts["move_due"](keys=[keys.delayed, keys.ready],
                                                   args=[now_ms, limit]))
            moved += n
            if n < limit:  # fewer than the limit means done
                break
        return moved


    # -- dead-letter queue -----------------------------------------------------------

    @crossing
    async def leave_dlq(self, queue: str, removed: Sequence[str], ready: Sequence[str]) -> None:
        """Take `removed` task ids out of the DLQ index and push the `ready` run ids of
        those replayed (none for a deletion)."""
        keys = self.keys(queue)
        async with self._redis.pipeline(transaction=True) as pipe:
            for task_id in removed:
                pipe.lrem(keys.dlq, 1, task_id)
            if ready:
                pipe.rpush(keys.ready, *ready)
            await pipe.execute()


    # -- control ---------------------------------------------------------------------

    @property
    def control_channel(self) -> str:
        return global_keys(self._prefix).control

    async def set_paused(self, queue: str, paused: bool) -> None:
        """Mirror a queue's pause flag (claims of a paused queue return nothing)."""
        await self.set_pause_flags({queue: paused})

    @crossing
    async def set_pause_flags(self, flags: Mapping[str, bool]) -> None:
        """Mirror the pause flags of many queues in one round trip."""
        if not flags:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue, paused in flags.items():
                if paused:
                    pipe.set(self.keys(queue).paused, "1")
                else:
                    pipe.delete(self.keys(queue).paused)
            await pipe.execute()

    @crossing
    async def queue_entries(self, queue: str) -> QueueEntries:
        """What a queue's ready list, delayed set, leases and DLQ index hold (at most
        FORGET_LIMIT of each), for `forget_queue`."""
        keys = self.keys(queue)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.lrange(keys.ready, 0, FORGET_LIMIT - 1)
            pipe.zrange(keys.delayed, 0, FORGET_LIMIT - 1)
            pipe.zrange(keys.leases, 0, FORGET_LIMIT - 1)
            pipe.lrange(keys.dlq, 0, FORGET_LIMIT - 1)
            ready, delayed, leased, dead = await pipe.execute()
        return QueueEntries(runs=frozenset([*ready, *delayed, *leased]), dead=frozenset(dead))

    @crossing
    async def forget_queue(self, queue: str, stale: QueueEntries) -> None:
        """A deleted queue: drop its pause flag and mover lock, and the `stale` entries
        of its ready list, delayed set, leases and DLQ index. Only those: a create that
        raced the delete may have pushed a run since, which must stay."""
        keys = self.keys(queue)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(keys.paused, keys.mover_lock)
            for run_id in stale.runs:
                pipe.lrem(keys.ready, 0, run_id)
            if stale.runs:
                pipe.zrem(keys.delayed, *stale.runs)
                pipe.zrem(keys.leases, *stale.runs)
            for task_id in stale.dead:
                pipe.lrem(keys.dlq, 0, task_id)
            await pipe.execute()

    @crossing
    async def cancelled(self, *, waiting: Sequence[tuple[str, str]], running: str | None,
                        task_id: str, now_ms: int) -> None:
        """A task was cancelled: drop its waiting runs from the index, tell the daemon
        running it (if any) to stop, and wake whoever waits for the task."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue, run_id in waiting:
                keys = self.keys(queue)
                pipe.lrem(keys.ready, 1, run_id)
                pipe.zrem(keys.delayed, run_id)
            if running:
                pipe.publish(self.control_channel, f"cancel {running}")
            await self._execute_announcing(pipe, [task_id], now_ms=now_ms)

    @crossing
    async def watch(self, task_id: str, *, until_ms: int) -> None:
        """Have "done" announced for `task_id` (see announce_done.lua) until `until_ms`:
        call it before reading the task's state, so that an end between the read and the
        wait is announced."""
        await self._redis.zadd(global_keys(self._prefix).waited, {task_id: until_ms}, gt=True)

    async def _execute_announcing(self, pipe: Any, task_ids: Sequence[str], *,
                                  now_ms: int) -> None:
        """Execute `pipe` with announce_done.lua for `task_ids` at its end.

        The script goes by SHA: a redis-py Script object in a pipeline makes it ask
        SCRIPT EXISTS first, one more round trip every time. If Redis lost its script
        cache (a restart), the rest of the pipeline has run; the script is then loaded
        and run on its own."""
        args: list[str | int] = [self.control_channel, now_ms, *task_ids]
        script = self._scripts["announce_done"]
        waited = global_keys(self._prefix).waited
        if task_ids:
            pipe.evalsha(script.sha, 1, waited, *args)
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, redis.exceptions.NoScriptError):
                await script(keys=[waited], args=args)
            elif isinstance(reply, Exception):
                raise reply

    @asynccontextmanager
    async def control_messages(self) -> AsyncIterator[ControlSubscription]:
        """Subscribe to the control channel for the block."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await _cross(pubsub.subscribe, self.control_channel)
            yield ControlSubscription(pubsub)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(SOCKET_TIMEOUT_S):
                try:
                    await aio.call(pubsub.aclose)
                except _UNAVAILABLE:
                    pass

    # -- leases and recovery ------------------------------------------------------------

    @crossing
    async def extend_leases(self, by_queue: dict[str, list[str]], *, lease_until_ms: int) -> None:
        """Move the lease deadline of held run ids (only those still in the lease set)."""
        if not by_queue:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue, run_ids in by_queue.items():
                pipe.zadd(self.keys(queue).leases, dict.fromkeys(run_ids, lease_until_ms), xx=True)
            await pipe.execute()

    @crossing
    async def expired_leases(self, queue: str, *, before_ms: int, limit: int) -> list[str]:
        """Run ids of `queue` whose Redis lease ended before `before_ms`."""
        items = await self._redis.zrange(self.keys(queue).leases, "-inf", before_ms,
                                         byscore=True, offset=0, num=limit)
        return [str(i) for i in items]

    @crossing
    async def has_epoch(self) -> bool:
        """False when Redis lost our data (restarted empty, failed over, flushed)."""
        return bool(await self._redis.exists(global_keys(self._prefix).epoch))

    @crossing
    async def begin_rebuild(self, *, lock_ms: int) -> str | None:
        """Take the rebuild lock; its token, or None if another daemon is rebuilding."""
        lock, token = global_keys(self._prefix).rebuild_lock, secrets.token_hex(8)
        taken = await self._redis.set(lock, token, nx=True, px=lock_ms)
        return token if taken else None

    @crossing
    async def abandon_rebuild(self, token: str) -> None:
        """Release the rebuild lock taken with `token` after a rebuild failed, so that
        the next pass (of any daemon) starts again at once instead of after the lock's
        time runs out."""
        await self._scripts["release_lock"](keys=[global_keys(self._prefix).rebuild_lock],
                                            args=[token])

    @crossing
    async def end_rebuild(self, *, epoch: str) -> None:
        """Mark the index complete and release the rebuild lock."""
        g = global_keys(self._prefix)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(g.epoch, epoch)
            pipe.delete(g.rebuild_lock)
            await pipe.execute()


    @crossing
    async def restore(self, queue: str, *, ready: Sequence[str] = (),
                      delayed: Sequence[tuple[str, int]] = (),
                      leased: Sequence[tuple[str, int]] = ()) -> None:
        """Add rebuilt entries to a queue's index. Duplicates of entries pushed since
        Redis came back are harmless: a run starts only once (PostgreSQL decides)."""
        keys = self.keys(queue)
        async with self._redis.pipeline(transaction=False) as pipe:
            if ready:
                pipe.rpush(keys.ready, *ready)
            if delayed:
                pipe.zadd(keys.delayed, dict(delayed))
            if leased:
                pipe.zadd(keys.leases, dict(leased))
            await pipe.execute()


    @crossing
    async def restore_dlq(self, queue: str, task_ids: Sequence[str]) -> None:
        """Replace the DLQ index of a queue with `task_ids` (oldest first)."""
        dlq = self.keys(queue).dlq
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(dlq)
            if task_ids:
                pipe.rpush(dlq, *task_ids)
            await pipe.execute()


    # -- rate limits ---------------------------------------------------------------------

    @crossing
    async def take_tokens(self, principal: str, tenant: str, *, per_ms: float,
                          capacity: int, tenant_per_ms: float, tenant_capacity: int,
                          want: int) -> tuple[int, int]:
        """Up to `want` tokens from the principal's and the tenant's buckets (a capacity
        of 0: no limit); (granted, ms until the next token when none was granted)."""
        keys = rate_keys(self._prefix, principal, tenant)
        granted, wait_ms, _left = await self._scripts["rate_take"](
            keys=list(keys), args=[per_ms, capacity, tenant_per_ms or 1, tenant_capacity, want])
        return int(granted), int(wait_ms)

    # -- inspection (tests, health) ----------------------------------------------------

    @crossing
    async def depths(self, queue: str) -> dict[str, int]:
        """Sizes of the queue's ready, delayed, leased and DLQ structures."""
        keys = self.keys(queue)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.llen(keys.ready)
            pipe.zcard(keys.delayed)
            pipe.zcard(keys.leases)
            pipe.llen(keys.dlq)
            ready, delayed, leased, dead = await pipe.execute()
        return {"ready": ready, "delayed": delayed, "leased": leased, "dlq": dead}


    @crossing
    async def queue_depths(self, queues: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Depths of many queues in one pipeline, with each ready list's head (oldest) and
        whether it is paused."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                keys = self.keys(queue)
                pipe.llen(keys.ready)
                pipe.zcard(keys.delayed)
                pipe.zcard(keys.leases)
                pipe.llen(keys.dlq)
                pipe.lindex(keys.ready, 0)
                pipe.exists(keys.paused)
            replies = await pipe.execute()
        out = {}
        for i, queue in enumerate(queues):
            ready, delayed, leased, dead, head, paused = replies[6 * i:6 * i + 6]
            out[queue] = {"ready": ready, "delayed": delayed, "leased": leased, "dlq": dead,
                          "head": head, "paused": bool(paused)}
        return out


    async def raw(self, fn_name: str, *args: Any) -> Any:
        """Run one plain redis-py command by name; for tests and diagnostics."""
        return await _cross(getattr(self._redis, fn_name), *args)


class ControlSubscription:
    def __init__(self, pubsub: Any):
        self._pubsub = pubsub

    async def next(self, *, wait_s: float) -> tuple[str, list[str]] | None:
        """The next control message as (verb, ids), or None if none came within `wait_s`.
        Messages are hints: each has a slower fallback, so one lost to a reconnect or a
        cancellation is harmless."""
        message = await _cross(self._pubsub.get_message, timeout=wait_s)
        if not message or message.get("type") != "message":
            return None
        verb, _, rest = str(message["data"]).partition(" ")
        return verb, rest.split()


@dataclass(frozen=True, slots=True)
class QueueEntries:
    """Ids in a queue's Redis structures: run ids (ready, delayed, leased) and task ids
    (DLQ index)."""

    runs: frozenset[str] = frozenset()
    dead: frozenset[str] = frozenset()


def printable(entry: str) -> str:
    """A Redis entry as printable ASCII for a log line: its raw bytes with everything
    unusual escaped, at most 200 characters."""
    return repr(entry.encode("utf-8", ENCODING_ERRORS))[2:-1][:200]


def _lua(name: str) -> str:
    return resources.files("distasks.broker").joinpath(f"{name}.lua").read_text()

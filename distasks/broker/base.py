"""What every part of the Broker stands on: the crossing of the bridge (each public
method is one crossing under a Trio deadline, redis-py's failures mapped to
BrokerUnavailable), the connection and key prefix they share, and the Lua scripts,
loaded once from `<name>.lua` beside this file and called by SHA.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator, Sequence
from importlib import resources
from typing import Any, Concatenate, ParamSpec, TypeVar

import redis.asyncio as aredis
import redis.exceptions
import trio

from distasks import aio
from distasks.broker.keys import QueueKeys, Rank, global_keys, queue_keys
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
                redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError,
                redis.exceptions.SlotNotCoveredError, OSError)


# How redis-py's cluster client says that no node answers, or that the nodes it reached
# do not make a whole cluster yet (RedisClusterException, whose other uses are bugs such
# as keys of several slots in one command).
_CLUSTER_OUTAGES = ("Redis Cluster cannot be connected", "All slots are not covered",
                    "startup_nodes could not agree")


@contextlib.contextmanager
def broker_errors() -> Iterator[None]:
    """Map redis-py's connection failures to BrokerUnavailable, on either side of the
    bridge."""
    try:
        yield
    except _UNAVAILABLE as e:
        raise BrokerUnavailable(str(e) or type(e).__name__) from e
    except redis.exceptions.RedisClusterException as e:
        if str(e).startswith(_CLUSTER_OUTAGES):
            raise BrokerUnavailable(str(e)) from e
        raise


B = TypeVar("B", bound="BrokerBase")


def crossing(fn: Callable[Concatenate[B, P], Awaitable[T]]) -> Callable[Concatenate[B, P], Awaitable[T]]:
    """An asyncio-side method called from Trio in one crossing, failures mapped."""

    @functools.wraps(fn)
    async def from_trio(self: B, /, *args: P.args, **kwargs: P.kwargs) -> T:
        if self._crossings is None:
            return await cross(fn, self, *args, **kwargs)
        async with self._crossings:
            return await cross(fn, self, *args, **kwargs)

    return from_trio


async def cross(fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """One crossing of the bridge within SOCKET_TIMEOUT_S, failures mapped."""
    with broker_errors(), trio.move_on_after(SOCKET_TIMEOUT_S):
        return await aio.call(fn, *args, **kwargs)
    raise BrokerUnavailable(f"no answer from Redis within {SOCKET_TIMEOUT_S:g}s")


#: the scripts beside this file, by name (file name = what it does)
SCRIPTS = ("claim", "push", "move_due", "requeue", "unlease", "withdraw", "ready_depth",
           "restore_leases", "announce_done", "release_lock", "rate_take")


class BrokerBase:
    """The connection, the key prefix and the scripts every part of the Broker uses."""

    def __init__(self, client: aredis.Redis | aredis.RedisCluster, prefix: str, *,
                 crossings: trio.CapacityLimiter | None = None):
        self._redis: Any = client
        self._prefix = prefix
        #: on a cluster, the crossings that may run at once (see Broker._open_cluster)
        self._crossings = crossings
        self.is_cluster = isinstance(client, aredis.RedisCluster)
        self._scripts = {name: client.register_script(_lua(name)) for name in SCRIPTS}
        self._by_sha = {script.sha: script for script in self._scripts.values()}

    def keys(self, queue: str) -> QueueKeys:
        return queue_keys(self._prefix, queue)

    @property
    def control_channel(self) -> str:
        return global_keys(self._prefix).control

    def _pipe_script(self, pipe: Any, name: str, keys: Sequence[str],
                     args: Sequence[str | int]) -> None:
        """Queue script `name` on `pipe` by SHA, for `_execute`.

        By SHA: a redis-py Script object in a pipeline makes it ask SCRIPT EXISTS first,
        one more round trip every time. As a raw command: redis-py's cluster pipeline
        refuses its `evalsha` method, though EVALSHA is routed by its keys like any
        other command (each script's keys share one slot)."""
        pipe.execute_command("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)

    async def _execute(self, pipe: Any) -> list[Any]:
        """Execute `pipe`, scripts queued by `_pipe_script` included; its replies.

        If Redis lost its script cache (a restart), the rest of the pipeline has run:
        each script it did not know is then loaded and run on its own, after the others."""
        stack = _stack(pipe)  # execute() empties the pipeline
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        for index, reply in enumerate(replies):
            if isinstance(reply, redis.exceptions.NoScriptError):
                _evalsha, sha, numkeys, *rest = stack[index]
                replies[index] = await self._by_sha[sha](keys=rest[:int(numkeys)],
                                                         args=rest[int(numkeys):])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _execute_announcing(self, pipe: Any, task_ids: Sequence[str], *,
                                  now_ms: int) -> None:
        """Execute `pipe` with announce_done.lua for `task_ids` at its end."""
        if task_ids:
            self._pipe_script(pipe, "announce_done", [global_keys(self._prefix).waited],
                              [self.control_channel, now_ms, *task_ids])
        await self._execute(pipe)

    def _push(self, pipe: Any, queue: str, runs: Sequence[tuple[str, Rank]], *,
              at_head: bool = False) -> None:
        """Queue push.lua for (run_id, rank) on `pipe`: to the tail of their priority's
        (or concurrency key's) ready list, or to the head (claimed next, in the order
        given)."""
        keys = self.keys(queue)
        self._pipe_script(pipe, "push", [keys.ready, keys.bands, keys.bell, keys.priorities,
                                         keys.key_turns],
                          ["head" if at_head else "tail",
                           *(x for run_id, priority in runs for x in (str(priority), run_id))])

    def _delay(self, pipe: Any, queue: str, due: Sequence[tuple[str, int, Rank]]) -> None:
        """Queue on `pipe` the delayed entries (run_id, due_ms, rank). A rank other
        than priority 0 is recorded before the entry, so move_due.lua never finds the entry
        without it (were that write lost, the run would be moved as priority 0: out of
        order, never lost)."""
        self._rank(pipe, queue, due)
        pipe.zadd(self.keys(queue).delayed, {run_id: due_ms for run_id, due_ms, _ in due})

    def _unlease(self, pipe: Any, queue: str, run_ids: Sequence[str]) -> None:
        """Queue unlease.lua for `run_ids` on `pipe`: their leases and ranks end (a
        limited queue's room signal rings, a key's count drops)."""
        keys = self.keys(queue)
        self._pipe_script(pipe, "unlease", [keys.leases, keys.max_running, keys.room,
                                            keys.priorities, keys.key_running, keys.bell,
                                            keys.ready], run_ids)

    def _rank(self, pipe: Any, queue: str, entries: Sequence[tuple[str, int, Rank]]) -> None:
        """Queue on `pipe` the ranks other than priority 0 of (run_id, _, rank)."""
        ranked = {run_id: str(r) for run_id, _, r in entries if str(r) != "0"}
        if ranked:
            pipe.hset(self.keys(queue).priorities, mapping=ranked)

    async def raw(self, fn_name: str, *args: Any) -> Any:
        """Run one plain redis-py command by name; for tests and diagnostics."""
        return await cross(getattr(self._redis, fn_name), *args)


def _stack(pipe: Any) -> list[tuple[Any, ...]]:
    """The arguments of each command queued on `pipe`, in order: a plain pipeline keeps
    (args, options) pairs, a cluster pipeline PipelineCommand objects."""
    if isinstance(pipe, aredis.client.Pipeline):
        return [args for args, _options in pipe.command_stack]
    return [command.args for command in pipe._execution_strategy._command_queue]


def cluster_url(url: str, cluster: bool) -> tuple[str, bool]:
    """(the URL redis-py takes, whether it names a cluster): `redis+cluster://` and
    `rediss+cluster://` say cluster whatever `cluster` says."""
    for scheme in ("redis", "rediss"):
        if url.startswith(f"{scheme}+cluster://"):
            return scheme + url[len(scheme) + len("+cluster"):], True
    return url, cluster


def printable(entry: str) -> str:
    """A Redis entry as printable ASCII for a log line: its raw bytes with everything
    unusual escaped, at most 200 characters."""
    return repr(entry.encode("utf-8", ENCODING_ERRORS))[2:-1][:200]


def _lua(name: str) -> str:
    return resources.files("distasks.broker").joinpath(f"{name}.lua").read_text()

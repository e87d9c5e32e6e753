"""PostgreSQL connections driven by Trio itself, and a small pool of them.

psycopg speaks the protocol in generators that yield "wait until this socket is
readable/writable"; only `AsyncConnection.wait` and `connect` hand those waits to asyncio.
`TrioConnection` overrides both to wait with `trio.lowlevel.wait_readable/_writable`, so
a query costs no crossing of the trio-asyncio bridge (a transaction costs about a sixth of the CPU,
docs/architecture.md). Everything else (adaptation, cursors, `transaction()`, pipelines)
is psycopg's own code. Relies on psycopg internals of the pinned 3.3 series:
`_connect_gen`, `waiting.Wait/Ready`, `_conninfo_attempts.conninfo_attempts`.

Cancellation: a wait cancelled mid-conversation leaves the protocol state unknown, so the
connection is closed and the pool drops it; nothing is sent on a connection after that.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import psycopg.errors as e
import trio
from psycopg import pq
from psycopg._conninfo_attempts import conninfo_attempts
from psycopg.abc import PQGen, PQGenConn
from psycopg.conninfo import conninfo_to_dict, make_conninfo, timeout_from_conninfo
from psycopg.rows import AsyncRowFactory, tuple_row
from psycopg.waiting import Ready, Wait

log = logging.getLogger(__name__)

# A connection older than this is closed when it is handed back, so that server-side
# memory and settings changed by an operator do not live for the daemon's lifetime.
MAX_LIFETIME_S = 3600.0


class PoolTimeout(psycopg.OperationalError):
    """No connection could be had in time (all busy, or the server unreachable)."""


class TrioConnection(psycopg.AsyncConnection[Any]):
    """A psycopg AsyncConnection whose waits are Trio's. Use it from one Trio task at a
    time (the pool does)."""

    def __init__(self, pgconn: pq.abc.PGconn,
                 row_factory: AsyncRowFactory[Any] = tuple_row):
        super().__init__(pgconn, row_factory)
        # psycopg takes this lock around every command; asyncio's would need a loop
        # when contended.
        self.lock = trio.Lock()  # type: ignore[assignment]

    @classmethod
    async def connect_trio(cls, conninfo: str, **kwargs: Any) -> TrioConnection:
        """Connect, trying each address the host resolves to in turn (as psycopg does),
        each within the conninfo's `connect_timeout`. Raises psycopg.OperationalError."""
        params = conninfo_to_dict(conninfo, **kwargs)
        timeout_s = timeout_from_conninfo(params)
        # Name resolution blocks: in a thread, like asyncio's getaddrinfo.
        attempts = await trio.to_thread.run_sync(conninfo_attempts, params)
        error: e.Error = e.OperationalError("no address to connect to")
        for attempt in attempts:
            with trio.move_on_after(timeout_s):
                try:
                    conn: TrioConnection = await _wait_conn(
                        cls._connect_gen(make_conninfo("", **attempt)))
                except e.Error as ex:
                    error = ex
                    continue
                return conn
            error = e.ConnectionTimeout("connection timeout expired")
        raise error.with_traceback(None)

    async def wait(self, gen: PQGen[Any], interval: float = 0.0,
                   timeout: float | None = None) -> Any:  # noqa: ASYNC109 (psycopg's signature)
        """Drive `gen` to completion on this connection's socket (psycopg's hook)."""
        try:
            if timeout is None:
                return await _wait(gen, self.pgconn.socket)
            with trio.move_on_after(timeout):
                return await _wait(gen, self.pgconn.socket)
            raise e._WaitTimeout("wait timeout expired")
        except BaseException as exc:
            if not isinstance(exc, e.Error):
                # Cancelled (or interrupted) mid-conversation: unusable from here on.
                self.pgconn.finish()
            raise


async def _wait(gen: PQGen[Any], fileno: int) -> Any:
    try:
        state = next(gen)
        while True:
            if state == Wait.R:
                await trio.lowlevel.wait_readable(fileno)
                state = gen.send(Ready.R)
            elif state == Wait.W:
                await trio.lowlevel.wait_writable(fileno)
                state = gen.send(Ready.W)
            else:
                state = gen.send(await _wait_either(fileno))
    except StopIteration as done:
        return done.value
    except OSError as ex:
        raise e.OperationalError("connection socket closed") from ex


async def _wait_conn(gen: PQGenConn[Any]) -> Any:
    """Like _wait, for connecting, where the socket may change between steps."""
    try:
        fileno, state = next(gen)
        while True:
            if state == Wait.R:
                await trio.lowlevel.wait_readable(fileno)
                fileno, state = gen.send(Ready.R)
            elif state == Wait.W:
                await trio.lowlevel.wait_writable(fileno)
                fileno, state = gen.send(Ready.W)
            else:
                fileno, state = gen.send(await _wait_either(fileno))
    except StopIteration as done:
        return done.value
    except OSError as ex:
        raise e.OperationalError("connection socket closed") from ex


async def _wait_either(fileno: int) -> Ready:
    """Wait until `fileno` is readable or writable (rare: large sends, pipelines)."""
    ready = Ready.NONE
    async with trio.open_nursery() as nursery:
        async def wait(fn: Any, state: Ready) -> None:
            nonlocal ready
            await fn(fileno)
            ready = Ready(ready | state)
            nursery.cancel_scope.cancel()
        nursery.start_soon(wait, trio.lowlevel.wait_readable, Ready.R)
        nursery.start_soon(wait, trio.lowlevel.wait_writable, Ready.W)
    return ready


class TrioPool:
    """At most `max_size` connections to `conninfo`, made on demand, in autocommit mode.

    `connection()` lends one for single statements (each its own transaction: no BEGIN
    and COMMIT round trips); `transaction()` lends one inside a transaction. A
    connection that broke, was cancelled mid-query or is past MAX_LIFETIME_S is closed
    instead of being kept. Waiting for a free connection gives up after `timeout_s`
    with PoolTimeout. `prepare_threshold` is psycopg's (None: no server-side prepared
    statements, for a pooler in transaction mode).
    """

    def __init__(self, conninfo: str, *, max_size: int, timeout_s: float,
                 kwargs: dict[str, Any] | None = None, prepare_threshold: int | None = 5):
        self._conninfo = conninfo
        self._kwargs = kwargs or {}
        # psycopg prepares a statement on the server after this many executions on one
        # connection; None never does (needed behind a transaction-mode pooler, where the
        # next statement may reach another server connection: architecture, "Behind a
        # connection pooler").
        self._prepare_threshold = prepare_threshold
        self._timeout_s = timeout_s
        self._slots = trio.Semaphore(max_size)
        self._idle: list[tuple[TrioConnection, float]] = []  # (connection, opened at)
        self._closed = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[TrioConnection]:
        """Lend an autocommit connection for the block; a failed statement in it is rolled
        back by the server, the connection stays usable."""
        with trio.move_on_after(self._timeout_s) as waited:
            await self._slots.acquire()
        if waited.cancelled_caught:
            raise PoolTimeout(f"no free connection within {self._timeout_s:g}s")
        try:
            conn, opened_at = await self._take()
            try:
                yield conn
            finally:
                self._give_back(conn, opened_at)
        finally:
            self._slots.release()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[TrioConnection]:
        """Lend a connection inside a transaction: committed if the block ends normally,
        rolled back if it raises."""
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def warm(self, count: int) -> None:
        """Open up to `count` connections now, so the first requests need not; stops at
        the first failure (PostgreSQL down is not an error here)."""
        opened = []
        try:
            for _ in range(count - len(self._idle)):
                opened.append(await self._take())
        except psycopg.OperationalError:
            pass
        finally:
            for conn, opened_at in opened:
                self._give_back(conn, opened_at)

    async def close(self) -> None:
        """Close the idle connections; those lent out are closed when handed back."""
        self._closed = True
        while self._idle:
            await self._idle.pop()[0].close()

    async def _take(self) -> tuple[TrioConnection, float]:
        if self._closed:
            raise PoolTimeout("the pool is closed")
        while self._idle:
            conn, opened_at = self._idle.pop()  # the most recent: the warmest
            if conn.pgconn.status == pq.ConnStatus.OK:
                return conn, opened_at
            await conn.close()
        with trio.move_on_after(self._timeout_s):
            conn = await TrioConnection.connect_trio(self._conninfo, **self._kwargs)
            conn._autocommit = True  # what psycopg's connect(autocommit=True) sets
            conn.prepare_threshold = self._prepare_threshold
            return conn, trio.current_time()
        raise PoolTimeout(f"could not connect within {self._timeout_s:g}s")

    def _give_back(self, conn: TrioConnection, opened_at: float) -> None:
        healthy = (not self._closed and conn.pgconn.status == pq.ConnStatus.OK
                   and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
                   and trio.current_time() - opened_at < MAX_LIFETIME_S)
        if healthy:
            self._idle.append((conn, opened_at))
        else:
            conn.pgconn.finish()  # no I/O that could block: closing the socket is enough

"""An application's outbox (architecture §10): the schema `distasks outbox install`
creates in the application's database (outbox.sql, beside this module), and the
statements a relay runs there. The source is reached as the store reaches distasks'
own database (store/pg.py: Trio's socket waits, no bridge), over one connection for the
batches and one more, kept open, for LISTEN.

Nothing here writes to distasks' database: daemon/relay.py creates the tasks and
workflows (through the intake and daemon/workflows.py), between `OutboxSource.batch` taking the rows and committing their removal.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import psycopg
import psycopg.errors
import trio

from distasks.domain.errors import StoreUnavailable
from distasks.store.base import CLOSE_TIMEOUT_S, CONNECT_TIMEOUT_S, POOL_TIMEOUT_S, store_errors
from distasks.store.pg import TrioConnection, TrioPool

# The channel outbox.sql's trigger notifies.
CHANNEL = "distasks_outbox"
# Any statement on the source is cancelled by its server after this long: a batch that
# hangs on a lock holds its rows no longer.
SOURCE_STATEMENT_TIMEOUT_MS = 30_000


def schema_sql() -> str:
    """The application-side schema (outbox.sql): idempotent, run as one transaction."""
    return resources.files("distasks.store").joinpath("outbox.sql").read_text()


# Two installs at once would race on "if not exists"; they take turns on this lock.
INSTALL_LOCK = "select pg_advisory_xact_lock(hashtext('distasks outbox install'))"


class SchemaRefused(Exception):
    """The server refused the outbox schema (too old a PostgreSQL, missing rights)."""


async def install(dsn: str) -> None:
    """Create or upgrade the outbox schema in the database at `dsn`, in one transaction.
    Raises StoreUnavailable when it cannot be reached, SchemaRefused when the server
    refuses the schema."""
    with store_errors():
        conn = await TrioConnection.connect_trio(dsn, connect_timeout=CONNECT_TIMEOUT_S)
        try:
            async with conn.transaction():
                await conn.execute(INSTALL_LOCK)
                try:
                    await conn.execute(schema_sql())
                except psycopg.errors.ProgrammingError as e:
                    raise SchemaRefused(" ".join(str(e).split())) from None
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                await conn.close()


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: str
    #: 'task' or 'workflow' (outbox.sql's check)
    kind: str
    #: the request as JSON text, as PostgreSQL returned it
    request: str
    #: seconds since the row was inserted, by the source's clock
    age_s: float


@dataclass(slots=True)
class OutboxBatch:
    """Rows taken (locked) by one relay: each one ends `done` (its task or workflow
    exists in distasks: the row is deleted) or `rejected` (moved to outbox_rejected with the
    reason); rows left unmarked stay in the outbox for a later batch."""

    rows: list[OutboxRow]
    done: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)


# The kinds of row this relay hands over; a newer kind is left to a daemon that knows it.
KINDS = ("task", "workflow")

# take --
# The oldest rows of the kinds this relay knows that no other relay holds. SKIP LOCKED:
# relays of several daemons share a source without waiting on each other; a row stays
# locked until its batch commits or its connection goes.
TAKE = """
SELECT id::text, kind, request::text,
       greatest(extract(epoch FROM clock_timestamp() - created_at), 0)::float8
FROM distasks.outbox
WHERE kind = ANY(%(kinds)s)
ORDER BY seq
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

# finish_done --
# Rows whose tasks exist in distasks.
FINISH_DONE = "DELETE FROM distasks.outbox WHERE id = ANY(%(ids)s::uuid[])"

# finish_rejected --
# Rows distasks refused: moved, with the reason, in one statement.
FINISH_REJECTED = """
WITH reasons AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(reasons)s::text[]) AS r(id, reason)
), gone AS (
    DELETE FROM distasks.outbox o USING reasons r WHERE o.id = r.id
    RETURNING o.id, o.kind, o.request, o.created_at
)
INSERT INTO distasks.outbox_rejected (id, kind, request, created_at, reason)
SELECT g.id, g.kind, g.request, g.created_at, r.reason FROM gone g JOIN reasons r USING (id)
ON CONFLICT (id) DO NOTHING
"""


@contextlib.contextmanager
def source_errors() -> Iterator[None]:
    """Every failure of the source is an outage to wait out, whatever psycopg calls it:
    a schema not installed yet or dropped, rights taken away, a server going down. The
    relay retries with backoff and the daemon serves on (architecture §5.6)."""
    try:
        yield
    except psycopg.Error as e:
        raise StoreUnavailable(" ".join(str(e).split()) or type(e).__name__) from e


class OutboxSource:
    """One application database's outbox, for one relay. Every method raises
    StoreUnavailable when the source cannot be reached or fails mid-statement; a
    cancelled statement closes its connection (store/pg.py)."""

    def __init__(self, dsn: str):
        self._dsn = dsn
        self._options: dict[str, Any] = {
            "application_name": "distasks-relay", "connect_timeout": CONNECT_TIMEOUT_S,
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
            "keepalives_count": 3,
            "options": f"-c statement_timeout={SOURCE_STATEMENT_TIMEOUT_MS}",
        }
        self._pool = TrioPool(dsn, max_size=1, timeout_s=POOL_TIMEOUT_S, kwargs=self._options)

    @asynccontextmanager
    async def batch(self, limit: int) -> AsyncIterator[OutboxBatch]:
        """Take up to `limit` rows for the block, in one source transaction. When the
        block ends normally, the rows it marked are removed and the transaction commits;
        when it raises (or is cancelled), nothing changes and the rows are free again."""
        with source_errors():
            async with self._pool.transaction() as conn:
                cur = await conn.execute(TAKE, {"limit": limit, "kinds": list(KINDS)})
                taken = OutboxBatch([OutboxRow(*row) for row in await cur.fetchall()])
                yield taken
                if taken.done:
                    await conn.execute(FINISH_DONE, {"ids": taken.done})
                if taken.rejected:
                    await conn.execute(FINISH_REJECTED, {"ids": list(taken.rejected),
                                                         "reasons": list(taken.rejected.values())})

    async def listen(self, notified: Callable[[], None], *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Call `notified()` on each notification of the outbox's trigger, on a
        connection of its own, until cancelled; `task_status.started()` once listening
        and once then (for rows committed before). Raises StoreUnavailable when the
        connection fails."""
        with source_errors():
            conn = await TrioConnection.connect_trio(self._dsn, **self._options)
            try:
                await conn.set_autocommit(True)
                await conn.execute(f"LISTEN {CHANNEL}")
                task_status.started()
                notified()  # for rows committed before it listened
                # No timeout: a connection that dies quietly wakes no one, and the
                # relay's polling covers that (keepalives close it within ~11 s).
                async for _ in conn.notifies():
                    notified()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                    await conn.close()

    async def close(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
            await self._pool.close()
